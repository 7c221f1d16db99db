"""Sharded, atomic, resumable TFRecord writing.

Items are assigned to shards deterministically (a fixed-seed permutation, then
contiguous runs), so a rerun builds the same shards. Each shard is written to
`<shard>.tmp-<pid>` and renamed when complete; a small sidecar
`.<shard>.json` (renamed just before the shard) records its count, its skipped
items and a fingerprint of its items and options. A rerun keeps every shard
whose sidecar fingerprint matches and whose skipped items' sources are
unchanged on disk, and rewrites the others.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import math
import os
import time
from typing import Callable, List, Optional, Sequence

from data_prep import pool
from data_prep.encode import ConvertOptions, encode_item
from data_prep.items import ConversionError, Item, ItemError
from data_prep.sources import source_state

FORMAT_VERSION = 1
VIDEOS_PER_SHARD = 100
MAX_SHARDS = 4096


def default_num_shards(num_items: int) -> int:
  return max(1, min(MAX_SHARDS, math.ceil(num_items / VIDEOS_PER_SHARD)))


def assign(items: Sequence[Item], num_shards: int, seed: int = 0) -> List[List[Item]]:
  """A fixed-seed permutation cut into `num_shards` contiguous runs (classes get mixed)."""
  import numpy as np

  order = np.random.default_rng(seed).permutation(len(items)) if seed is not None else range(len(items))
  order = list(order)
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


def finished(task: ShardTask) -> Optional[dict]:
  """The sidecar of a complete, up-to-date shard, else None."""
  if not (os.path.isfile(task.path) and os.path.isfile(task.sidecar)):
    return None
  try:
    with open(task.sidecar) as f:
      side = json.load(f)
  except (OSError, ValueError):
    return None
  if side.get("fingerprint") != task.fingerprint():
    return None
  by_id = {i.video_id: i for i in task.items}
  for s in side.get("skipped", []):
    item = by_id.get(s.get("item"))
    if item is None or source_state(item) != s.get("state"):
      return None  # a bad source was fixed (or replaced): convert the shard again
  return side


def _replace_atomically(path: str, data: bytes):
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "wb") as f:
    f.write(data)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def write_shard(task: ShardTask) -> dict:
  """Writes one shard (unless already complete); returns its sidecar dict."""
  side = finished(task)
  if side is not None:
    return dict(side, reused=True)
  for stale in glob.glob(glob.escape(task.path) + ".tmp-*") + glob.glob(
      glob.escape(task.sidecar) + ".tmp-*"):
    try:
      os.remove(stale)
    except OSError:
      pass
  import tensorflow as tf

  tmp = f"{task.path}.tmp-{os.getpid()}"
  count, skipped = 0, []
  start = time.time()
  with tf.io.TFRecordWriter(tmp) as writer:
    for item in task.items:
      try:
        record = encode_item(item, task.options)
      except ItemError as e:
        reason = str(e)
      except Exception as e:  # noqa: BLE001  a bad file must not stop the conversion
        reason = f"{type(e).__name__}: {e}"
      else:
        writer.write(record)
        count += 1
        continue
      skipped.append({"item": item.video_id, "reason": reason, "state": source_state(item)})
  with open(tmp, "rb") as f:
    os.fsync(f.fileno())
  side = {"fingerprint": task.fingerprint(), "num_videos": count, "skipped": skipped}
  _replace_atomically(task.sidecar, json.dumps(side, indent=1, sort_keys=True).encode())
  os.replace(tmp, task.path)  # the shard appears only now, complete
  return dict(side, reused=False, seconds=round(time.time() - start, 2))


def write_shards(tasks: Sequence[ShardTask], workers: int,
                 log: Callable[[str], None] = print,
                 processes: Optional[pool.Pool] = None) -> List[dict]:
  """Writes every shard, `workers` processes at a time (1: in this process), in the
  `processes` pool when given; results in task order."""
  total = len(tasks)

  def report(i, res):
    what = "already complete" if res.get("reused") else f"written in {res.get('seconds', 0):.1f} s"
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
