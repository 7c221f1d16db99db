"""Converting one split: annotations -> sharded TFRecords + manifest entry."""

from __future__ import annotations

import os
import re
import sys
from typing import Callable, Optional, Sequence

from reskd_jax.records import shard_name

from data_prep import manifest
from data_prep.annotations import read_annotations
from data_prep.encode import ConvertOptions
from data_prep.items import Annotations, ConversionError
from data_prep.labels import load_classes
from data_prep.shards import ShardTask, assign, default_num_shards, write_shards

MAX_PRINTED_SKIPS = 50


def _stderr(msg: str):
  print(msg, file=sys.stderr, flush=True)


def _stdout(msg: str):
  print(msg, flush=True)


def default_workers() -> int:
  return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def convert(annotations: Annotations, out_dir: str, split: str,
            options: ConvertOptions = ConvertOptions(), num_shards: Optional[int] = None,
            workers: Optional[int] = None, shuffle_seed: int = 0,
            log: Callable[[str], None] = _stdout, warn: Callable[[str], None] = _stderr,
            processes=None) -> dict:
  """Writes `<out_dir>/<split>/<split>-XXXXX-of-YYYYY.tfrecord` and merges the split
  into `<out_dir>/manifest.json`; returns the split's manifest entry.

  Bad items are skipped and listed (with reasons) in the manifest; raises
  ConversionError when no video at all could be converted (nothing of the
  existing manifest is changed then). `processes`: a `data_prep.pool.Pool` to use
  (kept by the caller across calls) instead of starting `workers` processes.
  """
  if not re.fullmatch(r"[A-Za-z0-9_.-]+", split):
    raise ConversionError(f"bad split name {split!r} (letters, digits, _ . - only)")
  manifest.check_classes(out_dir, annotations.classes)
  skipped = [s.to_json() for s in annotations.skipped]
  items = annotations.items
  if not items:
    _print_skips(skipped, warn)
    raise ConversionError(f"nothing to convert in {annotations.origin}: "
                          f"{_summary(skipped) or 'no videos listed'}")
  num_shards = num_shards or default_num_shards(len(items))
  workers = processes.workers if processes is not None else (workers or default_workers())
  split_dir = os.path.join(out_dir, split)
  os.makedirs(split_dir, exist_ok=True)
  shards = [shard_name(split, k, num_shards) for k in range(num_shards)]
  tasks = [ShardTask(split_dir, name, shard_items, options)
           for name, shard_items in zip(shards, assign(items, num_shards, shuffle_seed))]
  log(f"[{split}] {len(items)} videos -> {num_shards} shards in {split_dir} "
      f"({workers} worker{'s' * (workers > 1)})")
  results = write_shards(tasks, workers, log, processes=processes)
  for res in results:
    skipped.extend({"item": s["item"], "reason": s["reason"]} for s in res["skipped"])
  num_videos = sum(r["num_videos"] for r in results)
  _print_skips(skipped, warn)
  if num_videos == 0:
    raise ConversionError(f"no video of split {split!r} could be converted "
                          f"({_summary(skipped)}); see the reasons above")
  _remove_stale_shards(split_dir, split, set(shards), log)
  # Per-shard counts (results are in task order) let every host of a
  # multi-host run know its epoch length, for exact resumption.
  entry = {"num_videos": num_videos, "shards": shards,
           "shard_sizes": [int(r["num_videos"]) for r in results], "skipped": skipped,
           "options": options.to_json()}
  manifest.update(out_dir, annotations.dataset, annotations.classes, annotations.multi_label,
                  split, entry)
  log(f"[{split}] {num_videos} videos written, {len(skipped)} skipped; manifest: "
      f"{os.path.join(out_dir, 'manifest.json')}")
  return entry


def _summary(skipped: Sequence[dict]) -> str:
  if not skipped:
    return ""
  first = skipped[0]
  return f"{len(skipped)} item(s) skipped, e.g. {first['item']}: {first['reason']}"


def _print_skips(skipped: Sequence[dict], warn):
  for s in skipped[:MAX_PRINTED_SKIPS]:
    warn(f"skipped {s['item']}: {s['reason']}")
  if len(skipped) > MAX_PRINTED_SKIPS:
    warn(f"... and {len(skipped) - MAX_PRINTED_SKIPS} more skipped (all listed in manifest.json)")


def _remove_stale_shards(split_dir: str, split: str, keep: set, log):
  """Shards of an earlier conversion of this split with another shard count."""
  pattern = re.compile(re.escape(split) + r"-\d{5}-of-\d{5}\.tfrecord")
  for name in sorted(os.listdir(split_dir)):
    if pattern.fullmatch(name) and name not in keep:
      log(f"  removing {name} (from an earlier conversion with another shard count)")
      for path in (os.path.join(split_dir, name), os.path.join(split_dir, f".{name}.json")):
        if os.path.exists(path):
          os.remove(path)
  tmp = re.compile(r"\.?" + re.escape(split) + r"-\d{5}-of-\d{5}\.tfrecord(\.json)?\.tmp-(\d+)")
  for name in sorted(os.listdir(split_dir)):
    m = tmp.fullmatch(name)
    if m and not _alive(int(m.group(2))):
      os.remove(os.path.join(split_dir, name))


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def convert_format(fmt: str, annotations: Optional[str], source: str, out: str, split: str,
                   classes: Optional[str] = None, options: ConvertOptions = ConvertOptions(),
                   num_shards: Optional[int] = None, workers: Optional[int] = None,
                   shuffle_seed: int = 0, dataset: Optional[str] = None,
                   log: Callable[[str], None] = _stdout,
                   warn: Callable[[str], None] = _stderr, processes=None) -> dict:
  """Reads the annotations of format `fmt` and converts them (see `convert`).

  The class list: the `classes` file when given; else the class list of a
  manifest already in `out` (so `val` gets the indices of `train`); else
  derived from the annotations (see each reader). `dataset` overrides the data
  set name written in the manifest (default: the format's).
  """
  class_list = load_classes(classes) if classes else None
  if class_list is None and os.path.isdir(out):
    class_list = manifest.existing_classes(out)
    if class_list is not None:
      log(f"using the {len(class_list)} classes of {os.path.join(out, 'manifest.json')}")
  ann = read_annotations(fmt, annotations, source, split, class_list)
  if dataset:
    ann.dataset = dataset
  if not ann.classes:
    raise ConversionError(f"no class labels found in {ann.origin}")
  return convert(ann, out, split, options, num_shards=num_shards, workers=workers,
                 shuffle_seed=shuffle_seed, log=log, warn=warn, processes=processes)
