"""Tests of reskd_jax.data.pipeline / reskd_jax.data.sampling.

The index and crop rules are compared with NumPy transcriptions of mmaction2
0.x (SampleFrames, MultiScaleCrop, ThreeCrop, Resize), written here
independently of the TF implementation. End-to-end tests write a tiny TFRecord
data set whose frames are flat colours: red encodes the frame index, green the
video index, so the sampled frames and videos can be read back from a batch.
"""

import json
import os

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import tensorflow as tf
from jax.sharding import NamedSharding, PartitionSpec

from configs import default
from reskd_jax import augment
from reskd_jax.data import pipeline as ip, records, resize, sampling, transfer
from reskd_jax.errors import DataError

NUM_CLASSES = 12
# video index -> (num_frames, labels, (height, width))
VIDEOS = {
    0: (3, [0], (24, 32)),
    1: (5, [1], (24, 32)),
    2: (8, [2], (24, 32)),
    3: (9, [3, 10], (24, 32)),
    4: (12, [4], (32, 24)),
    5: (16, [5], (24, 32)),
    6: (20, [6, 11], (24, 32)),
    7: (7, [7], (32, 24)),
    8: (1, [8], (24, 32)),
    9: (24, [9], (20, 20)),
}
SCALES = (1.0, 0.875, 0.75, 0.66)


# ----------------------------------------------------------------------------
# NumPy references transcribed from mmaction2 0.x.


def ref_train_frame_inds(n, clip_len, interval, num_clips, randint):
  """SampleFrames._get_train_clips + 'loop' (randint(high, size) plays np.random.randint)."""
  ori_clip_len = clip_len * interval
  avg_interval = (n - ori_clip_len + 1) // num_clips
  if avg_interval > 0:
    base_offsets = np.arange(num_clips) * avg_interval
    clip_offsets = base_offsets + randint(avg_interval, num_clips)
  elif n > max(num_clips, ori_clip_len):
    clip_offsets = np.sort(randint(n - ori_clip_len + 1, num_clips))
  elif avg_interval == 0:
    ratio = (n - ori_clip_len + 1.0) / num_clips
    clip_offsets = np.around(np.arange(num_clips) * ratio)
  else:
    clip_offsets = np.zeros((num_clips,), dtype=int)
  inds = clip_offsets[:, None] + np.arange(clip_len)[None, :] * interval
  return np.mod(inds, n).astype(np.int64)


def ref_test_frame_inds(n, clip_len, interval, num_clips):
  """SampleFrames._get_test_clips (0.x) + 'loop'."""
  ori_clip_len = clip_len * interval
  avg_interval = (n - ori_clip_len + 1) / float(num_clips)
  if n > ori_clip_len - 1:
    base_offsets = np.arange(num_clips) * avg_interval
    clip_offsets = (base_offsets + avg_interval / 2.0).astype(int)
  else:
    clip_offsets = np.zeros((num_clips,), dtype=int)
  inds = clip_offsets[:, None] + np.arange(clip_len)[None, :] * interval
  return np.mod(inds, n)


def ref_multiscale_candidates(img_h, img_w, input_size, scales, max_wh_scale_gap):
  """MultiScaleCrop: [(w, h), [13 x (x, y)]] per candidate, num_fixed_crops=13."""
  base_size = min(img_h, img_w)
  crop_sizes = [int(base_size * s) for s in scales]
  candidate_sizes = []
  for i, h in enumerate(crop_sizes):
    for j, w in enumerate(crop_sizes):
      if abs(i - j) <= max_wh_scale_gap:
        candidate_sizes.append([w, h])
  out = []
  for crop_size in candidate_sizes:
    for i in range(2):
      if abs(crop_size[i] - input_size) < 3:
        crop_size[i] = input_size
    crop_w, crop_h = crop_size
    w_step = (img_w - crop_w) // 4
    h_step = (img_h - crop_h) // 4
    offsets = [(0, 0), (4 * w_step, 0), (0, 4 * h_step), (4 * w_step, 4 * h_step),
               (2 * w_step, 2 * h_step), (0, 2 * h_step), (4 * w_step, 2 * h_step),
               (2 * w_step, 4 * h_step), (2 * w_step, 0 * h_step), (1 * w_step, 1 * h_step),
               (3 * w_step, 1 * h_step), (1 * w_step, 3 * h_step), (3 * w_step, 3 * h_step)]
    out.append(((crop_w, crop_h), offsets))
  return out


def ref_three_crop(img_h, img_w, crop):
  """ThreeCrop with crop_size == short side (mmaction2 asserts it)."""
  crop_w = crop_h = crop
  if crop_h == img_h:
    w_step = (img_w - crop_w) // 2
    return [(0, 0), (2 * w_step, 0), (w_step, 0)]
  h_step = (img_h - crop_h) // 2
  return [(0, 0), (0, 2 * h_step), (0, h_step)]


def ref_short_side(h, w, short):
  """mmcv.rescale_size((w, h), (inf, short)) -> (new_h, new_w)."""
  scale = min(np.inf / max(h, w), short / min(h, w))
  return int(h * float(scale) + 0.5), int(w * float(scale) + 0.5)


# ----------------------------------------------------------------------------
# Index rules.


@pytest.mark.parametrize("clip_len,interval,num_clips", [(1, 1, 8), (1, 1, 3), (4, 2, 1),
                                                         (3, 2, 4)])
def test_train_indices_match_mmaction2(clip_len, interval, num_clips):
  rng = np.random.default_rng(0)
  branches = set()
  for n in range(1, 41):
    u = rng.random(num_clips)
    randint = lambda high, size: np.minimum(np.floor(u * high).astype(int), high - 1)
    expected = ref_train_frame_inds(n, clip_len, interval, num_clips, randint)
    if clip_len == 1 and interval == 1:
      got = sampling.tsn_train_indices(n, num_clips, u).numpy()
      np.testing.assert_array_equal(got, expected.reshape(-1), err_msg=f"n={n}")
    offsets = sampling.train_clip_offsets(n, clip_len, interval, num_clips, u)
    got = sampling.clip_frame_indices(offsets, clip_len, interval, n).numpy()
    np.testing.assert_array_equal(got, expected, err_msg=f"n={n}")
    if num_clips == 1:
      got = sampling.dense_train_indices(n, clip_len, interval, u).numpy()
      np.testing.assert_array_equal(got, expected.reshape(-1), err_msg=f"n={n}")
    ori = clip_len * interval
    avg = (n - ori + 1) // num_clips
    branches.add("seg" if avg > 0 else "sort" if n > max(num_clips, ori) else
                 "even" if avg == 0 else "zero")
  assert "seg" in branches and len(branches) >= 2  # more than the common branch exercised


@pytest.mark.parametrize("n,num_segments", [(20, 8), (9, 4), (5, 8), (3, 3)])
def test_tsn_train_support_matches_numpy_random(n, num_segments):
  """Over many draws, each segment's sampled frames are exactly mmaction2's possible frames."""
  np.random.seed(0)
  rng = np.random.default_rng(1)
  ref, got = set(), set()
  for _ in range(120):
    randint = lambda high, size: np.random.randint(high, size=size)
    ref.update(enumerate(ref_train_frame_inds(n, 1, 1, num_segments, randint).reshape(-1)))
    got.update(enumerate(sampling.tsn_train_indices(n, num_segments,
                                                    rng.random(num_segments)).numpy()))
  assert got == ref


def test_test_indices_match_mmaction2():
  for n in range(1, 41):
    for t in (1, 3, 8):
      np.testing.assert_array_equal(sampling.tsn_test_indices(n, t).numpy(),
                                    ref_test_frame_inds(n, 1, 1, t).reshape(1, t), err_msg=f"{n}")
    for clip_len, interval, clips in ((4, 2, 1), (4, 2, 3), (8, 8, 10), (2, 1, 5)):
      np.testing.assert_array_equal(
          sampling.dense_test_indices(n, clip_len, interval, clips).numpy(),
          ref_test_frame_inds(n, clip_len, interval, clips), err_msg=f"{n} {clip_len}")


def test_tsn_multi_clip_test_indices():
  """Clip k takes the frame at fraction (k + .5) / clips of each segment; 1 clip = centre."""
  for n in (2, 7, 30, 64):
    got = sampling.tsn_test_indices(n, 8, 3).numpy()
    avg = n / 8.0
    expected = (np.arange(8)[None] * avg + avg * (np.arange(3)[:, None] + 0.5) / 3).astype(int)
    np.testing.assert_array_equal(got, expected)
    assert got.min() >= 0 and got.max() < n


# ----------------------------------------------------------------------------
# Crop rules.


@pytest.mark.parametrize("h,w,crop,gap", [(256, 340, 224, 1), (340, 256, 224, 1),
                                          (256, 256, 224, 2), (128, 171, 112, 1),
                                          (20, 27, 16, 1), (300, 400, 224, 0)])
def test_multiscale_crop_boxes_match_mmaction2(h, w, crop, gap):
  ref = ref_multiscale_candidates(h, w, crop, SCALES, gap)
  sizes, offsets = sampling.multiscale_crop_boxes(h, w, crop, SCALES, gap)
  np.testing.assert_array_equal(sizes.numpy(), [size for size, _ in ref])
  np.testing.assert_array_equal(offsets.numpy(), [offs for _, offs in ref])
  assert offsets.shape[1] == 13


def test_sample_multiscale_crop_inside_frame_and_covers_all_boxes():
  h, w, crop = 256, 340, 224
  sizes, offsets = sampling.multiscale_crop_boxes(h, w, crop, SCALES, 1)
  allowed = {(int(x), int(y), int(cw), int(ch)) for k, (cw, ch) in enumerate(sizes.numpy())
             for x, y in offsets.numpy()[k]}
  sample = tf.function(lambda u: sampling.sample_multiscale_crop(h, w, crop, SCALES, 1, u))
  rng = np.random.default_rng(0)
  seen = set()
  for _ in range(2000):
    box = tuple(int(v) for v in sample(tf.constant(rng.random(2))))
    x, y, cw, ch = box
    assert 0 <= x and x + cw <= w and 0 <= y and y + ch <= h, box
    seen.add(box)
  assert seen <= allowed
  assert len(seen) >= 0.9 * len(allowed)  # every size/offset reachable (uniform draws)


def test_random_center_three_crop_and_resize():
  rng = np.random.default_rng(0)
  xs, ys = set(), set()
  for _ in range(300):
    x, y = (int(v) for v in sampling.random_crop_offset(20, 27, 16, rng.random(2)))
    xs.add(x)
    ys.add(y)
  assert xs == set(range(0, 12)) and ys == set(range(0, 5))
  assert tuple(int(v) for v in sampling.center_crop_offset(256, 340, 224)) == (58, 16)
  for h, w in ((256, 340), (340, 256), (256, 256)):
    short = min(h, w)
    np.testing.assert_array_equal(sampling.three_crop_offsets(h, w, short).numpy(),
                                  ref_three_crop(h, w, short))
  # Smaller crop than the short side: centred across, mmaction2 positions along.
  np.testing.assert_array_equal(sampling.three_crop_offsets(256, 340, 224).numpy(),
                                [(0, 16), (116, 16), (58, 16)])
  np.testing.assert_array_equal(sampling.three_crop_offsets(340, 256, 224).numpy(),
                                [(16, 0), (16, 116), (16, 58)])
  for h, w in ((240, 320), (320, 240), (100, 333), (257, 455), (24, 32)):
    got = tuple(int(v) for v in resize.short_side_size(h, w, 256))
    assert got == ref_short_side(h, w, 256), (h, w)


# ----------------------------------------------------------------------------
# A tiny TFRecord data set.


def _frame(video, frame, hw):
  img = np.zeros(hw + (3,), np.uint8)
  img[..., 0] = 10 * frame + 5
  img[..., 1] = 10 * video + 5
  img[..., 2] = 100
  return tf.io.encode_jpeg(img, quality=95).numpy()


def _video(video, truncate_frame=None):
  """ShardWriter.write's arguments for one toy video (a frame cut short: a corrupt one)."""
  n, labels, hw = VIDEOS[video]
  frames = [_frame(video, f, hw) for f in range(n)]
  if truncate_frame is not None:
    frames[truncate_frame] = frames[truncate_frame][:len(frames[truncate_frame]) // 2]
  return (f"vid{video}" if truncate_frame is None else "vid_bad", frames, labels,
          [f"c{l}" for l in labels], hw[0], hw[1])


def _write_split(root, split, groups, manifest, layout):
  os.makedirs(os.path.join(root, split), exist_ok=True)
  names = []
  for i, group in enumerate(groups):
    name = records.shard_name(split, i, len(groups))
    with records.ShardWriter(os.path.join(root, split, name), layout) as writer:
      for video in group:
        writer.write(*video)
    names.append(name)
  manifest["splits"][split] = {"num_videos": sum(len(g) for g in groups), "shards": names,
                               "skipped": [], "layout": layout}


def write_toy_dataset(root, layout):
  """The toy data set in `layout` (the same videos and shards in either)."""
  manifest = {"dataset": "toy", "classes": [f"c{k}" for k in range(NUM_CLASSES)],
              "multi_label": True, "splits": {}}
  vids = {v: _video(v) for v in VIDEOS}
  _write_split(root, "train", [[vids[v] for v in VIDEOS if v % 4 == s] for s in range(4)],
               manifest, layout)
  _write_split(root, "val", [[vids[v] for v in VIDEOS if v % 3 == s] for s in range(3)],
               manifest, layout)
  _write_split(root, "one", [[vids[v] for v in VIDEOS]], manifest, layout)
  _write_split(root, "bad", [[vids[0], _video(2, truncate_frame=5)]], manifest, layout)
  # Shards given relative to data_dir; manifest count lower than what the shard holds.
  manifest["splits"]["undercount"] = {"num_videos": 8, "shards": ["one/" + records.shard_name(
      "one", 0, 1)], "skipped": [], "layout": layout}
  if layout == records.LAYOUT_SEQUENCE:  # as written before the "frames" layout: no key
    for entry in manifest["splits"].values():
      del entry["layout"]
  with open(os.path.join(root, records.MANIFEST), "w") as f:
    json.dump(manifest, f)
  return root


# Every end-to-end test runs on both stored layouts.
@pytest.fixture(scope="module", params=[records.LAYOUT_FRAMES, records.LAYOUT_SEQUENCE])
def data_dir(request, tmp_path_factory):
  return write_toy_dataset(str(tmp_path_factory.mktemp(f"toy-{request.param}")), request.param)


def _cfg(data_dir, **overrides) -> ml_collections.ConfigDict:
  cfg = default.get_data_config()
  cfg.data_dir = data_dir
  cfg.num_frames = 4
  cfg.clip_len = 3
  cfg.frame_interval = 2
  cfg.short_side = 20
  cfg.crop_size = 16
  cfg.shuffle_buffer = 16
  cfg.update(overrides)
  return cfg


def _decode_codes(video):
  """[..., T, S, S, 3] uint8 -> (frame index [..., T], video index [..., T]) from the colours."""
  mean = video.reshape(video.shape[:-3] + (-1, 3)).astype(np.float64).mean(axis=-2)
  flat_spread = np.ptp(video.reshape(video.shape[:-3] + (-1, 3)).astype(int), axis=-2).max()
  assert flat_spread <= 2  # frames stay flat: crops/resizes never mix in other content
  return np.rint((mean[..., 0] - 5) / 10).astype(int), np.rint((mean[..., 1] - 5) / 10).astype(int)


def _take(ds, num_batches):
  return list(ds.take(num_batches).as_numpy_iterator())


def _train(data_dir, split="train", batch_size=4, seed=0, start_step=0, **overrides):
  return ip.create_dataset(_cfg(data_dir, **overrides), split, train=True,
                           batch_size=batch_size, num_classes=NUM_CLASSES, seed=seed,
                           process_index=0, process_count=1, start_step=start_step)


def _multihot(labels):
  out = np.zeros(NUM_CLASSES, np.float32)
  out[labels] = 1
  return out


def _tsn_train_possible(n, t):
  """Per segment, the frames mmaction2 can sample."""
  avg = n // t
  if avg > 0:
    return [set(range(i * avg, (i + 1) * avg)) for i in range(t)]
  return [{int(v) % n} for v in np.around(np.arange(t) * n / t)]


# ----------------------------------------------------------------------------
# End to end.


def test_dataset_info_and_errors(data_dir, tmp_path):
  info = ip.dataset_info(data_dir)
  assert info == ip.DatasetInfo(NUM_CLASSES, tuple(f"c{k}" for k in range(NUM_CLASSES)), True,
                                {"train": 10, "val": 10, "one": 10, "bad": 2, "undercount": 8})
  with pytest.raises(FileNotFoundError, match="data_prep"):
    ip.dataset_info(str(tmp_path))
  with pytest.raises(ValueError, match="'nope'.*available splits"):
    ip.create_dataset(_cfg(data_dir), "nope", train=False, batch_size=2,
                      num_classes=NUM_CLASSES, process_index=0, process_count=1)
  with pytest.raises(ValueError, match="sampling"):
    ip.create_dataset(_cfg(data_dir, sampling="tsm"), "val", train=False, batch_size=2,
                      num_classes=NUM_CLASSES)
  manifest = records.read_manifest(data_dir)
  manifest["splits"]["val"]["layout"] = "columns"  # a layout this version does not know
  manifest["splits"]["val"]["shards"] = [os.path.join(data_dir, "val", name) for name in
                                         manifest["splits"]["val"]["shards"]]
  os.makedirs(tmp_path / "newer", exist_ok=True)
  with open(tmp_path / "newer" / records.MANIFEST, "w") as f:
    json.dump(manifest, f)
  with pytest.raises(ValueError, match="unknown data layout 'columns'"):
    ip.create_dataset(_cfg(str(tmp_path / "newer")), "val", train=False, batch_size=2,
                      num_classes=NUM_CLASSES, process_index=0, process_count=1)


def test_train_tsn_multiscale_end_to_end(data_dir):
  batches = _take(_train(data_dir), 15)  # 60 draws of 10 videos
  drawn = {v: set() for v in VIDEOS}
  for batch in batches:
    chex.assert_shape(batch["video"], (4, 4, 16, 16, 3))
    chex.assert_type(batch["video"], np.uint8)
    chex.assert_shape(batch["label"], (4,))
    chex.assert_type(batch["label"], np.int32)
    chex.assert_shape(batch["multilabel"], (4, NUM_CLASSES))
    chex.assert_type(batch["multilabel"], np.float32)
    frames, videos = _decode_codes(batch["video"])
    for b in range(4):
      video = videos[b, 0]
      assert (videos[b] == video).all()
      n, labels, _ = VIDEOS[video]
      assert batch["label"][b] in labels
      drawn[video].add(int(batch["label"][b]))
      np.testing.assert_array_equal(batch["multilabel"][b], _multihot(labels))
      for t, possible in enumerate(_tsn_train_possible(n, 4)):
        assert frames[b, t] in possible, (video, frames[b])
  assert all(drawn.values())  # every video sampled
  assert drawn[3] == {3, 10} and drawn[6] == {6, 11}  # multi-label: random label of the set


def test_train_deterministic_per_seed(data_dir):
  a = _take(_train(data_dir, seed=3), 3)
  b = _take(_train(data_dir, seed=3), 3)
  c = _take(_train(data_dir, seed=4), 3)
  d = _take(_train(data_dir, seed=3, start_step=100), 3)  # 40 epochs later: another order
  for x, y in zip(a, b):
    chex.assert_trees_all_equal(x, y)
  assert any(not np.array_equal(x["video"], z["video"]) for x, z in zip(a, c))
  assert any(not np.array_equal(x["video"], z["video"]) for x, z in zip(a, d))


def test_train_dense_random_crop_and_cache(data_dir):
  batches = _take(_train(data_dir, sampling="dense", multiscale_crop=False, cache=True), 6)
  for batch in batches:
    chex.assert_shape(batch["video"], (4, 3, 16, 16, 3))  # T = clip_len
    frames, videos = _decode_codes(batch["video"])
    for b in range(4):
      n = VIDEOS[videos[b, 0]][0]
      start = frames[b, 0]
      np.testing.assert_array_equal(frames[b], (start + 2 * np.arange(3)) % n)
      assert start <= max(n - 6, 0)  # random start in [0, n - clip_len * interval]


def test_parallel_reads_give_the_same_batches(data_dir):
  """Shards read by background threads or in-thread: the same deterministic stream."""
  for train in (True, False):
    make = _train if train else _eval
    in_thread = _take(make(data_dir, parallel_reads=False), 3)
    parallel = _take(make(data_dir, parallel_reads=True), 3)
    chex.assert_trees_all_equal(in_thread, parallel)
  assert not ip._parallel_reads(_cfg(data_dir), ["/data/a.tfrecord"])
  assert ip._parallel_reads(_cfg(data_dir), ["gs://bucket/a.tfrecord"])
  assert ip._parallel_reads(_cfg(data_dir, parallel_reads=True), ["/data/a.tfrecord"])


def _eval(data_dir, split="val", batch_size=4, index=0, count=1, **overrides):
  return ip.create_dataset(_cfg(data_dir, **overrides), split, train=False,
                           batch_size=batch_size, num_classes=NUM_CLASSES,
                           process_index=index, process_count=count)


def test_eval_views_padding_and_mask(data_dir):
  ds = _eval(data_dir, test_num_clips=2, test_num_crops=3)
  batches = list(ds.as_numpy_iterator())
  assert len(batches) == 3 == len(ds)  # 10 videos, batch 4: last batch padded
  seen = []
  for batch in batches:
    chex.assert_shape(batch["video"], (4, 6, 4, 16, 16, 3))
    chex.assert_type(batch["video"], np.uint8)
    chex.assert_shape(batch["mask"], (4,))
    chex.assert_type(batch["mask"], np.float32)
    frames, videos = _decode_codes(batch["video"])
    for b in range(4):
      if batch["mask"][b] == 0:
        assert not batch["video"][b].any() and not batch["multilabel"][b].any()
        continue
      video = videos[b, 0, 0]
      seen.append(video)
      n, labels, _ = VIDEOS[video]
      assert (videos[b] == video).all()
      assert batch["label"][b] == labels[0]
      np.testing.assert_array_equal(batch["multilabel"][b], _multihot(labels))
      clips = sampling.tsn_test_indices(n, 4, 2).numpy()
      for v in range(6):  # view = crop * clips + clip
        np.testing.assert_array_equal(frames[b, v], clips[v % 2])
  assert sorted(seen) == sorted(VIDEOS)
  np.testing.assert_array_equal(batches[-1]["mask"], [1, 1, 0, 0])
  # Deterministic order, and caching changes nothing.
  again = list(_eval(data_dir, test_num_clips=2, test_num_crops=3, cache=True)
               .as_numpy_iterator())
  for x, y in zip(batches, again):
    chex.assert_trees_all_equal(x, y)


def test_eval_centre_frames_single_view(data_dir):
  batches = list(_eval(data_dir, split="one", batch_size=5).as_numpy_iterator())
  assert len(batches) == 2 and all(b["mask"].all() for b in batches)
  for batch in batches:
    chex.assert_shape(batch["video"], (5, 1, 4, 16, 16, 3))
    frames, videos = _decode_codes(batch["video"])
    for b in range(5):
      n = VIDEOS[videos[b, 0, 0]][0]
      np.testing.assert_array_equal(frames[b, 0], ref_test_frame_inds(n, 1, 1, 4).reshape(-1))


@pytest.mark.parametrize("split", ["train", "one"])  # by file (4 shards) / by example (1 shard)
def test_train_host_sharding_partitions_videos(data_dir, split):
  per_host = []
  for index in range(2):
    ds = ip.create_dataset(_cfg(data_dir), split, train=True, batch_size=4,
                           num_classes=NUM_CLASSES, seed=0, process_index=index, process_count=2)
    videos = set()
    for batch in _take(ds, 6):
      videos.update(_decode_codes(batch["video"])[1][:, 0].tolist())
    per_host.append(videos)
  assert not per_host[0] & per_host[1]
  assert per_host[0] | per_host[1] == set(VIDEOS)


@pytest.mark.parametrize("count,batch_size", [(2, 2), (3, 4)])
def test_eval_host_sharding_sees_every_video_once(data_dir, count, batch_size):
  seen, lengths = [], []
  for index in range(count):
    batches = list(_eval(data_dir, batch_size=batch_size, index=index, count=count)
                   .as_numpy_iterator())
    lengths.append(len(batches))
    for batch in batches:
      videos = _decode_codes(batch["video"])[1][:, 0, 0]
      seen.extend(videos[batch["mask"] == 1].tolist())
      np.testing.assert_array_equal(batch["label"][batch["mask"] == 1],
                                    [VIDEOS[v][1][0] for v in videos[batch["mask"] == 1]])
  assert sorted(seen) == sorted(VIDEOS)
  assert len(set(lengths)) == 1  # same number of eval steps on every host


def test_bad_data_gives_clear_errors(data_dir):
  ds = _eval(data_dir, split="bad", batch_size=2, num_frames=8)
  with pytest.raises(tf.errors.InvalidArgumentError, match=r"(?s)corrupt JPEG.*split bad.*vid_bad"):
    list(ds.as_numpy_iterator())
  ds = ip.create_dataset(_cfg(data_dir), "val", train=False, batch_size=2, num_classes=5,
                         process_index=0, process_count=1)  # labels go up to 11
  with pytest.raises(tf.errors.InvalidArgumentError, match=r"(?s)bad labels in split val.*vid"):
    list(ds.as_numpy_iterator())
  with pytest.raises(tf.errors.InvalidArgumentError, match="more videos than its manifest"):
    list(_eval(data_dir, split="undercount").as_numpy_iterator())


# ----------------------------------------------------------------------------
# On-device helpers.


def test_normalize():
  video = np.random.default_rng(0).integers(0, 256, (2, 3, 4, 4, 3), dtype=np.uint8)
  mean, std = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)
  out = jax.jit(augment.normalize, static_argnums=(1, 2))(video, mean, std)
  chex.assert_type(out, jnp.float32)
  np.testing.assert_allclose(out, (video.astype(np.float64) - mean) / std, rtol=1e-5, atol=1e-5)


def test_random_flip_per_video():
  video = np.random.default_rng(0).integers(0, 256, (64, 3, 4, 5, 3), dtype=np.uint8)
  flip = jax.jit(augment.random_flip)
  out = np.asarray(flip(jax.random.key(0), video))
  flipped = []
  for b in range(64):
    if np.array_equal(out[b], video[b]):
      flipped.append(False)
    else:  # every frame of the video flipped together
      np.testing.assert_array_equal(out[b], video[b][:, :, ::-1])
      flipped.append(True)
  assert 16 <= sum(flipped) <= 48
  np.testing.assert_array_equal(out, flip(jax.random.key(0), video))
  assert not np.array_equal(out, flip(jax.random.key(1), video))


def test_prefetch_to_mesh_shards_over_data_axis(data_dir):
  mesh = jax.make_mesh((8,), ("data",))
  local = [{"video": np.arange(16 * 6, dtype=np.uint8).reshape(16, 2, 3) + i,
            "label": np.arange(16, dtype=np.int32) + i} for i in range(3)]
  out = list(transfer.prefetch_to_mesh(iter(local), mesh, size=2))
  assert len(out) == 3
  expected_sharding = NamedSharding(mesh, PartitionSpec("data"))
  for got, want in zip(out, local):
    for key in want:
      assert got[key].sharding.is_equivalent_to(expected_sharding, got[key].ndim)
      assert len(got[key].addressable_shards) == 8
      assert got[key].addressable_shards[0].data.shape[0] == 2
      np.testing.assert_array_equal(got[key], want[key])
  # Straight from a tf.data pipeline.
  ds = _eval(data_dir, batch_size=8)
  batches = list(transfer.prefetch_to_mesh(ds, mesh))
  assert len(batches) == 2
  assert batches[0]["video"].shape == (8, 1, 4, 16, 16, 3)
  assert batches[0]["video"].sharding.is_equivalent_to(expected_sharding, 6)
  assert float(jnp.sum(batches[1]["mask"])) == 2.0


def test_resumed_stream_equals_uninterrupted_stream(data_dir):
  """start_step=k continues exactly where an uninterrupted stream is after k batches."""
  full = _take(_train(data_dir, seed=3), 8)  # 32 videos: crosses three epoch ends (10 videos)
  for start in (1, 3, 5):
    resumed = _take(_train(data_dir, seed=3, start_step=start), 8 - start)
    for want, got in zip(full[start:], resumed):
      np.testing.assert_array_equal(got["video"], want["video"])
      np.testing.assert_array_equal(got["label"], want["label"])
  # Consecutive epochs are ordered differently.
  ids = np.concatenate([_decode_codes(b["video"])[1][:, 0] for b in full])
  assert sorted(ids[:10]) == list(range(10)) and sorted(ids[10:20]) == list(range(10))
  assert not np.array_equal(ids[:10], ids[10:20])


# ----------------------------------------------------------------------------
# The "frames" layout against the "sequence_example" one (the same videos).


@pytest.fixture(scope="module")
def both_layouts(tmp_path_factory):
  return {layout: write_toy_dataset(str(tmp_path_factory.mktemp(f"both-{layout}")), layout)
          for layout in (records.LAYOUT_SEQUENCE, records.LAYOUT_FRAMES)}


@pytest.mark.parametrize("overrides", [
    {},  # TSN, MultiScaleCrop
    {"sampling": "dense", "multiscale_crop": False, "shuffle_buffer": 1},
    {"cache": True, "seed": 5},
])
def test_frames_layout_gives_the_same_training_batches(both_layouts, overrides):
  """The same frame draws give the same batches, on one host and on each of two."""
  overrides = dict(overrides)
  seed = overrides.pop("seed", 0)
  old, new = both_layouts[records.LAYOUT_SEQUENCE], both_layouts[records.LAYOUT_FRAMES]
  for start_step in (0, 3):
    chex.assert_trees_all_equal(
        _take(_train(old, seed=seed, start_step=start_step, **overrides), 4),
        _take(_train(new, seed=seed, start_step=start_step, **overrides), 4))
  for split in ("train", "one"):  # hosts get whole shards / every other video
    per_host = []
    for index in range(2):
      def make(data_dir):
        return ip.create_dataset(_cfg(data_dir, **overrides), split, train=True, batch_size=2,
                                 num_classes=NUM_CLASSES, seed=seed, process_index=index,
                                 process_count=2)
      got = _take(make(new), 5)
      chex.assert_trees_all_equal(_take(make(old), 5), got)
      per_host.append({int(v) for b in got for v in _decode_codes(b["video"])[1][:, 0]})
    assert not per_host[0] & per_host[1]  # each video read by one process
    assert per_host[0] | per_host[1] == set(VIDEOS)


@pytest.mark.parametrize("overrides", [
    {},
    {"test_num_clips": 3, "test_num_crops": 3, "crop_size": 20},  # every view: 3 clips x 3 crops
    {"sampling": "dense", "test_num_clips": 40},  # > 32 sampled frames: the unique/loop path
])
def test_frames_layout_gives_the_same_eval_views(both_layouts, overrides):
  old, new = both_layouts[records.LAYOUT_SEQUENCE], both_layouts[records.LAYOUT_FRAMES]
  for index, count in ((0, 1), (0, 2), (1, 2)):
    want = list(_eval(old, index=index, count=count, **overrides).as_numpy_iterator())
    got = list(_eval(new, index=index, count=count, **overrides).as_numpy_iterator())
    assert len(got) == len(want)
    chex.assert_trees_all_equal(want, got)


def test_frames_layout_reads_only_the_sampled_frames(tmp_path):
  """Damage a frame that one-frame TSN sampling never picks: training reads on unaware;
  evaluation with every frame sampled stops with a line naming the file and the video."""
  root = write_toy_dataset(str(tmp_path), records.LAYOUT_FRAMES)
  shard = os.path.join(root, "one", records.shard_name("one", 0, 1))
  first = next(records.iter_videos(shard, records.LAYOUT_FRAMES))
  assert first["video_id"] == "vid0" and first["num_frames"] == VIDEOS[0][0]
  offsets = [0]
  for f in first["frames"]:
    offsets.append(offsets[-1] + len(f))
  frames_file = records.frames_path(shard)
  with open(frames_file, "r+b") as f:  # the middle of frame 0: same size, other bytes
    f.seek((offsets[0] + offsets[1]) // 2)
    f.write(b"\x00\x01\x02\x03")
  # n frames, 1 segment at test time: the centre frame n // 2 only.
  batches = list(_eval(root, split="one", num_frames=1).as_numpy_iterator())
  assert sum(int(b["mask"].sum()) for b in batches) == len(VIDEOS)
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match=r"(?s)damaged frames file in split one.*one-00000-of-00001\.frames"
                           r".*vid0.*CRC-32.*\[0\]"):
    list(_eval(root, split="one", num_frames=VIDEOS[0][0]).as_numpy_iterator())


def test_frames_layout_missing_or_cut_frames_file(tmp_path):
  """A .frames file gone or cut short is named before anything is read."""
  root = write_toy_dataset(str(tmp_path), records.LAYOUT_FRAMES)
  manifest = records.read_manifest(root)
  frames_file = records.frames_path(os.path.join(root, "one", records.shard_name("one", 0, 1)))
  manifest["splits"]["one"]["frames_bytes"] = [os.path.getsize(frames_file)]
  with open(os.path.join(root, records.MANIFEST), "w") as f:
    json.dump(manifest, f)
  with open(frames_file, "r+b") as f:
    f.truncate(os.path.getsize(frames_file) - 10)
  with pytest.raises(DataError, match=r"damaged shard .*one-00000-of-00001\.frames"):
    _eval(root, split="one")
  os.remove(frames_file)
  with pytest.raises(FileNotFoundError, match=r"one-00000-of-00001\.frames.*re-run data_prep"):
    _eval(root, split="one")


def test_frame_reads_do_not_leak_file_descriptors(tmp_path):
  """tf.data calls the frames reader from threads of its own, each call with a new Python
  thread state: a per-thread handle cache opened a descriptor per video and never closed
  it, and the demo's teacher died (SIGSEGV/SIGABRT) at 20,000 open files."""
  import zlib
  frames = [bytes([k]) * (10 + k) for k in range(3)]
  path = tmp_path / "clip.frames"
  path.write_bytes(b"".join(frames))
  offsets = tf.constant(np.cumsum([0] + [len(f) for f in frames]), tf.int64)
  crcs = tf.constant([zlib.crc32(f) for f in frames], tf.int64)

  def read(_):
    example = {"frames_file": tf.constant(str(path)), "frame_offsets": offsets,
               "frame_crc32": crcs}
    return records.read_frames(example, tf.constant([0, 2], tf.int32))

  before = len(os.listdir("/proc/self/fd"))
  for strings, ok in tf.data.Dataset.range(400).map(read, num_parallel_calls=2):
    assert ok.numpy().all() and list(strings.numpy()) == [frames[0], frames[2]]
  assert len(os.listdir("/proc/self/fd")) - before < 20
