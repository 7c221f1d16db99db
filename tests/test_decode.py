"""Tests of the input pipeline's JPEG decoding: crop windows and reduced-scale decoding.

Frames here are textured (smooth colours plus noise, JPEG with 4:2:0 chroma)
so that chroma upsampling and DCT scaling really act; crop-aware decoding
must give the very bytes of a full decode followed by a crop.
"""

import json
import os

import chex
import numpy as np
import pytest
import tensorflow as tf

from configs import default
from reskd_jax.data import decode, pipeline as ip, records

NUM_CLASSES = 3


def _textured(rng, h, w):
  y, x = np.mgrid[:h, :w]
  img = np.stack([x * 3.0, y * 4.0, (x + y) * 2.0], -1) + rng.normal(0, 25, (h, w, 3))
  return np.clip(img, 0, 255).astype(np.uint8)


def _jpeg(img):
  return tf.io.encode_jpeg(img, quality=90, chroma_downsampling=True).numpy()


def _full_then_crop(strings, ratio, box):
  x, y, w, h = box
  return np.stack([tf.io.decode_jpeg(s, channels=3, ratio=ratio,
                                     dct_method="INTEGER_ACCURATE").numpy()[y:y + h, x:x + w]
                   for s in strings])


@pytest.mark.parametrize("hw", [(48, 80), (80, 48), (45, 67)])
@pytest.mark.parametrize("ratio", [1, 2, 4])
def test_crop_window_equals_full_decode_then_crop(hw, ratio):
  rng = np.random.default_rng(hw[0] * 10 + ratio)
  strings = tf.constant([_jpeg(_textured(rng, *hw)) for _ in range(2)])
  h, w = -(-hw[0] // ratio), -(-hw[1] // ratio)
  boxes = [(0, 0, w, h), (0, 0, 1, 1), (w - 1, h - 1, 1, 1), (min(16, w - 1), 0, 1, h)]
  for _ in range(12):
    bx, by = int(rng.integers(0, w)), int(rng.integers(0, h))
    boxes.append((bx, by, int(rng.integers(1, w - bx + 1)), int(rng.integers(1, h - by + 1))))
  for box in boxes:
    # Short side equal to the stored one: the crop-window path.
    crop, = decode._decode_crops(strings, ratio=ratio, short_side=min(h, w),
                             boxes_fn=lambda *_: [tuple(tf.constant(v) for v in box)])
    np.testing.assert_array_equal(crop.numpy(), _full_then_crop(strings, ratio, box),
                                  err_msg=f"box {box}, ratio {ratio}")


def _write_data(root, hw=(40, 72), num_videos=4, num_frames=6):
  rng = np.random.default_rng(0)
  os.makedirs(os.path.join(root, "train"))
  name = records.shard_name("train", 0, 1)
  with tf.io.TFRecordWriter(os.path.join(root, "train", name)) as writer:
    for v in range(num_videos):
      frames = [_jpeg(_textured(rng, *hw)) for _ in range(num_frames)]
      writer.write(records.make_sequence_example(f"v{v}", frames, [v % NUM_CLASSES], ["c"],
                                                 *hw))
  manifest = {"dataset": "t", "classes": [f"c{k}" for k in range(NUM_CLASSES)],
              "multi_label": False,
              "splits": {"train": {"num_videos": num_videos, "shards": [name], "skipped": []}}}
  with open(os.path.join(root, records.MANIFEST), "w") as f:
    json.dump(manifest, f)
  return root


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return _write_data(str(tmp_path_factory.mktemp("textured")))


def _cfg(data_dir, **overrides):
  cfg = default.get_data_config()
  cfg.data_dir = data_dir
  cfg.num_frames = 3
  cfg.short_side = 40  # the stored short side: crop windows are decoded
  cfg.crop_size = 32
  cfg.shuffle_buffer = 4
  cfg.update(overrides)
  return cfg


def _batches(cfg, train, num_batches=2):
  ds = ip.create_dataset(cfg, "train", train=train, batch_size=2, num_classes=NUM_CLASSES,
                         seed=3, process_index=0, process_count=1)
  return list(ds.take(num_batches).as_numpy_iterator())


def _decode_whole_then_crop(string, ratio, window=None):
  """`decode._decode` as it was: the whole frame decoded, the window cut out afterwards."""
  image = tf.io.decode_jpeg(string, channels=3, ratio=ratio, dct_method="INTEGER_ACCURATE")
  if window is None:
    return image
  return image[window[0]:window[0] + window[2], window[1]:window[1] + window[3]]


@pytest.mark.parametrize("max_unrolled", [decode._MAX_UNROLLED, 0])  # 0: frames in a tf.map_fn
@pytest.mark.parametrize("train,overrides", [
    (True, {}),
    (True, {"multiscale_crop": False}),
    (False, {"test_num_clips": 2}),
    (False, {"test_num_crops": 3, "crop_size": 40}),
])
def test_pipeline_output_unchanged_by_crop_aware_decoding(data_dir, monkeypatch, train,
                                                          overrides, max_unrolled):
  cfg = _cfg(data_dir, **overrides)
  monkeypatch.setattr(decode, "_MAX_UNROLLED", max_unrolled)
  crop_aware = _batches(cfg, train)
  monkeypatch.setattr(decode, "_decode", _decode_whole_then_crop)
  whole = _batches(cfg, train)
  chex.assert_trees_all_equal(crop_aware, whole)


def test_unrolled_and_looped_decoding_agree(data_dir, monkeypatch):
  """Frames decoded one by one (unrolled) or distinct frames in a loop: the same batches,
  also when a video has fewer frames than the clip (repeated frames)."""
  for overrides in ({}, {"num_frames": 9}, {"test_num_clips": 3}):
    for train in (True, False):
      cfg = _cfg(data_dir, **overrides)
      unrolled = _batches(cfg, train)
      monkeypatch.setattr(decode, "_MAX_UNROLLED", 0)
      looped = _batches(cfg, train)
      monkeypatch.undo()
      chex.assert_trees_all_equal(unrolled, looped)


def test_resize_equals_uint8_kernel():
  images = tf.constant(np.random.default_rng(0).integers(0, 256, (2, 21, 30, 3), np.uint8))
  expected = tf.cast(tf.clip_by_value(tf.round(tf.image.resize(
      images, [32, 17], method="bilinear", antialias=False)), 0, 255), tf.uint8)
  np.testing.assert_array_equal(decode._resize(images, 32, 17).numpy(), expected.numpy())


@pytest.mark.parametrize("train", [True, False])
def test_decode_scale_halves_the_output_and_stays_close_to_resizing(data_dir, train):
  cfg = _cfg(data_dir, decode_scale=2, multiscale_crop=False)
  half = _batches(cfg, train, num_batches=1)[0]["video"]
  if train:
    chex.assert_shape(half, (2, 3, 16, 16, 3))
    return
  chex.assert_shape(half, (2, 1, 3, 16, 16, 3))
  # Reference: full-size frames resized to short side 20 (area average, what DCT
  # scaling approximates), then the same centre crop of 16.
  full = _batches(_cfg(data_dir, short_side=40, crop_size=40), train, num_batches=1)[0]
  frames = full["video"].reshape((-1, 40, 40, 3))  # the whole 40 x 72 frame's centre 40 x 40
  reference = tf.image.resize(frames, [20, 20], method="area").numpy()[:, 2:18, 2:18]
  diff = np.abs(half.reshape(reference.shape).astype(np.float64) - reference).mean()
  # A crop one pixel off, or full-size content, is much further away.
  shifted = np.abs(half.reshape(reference.shape).astype(np.float64) -
                   tf.image.resize(frames, [20, 20], method="area").numpy()[:, 1:17, 1:17]).mean()
  print(f"mean |scaled decode - area resize| = {diff:.2f}, one pixel off: {shifted:.2f}")
  assert diff < 6.0 and diff < shifted / 2, (diff, shifted)


def test_decode_scale_config_errors(data_dir):
  for overrides in ({"decode_scale": 3}, {"decode_scale": 4, "crop_size": 30, "short_side": 40}):
    with pytest.raises(ValueError, match="decode_scale"):
      ip.create_dataset(_cfg(data_dir, **overrides), "train", train=True, batch_size=2,
                        num_classes=NUM_CLASSES, process_index=0, process_count=1)
