"""The synthetic demo data set: small clips whose class needs the frames' order.

8-frame 64x64 grayscale clips (stored as RGB with equal channels): a smooth
random gradient background plus a faint low-frequency sinusoid, fresh Gaussian
noise (sigma 0.1) in every frame, and one small 8x8 object (hollow square,
plus, X or 2x2 checkerboard; ~30 lit pixels; contrast 0.5-0.9) moving
horizontally left or right at 1-3 px per frame. The start is uniform over the
positions where the whole path fits and a left clip is a right clip's path
played backwards, so the direction is readable only from the frames' order.
Label = shape x direction: 8 classes (`square_left`, `square_right`, ...).

Everything is generated locally and deterministically (per-clip seeds), written
as real video files (H.264, lossless: qp 0) plus Mini-Kinetics-style list files
under `<out>/raw`, then converted by the ordinary converter to `<out>/records`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from typing import Dict, Optional

import av
import numpy as np
from reskd_jax.fileio import atomic_path, read_json, write_json_atomic

from data_prep import pool
from data_prep.converter import convert_format, default_workers
from data_prep.encode import ConvertOptions

VERSION = 1
NUM_FRAMES = 8
SIZE = 64
OBJECT = 8
NOISE_SIGMA = 0.1
SHAPES = ("square", "plus", "x", "checker")
DIRECTIONS = ("left", "right")
CLASSES = tuple(f"{s}_{d}" for s in SHAPES for d in DIRECTIONS)
SPLIT_SEEDS = {"train": 0, "test": 1}  # mixed with the user's seed: different clips per split
FPS = 8


def templates() -> Dict[str, np.ndarray]:
  """The four 8x8 binary objects (28-32 lit pixels each)."""
  i, j = np.mgrid[:OBJECT, :OBJECT]
  square = (i == 0) | (i == OBJECT - 1) | (j == 0) | (j == OBJECT - 1)
  plus = np.isin(i, (3, 4)) | np.isin(j, (3, 4))
  k = np.minimum(i, OBJECT - 1 - i)  # an X of 2-pixel strokes
  x = np.isin(j - k, (0, 1)) | np.isin(OBJECT - 1 - j - k, (0, 1))
  checker = ((i // 4) + (j // 4)) % 2 == 0
  return {"square": square, "plus": plus, "x": x, "checker": checker}


_TEMPLATES = templates()


def make_clip(label: int, rng: np.random.Generator) -> np.ndarray:
  """(NUM_FRAMES, SIZE, SIZE) uint8 grayscale frames of class `label`."""
  shape, direction = SHAPES[label // 2], DIRECTIONS[label % 2]
  y, x = np.mgrid[:SIZE, :SIZE] / (SIZE - 1) - 0.5
  background = (rng.uniform(0.15, 0.35) + rng.uniform(-0.2, 0.2) * x + rng.uniform(-0.2, 0.2) * y)
  fx, fy = rng.uniform(-2, 2, size=2)  # cycles per image: low frequency
  background = background + rng.uniform(0.02, 0.05) * np.sin(
      2 * np.pi * (fx * x + fy * y) + rng.uniform(0, 2 * np.pi))
  contrast = rng.uniform(0.5, 0.9)
  speed = int(rng.integers(1, 4))
  span = speed * (NUM_FRAMES - 1)
  left_edge = int(rng.integers(0, SIZE - OBJECT - span + 1))
  top = int(rng.integers(0, SIZE - OBJECT + 1))
  obj = _TEMPLATES[shape] * contrast
  frames = np.empty((NUM_FRAMES, SIZE, SIZE), np.uint8)
  for t in range(NUM_FRAMES):
    step = t if direction == "right" else NUM_FRAMES - 1 - t
    col = left_edge + speed * step
    img = background.copy()
    img[top:top + OBJECT, col:col + OBJECT] += obj
    img += rng.normal(0.0, NOISE_SIGMA, size=img.shape)
    frames[t] = np.round(np.clip(img, 0.0, 1.0) * 255).astype(np.uint8)
  return frames


def clip_rng(seed: int, split: str, index: int) -> np.random.Generator:
  return np.random.default_rng([seed, SPLIT_SEEDS[split], index])


def clip_label(index: int) -> int:
  return index % len(CLASSES)  # balanced classes


def write_video(path: str, frames: np.ndarray):
  """Lossless H.264 (qp 0) mp4; grey frames stored as RGB with equal channels.
  Written to a temporary name and renamed: a file that exists is complete."""
  with atomic_path(path) as tmp, av.open(tmp, "w", format="mp4") as container:
    stream = container.add_stream("libx264", rate=FPS)
    stream.width, stream.height = frames.shape[2], frames.shape[1]
    stream.pix_fmt = "yuv420p"
    stream.options = {"qp": "0", "preset": "ultrafast", "threads": "1"}
    for f in frames:
      rgb = np.repeat(f[..., None], 3, axis=-1)
      for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)


def relative_path(split: str, index: int) -> str:
  return f"{split}/{CLASSES[clip_label(index)]}/{index:05d}.mp4"


def _generate_range(args):
  raw_dir, split, seed, start, stop = args
  for index in range(start, stop):
    path = os.path.join(raw_dir, relative_path(split, index))
    if os.path.exists(path):
      continue
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_video(path, make_clip(clip_label(index), clip_rng(seed, split, index)))
  return stop - start


def generate(raw_dir: str, counts: Dict[str, int], seed: int = 0, workers: int = 1,
             processes=None) -> Dict[str, str]:
  """Writes the videos, `<split>_list.txt` (`path label_index`) and `classes.txt`; returns
  the list file per split. Resumable: existing videos are kept."""
  os.makedirs(raw_dir, exist_ok=True)
  jobs = []
  for split, num in counts.items():
    chunk = max(1, -(-num // (4 * max(1, workers))))
    jobs += [(raw_dir, split, seed, s, min(num, s + chunk)) for s in range(0, num, chunk)]
  if processes is not None:
    processes.run(_generate_range, [(job,) for job in jobs])
  elif workers > 1 and len(jobs) > 1:
    pool.run(_generate_range, [(job,) for job in jobs], workers)
  else:
    for job in jobs:
      _generate_range(job)
  lists = {}
  for split, num in counts.items():
    lists[split] = os.path.join(raw_dir, f"{split}_list.txt")
    _write_text(lists[split], "".join(f"{relative_path(split, i)} {clip_label(i)}\n"
                                      for i in range(num)))
  _write_text(os.path.join(raw_dir, "classes.txt"), "".join(c + "\n" for c in CLASSES))
  return lists


def _write_text(path: str, text: str):
  with atomic_path(path) as tmp, open(tmp, "w") as f:
    f.write(text)


def _stamp(num_train: int, num_test: int, seed: int) -> dict:
  return {"version": VERSION, "num_train": num_train, "num_test": num_test, "seed": seed}


def _read_json(path: str) -> Optional[dict]:
  try:
    return read_json(path)
  except (OSError, ValueError):
    return None


def prepare_demo(out_dir: str, num_train: int = 600, num_test: int = 400, seed: int = 0,
                 workers: Optional[int] = None, log=print) -> str:
  """Generates the demo videos under `<out_dir>/raw` and converts them to
  `<out_dir>/records` (splits "train" and "test", short side 64, JPEG quality 95).

  Returns the records directory (holds manifest.json). Idempotent: returns at
  once when a complete conversion with the same settings is there; an
  interrupted run resumes. Other settings in the same out_dir start afresh.
  """
  raw_dir, records = os.path.join(out_dir, "raw"), os.path.join(out_dir, "records")
  stamp = _stamp(num_train, num_test, seed)
  done_path = os.path.join(records, ".demo-complete.json")
  if _read_json(done_path) == stamp and os.path.isfile(os.path.join(records, "manifest.json")):
    return records
  workers = workers or default_workers()
  start = time.time()
  raw_stamp_path = os.path.join(raw_dir, ".demo-raw.json")
  if _read_json(raw_stamp_path) not in (None, stamp) or _read_json(
      os.path.join(records, ".demo-settings.json")) not in (None, stamp):
    log(f"demo data in {out_dir} was made with other settings: regenerating")
    shutil.rmtree(raw_dir, ignore_errors=True)
    shutil.rmtree(records, ignore_errors=True)
  os.makedirs(raw_dir, exist_ok=True)
  write_json_atomic(raw_stamp_path, stamp)
  counts = {"train": num_train, "test": num_test}
  with contextlib.ExitStack() as stack:
    processes = stack.enter_context(pool.Pool(workers)) if workers > 1 else None
    lists = generate(raw_dir, counts, seed, workers, processes)
    log(f"demo: {num_train + num_test} videos generated in {time.time() - start:.1f} s")
    os.makedirs(records, exist_ok=True)
    write_json_atomic(os.path.join(records, ".demo-settings.json"), stamp)
    options = ConvertOptions(short_side=SIZE, jpeg_quality=95)
    for split in counts:
      convert_format("minik", lists[split], raw_dir, records, split,
                     classes=os.path.join(raw_dir, "classes.txt"), options=options,
                     workers=1, dataset="demo", log=log, processes=processes)
  write_json_atomic(done_path, stamp)
  log(f"demo data set ready in {time.time() - start:.1f} s: {records}")
  return records
