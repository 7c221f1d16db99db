"""Sharded, atomic, resumable shard writing (both layouts of `reskd_jax.data.records`).

Items are assigned to shards deterministically (a fixed-seed permutation, then
contiguous runs), so a rerun builds the same shards. Each shard is written to
`<shard>.tmp-<pid>` and renamed when complete; a small sidecar
`.<shard>.json` (renamed just before the shard) records its count, its skipped
and partial items, a fingerprint of its items and options, and the written
file's size and SHA-256 checksum (and those of its `.frames` file, layout "frames",
which is renamed into place first). A rerun keeps every shard whose sidecar
fingerprint matches, whose items' sources are unchanged on disk (the sidecar records
each one's size and modification time, see `sources.source_state`) and whose files
still have the recorded sizes and checksums (a shard cut short or damaged since is
written again), and rewrites the others, saying why.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import time
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
from reskd_jax.fileio import atomic_path, read_json, write_json_atomic

from data_prep import pool
from reskd_jax.data.records import LAYOUT_FRAMES, ShardWriter, frames_path

from data_prep.encode import ConvertOptions, encode_frames
from data_prep.items import ConversionError, DiskFull, Item, ItemError
from data_prep.sources import source_state

FORMAT_VERSION = 3  # 3: the "frames" layout (and ConvertOptions.layout, max_frames)
VIDEOS_PER_SHARD = 100
MAX_SHARDS = 4096
_BLOCK = 1 << 20


def default_num_shards(num_items: int, workers: int = 1) -> int:
  """One shard per VIDEOS_PER_SHARD videos, but at least one per worker (while there are
  videos for them), so that every worker has a shard to write."""
  per_size = math.ceil(num_items / VIDEOS_PER_SHARD)
  return max(1, min(MAX_SHARDS, max(per_size, min(num_items, workers))))


def assign(items: Sequence[Item], num_shards: int, seed: int = 0) -> List[List[Item]]:
  """A fixed-seed permutation cut into `num_shards` contiguous runs (classes get mixed)."""
  order = (list(np.random.default_rng(seed).permutation(len(items))) if seed is not None
           else list(range(len(items))))
  n = len(order)
  return [[items[i] for i in order[k * n // num_shards:(k + 1) * n // num_shards]]
          for k in range(num_shards)]


@dataclasses.dataclass
class ShardTask:
  split_dir: str
  shard: str  # file name
  items: List[Item]
  options: ConvertOptions

  @property
  def path(self) -> str:
    return os.path.join(self.split_dir, self.shard)

  @property
  def frames(self) -> Optional[str]:
    """The shard's `.frames` file (layout "frames"), else None."""
    return frames_path(self.path) if self.options.layout == LAYOUT_FRAMES else None

  @property
  def sidecar(self) -> str:
    return os.path.join(self.split_dir, f".{self.shard}.json")

  def fingerprint(self) -> str:
    blob = json.dumps({"version": FORMAT_VERSION, "options": self.options.to_json(),
                       "items": [dataclasses.astuple(i) for i in self.items]}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def file_digest(path: str) -> Tuple[int, str]:
  """(size in bytes, SHA-256 hex digest) of a file."""
  digest, size = hashlib.sha256(), 0
  with open(path, "rb") as f:
    while True:
      block = f.read(_BLOCK)
      if not block:
        return size, digest.hexdigest()
      size += len(block)
      digest.update(block)


def check(task: ShardTask) -> Tuple[Optional[dict], Optional[str]]:
  """(sidecar, None) for a complete, up-to-date and intact shard; else (None, why it is
  written again), the reason None when there is simply no finished shard."""
  if not (os.path.isfile(task.path) and os.path.isfile(task.sidecar)):
    return None, None
  try:
    side = read_json(task.sidecar)
  except (OSError, ValueError):
    return None, None
  if not isinstance(side, dict) or side.get("fingerprint") != task.fingerprint():
    return None, None
  by_id = {i.video_id: i for i in task.items}
  for s in side.get("skipped", []) + side.get("partial", []):
    item = by_id.get(s.get("item"))
    if item is None:
      return None, None
    if source_state(item) != s.get("state"):  # a bad source was fixed (or replaced)
      return None, f"source of {s.get('item')} (skipped or partial) changed since it was written"
  changed = changed_sources(task, side)
  if changed:
    return None, changed
  written = [(task.path, side.get("bytes"), side.get("sha256"), "")]
  if task.frames:
    if not os.path.isfile(task.frames):
      return None, f"damaged: {os.path.basename(task.frames)} is missing"
    written.append((task.frames, side.get("frames_bytes"), side.get("frames_sha256"),
                    f"{os.path.basename(task.frames)}: "))
  for path, expected_size, expected_sha, what in written:
    size = os.path.getsize(path)
    if size != expected_size:
      return None, f"damaged: {what}{size} bytes, {expected_size} written"
    if file_digest(path)[1] != expected_sha:
      return None, f"damaged: {what}its SHA-256 checksum differs from the one written"
  return side, None


def changed_sources(task: ShardTask, side: dict) -> Optional[str]:
  """Why the shard must be made again because a source it was made from changed since
  (size or modification time; see `sources.source_state`), None when none did."""
  recorded = side.get("sources")
  if not isinstance(recorded, dict):
    return "no record of the sources it was made from (written by an older data_prep)"
  changed = [i.video_id for i in task.items
             if i.video_id in recorded and source_state(i) != recorded[i.video_id]]
  if not changed:
    return None
  shown = ", ".join(changed[:5]) + (f", ... ({len(changed)} videos)" if len(changed) > 5 else "")
  return f"source{'s' * (len(changed) > 1)} changed since it was written: {shown}"


def _disk_full(error: BaseException) -> bool:
  import errno

  import tensorflow as tf

  if isinstance(error, OSError):
    return error.errno in (errno.ENOSPC, errno.EDQUOT)
  return (isinstance(error, (tf.errors.ResourceExhaustedError, tf.errors.OutOfRangeError))
          and "space" in str(error).lower())


def finished(task: ShardTask) -> Optional[dict]:
  """The sidecar of a complete, up-to-date and intact shard, else None."""
  return check(task)[0]


def write_shard(task: ShardTask) -> dict:
  """Writes one shard (unless already complete and intact); returns its sidecar dict
  (plus `reused`, and `damaged`: why a finished shard is written again)."""
  side, damaged = check(task)
  if side is not None:
    return dict(side, reused=True)
  start = time.time()
  # Each file is written under a temporary name (atomic_path, which also removes those
  # of dead conversions); the frames file is moved into place first, the sidecar next,
  # the shard last: a shard under its final name is complete.
  with atomic_path(task.path) as tmp:
    with (atomic_path(task.frames) if task.frames else contextlib.nullcontext()) as tmp_frames:
      with _disk_full_is_one_error(task, tmp, tmp_frames):
        side = _fill_shard(task, tmp, tmp_frames)
    with _disk_full_is_one_error(task, tmp):
      write_json_atomic(task.sidecar, side, indent=1)
  return dict(side, reused=False, damaged=damaged, seconds=round(time.time() - start, 2))


@contextlib.contextmanager
def _disk_full_is_one_error(task: ShardTask, *tmps: Optional[str]):
  """A full disk while writing ``task`` raises DiskFull (with the bytes written so far)."""
  try:
    yield
  except Exception as e:  # noqa: BLE001  re-raised unless the disk is full
    if not _disk_full(e):
      raise
    written = sum(os.path.getsize(p) for p in tmps if p and os.path.exists(p))
    raise DiskFull(task.path, written, len(task.items)) from None


def _fill_shard(task: ShardTask, tmp: str, tmp_frames: Optional[str]) -> dict:
  """Writes ``task``'s items to ``tmp`` (and ``tmp_frames``); the sidecar dict."""
  # TensorFlow is imported only once a shard is written (by `ShardWriter`).
  count, skipped, partial = 0, [], []
  sources = {}
  with ShardWriter(tmp, task.options.layout, frames_file=tmp_frames) as writer:
    for item in task.items:
      sources[item.video_id] = source_state(item)  # before reading it: a later change counts
      try:
        jpegs, height, width, why_partial = encode_frames(item, task.options)
      except ItemError as e:
        reason = str(e)
      except Exception as e:  # noqa: BLE001  a bad file must not stop the conversion
        reason = f"{type(e).__name__}: {e}"
      else:
        writer.write(item.video_id, jpegs, item.labels, item.label_names, height, width)
        count += 1
        if why_partial:
          partial.append({"item": item.video_id, "reason": why_partial,
                          "state": source_state(item)})
        continue
      skipped.append({"item": item.video_id, "reason": reason, "state": source_state(item)})
  with open(tmp, "rb") as f:
    os.fsync(f.fileno())
  size, sha256 = file_digest(tmp)
  side = {"fingerprint": task.fingerprint(), "num_videos": count, "skipped": skipped,
          "partial": partial, "bytes": size, "sha256": sha256, "sources": sources}
  if tmp_frames:
    side["frames_bytes"], side["frames_sha256"] = file_digest(tmp_frames)
  return side


def write_shards(tasks: Sequence[ShardTask], workers: int,
                 log: Callable[[str], None] = print,
                 processes: Optional[pool.Pool] = None) -> List[dict]:
  """Writes every shard, `workers` processes at a time (1: in this process), in the
  `processes` pool when given; results in task order."""
  total = len(tasks)

  def report(i, res):
    results_so_far[i] = res
    if res.get("reused"):
      what = "already complete, verified"
    else:
      what = f"written in {res.get('seconds', 0):.1f} s"
      if res.get("damaged"):
        what = f"found {res['damaged']}; {what} again"
    log(f"  shard {i + 1}/{total} {tasks[i].shard}: {res['num_videos']} videos, "
        f"{len(res['skipped'])} skipped ({what})")

  results_so_far = {}
  if (processes is None and workers <= 1) or total <= 1:
    try:
      for i, t in enumerate(tasks):
        results_so_far[i] = write_shard(t)
        report(i, results_so_far[i])
    except DiskFull as e:
      raise ConversionError(disk_full_message(e, tasks, results_so_far)) from None
    return [results_so_far[i] for i in range(total)]
  try:
    args = [(t,) for t in tasks]
    if processes is not None:
      return processes.run(write_shard, args, on_result=report)
    return pool.run(write_shard, args, workers, on_result=report)
  except DiskFull as e:
    raise ConversionError(disk_full_message(e, tasks, results_so_far)) from None
  except pool.WorkerDied as e:
    raise ConversionError(
        f"{e} (a crash in a video decoder?). Finished shards are kept: rerun to resume, "
        f"with --workers=1 to see which video it is.") from None


def disk_full_message(error: DiskFull, tasks: Sequence[ShardTask], done: dict) -> str:
  """One line: which output filled the disk, the free space left and about how much more
  the split needs (estimated from the bytes per video written so far)."""
  split_dir = os.path.dirname(error.path)
  written_bytes = sum(int(r.get("bytes", 0)) for r in done.values())
  written_videos = sum(int(r.get("num_videos", 0)) for r in done.values())
  per_video = ((written_bytes + error.written) / max(1, written_videos)
               if written_videos else max(error.written, 1))
  left = sum(len(t.items) for i, t in enumerate(tasks) if i not in done)
  try:
    stat = os.statvfs(split_dir)
    free = stat.f_bavail * stat.f_frsize
  except OSError:
    free = 0
  needed = max(0, int(per_video * left) - free)
  return (f"disk full while writing {error.path}: {_size(free)} free on its file system, "
          f"the {left} videos not yet written need about {_size(int(per_video * left))} "
          f"({_size(int(per_video))} per video so far), so free about {_size(needed)} more "
          f"(or use another --out) and rerun the same command: finished shards are kept, "
          f"the partial one was removed")


def _size(n: int) -> str:
  for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
    if n < 1024 or unit == "TiB":
      return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
    n /= 1024
  return f"{n}"
