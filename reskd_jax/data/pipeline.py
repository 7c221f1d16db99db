"""tf.data input pipeline: converted shards (see `records`) -> uint8 video batches.

This module assembles the datasets; the per-video graph (sampling, decoding, crops) is
`decode`, clip sizes and the checks of `config.data` are `clips`, and `transfer` moves
host batches onto the mesh.

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

import dataclasses
import logging
import math
import os
from typing import Any, Dict, Optional

import jax
import numpy as np
import tensorflow as tf

from reskd_jax import platforms
from reskd_jax.data import clips, decode, labels, records, shard_check


AUTOTUNE = tf.data.AUTOTUNE
_MAX_CYCLE_LENGTH = 16  # shards interleaved per host
# TFRecordDataset's read buffer: none. A video record is megabytes, so a buffer only adds
# a copy, and interleaved shards' buffers of megabytes evict each other from the caches.
_READ_BUFFER_BYTES = 0


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
  labels.check_unique(classes, f"the manifest of {data_dir!r}")
  splits = manifest.get("splits", {})
  return DatasetInfo(
      num_classes=len(classes),
      class_names=classes,
      multi_label=bool(manifest.get("multi_label", False)),
      num_videos={name: int(s.get("num_videos", 0)) for name, s in splits.items()})


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


def _as_written(fn):
  """`fn` traced as written, without AutoGraph's rewrite of its source: the functions of this
  pipeline (and of `decode`, `sampling`, `augment`, `records`) use TensorFlow's control flow
  explicitly (`tf.cond`, `tf.while_loop`) and Python's only on Python values. AutoGraph
  would transform each of them, and every function they call, at every start (about 150
  functions: several seconds of CPU before the first batch)."""
  return tf.autograph.experimental.do_not_convert(fn)


def _hash_seed(*values: int) -> int:
  return int(np.random.SeedSequence([int(v) for v in values]).generate_state(1)[0])


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
  consumer cost more CPU per video in `bench/input_pipeline.py`, but an
  in-thread reader is one thread per host, which caps the videos/s a host can
  read (docs/benchmarks.md, "The input pipeline").
  """
  def read(path):
    ds = tf.data.TFRecordDataset(path, buffer_size=_READ_BUFFER_BYTES)
    if layout == records.LAYOUT_SEQUENCE:
      return ds
    # records.frames_path in graph ops: `.tfrecord` at the end becomes `.frames`.
    frames_file = tf.strings.regex_replace(path, r"(\.tfrecord)?$", ".frames",
                                           replace_global=False)
    return ds.map(_as_written(lambda record: {"record": record, "frames_file": frames_file}))

  cycle = min(num_files, _MAX_CYCLE_LENGTH)
  files = tf.data.Dataset.from_tensor_slices(files)
  if parallel:
    return files.interleave(_as_written(read), cycle_length=cycle, block_length=1,
                            num_parallel_calls=AUTOTUNE, deterministic=True)
  return files.interleave(_as_written(read), cycle_length=cycle, block_length=1)


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
  clips.check_data_config(data_cfg)
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  platforms.hide_gpus_from_tf()
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
    cached = cached.map(_as_written(parse), num_parallel_calls=AUTOTUNE).cache()

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
      return decode.sample_frames(example, decode.element_seeds(base, j)[0], data_cfg=data_cfg,
                            num_classes=num_classes, split=split)

    ds = ds.enumerate().map(_as_written(sample), num_parallel_calls=AUTOTUNE,
                             deterministic=True)
    ds = ds.shuffle(data_cfg.shuffle_buffer, seed=base)
    return ds.enumerate().map(_as_written(lambda i, sampled: (base, i, sampled)))

  ds = tf.data.Dataset.range(first_epoch, 1 << 62).flat_map(_as_written(epoch)).skip(offset)

  def transform(base, i, sampled):
    # Crop and label of the video at position i of the shuffled epoch.
    return decode.train_example(sampled, decode.element_seeds(base, i), data_cfg=data_cfg,
                          num_classes=num_classes)

  ds = ds.map(_as_written(transform), num_parallel_calls=AUTOTUNE, deterministic=True)
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

  ds = ds.enumerate().map(_as_written(parse), num_parallel_calls=AUTOTUNE)
  if data_cfg.cache:
    ds = ds.cache()
  ds = ds.map(_as_written(lambda ex: decode.eval_example(ex, data_cfg=data_cfg,
                                                        num_classes=num_classes, split=split)),
              num_parallel_calls=AUTOTUNE, deterministic=True)
  padding = tf.data.Dataset.from_tensors(decode.padding_example(data_cfg, num_classes)).repeat()
  total = num_batches * batch_size
  # One element past `total` is read and dropped, so that a shard holding more
  # videos than the manifest says trips the check above instead of losing videos.
  ds = ds.concatenate(padding).take(total + 1).enumerate()
  ds = ds.filter(_as_written(lambda i, _: i < total)).map(_as_written(lambda _, x: x))
  ds = ds.batch(batch_size, drop_remainder=True)
  ds = ds.apply(tf.data.experimental.assert_cardinality(num_batches))
  return ds.prefetch(AUTOTUNE)
