"""`python -m data_prep repack --from-tfds`: a data set built by the TFDS builders
(`data_prep.tfds_builders`, locally or with Apache Beam) rewritten in the layout the
training pipeline reads.

TFDS stores one example per video with every kept frame as an encoded JPEG; the
training pipeline reads the "frames" layout of `reskd_jax.data.records`, which reads
only the frames a clip samples. The JPEGs are copied as they are (read with
`tfds.decode.SkipDecoding`, nothing decoded or encoded again), so the frames are
those the builder stored, which are those `python -m data_prep` writes.

Videos go to shards as the converter sends them: sorted by video id (TFDS's own
example order depends on its key hashing, not on the annotation list), then
`shards.assign` with the shuffle seed. The result is therefore the data set that
`python -m data_prep` writes, byte for byte, from an annotation list of the same
videos in video-id order with the same shard count and seed: the same training
batches for a given seed. To put videos in that order, each split's JPEGs are first
copied into one scratch file under `--out` (removed at the end), so memory holds only
the frame offsets; each shard is then written with `repack.write_shard` (temporary
names renamed when complete) and the manifest last, so an interrupted run leaves no
data set that looks complete (rerun the same command: it writes every shard again).
"""

from __future__ import annotations

import glob
import io
import logging
import os
import re
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
from reskd_jax.data import records
from reskd_jax.fileio import pid_alive, write_json_atomic

from data_prep.converter import check_out_dir
from data_prep.items import ConversionError
from data_prep.repack import write_shard
from data_prep.shards import assign, default_num_shards

# TFDS split -> the split written (the names `python -m data_prep --split` and the
# training configs use: `config.data.eval_split = "val"`); other names are kept.
SPLIT_NAMES = {"train": "train", "validation": "val", "test": "test"}


def written_split(tfds_split: str) -> str:
  return SPLIT_NAMES.get(tfds_split, tfds_split)


def open_builder(name: str, data_dir: Optional[str]):
  """The built TFDS data set `name` ("name" or "name/config") in `data_dir`.
  ConversionError (one line) when the directory, the data set or its build is missing,
  or its features are not those of a video data set of `data_prep.tfds_builders`."""
  if not data_dir:
    raise ConversionError("--from-tfds needs --tfds-data-dir (the data directory the data "
                          "set was built in, e.g. tfds build's --data_dir)")
  if "://" in data_dir:  # gs://... where a Beam runner wrote it
    import tensorflow as tf
    isdir, exists = tf.io.gfile.isdir, tf.io.gfile.exists
  else:
    isdir, exists = os.path.isdir, os.path.exists
  if not isdir(data_dir):
    raise ConversionError(f"--tfds-data-dir {data_dir!r} "
                          f"{'is not a directory' if exists(data_dir) else 'does not exist'}")
  from absl import logging as absl_logging
  absl_logging.set_verbosity(absl_logging.ERROR)  # tfds warns of a missing build: we say it once
  import tensorflow_datasets as tfds

  import data_prep.tfds_builders  # noqa: F401  registers the builders

  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    known = ", ".join(b.name for b in data_prep.tfds_builders.BUILDERS)
    raise ConversionError(f"unknown TFDS data set {name!r} (the builders of data_prep: "
                          f"{known})") from None
  except ValueError as e:  # e.g. an unknown config
    base, _, config = name.partition("/")
    try:
      configs = [c.name for c in tfds.builder_cls(base).BUILDER_CONFIGS]
    except (ValueError, AttributeError):
      configs = []
    if config and configs and config.split(":")[0] not in configs:
      raise ConversionError(f"TFDS data set {base!r} has no config {config!r} (its configs: "
                            f"{', '.join(configs)})") from None
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise ConversionError(f"TFDS data set {name!r}: {first}") from None
  if not builder.is_prepared():
    raise ConversionError(f"TFDS data set {builder.info.full_name} is not built in "
                          f"{data_dir!r} (build it with `tfds build ... --data_dir=...`, see "
                          f"data_prep/README.md)")
  features = builder.info.features
  label_key = "labels" if "labels" in features else "label"
  if not all(k in features for k in ("video_id", "frames", label_key)):
    raise ConversionError(f"TFDS data set {builder.info.full_name} has features "
                          f"{sorted(features)}, not video_id, frames and label(s) of "
                          f"data_prep.tfds_builders")
  return builder


def _classes(builder) -> List[str]:
  features = builder.info.features
  label = features["labels"].feature if "labels" in features else features["label"]
  return list(label.names)


def _jpeg_size(jpeg: bytes):
  """(height, width) from a JPEG's header (nothing decoded)."""
  from PIL import Image

  with Image.open(io.BytesIO(jpeg)) as img:
    return img.height, img.width


class _Scratch:
  """A split's JPEGs in one scratch file in the order read, and where each video's are:
  the videos can then be written in any order while memory holds only offsets."""

  def __init__(self, path: str):
    self.path = path
    self.file = open(path, "w+b")
    self.size = 0
    self.videos: Dict[str, dict] = {}

  def add(self, video_id: str, frames: Sequence[bytes], labels: List[int],
          label_names: List[str]):
    if video_id in self.videos:
      raise ConversionError(f"video {video_id!r} is twice in the TFDS split")
    if len(frames) == 0:
      raise ConversionError(f"video {video_id!r} of the TFDS split holds no frame")
    height, width = _jpeg_size(frames[0])
    lengths = np.fromiter((len(f) for f in frames), np.int64, len(frames))
    for f in frames:
      self.file.write(f)
    self.videos[video_id] = {"labels": labels, "label_names": label_names, "height": height,
                             "width": width, "offsets": np.cumsum(np.r_[self.size, lengths])}
    self.size += int(lengths.sum())

  def video(self, video_id: str) -> dict:
    v = self.videos[video_id]
    offsets = v["offsets"]
    blob = os.pread(self.file.fileno(), int(offsets[-1] - offsets[0]), int(offsets[0]))
    rel = offsets - offsets[0]
    frames = [blob[rel[i]:rel[i + 1]] for i in range(len(rel) - 1)]
    return dict(v, video_id=video_id, frames=frames)

  def close(self):
    self.file.close()
    if os.path.exists(self.path):
      os.remove(self.path)


def _remove_stale_tmp(split_dir: str):
  """Scratch and temporary shard files of a run that was killed (its process is gone):
  a rerun would otherwise leave them, a scratch file as large as the split."""
  for path in glob.glob(os.path.join(glob.escape(split_dir), "*.tmp-*")) + glob.glob(
      os.path.join(glob.escape(split_dir), ".*.tmp-*")):
    pid = path.rsplit(".tmp-", 1)[-1]
    if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
      os.remove(path)


def repack_tfds(name: str, tfds_data_dir: Optional[str], out_dir: str,
                layout: str = records.LAYOUT_FRAMES, splits: Optional[Sequence[str]] = None,
                num_shards: Optional[int] = None, shuffle_seed: int = 0,
                log: Callable[[str], None] = print) -> dict:
  """Writes the built TFDS data set `name` of `tfds_data_dir` (its splits, or `splits`:
  TFDS or written names) to `out_dir` in `layout`; returns the manifest. Split names
  are mapped by SPLIT_NAMES (validation -> val). `num_shards` per split (default: one
  per 100 videos, `shards.default_num_shards`). ConversionError (one line) on bad
  input, before anything is written."""
  if layout not in records.LAYOUTS:
    raise ConversionError(f"unknown layout {layout!r} (known: {records.LAYOUTS})")
  check_out_dir(out_dir)
  builder = open_builder(name, tfds_data_dir)
  if os.path.exists(os.path.join(out_dir, records.MANIFEST)):
    raise ConversionError(f"{out_dir!r} already holds a data set ({records.MANIFEST})")
  built = {s: info.num_examples for s, info in builder.info.splits.items()}
  if splits is None:
    chosen = sorted(built, key=lambda s: (s not in SPLIT_NAMES, s))
  else:
    by_name = {written_split(s): s for s in built}
    chosen = [s if s in built else by_name.get(s) for s in splits]
    missing = [s for s, c in zip(splits, chosen) if c is None]
    if missing:
      raise ConversionError(f"split {missing[0]!r} is not in {builder.info.full_name} "
                            f"(its splits: {sorted(built)})")
    chosen = list(dict.fromkeys(chosen))  # val and validation: written once
  for s in chosen:
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", written_split(s)):
      raise ConversionError(f"TFDS split {s!r} is not a usable split name")
  classes = _classes(builder)
  multi_label = "labels" in builder.info.features
  options = None
  if hasattr(builder, "_options"):  # a builder of data_prep.tfds_builders
    options = dict(builder._options().to_json(), layout=layout)  # noqa: SLF001
  manifest = {"dataset": builder.name, "classes": classes, "multi_label": multi_label,
              "splits": {}}
  for tfds_split in chosen:
    split = written_split(tfds_split)
    if not built[tfds_split]:
      log(f"  [{split}] TFDS split {tfds_split!r} is empty: not written")
      continue
    entry = _split(builder, tfds_split, split, out_dir, layout, classes, multi_label,
                   num_shards, shuffle_seed, log)
    if options is not None:
      entry["options"] = options
    manifest["splits"][split] = entry
  if not manifest["splits"]:
    raise ConversionError(f"no video in the splits {chosen} of {builder.info.full_name}")
  manifest["splits"] = dict(sorted(manifest["splits"].items()))
  write_json_atomic(os.path.join(out_dir, records.MANIFEST), manifest, indent=1)
  mapped = ", ".join(f"{s} -> {written_split(s)}" for s in chosen)
  log(f"repacked {builder.info.full_name} ({mapped}) from {tfds_data_dir} into {out_dir} "
      f"({layout} layout)")
  return manifest


def _split(builder, tfds_split: str, split: str, out_dir: str, layout: str,
           classes: List[str], multi_label: bool, num_shards: Optional[int],
           shuffle_seed: int, log) -> dict:
  """Writes one split; returns its manifest entry."""
  import tensorflow_datasets as tfds

  split_dir = os.path.join(out_dir, split)
  os.makedirs(split_dir, exist_ok=True)
  _remove_stale_tmp(split_dir)
  scratch = _Scratch(os.path.join(split_dir, f".tfds-frames.tmp-{os.getpid()}"))
  try:
    tf_logger = logging.getLogger("tensorflow")
    level = tf_logger.level
    tf_logger.setLevel(logging.ERROR)  # TFDS's reader of Sequence features warns of a TF API
    try:
      ds = builder.as_dataset(split=tfds_split, shuffle_files=False,
                              decoders={"frames": tfds.decode.SkipDecoding()})
    finally:
      tf_logger.setLevel(level)
    for ex in ds.as_numpy_iterator():
      labels = ([int(v) for v in ex["labels"]] if multi_label else [int(ex["label"])])
      scratch.add(ex["video_id"].decode(), list(ex["frames"]), labels,
                  [classes[v] for v in labels])
    ids = sorted(scratch.videos)
    count = num_shards or default_num_shards(len(ids))
    names = [records.shard_name(split, k, count) for k in range(count)]
    entry = {"num_videos": len(ids), "layout": layout, "shards": names, "shard_sizes": [],
             "shard_bytes": [], "shard_sha256": []}
    if layout == records.LAYOUT_FRAMES:
      entry["frames_bytes"] = []
    log(f"[{split}] {len(ids)} videos of {builder.info.full_name} split {tfds_split!r} -> "
        f"{count} shards in {split_dir}")
    for name, run in zip(names, assign(ids, count, shuffle_seed)):
      written = write_shard(os.path.join(split_dir, name), layout,
                            (scratch.video(v) for v in run))
      entry["shard_sizes"].append(written.pop("num_videos"))
      for key, value in written.items():
        entry[key].append(value)
      log(f"  [{split}] {name}: {entry['shard_sizes'][-1]} videos")
  finally:
    scratch.close()
  entry.update(skipped=[], partial=[], tfds={"name": builder.info.full_name,
                                              "split": tfds_split})
  return entry
