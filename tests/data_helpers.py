"""Tiny fixtures for the data_prep tests: synthetic frames, real video files / frame
folders, reading records back."""

from __future__ import annotations

import json
import os
from typing import Dict, Tuple

import av
import numpy as np
import tensorflow as tf
from PIL import Image

from reskd_jax.data import records
from reskd_jax.data.records import read_manifest

CODECS = {".mp4": ("libx264", "yuv444p", {"qp": "0"}),
          ".mkv": ("libx264", "yuv444p", {"qp": "0"}),
          ".webm": ("libvpx-vp9", "yuv444p", {"lossless": "1", "deadline": "realtime",
                                              "cpu-used": "8"})}


def make_frames(seed: int, num: int = 8, h: int = 32, w: int = 40) -> np.ndarray:
  """(num, h, w, 3) uint8: smooth colour gradients, a moving block and a brightness step
  per frame, so every frame differs clearly from the others while JPEG keeps them close."""
  y, x = np.mgrid[:h, :w]
  base = np.stack([x * 3 + seed * 15, y * 4 + 30, (x + y) * 2 + 60 - seed * 5], -1).astype(float)
  frames = []
  for t in range(num):
    img = base + 12 * t
    c = 2 + 3 * t
    img[8:18, c:c + 8] = [220, 40, 120 + 10 * seed]
    frames.append(np.clip(img, 0, 255).astype(np.uint8))
  return np.stack(frames)


def put_video(path: str, frames: np.ndarray, fps: int = 8) -> np.ndarray:
  """Writes a real, lossless video file (.mp4/.mkv: H.264, .webm: VP9) with PyAV;
  returns the frames."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  codec, pix_fmt, options = CODECS[os.path.splitext(path)[1]]
  with av.open(path, "w") as container:
    stream = container.add_stream(codec, rate=fps)
    stream.width, stream.height = frames.shape[2], frames.shape[1]
    stream.pix_fmt, stream.options = pix_fmt, options
    for f in frames:
      for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)
  return frames


def put_frames(folder: str, frames: np.ndarray, quality: int = 95) -> np.ndarray:
  """Writes a frame folder img_00001.jpg ...; returns the frames as a decoder sees them."""
  os.makedirs(folder, exist_ok=True)
  out = []
  for t, f in enumerate(frames):
    path = os.path.join(folder, f"img_{t + 1:05d}.jpg")
    Image.fromarray(f).save(path, quality=quality)
    with Image.open(path) as img:
      out.append(np.asarray(img.convert("RGB")))
  return np.stack(out)


def read_records(data_dir: str, split: str) -> Tuple[dict, Dict[str, Tuple[Tuple[int, ...], np.ndarray]]]:
  """(manifest, video_id -> (labels, frames (T,H,W,3) uint8)), through
  reskd_jax.data.records.iter_videos (either layout, every frame's CRC-32 checked).
  Checks the shapes and the count."""
  manifest = read_manifest(str(data_dir))
  layout = records.split_layout(manifest["splits"][split])
  result = {}
  for shard in manifest["splits"][split]["shards"]:
    for rec in records.iter_videos(os.path.join(data_dir, split, shard), layout):
      frames = np.stack([tf.io.decode_jpeg(f, channels=3).numpy() for f in rec["frames"]])
      expected = (rec["num_frames"], rec["height"], rec["width"], 3)
      if frames.shape != expected:
        raise AssertionError(f"frames {frames.shape} != {expected}")
      vid = rec["video_id"]
      if vid in result:
        raise AssertionError(f"video {vid} written twice")
      result[vid] = (tuple(rec["labels"]), frames)
  if len(result) != manifest["splits"][split]["num_videos"]:
    raise AssertionError(f"{len(result)} records, manifest says "
                         f"{manifest['splits'][split]['num_videos']}")
  return manifest, result


def write_tiny_split(root: str, split: str, sizes, rs: np.random.RandomState, *,
                     num_classes: int, height: int, width: int,
                     frames_per_video: int = 6, layout: str = records.LAYOUT_FRAMES) -> Dict:
  """Writes a split of tiny labelled videos as shards of `layout` (default: the one data_prep
  writes); returns its manifest entry.

  ``sizes`` is the number of videos, or a list of videos per shard. Video v
  has class ``v % num_classes`` and frames of noise whose brightness encodes
  the class (``rs.rand * 60 + 40 * label``), so a tiny model can learn it.
  """
  sizes = [sizes] if isinstance(sizes, int) else list(sizes)
  os.makedirs(os.path.join(root, split), exist_ok=True)
  names, v = [], 0
  for i, size in enumerate(sizes):
    names.append(records.shard_name(split, i, len(sizes)))
    with records.ShardWriter(os.path.join(root, split, names[-1]), layout) as writer:
      for _ in range(size):
        label = v % num_classes
        frames = [tf.io.encode_jpeg((rs.rand(height, width, 3) * 60 + 40 * label)
                                    .astype(np.uint8), quality=95).numpy()
                  for _ in range(frames_per_video)]
        writer.write(f"{split}{v}", frames, [label], [f"c{label}"], height, width)
        v += 1
  return {"num_videos": v, "layout": layout, "shards": names, "shard_sizes": sizes,
          "skipped": []}


def write_tiny_dataset(data_dir: str, splits: Dict, rs: np.random.RandomState, *,
                       dataset: str, num_classes: int, height: int, width: int,
                       frames_per_video: int = 6) -> Dict:
  """`write_tiny_split` for each ``split: sizes`` of ``splits`` (in that order), then the
  data set's manifest.json; returns the manifest."""
  manifest = {"dataset": dataset, "classes": [f"c{k}" for k in range(num_classes)],
              "multi_label": False,
              "splits": {split: write_tiny_split(data_dir, split, sizes, rs,
                                                 num_classes=num_classes, height=height,
                                                 width=width, frames_per_video=frames_per_video)
                         for split, sizes in splits.items()}}
  with open(os.path.join(data_dir, records.MANIFEST), "w") as f:
    json.dump(manifest, f)
  return manifest
