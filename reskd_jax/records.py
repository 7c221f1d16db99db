"""The on-disk format shared by `data_prep` (writer) and the input pipeline (reader).

One `tf.train.SequenceExample` per video:
  context:  video_id (bytes), num_frames (int64), labels (int64 list, one or
            more class indices), label_names (bytes list), height, width (int64)
  features: frames (one bytes feature per frame: a JPEG)

A converted data set is a directory:
  <out>/manifest.json                       see `read_manifest`
  <out>/<split>/<split>-00000-of-00008.tfrecord ...
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, Sequence

MANIFEST = "manifest.json"

CONTEXT_KEYS = ("video_id", "num_frames", "labels", "label_names", "height", "width")
FRAMES_KEY = "frames"


def shard_name(split: str, index: int, num_shards: int) -> str:
  return f"{split}-{index:05d}-of-{num_shards:05d}.tfrecord"


def make_sequence_example(video_id: str, jpeg_frames: Sequence[bytes], labels: Sequence[int],
                          label_names: Sequence[str], height: int, width: int) -> bytes:
  """Serialises one video (already JPEG-encoded frames)."""
  import tensorflow as tf  # local: keeps `import reskd_jax` light

  def _int(values):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=list(values)))

  def _bytes(values):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=list(values)))

  context = tf.train.Features(feature={
      "video_id": _bytes([video_id.encode()]),
      "num_frames": _int([len(jpeg_frames)]),
      "labels": _int(labels),
      "label_names": _bytes([n.encode() for n in label_names]),
      "height": _int([height]),
      "width": _int([width]),
  })
  frames = tf.train.FeatureList(feature=[_bytes([f]) for f in jpeg_frames])
  example = tf.train.SequenceExample(
      context=context, feature_lists=tf.train.FeatureLists(feature_list={FRAMES_KEY: frames}))
  return example.SerializeToString(deterministic=True)


def parse_sequence_example(serialized):
  """tf.data map function: serialized -> dict of tensors (frames still encoded)."""
  import tensorflow as tf

  context_spec = {
      "video_id": tf.io.FixedLenFeature([], tf.string),
      "num_frames": tf.io.FixedLenFeature([], tf.int64),
      "labels": tf.io.VarLenFeature(tf.int64),
      "label_names": tf.io.VarLenFeature(tf.string),
      "height": tf.io.FixedLenFeature([], tf.int64),
      "width": tf.io.FixedLenFeature([], tf.int64),
  }
  sequence_spec = {FRAMES_KEY: tf.io.FixedLenSequenceFeature([], tf.string)}
  context, sequence = tf.io.parse_single_sequence_example(
      serialized, context_features=context_spec, sequence_features=sequence_spec)
  return {
      "video_id": context["video_id"],
      "num_frames": tf.cast(context["num_frames"], tf.int32),
      "labels": tf.cast(tf.sparse.to_dense(context["labels"]), tf.int32),
      "height": tf.cast(context["height"], tf.int32),
      "width": tf.cast(context["width"], tf.int32),
      "frames": sequence[FRAMES_KEY],
  }


def read_manifest(data_dir: str) -> Dict[str, Any]:
  """Reads `<data_dir>/manifest.json`.

  Layout: {"dataset": str, "classes": [names], "multi_label": bool,
           "splits": {split: {"num_videos": int, "shards": [file names],
                              "shard_sizes": [videos per shard],
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
