"""Sharded, atomic, resumable TFRecord writing.

Items are assigned to shards deterministically (a fixed-seed permutation, then
contiguous runs), so a rerun builds the same shards. Each shard is written to
`<shard>.tmp-<pid>` and renamed when complete; a small sidecar
`.<shard>.json` (renamed just before the shard) records its count, its skipped
and partial items, a fingerprint of its items and options, and the written
file's size and SHA-256 checksum. A rerun keeps every shard whose sidecar
fingerprint matches, whose skipped and partial items' sources are unchanged on disk and
whose file still has the recorded size and checksum (a shard cut short or
damaged since is written again), and rewrites the others.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import math
import os
import time
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
from reskd_jax.fileio import read_json, write_json_atomic

from data_prep import pool
from data_prep.encode import ConvertOptions, encode_item
from data_prep.items import ConversionError, Item, ItemError
from data_prep.sources import source_state

FORMAT_VERSION = 2
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
    if item is None or source_state(item) != s.get("state"):
      return None, None  # a bad source was fixed (or replaced): convert the shard again
  size = os.path.getsize(task.path)
  if size != side.get("bytes"):
    return None, f"damaged: {size} bytes, {side.get('bytes')} written"
  if file_digest(task.path)[1] != side.get("sha256"):
    return None, "damaged: its SHA-256 checksum differs from the one written"
  return side, None


def finished(task: ShardTask) -> Optional[dict]:
  """The sidecar of a complete, up-to-date and intact shard, else None."""
  return check(task)[0]


def write_shard(task: ShardTask) -> dict:
  """Writes one shard (unless already complete and intact); returns its sidecar dict
  (plus `reused`, and `damaged`: why a finished shard is written again)."""
  side, damaged = check(task)
  if side is not None:
    return dict(side, reused=True)
  for stale in glob.glob(glob.escape(task.path) + ".tmp-*") + glob.glob(
      glob.escape(task.sidecar) + ".tmp-*"):
    try:
      os.remove(stale)
    except OSError:
      pass
  # Imported here, as in `encode.encode_item`: only shard writing needs TensorFlow.
  import tensorflow as tf

  tmp = f"{task.path}.tmp-{os.getpid()}"
  count, skipped, partial = 0, [], []
  start = time.time()
  with tf.io.TFRecordWriter(tmp) as writer:
    for item in task.items:
      try:
        record, why_partial = encode_item(item, task.options)
      except ItemError as e:
        reason = str(e)
      except Exception as e:  # noqa: BLE001  a bad file must not stop the conversion
        reason = f"{type(e).__name__}: {e}"
      else:
        writer.write(record)
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
          "partial": partial, "bytes": size, "sha256": sha256}
  write_json_atomic(task.sidecar, side, indent=1)
  os.replace(tmp, task.path)  # the shard appears only now, complete
  return dict(side, reused=False, damaged=damaged, seconds=round(time.time() - start, 2))


def write_shards(tasks: Sequence[ShardTask], workers: int,
                 log: Callable[[str], None] = print,
                 processes: Optional[pool.Pool] = None) -> List[dict]:
  """Writes every shard, `workers` processes at a time (1: in this process), in the
  `processes` pool when given; results in task order."""
  total = len(tasks)

  def report(i, res):
    if res.get("reused"):
      what = "already complete, verified"
    else:
      what = f"written in {res.get('seconds', 0):.1f} s"
      if res.get("damaged"):
        what = f"found {res['damaged']}; {what} again"
    log(f"  shard {i + 1}/{total} {tasks[i].shard}: {res['num_videos']} videos, "
        f"{len(res['skipped'])} skipped ({what})")

  if (processes is None and workers <= 1) or total <= 1:
    results = []
    for i, t in enumerate(tasks):
      results.append(write_shard(t))
      report(i, results[-1])
    return results
  try:
    args = [(t,) for t in tasks]
    if processes is not None:
      return processes.run(write_shard, args, on_result=report)
    return pool.run(write_shard, args, workers, on_result=report)
  except pool.WorkerDied as e:
    raise ConversionError(
        f"{e} (a crash in a video decoder?). Finished shards are kept: rerun to resume, "
        f"with --workers=1 to see which video it is.") from None
