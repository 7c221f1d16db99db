"""tf.data input pipeline: converted shards (see `records`) -> uint8 video batches.

What runs where
---------------
* tf.data (host CPU): read shards (per host), TSN / dense frame sampling
  and reading of the sampled frames only (data sets in the "frames" layout of
  `records`: a video's small record, then its sampled JPEGs from the shard's
  `.frames` file, so the cost of an example does not grow with the length of
  its video; the older "sequence_example" layout is still read, whole),
  shuffle, JPEG decoding of the sampled frames only, short-side resize,
  MultiScaleCrop / centre / three crops, resize to crop_size, labels. Output is
  uint8. In training the frames are sampled as soon as a record is read, before
  the shuffle: the shuffle buffer holds the JPEGs of each clip (8 of a video's
  64 frames, say), not whole videos, and the record is parsed while it is
  still in the CPU cache. The crop boxes are drawn before decoding (the frame
  size comes from the JPEG header), so frames stored at the short side are
  decoded only over the window the crops span (`tf.image.decode_and_crop_jpeg`),
  with the very pixels a full decode would give; each frame is decoded, cropped
  and resized in turn (an unrolled graph, no loop), while it is in the cache.
  `data.decode_scale` = 2 or 4 decodes at 1/2 or 1/4 size (JPEG's DCT scaling)
  and shrinks short side and crop alike: the cheap input of runs that only
  need low resolution. `bench/input_pipeline.py` measures all of this.
* Accelerator (the trainer, with `reskd_jax.augment.normalize` and `random_flip`):
  horizontal flip (dm-pix) and mean/std normalisation. Sending uint8 moves 4x
  fewer bytes host->device than float32, and these per-pixel photometric ops
  are nearly free on the accelerator while they would cost host CPU, which is
  the scarce resource of a video pipeline (JPEG decoding dominates it).

Batches
-------
Train (`train=True`): infinite, shuffled, `drop_remainder`:
  {"video": uint8 [B, T, S, S, 3], "label": int32 [B], "multilabel": float32 [B, K]}
Eval (`train=False`): one pass, deterministic order, last batch padded:
  {"video": uint8 [B, V, T, S, S, 3], "label": int32 [B] (first label),
   "multilabel": float32 [B, K], "mask": float32 [B] (1 real, 0 padding)}
with B = per-host batch size, T = num_frames (TSN) or clip_len (dense),
S = crop_size // decode_scale, V = test_num_clips * test_num_crops (view v = crop * clips + clip,
mmaction2's order), K = num_classes.

Multi-host: training shards files over hosts (by example when a split has
fewer files than hosts). Evaluation always shards by example over hosts and pads
every host to the same number of batches (ceil(ceil(N / hosts) / B), N from
the manifest), so all hosts run the same number of eval steps and every video
is seen exactly once overall.

Randomness is stateless: with base = hash(seed, h) + e * 1000003 for epoch e
on host h, the frames of the video at position j of the epoch's read order
are drawn with the seed (base, j) (before the shuffle), its crop and label at
position k of the shuffled epoch with (base, k), and epoch e's file order and
shuffle are seeded by e, so a pipeline is reproducible for a given seed while
staying parallel, and a resumed run continues the exact stream (`start_step`).
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import logging
import math
import os
from typing import Any, Dict, Iterable, Iterator, Optional

import jax
import numpy as np
import tensorflow as tf
from jax.sharding import NamedSharding, PartitionSpec

from reskd_jax import records
from reskd_jax import sampling
from reskd_jax import shard_check
from reskd_jax.errors import ConfigError

AUTOTUNE = tf.data.AUTOTUNE
_MAX_CYCLE_LENGTH = 16  # shards interleaved per host
# TFRecordDataset's read buffer: none. A video record is megabytes, so a buffer only adds
# a copy, and interleaved shards' buffers of megabytes evict each other from the caches.
_READ_BUFFER_BYTES = 0
_EOI_WINDOW = 32  # a JPEG's end-of-image marker must lie in its last bytes
# Pixels decoded around a crop window: libjpeg's chroma upsampling at a
# window's edge needs the neighbouring column (1 suffices; 2 for safety).
_CROP_MARGIN = 2
# Sampled frames of one video decoded in an unrolled graph (more: a loop over distinct frames).
_MAX_UNROLLED = 32


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What the trainer needs to know about a converted data set."""
  num_classes: int
  class_names: tuple
  multi_label: bool
  num_videos: dict  # split -> int


def dataset_info(data_dir: str) -> DatasetInfo:
  """Reads `<data_dir>/manifest.json` (FileNotFoundError with how-to-prepare if absent)."""
  manifest = records.read_manifest(data_dir)
  classes = tuple(manifest.get("classes", ()))
  splits = manifest.get("splits", {})
  return DatasetInfo(
      num_classes=len(classes),
      class_names=classes,
      multi_label=bool(manifest.get("multi_label", False)),
      num_videos={name: int(s.get("num_videos", 0)) for name, s in splits.items()})


def frames_per_clip(data_cfg) -> int:
  """T of the output: num_frames for TSN sampling, clip_len for dense sampling."""
  return data_cfg.num_frames if data_cfg.sampling == "tsn" else data_cfg.clip_len


def decode_scale(data_cfg) -> int:
  """`data.decode_scale` (1 when the config predates it): JPEG decoding at 1/scale size."""
  return int(data_cfg.get("decode_scale", 1))


def output_size(data_cfg) -> int:
  """S of the output: crop_size, divided by the decode scale (112 for 224 at scale 2)."""
  return data_cfg.crop_size // decode_scale(data_cfg)


def num_views(data_cfg) -> int:
  """V of the eval output: test_num_clips * test_num_crops."""
  return data_cfg.test_num_clips * data_cfg.test_num_crops


def check_data_config(data) -> None:
  """ConfigError (a ValueError) for `config.data` values the pipeline cannot use; the one
  home of these checks (config_checks.check_config runs them at start-up)."""
  if data.sampling not in ("tsn", "dense"):
    raise ConfigError(f"config.data.sampling={data.sampling!r}: expected 'tsn' or 'dense'")
  if data.test_num_crops not in (1, 3):
    raise ConfigError(f"config.data.test_num_crops={data.test_num_crops}: expected 1 (centre) "
                      f"or 3 (ThreeCrop)")
  for key in ("num_frames", "clip_len", "frame_interval", "test_num_clips", "crop_size",
              "short_side", "shuffle_buffer"):
    if int(data[key]) < 1:
      raise ConfigError(f"config.data.{key}={data[key]}: must be at least 1")
  scale = decode_scale(data)
  if scale not in (1, 2, 4, 8):
    raise ConfigError(f"config.data.decode_scale={scale}: expected 1, 2, 4 or 8 (JPEG's DCT "
                      f"scaling)")
  if data.crop_size % scale or data.short_side % scale:
    raise ConfigError(f"config.data.crop_size={data.crop_size} and config.data.short_side="
                      f"{data.short_side} must be multiples of config.data.decode_scale={scale}")
  if data.short_side < data.crop_size:
    raise ConfigError(f"config.data.crop_size={data.crop_size} is larger than "
                      f"config.data.short_side={data.short_side}: crops are taken from frames "
                      f"resized to the short side; lower the crop or raise the short side")


def _split_files(data_dir: str, manifest: Dict[str, Any], split: str) -> list:
  """Absolute shard paths of `split`, checked to exist."""
  splits = manifest.get("splits", {})
  if split not in splits:
    raise ValueError(f"split {split!r} is not in {os.path.join(data_dir, records.MANIFEST)} "
                     f"(available splits: {sorted(splits)})")
  shards = splits[split].get("shards", [])
  if not shards:
    raise ValueError(f"split {split!r} of {data_dir!r} lists no shards in its manifest")
  files = []
  for name in shards:
    candidates = [os.path.join(data_dir, split, name), os.path.join(data_dir, name)]
    path = next((p for p in candidates if tf.io.gfile.exists(p)), None)
    if path is None:
      raise FileNotFoundError(f"shard {name!r} of split {split!r} not found (looked at "
                              f"{candidates}); re-run data_prep for {data_dir!r}")
    files.append(path)
  return files


def _hash_seed(*values: int) -> int:
  return int(np.random.SeedSequence([int(v) for v in values]).generate_state(1)[0])


# ----------------------------------------------------------------------------
# Per-video graph functions.


def _num_frames(example, split: str):
  """Frames actually stored, checked against the context `num_frames`."""
  n = records.stored_frames(example)
  check = tf.debugging.Assert(
      tf.logical_and(n >= 1, tf.equal(n, example["num_frames"])),
      [f"bad video in split {split}: no frames or num_frames mismatch; video_id:",
       example["video_id"], "stored frames:", n, "num_frames:", example["num_frames"]])
  with tf.control_dependencies([check]):
    return tf.identity(n)


def _check_labels(example, num_classes: int, split: str):
  labels = example["labels"]
  ok = tf.logical_and(tf.size(labels) >= 1,
                      tf.reduce_all(tf.logical_and(labels >= 0, labels < num_classes)))
  check = tf.debugging.Assert(
      ok, [f"bad labels in split {split} (need 1+ labels in [0, {num_classes})); video_id:",
           example["video_id"], "labels:", labels])
  with tf.control_dependencies([check]):
    return tf.identity(labels)


def _looks_like_jpeg(strings):
  """Start-of-image marker first and an end-of-image marker in the last bytes (truncation)."""
  length = tf.strings.length(strings)
  head = tf.io.decode_raw(tf.strings.substr(strings, tf.zeros_like(length), tf.fill(
      tf.shape(length), 2)), tf.uint8, fixed_length=2)
  # The last _EOI_WINDOW + 1 bytes (zero-padded when shorter) hold the pairs that may be EOI.
  tail_len = _EOI_WINDOW + 1
  tail = tf.io.decode_raw(tf.strings.substr(strings, tf.maximum(length - tail_len, 0),
                                            tf.fill(tf.shape(length), tail_len)),
                          tf.uint8, fixed_length=tail_len)
  soi = tf.logical_and(tf.equal(head[:, 0], 0xFF), tf.equal(head[:, 1], 0xD8))
  eoi = tf.reduce_any(tf.logical_and(tf.equal(tail[:, :-1], 0xFF), tf.equal(tail[:, 1:], 0xD9)),
                      axis=1)
  return tf.logical_and(tf.logical_and(soi, eoi), length >= 4)


def _jpegs(example, indices, split: str):
  """The JPEG strings of the sampled frames, checked for truncation, and how to reorder them.

  Only these frames are read: taken from the parsed record ("sequence_example"
  layout), or read from the shard's `.frames` file and checked against their
  CRC-32 ("frames" layout, `records.read_frames`).

  A few sampled positions (a static count up to `_MAX_UNROLLED`: training
  clips, single-clip tests) give one string per position and `inverse` None;
  their frames are decoded one by one in an unrolled graph. Many positions
  (multi-clip tests, where clips share frames) give each distinct frame once
  and `inverse` with indices == unique[inverse] (gather the decoded frames
  with it to restore the sampled order).
  """
  indices = tf.reshape(indices, [-1])
  count = indices.shape[0]
  if count is not None and count <= _MAX_UNROLLED:
    unique, inverse = indices, None
  else:
    unique, inverse = tf.unique(indices)
  checks = []
  if records.FRAMES_KEY in example:
    strings = tf.gather(example[records.FRAMES_KEY], unique)
  else:
    strings, intact = records.read_frames(example, unique)
    checks.append(tf.debugging.Assert(
        tf.reduce_all(intact),
        [f"damaged frames file in split {split} (rerun data_prep to rewrite it):",
         example["frames_file"], "video_id:", example["video_id"],
         "frames failing their CRC-32:", tf.boolean_mask(unique, tf.logical_not(intact))]))
  with tf.control_dependencies(checks):
    ok = _looks_like_jpeg(strings)
  checks.append(tf.debugging.Assert(
      tf.reduce_all(ok),
      [f"corrupt JPEG frame in split {split}; video_id:", example["video_id"],
       "frame indices:", tf.boolean_mask(unique, tf.logical_not(ok))]))
  with tf.control_dependencies(checks):
    return tf.identity(strings), inverse


def _decode(string, ratio: int, window=None):
  """uint8 [h, w, 3]: one JPEG decoded at 1/`ratio` scale, whole or only `window`.

  `window` is [y, x, height, width] in pixels of the scaled frame. libjpeg
  decodes only the rows and iMCU columns the window touches.
  """
  kwargs = dict(channels=3, ratio=ratio, dct_method="INTEGER_ACCURATE")
  if window is None:
    return tf.io.decode_jpeg(string, **kwargs)
  return tf.image.decode_and_crop_jpeg(string, window, **kwargs)


def _map_frames(fn, strings, num_outputs: int):
  """[fn(s) for s in strings], each of fn's `num_outputs` results stacked over the frames.

  A static number of strings up to `_MAX_UNROLLED` is unrolled: each frame
  goes through decode, crop and resize while it is still in the CPU cache,
  and no loop machinery runs (a `tf.map_fn` adds about 0.08 ms per frame on
  the development CPU, half a frame's resize to 224). Longer or dynamic lists
  run in a `tf.map_fn`.
  """
  count = strings.shape[0]
  if count is not None and count <= _MAX_UNROLLED:
    per_frame = [fn(strings[i]) for i in range(count)]
    return [tf.stack([outputs[k] for outputs in per_frame]) for k in range(num_outputs)]
  spec = [tf.TensorSpec([None, None, 3], tf.uint8)] * num_outputs
  return tf.map_fn(fn, strings, fn_output_signature=spec)


def _decoded_size(strings, ratio: int):
  """(h, w) of the first frame decoded at 1/`ratio` scale (libjpeg rounds up), from its header."""
  shape = tf.image.extract_jpeg_shape(strings[0])
  return -(-shape[0] // ratio), -(-shape[1] // ratio)


def _decode_crops(strings, *, ratio: int, short_side: int, boxes_fn, out_size=None):
  """Decodes frames, resizes them to `short_side` and returns the crops `boxes_fn` picks.

  `boxes_fn(h, w)` gives a list of (x, y, w, h) boxes in pixels of the
  short-side-resized frame (h, w); the result is a list with one uint8
  [frames, h, w, 3] tensor per box, each crop resized to `out_size` squared
  when that is given. When the stored frames already have the short side
  (data converted at the training short side), only the window spanning the
  boxes is decoded (`tf.image.decode_and_crop_jpeg`), widened by
  `_CROP_MARGIN` pixels so that chroma upsampling at its edges sees the same
  neighbours as a full decode: the crops equal full decode then crop, bit for
  bit. Otherwise the frames are decoded whole and resized first.
  """
  dec_h, dec_w = _decoded_size(strings, ratio)
  new_h, new_w = sampling.short_side_size(dec_h, dec_w, short_side)
  boxes = boxes_fn(new_h, new_w)
  stored_at_size = tf.logical_and(tf.equal(dec_h, new_h), tf.equal(dec_w, new_w))

  def decode(resize_crops: bool):
    def finish(crops):
      return [_bilinear(c, out_size, out_size) for c in crops] if resize_crops else crops

    def crop_window():
      x0 = tf.maximum(tf.reduce_min(tf.stack([b[0] for b in boxes])) - _CROP_MARGIN, 0)
      y0 = tf.maximum(tf.reduce_min(tf.stack([b[1] for b in boxes])) - _CROP_MARGIN, 0)
      x1 = tf.minimum(tf.reduce_max(tf.stack([b[0] + b[2] for b in boxes])) + _CROP_MARGIN,
                      dec_w)
      y1 = tf.minimum(tf.reduce_max(tf.stack([b[1] + b[3] for b in boxes])) + _CROP_MARGIN,
                      dec_h)
      window = tf.stack([y0, x0, y1 - y0, x1 - x0])

      def frame(string):
        image = _decode(string, ratio, window)
        return finish([_crop(image, x - x0, y - y0, w, h) for x, y, w, h in boxes])
      return _map_frames(frame, strings, len(boxes))

    def whole_frames():
      def frame(string):
        image = _bilinear(_decode(string, ratio), new_h, new_w)  # sizes differ here
        return finish([_crop(image, x, y, w, h) for x, y, w, h in boxes])
      return _map_frames(frame, strings, len(boxes))

    return tf.cond(stored_at_size, crop_window, whole_frames)

  if out_size is None:
    return decode(False)
  # Whether the crops need resizing is decided once per video, not per frame.
  same = tf.reduce_all(tf.stack([tf.logical_and(tf.equal(w, out_size), tf.equal(h, out_size))
                                 for _, _, w, h in boxes]))
  return tf.cond(same, lambda: decode(False), lambda: decode(True))


def _bilinear(images, height, width):
  """Bilinear (no antialias, like cv2 INTER_LINEAR) uint8 resize of [..., h, w, 3]."""
  # The kernel interpolates in float32 either way; it runs faster on float32 input.
  out = tf.image.resize(tf.cast(images, tf.float32), tf.stack([height, width]),
                        method="bilinear", antialias=False)
  # A convex combination of uint8 values: rounding alone keeps it in [0, 255].
  return tf.cast(tf.round(out), tf.uint8)


def _resize(images, height, width):
  """`_bilinear`, or nothing when the images already have that size."""
  shape = tf.shape(images)
  same = tf.logical_and(tf.equal(shape[-3], height), tf.equal(shape[-2], width))
  return tf.cond(same, lambda: images, lambda: _bilinear(images, height, width))


def _crop(images, x, y, w, h):
  """The (x, y, w, h) box of [..., H, W, C] images."""
  return images[..., y:y + h, x:x + w, :]


def _multihot(labels, num_classes: int):
  return tf.reduce_max(tf.one_hot(labels, num_classes, dtype=tf.float32), axis=0)


def _element_seeds(base, position):
  """Seeds (frames, crop, label) of stream position `position` of the epoch seeded `base`."""
  return tf.random.experimental.stateless_split(tf.stack([base, tf.cast(position, tf.int64)]), 3)


def _sample_frames(example, seed, *, data_cfg, num_classes: int, split: str):
  """One parsed video -> its sampled JPEGs {"frames": [K] strings, "labels", (+ "inverse")}.

  Runs before the shuffle, so that the shuffle buffer holds the few JPEGs a
  clip uses rather than whole videos (8 of 64 frames: 8x less memory, and
  the record is parsed while it is still in the CPU cache). `seed` is
  the seed of the frame draw. "inverse" (sampled position -> string) is
  present only when the clip has more than `_MAX_UNROLLED` frames (see `_jpegs`).
  """
  n = _num_frames(example, split)
  labels = _check_labels(example, num_classes, split)
  if data_cfg.sampling == "tsn":
    u = tf.random.stateless_uniform([data_cfg.num_frames], seed, dtype=tf.float64)
    indices = sampling.tsn_train_indices(n, data_cfg.num_frames, u)
  else:
    u = tf.random.stateless_uniform([1], seed, dtype=tf.float64)
    indices = sampling.dense_train_indices(n, data_cfg.clip_len, data_cfg.frame_interval, u)
  strings, inverse = _jpegs(example, indices, split)
  sampled = {"frames": strings, "labels": labels}
  if inverse is not None:
    sampled["inverse"] = inverse
  return sampled


def _train_example(sampled, seeds, *, data_cfg, num_classes: int):
  """`_sample_frames`' output -> {"video": uint8 [T, S, S, 3], "label", "multilabel"}.

  `seeds` are the element's seeds (`_element_seeds`); [1] draws the crop, [2] the label.
  """
  s = output_size(data_cfg)
  ratio = decode_scale(data_cfg)
  labels = sampled["labels"]
  u_crop = tf.random.stateless_uniform([2], seeds[1], dtype=tf.float64)

  def box(h, w):
    if data_cfg.multiscale_crop:
      return [sampling.sample_multiscale_crop(h, w, s, tuple(data_cfg.scales),
                                              data_cfg.max_wh_scale_gap, u_crop)]
    x, y = sampling.random_crop_offset(h, w, s, u_crop)
    return [(x, y, tf.constant(s), tf.constant(s))]

  video, = _decode_crops(sampled["frames"], ratio=ratio,
                         short_side=data_cfg.short_side // ratio, boxes_fn=box, out_size=s)
  if "inverse" in sampled:
    video = tf.gather(video, sampled["inverse"])
  u_label = tf.random.stateless_uniform([], seeds[2], dtype=tf.float64)
  label = labels[sampling.randint(u_label, tf.size(labels))]
  t = frames_per_clip(data_cfg)
  return {
      "video": tf.ensure_shape(video, [t, s, s, 3]),
      "label": tf.cast(label, tf.int32),
      "multilabel": tf.ensure_shape(_multihot(labels, num_classes), [num_classes]),
  }


def eval_indices(num_frames, data_cfg):
  """The test transform's frame indices of a video of `num_frames` frames: [clips, T]."""
  if data_cfg.sampling == "tsn":
    return sampling.tsn_test_indices(num_frames, data_cfg.num_frames, data_cfg.test_num_clips)
  return sampling.dense_test_indices(num_frames, data_cfg.clip_len, data_cfg.frame_interval,
                                     data_cfg.test_num_clips)


def _eval_boxes(data_cfg, s: int):
  """`boxes(h, w)`: the test crops (centre, or three) of side `s` in an (h, w) frame."""
  def boxes(h, w):
    if data_cfg.test_num_crops == 1:
      return [(*sampling.center_crop_offset(h, w, s), s, s)]
    offsets = sampling.three_crop_offsets(h, w, s)
    return [(offsets[c, 0], offsets[c, 1], s, s) for c in range(3)]
  return boxes


def _stack_views(crops, inverse, data_cfg, s: int):
  """Crops [U, s, s, 3] per box -> uint8 [V, T, s, s, 3] (view = crop * clips + clip).

  `inverse` maps the sampled positions to the U crops (None: one crop per position).
  """
  t = frames_per_clip(data_cfg)
  if inverse is not None:
    crops = [tf.gather(c, inverse) for c in crops]
  views = [tf.reshape(c, [data_cfg.test_num_clips, t, s, s, 3]) for c in crops]
  return tf.ensure_shape(tf.concat(views, axis=0), [num_views(data_cfg), t, s, s, 3])


def eval_views(images, inverse, data_cfg):
  """The test transform on decoded frames: uint8 [V, T, S, S, 3] (view = crop * clips + clip).

  `images` are the distinct sampled frames [U, H, W, 3] at any size (short
  side resized here) and `inverse` [clips * T] maps each sampled position to
  one of them (`tf.unique` of `eval_indices`). The evaluator's own path
  (`_eval_example`) decodes only the crop windows of the JPEGs instead.
  """
  s = data_cfg.crop_size
  shape = tf.shape(images)
  new_h, new_w = sampling.short_side_size(shape[1], shape[2], data_cfg.short_side)
  images = _resize(images, new_h, new_w)
  crops = [_crop(images, x, y, w, h) for x, y, w, h in _eval_boxes(data_cfg, s)(new_h, new_w)]
  return _stack_views(crops, inverse, data_cfg, s)


def _eval_example(example, *, data_cfg, num_classes: int, split: str):
  """One parsed video -> {"video": uint8 [V, T, S, S, 3], "label", "multilabel", "mask"}."""
  s = output_size(data_cfg)
  ratio = decode_scale(data_cfg)
  n = _num_frames(example, split)
  labels = _check_labels(example, num_classes, split)
  strings, inverse = _jpegs(example, eval_indices(n, data_cfg), split)
  crops = _decode_crops(strings, ratio=ratio, short_side=data_cfg.short_side // ratio,
                        boxes_fn=_eval_boxes(data_cfg, s))
  video = _stack_views(crops, inverse, data_cfg, s)
  return {
      "video": video,
      "label": tf.cast(labels[0], tf.int32),
      "multilabel": tf.ensure_shape(_multihot(labels, num_classes), [num_classes]),
      "mask": tf.constant(1.0, tf.float32),
  }


def _padding_example(data_cfg, num_classes: int):
  s, t = output_size(data_cfg), frames_per_clip(data_cfg)
  return {
      "video": tf.zeros([num_views(data_cfg), t, s, s, 3], tf.uint8),
      "label": tf.constant(0, tf.int32),
      "multilabel": tf.zeros([num_classes], tf.float32),
      "mask": tf.constant(0.0, tf.float32),
  }


# ----------------------------------------------------------------------------
# Dataset construction.


def _parallel_reads(data_cfg, files) -> bool:
  """`data.parallel_reads`; when None (or absent), whether the shards live on a remote
  file system (gs://, s3://, ...)."""
  setting = data_cfg.get("parallel_reads", None)
  if setting is None:
    return any("://" in str(f) for f in files)
  return bool(setting)


def _read_records(files, num_files: int, parallel: bool, layout: str):
  """The records of the shards `files` (in that order; a list or a 1-D string tensor
  of `num_files` paths), up to 16 shards interleaved deterministically: serialized
  examples ("sequence_example" layout), or {"record", "frames_file"} ("frames"
  layout: `_parse` turns either into a video).

  Records are read unbuffered (`_READ_BUFFER_BYTES`). With `parallel`
  (`_parallel_reads`: by default for remote storage) shards are read by
  background threads, which hides the latency of remote reads. Otherwise
  they are read by the thread that asks for the next record, so the record
  is still in the CPU cache when it is parsed: background reads ahead of a
  consumer cost 12-15% more CPU per video in `bench/input_pipeline.py`, but
  an in-thread reader is one thread per host (about 1.3 ms per 2.6 MB
  record on the development machine, so some 750 such videos/s at most).
  """
  def read(path):
    ds = tf.data.TFRecordDataset(path, buffer_size=_READ_BUFFER_BYTES)
    if layout == records.LAYOUT_SEQUENCE:
      return ds
    # records.frames_path in graph ops: `.tfrecord` at the end becomes `.frames`.
    frames_file = tf.strings.regex_replace(path, r"(\.tfrecord)?$", ".frames",
                                           replace_global=False)
    return ds.map(lambda record: {"record": record, "frames_file": frames_file})

  cycle = min(num_files, _MAX_CYCLE_LENGTH)
  files = tf.data.Dataset.from_tensor_slices(files)
  if parallel:
    return files.interleave(read, cycle_length=cycle, block_length=1,
                            num_parallel_calls=AUTOTUNE, deterministic=True)
  return files.interleave(read, cycle_length=cycle, block_length=1)


def _parse(layout: str):
  """`_read_records`' elements -> parsed videos (`records.parse_*`)."""
  if layout == records.LAYOUT_SEQUENCE:
    return records.parse_sequence_example
  return lambda element: records.parse_index_example(element["record"],
                                                     element["frames_file"])


def _resolve_process(process_index: Optional[int], process_count: Optional[int]):
  index = jax.process_index() if process_index is None else int(process_index)
  count = jax.process_count() if process_count is None else int(process_count)
  if count < 1 or not 0 <= index < count:
    raise ValueError(f"bad process_index/process_count: {index}/{count}")
  return index, count


def _options() -> tf.data.Options:
  options = tf.data.Options()
  options.deterministic = True
  options.threading.max_intra_op_parallelism = 1
  options.experimental_optimization.map_parallelization = True
  return options


def hide_gpus_from_tf() -> None:
  """Keeps TF off the accelerators (it would otherwise reserve their memory)."""
  try:
    tf.config.set_visible_devices([], "GPU")
  except (RuntimeError, ValueError):  # already initialised, or no such device type
    pass


def create_dataset(data_cfg, split: str, *, train: bool, batch_size: int, num_classes: int,
                   seed: int = 0, process_index: Optional[int] = None,
                   process_count: Optional[int] = None, start_step: int = 0) -> tf.data.Dataset:
  """The per-host tf.data pipeline of `split` (see the module docstring for the batches).

  Args:
    data_cfg: `configs.default.get_data_config()`-style config.
    split: a split of the manifest (e.g. data_cfg.train_split).
    train: training (infinite, shuffled, augmented) or evaluation (one pass).
    batch_size: videos per batch on this host.
    num_classes: K, the length of "multilabel" (labels must be < K).
    seed: training randomness (shuffling, sampling, crops, label draws).
    process_index, process_count: this host and the number of hosts
      (default: jax.process_index() / jax.process_count()).
    start_step: training step a resumed run starts at: the stream continues
      exactly where an uninterrupted run would be (whole epochs are skipped
      without reading; see `_train_dataset`). Ignored for eval.
  """
  check_data_config(data_cfg)
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  hide_gpus_from_tf()
  index, count = _resolve_process(process_index, process_count)
  manifest = records.read_manifest(data_cfg.data_dir)
  files = _split_files(data_cfg.data_dir, manifest, split)
  entry = manifest["splits"][split]
  layout = records.split_layout(entry)
  shard_check.check_sizes(files, entry.get("shard_bytes"))
  if layout == records.LAYOUT_FRAMES:
    frames_files = [records.frames_path(f) for f in files]
    for path in frames_files:
      if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"frames file {path!r} of split {split!r} not found (its "
                                f"shard is in the \"frames\" layout); re-run data_prep for "
                                f"{data_cfg.data_dir!r}")
    shard_check.check_sizes(frames_files, entry.get("frames_bytes"))
    shard_check.register(frames_files)
  shard_check.register(files)
  if train:
    ds = _train_dataset(data_cfg, split, files, batch_size, num_classes, seed, index, count,
                        start_step, manifest, layout)
  else:
    if "num_videos" not in manifest["splits"][split]:
      raise ValueError(f"split {split!r} of {data_cfg.data_dir!r} has no num_videos in its "
                       f"manifest (needed to pad evaluation batches)")
    num_videos = int(manifest["splits"][split]["num_videos"])
    ds = _eval_dataset(data_cfg, split, files, num_videos, batch_size, num_classes, index, count,
                       layout)
  return ds.with_options(_options())


def _host_epoch_size(manifest, split: str, files, all_files, index: int, count: int,
                     by_file: bool) -> Optional[int]:
  """Videos this host reads per epoch, or None when the manifest cannot tell."""
  entry = manifest["splits"][split]
  total = entry.get("num_videos")
  if count == 1:
    return int(total) if total is not None else None
  if not by_file:
    return len(range(index, int(total), count)) if total is not None else None
  sizes = entry.get("shard_sizes")
  if sizes is None or len(sizes) != len(all_files):
    return None
  size_of = dict(zip(all_files, sizes))
  return sum(int(size_of[f]) for f in files)


def _train_dataset(data_cfg, split, files, batch_size, num_classes, seed, index, count,
                   start_step, manifest, layout):
  """Infinite stream of epochs; epoch e is shuffled with seeds derived from (seed, e).

  Every random choice is a function of (seed, host, epoch, position in epoch),
  so a run resumed at `start_step` sees exactly the stream an uninterrupted
  run would: whole epochs before it are skipped for free, and only the
  examples of the current epoch are read (not decoded) again.
  """
  all_files = list(files)
  by_file = len(files) >= count
  if by_file:
    files = files[index::count]
  epoch_size = _host_epoch_size(manifest, split, files, all_files, index, count, by_file)
  consumed = int(start_step) * batch_size
  if epoch_size:
    first_epoch, offset = divmod(consumed, epoch_size)
    host_seed = _hash_seed(seed, index)
  else:
    # Unknown epoch length (multi-host without shard sizes): a fresh stream.
    first_epoch, offset = 0, 0
    host_seed = _hash_seed(seed, start_step, index)
    if start_step:
      logging.warning("manifest of %r has no shard_sizes: the resumed data stream is a "
                      "fresh one, not the uninterrupted run's", split)
  # Identical on all hosts when sharding by example, so the shards partition the stream.
  files_seed = host_seed if by_file else _hash_seed(seed)
  files_t = tf.constant(files)
  parse = _parse(layout)
  cached = None
  if data_cfg.cache:
    cached = _read_records(list(files), len(files), _parallel_reads(data_cfg, files), layout)
    if not by_file:
      cached = cached.shard(count, index)
    cached = cached.map(parse, num_parallel_calls=AUTOTUNE).cache()

  def epoch(e):
    base = tf.constant(host_seed % (1 << 62), tf.int64) + e * 1_000_003
    if cached is not None:
      ds = cached
    else:
      order = tf.random.experimental.stateless_shuffle(
          files_t, seed=tf.stack([tf.constant(files_seed % (1 << 62), tf.int64), e]))
      ds = _read_records(order, len(files), _parallel_reads(data_cfg, files), layout)
      if not by_file:
        ds = ds.shard(count, index)

    def sample(j, example):
      # The frames of the video at position j of the epoch's read order.
      if cached is None:
        example = parse(example)
      return _sample_frames(example, _element_seeds(base, j)[0], data_cfg=data_cfg,
                            num_classes=num_classes, split=split)

    ds = ds.enumerate().map(sample, num_parallel_calls=AUTOTUNE, deterministic=True)
    ds = ds.shuffle(data_cfg.shuffle_buffer, seed=base)
    return ds.enumerate().map(lambda i, sampled: (base, i, sampled))

  ds = tf.data.Dataset.range(first_epoch, 1 << 62).flat_map(epoch).skip(offset)

  def transform(base, i, sampled):
    # Crop and label of the video at position i of the shuffled epoch.
    return _train_example(sampled, _element_seeds(base, i), data_cfg=data_cfg,
                          num_classes=num_classes)

  ds = ds.map(transform, num_parallel_calls=AUTOTUNE, deterministic=True)
  return ds.batch(batch_size, drop_remainder=True).prefetch(AUTOTUNE)


def _eval_dataset(data_cfg, split, files, num_videos, batch_size, num_classes, index, count,
                  layout):
  expected = len(range(index, num_videos, count))  # videos this host must see
  num_batches = math.ceil(math.ceil(num_videos / count) / batch_size)
  ds = _read_records(list(files), len(files), _parallel_reads(data_cfg, files), layout)
  read = _parse(layout)
  if count > 1:
    ds = ds.shard(count, index)

  def parse(position, serialized):
    check = tf.debugging.Assert(
        position < expected,
        [f"split {split} holds more videos than its manifest says ({num_videos}); "
         f"re-run data_prep"])
    with tf.control_dependencies([check]):
      return read(tf.nest.map_structure(tf.identity, serialized))

  ds = ds.enumerate().map(parse, num_parallel_calls=AUTOTUNE)
  if data_cfg.cache:
    ds = ds.cache()
  ds = ds.map(lambda ex: _eval_example(ex, data_cfg=data_cfg, num_classes=num_classes,
                                       split=split),
              num_parallel_calls=AUTOTUNE, deterministic=True)
  padding = tf.data.Dataset.from_tensors(_padding_example(data_cfg, num_classes)).repeat()
  total = num_batches * batch_size
  # One element past `total` is read and dropped, so that a shard holding more
  # videos than the manifest says trips the check above instead of losing videos.
  ds = ds.concatenate(padding).take(total + 1).enumerate()
  ds = ds.filter(lambda i, _: i < total).map(lambda _, x: x)
  ds = ds.batch(batch_size, drop_remainder=True)
  ds = ds.apply(tf.data.experimental.assert_cardinality(num_batches))
  return ds.prefetch(AUTOTUNE)


# ----------------------------------------------------------------------------
# Host -> global arrays.


def make_global_batch(local_batch, mesh: jax.sharding.Mesh, spec: PartitionSpec):
  """Assembles each leaf's per-host slice into a global jax.Array sharded as `spec` on `mesh`."""
  sharding = NamedSharding(mesh, spec)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch)


def prefetch_to_mesh(iterator: Iterable, mesh: jax.sharding.Mesh, size: int = 2,
                     axis: str = "data") -> Iterator:
  """Yields global batches sharded over `mesh` axis `axis` (leading dim), `size` ahead.

  `iterator` yields per-host batches (dicts of NumPy arrays); a tf.data.Dataset
  is turned into its NumPy iterator. Transfers are asynchronous, so keeping
  `size` batches in flight overlaps them with the running step.
  """
  if axis not in mesh.axis_names:
    raise ValueError(f"mesh has no axis {axis!r} (axes: {mesh.axis_names})")
  if isinstance(iterator, tf.data.Dataset):
    iterator = iterator.as_numpy_iterator()
  iterator = shard_check.name_damaged_shards(iterator)
  spec = PartitionSpec(axis)
  queue = collections.deque()

  def enqueue(n):
    for batch in itertools.islice(iterator, n):
      queue.append(make_global_batch(batch, mesh, spec))

  enqueue(size)
  while queue:
    yield queue.popleft()
    enqueue(1)
