"""The on-disk format shared by `data_prep` (writer) and the input pipeline (reader).

A converted data set is a directory:
  <out>/manifest.json                          see `read_manifest`
  <out>/<split>/<split>-00000-of-00008.tfrecord ...   one record per video
  <out>/<split>/<split>-00000-of-00008.frames  ...   (layout "frames") the shard's JPEGs

Two layouts, named by the split's `layout` in the manifest:

"frames" (written by data_prep since format 3): the frames of a shard are
  its `.frames` file, the JPEGs of its videos one after another; its
  `.tfrecord` holds one small `tf.train.Example` per video (`make_index_example`):
    video_id (bytes), num_frames (int64), labels (int64 list), label_names
    (bytes list), height, width (int64),
    frame_offsets (int64 [num_frames + 1]: frame i is the bytes
      [frame_offsets[i], frame_offsets[i + 1]) of the `.frames` file),
    frame_crc32 (int64 [num_frames]: zlib CRC-32 of each frame).
  A training example reads its record (about 20 bytes per frame) and then
  only the frames it samples (`read_frames`), so its cost does not grow
  with the length of the video.

"sequence_example" (the layout before format 3; a split without `layout`):
  one `tf.train.SequenceExample` per video holding every frame:
    context:  video_id, num_frames, labels, label_names, height, width
    features: frames (one bytes feature per frame: a JPEG)
  Still read as before (every frame of a video is read to use a few);
  `python -m data_prep repack` rewrites such a data set in the "frames"
  layout without decoding anything.
"""

from __future__ import annotations

import json
import os
import threading
import zlib
from typing import Any, Dict, Iterator, Sequence

import numpy as np

MANIFEST = "manifest.json"

CONTEXT_KEYS = ("video_id", "num_frames", "labels", "label_names", "height", "width")
FRAMES_KEY = "frames"
LAYOUT_FRAMES = "frames"
LAYOUT_SEQUENCE = "sequence_example"
LAYOUTS = (LAYOUT_FRAMES, LAYOUT_SEQUENCE)
_SHARD_SUFFIX = ".tfrecord"
FRAMES_SUFFIX = ".frames"


def shard_name(split: str, index: int, num_shards: int) -> str:
  return f"{split}-{index:05d}-of-{num_shards:05d}{_SHARD_SUFFIX}"


def frames_path(shard_path: str) -> str:
  """The `.frames` file that goes with a shard (`<...>.tfrecord` -> `<...>.frames`)."""
  if shard_path.endswith(_SHARD_SUFFIX):
    shard_path = shard_path[:-len(_SHARD_SUFFIX)]
  return shard_path + FRAMES_SUFFIX


def split_layout(split_entry: Dict[str, Any]) -> str:
  """The layout of a split's manifest entry (entries before format 3 have none)."""
  layout = split_entry.get("layout", LAYOUT_SEQUENCE)
  if layout not in LAYOUTS:
    raise ValueError(f"unknown data layout {layout!r} in the manifest (known: {LAYOUTS}); "
                     f"a newer data_prep wrote it?")
  return layout


def _int(values):
  import tensorflow as tf  # local: keeps `import reskd_jax` light
  return tf.train.Feature(int64_list=tf.train.Int64List(value=list(values)))


def _bytes(values):
  import tensorflow as tf
  return tf.train.Feature(bytes_list=tf.train.BytesList(value=list(values)))


def _context(video_id, num_frames, labels, label_names, height, width):
  """The per-video features both layouts share."""
  return {
      "video_id": _bytes([video_id.encode()]),
      "num_frames": _int([num_frames]),
      "labels": _int(labels),
      "label_names": _bytes([n.encode() for n in label_names]),
      "height": _int([height]),
      "width": _int([width]),
  }


def make_sequence_example(video_id: str, jpeg_frames: Sequence[bytes], labels: Sequence[int],
                          label_names: Sequence[str], height: int, width: int) -> bytes:
  """Serialises one video (already JPEG-encoded frames) in the "sequence_example" layout."""
  import tensorflow as tf

  feature = _context(video_id, len(jpeg_frames), labels, label_names, height, width)
  frames = tf.train.FeatureList(feature=[_bytes([f]) for f in jpeg_frames])
  example = tf.train.SequenceExample(
      context=tf.train.Features(feature=feature),
      feature_lists=tf.train.FeatureLists(feature_list={FRAMES_KEY: frames}))
  return example.SerializeToString(deterministic=True)


def make_index_example(video_id: str, jpeg_frames: Sequence[bytes], first_offset: int,
                       labels: Sequence[int], label_names: Sequence[str], height: int,
                       width: int) -> bytes:
  """The "frames" layout's record of one video whose JPEGs start at byte `first_offset`
  of the shard's `.frames` file (written there one after another)."""
  import tensorflow as tf

  feature = _context(video_id, len(jpeg_frames), labels, label_names, height, width)
  offsets = np.cumsum([first_offset] + [len(f) for f in jpeg_frames])
  feature["frame_offsets"] = _int(int(o) for o in offsets)
  feature["frame_crc32"] = _int(zlib.crc32(f) for f in jpeg_frames)
  example = tf.train.Example(features=tf.train.Features(feature=feature))
  return example.SerializeToString(deterministic=True)


class ShardWriter:
  """Writes one shard of either layout: `write(...)` per video, then `close()`.

  Writes to the paths given (data_prep gives temporary names and renames them
  when the shard is complete); `paths` lists them (the `.frames` file last).
  """

  def __init__(self, path: str, layout: str = LAYOUT_FRAMES, frames_file: str = None):
    import tensorflow as tf

    if layout not in LAYOUTS:
      raise ValueError(f"unknown layout {layout!r}")
    self.layout = layout
    self.paths = [path]
    self._records = tf.io.TFRecordWriter(path)
    self._frames = None
    self._offset = 0
    if layout == LAYOUT_FRAMES:
      frames_file = frames_file or frames_path(path)
      self.paths.append(frames_file)
      self._frames = open(frames_file, "wb")

  def write(self, video_id: str, jpeg_frames: Sequence[bytes], labels: Sequence[int],
            label_names: Sequence[str], height: int, width: int) -> None:
    if self._frames is None:
      self._records.write(make_sequence_example(video_id, jpeg_frames, labels, label_names,
                                                height, width))
      return
    record = make_index_example(video_id, jpeg_frames, self._offset, labels, label_names,
                                height, width)
    for f in jpeg_frames:
      self._frames.write(f)
    self._offset += sum(len(f) for f in jpeg_frames)
    self._records.write(record)

  def close(self) -> None:
    self._records.close()
    if self._frames is not None:
      self._frames.flush()
      os.fsync(self._frames.fileno())
      self._frames.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def _context_spec(tf):
  return {
      "video_id": tf.io.FixedLenFeature([], tf.string),
      "num_frames": tf.io.FixedLenFeature([], tf.int64),
      "labels": tf.io.VarLenFeature(tf.int64),
      "label_names": tf.io.VarLenFeature(tf.string),
      "height": tf.io.FixedLenFeature([], tf.int64),
      "width": tf.io.FixedLenFeature([], tf.int64),
  }


def _common(tf, context):
  return {
      "video_id": context["video_id"],
      "num_frames": tf.cast(context["num_frames"], tf.int32),
      "labels": tf.cast(tf.sparse.to_dense(context["labels"]), tf.int32),
      "height": tf.cast(context["height"], tf.int32),
      "width": tf.cast(context["width"], tf.int32),
  }


def parse_sequence_example(serialized):
  """tf.data map function ("sequence_example" layout): serialized -> dict of tensors
  (frames still encoded)."""
  import tensorflow as tf

  sequence_spec = {FRAMES_KEY: tf.io.FixedLenSequenceFeature([], tf.string)}
  context, sequence = tf.io.parse_single_sequence_example(
      serialized, context_features=_context_spec(tf), sequence_features=sequence_spec)
  return dict(_common(tf, context), frames=sequence[FRAMES_KEY])


def parse_index_example(serialized, frames_file):
  """tf.data map function ("frames" layout): a video's record and the path of its shard's
  `.frames` file -> dict of tensors (`read_frames` then reads the frames it needs)."""
  import tensorflow as tf

  spec = dict(_context_spec(tf), frame_offsets=tf.io.VarLenFeature(tf.int64),
              frame_crc32=tf.io.VarLenFeature(tf.int64))
  context = tf.io.parse_single_example(serialized, spec)
  return dict(_common(tf, context),
              frame_offsets=tf.sparse.to_dense(context["frame_offsets"]),
              frame_crc32=tf.sparse.to_dense(context["frame_crc32"]),
              frames_file=frames_file)


def stored_frames(example):
  """Frames a parsed video holds (either layout), as a scalar int32 tensor."""
  import tensorflow as tf

  if FRAMES_KEY in example:
    return tf.shape(example[FRAMES_KEY])[0]
  return tf.size(example["frame_offsets"]) - 1


class _Files:
  """Open `.frames` files, shared by every thread: local ones as descriptors read with
  os.pread (safe from several threads; reopened when the path names another file since,
  e.g. a shard data_prep rewrote), others (gs://, s3://, ...) as tf.io.gfile.GFile objects
  read under a lock of their own.

  Not per thread (threading.local): tf.data calls `read_frames` from threads of its own,
  and each such call gets a new Python thread state, so per-thread handles would be
  opened at every call and never closed (one descriptor leaked per video read).
  """

  def __init__(self):
    self.open = {}
    self.retired = []  # descriptors of replaced files: another thread may still read one
    self.lock = threading.Lock()

  def handle(self, path: str):
    """An open handle of `path`; call once per video (a local file is stat'ed)."""
    with self.lock:
      if "://" in path:
        if path not in self.open:
          import tensorflow as tf
          self.open[path] = (tf.io.gfile.GFile(path, "rb"), threading.Lock())
        return self.open[path]
      stat = os.stat(path)
      key = (stat.st_dev, stat.st_ino)
      fd, opened = self.open.get(path, (None, None))
      if opened != key:
        if fd is not None:
          self.retired.append(fd)
        fd = os.open(path, os.O_RDONLY)
        self.open[path] = (fd, key)
      return fd

  @staticmethod
  def read(handle, start: int, size: int) -> bytes:
    if isinstance(handle, int):
      return os.pread(handle, size, start)
    gfile, lock = handle
    with lock:
      gfile.seek(start)
      return gfile.read(size)


_FILES = _Files()


def _read_frames_py(path, offsets, crc32, indices):
  path = path.decode() if isinstance(path, bytes) else str(path)
  out = np.empty(len(indices), dtype=object)
  ok = np.ones(len(indices), dtype=bool)
  handle = _FILES.handle(path)
  for k, i in enumerate(indices):
    start, end = int(offsets[i]), int(offsets[i + 1])
    data = _FILES.read(handle, start, end - start)
    out[k] = data
    ok[k] = len(data) == end - start and zlib.crc32(data) == (int(crc32[i]) & 0xFFFFFFFF)
  return out, ok


def read_frames(example, indices):
  """The JPEGs of frames `indices` (1-D int32, in [0, num_frames)) of a video parsed by
  `parse_index_example`, read from its `.frames` file: (strings [K], ok [K] bool, False
  where a frame's bytes are short or fail their CRC-32)."""
  import tensorflow as tf

  strings, ok = tf.numpy_function(
      _read_frames_py,
      [example["frames_file"], example["frame_offsets"], example["frame_crc32"], indices],
      [tf.string, tf.bool], stateful=False, name="read_frames")
  count = indices.shape[0]
  return tf.ensure_shape(strings, [count]), tf.ensure_shape(ok, [count])


def iter_videos(shard_path: str, layout: str) -> Iterator[Dict[str, Any]]:
  """Every video of one shard, eagerly (tools and tests): dicts with the context keys
  (Python values) and "frames" (a list of JPEG bytes). Checks each frame's CRC-32."""
  import tensorflow as tf

  names_spec = {"label_names": tf.io.VarLenFeature(tf.string)}
  for serialized in tf.data.TFRecordDataset(shard_path):
    if layout == LAYOUT_SEQUENCE:
      ex = parse_sequence_example(serialized)
      frames = [bytes(f) for f in ex["frames"].numpy()]
      names, _ = tf.io.parse_single_sequence_example(serialized, context_features=names_spec)
    else:
      ex = parse_index_example(serialized, frames_path(shard_path))
      n = int(tf.size(ex["frame_offsets"])) - 1
      strings, ok = _read_frames_py(frames_path(shard_path), ex["frame_offsets"].numpy(),
                                    ex["frame_crc32"].numpy(), range(n))
      if not ok.all():
        raise ValueError(f"{frames_path(shard_path)}: frames of video "
                         f"{ex['video_id'].numpy().decode()} fail their CRC-32 or are cut short")
      frames = list(strings)
      names = tf.io.parse_single_example(serialized, names_spec)
    yield {"video_id": ex["video_id"].numpy().decode(), "num_frames": int(ex["num_frames"]),
           "labels": [int(v) for v in ex["labels"]],
           "label_names": [bytes(v).decode() for v in
                           tf.sparse.to_dense(names["label_names"]).numpy()],
           "height": int(ex["height"]), "width": int(ex["width"]), "frames": frames}


def read_manifest(data_dir: str) -> Dict[str, Any]:
  """Reads `<data_dir>/manifest.json`.

  Layout: {"dataset": str, "classes": [names], "multi_label": bool,
           "splits": {split: {"num_videos": int, "shards": [file names],
                              "shard_sizes": [videos per shard],
                              "shard_bytes": [bytes per .tfrecord file],
                              "layout": "frames" (absent: "sequence_example"),
                              "frames_bytes": [bytes per .frames file] (layout "frames"),
                              "skipped": [{"item": str, "reason": str}]}}}
  Raises FileNotFoundError with a message saying how to prepare the data.
  """
  path = os.path.join(data_dir, MANIFEST)
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f"no converted data set at {data_dir!r} ({MANIFEST} missing). Prepare it with "
        f"`python -m data_prep --help` (e.g. `python -m data_prep kinetics --source=... "
        f"--out={data_dir}`), or point config.data.data_dir at a converted directory.")
  with open(path) as f:
    return json.load(f)
