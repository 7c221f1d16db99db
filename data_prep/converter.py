"""Converting one split: annotations -> sharded TFRecords + manifest entry."""

from __future__ import annotations

import math
import os
import re
import sys
from typing import Callable, Dict, List, Optional, Sequence

from reskd_jax.data.records import LAYOUT_FRAMES, MANIFEST, frames_path, shard_name
from reskd_jax.fileio import recover

from data_prep import leaks, manifest
from data_prep.annotations import read_annotations
from data_prep.encode import ConvertOptions
from data_prep.items import Annotations, ConversionError
from data_prep.labels import load_classes
from data_prep.shards import (MAX_SHARDS, VIDEOS_PER_SHARD, ShardTask, assign, default_num_shards,
                              write_shards)

MAX_PRINTED_SKIPS = 50
MAX_LISTED_LABELS = 10


def _stderr(msg: str):
  print(msg, file=sys.stderr, flush=True)


def _stdout(msg: str):
  print(msg, flush=True)


def default_workers() -> int:
  if hasattr(os, "sched_getaffinity"):
    return max(1, len(os.sched_getaffinity(0)))
  return max(1, os.cpu_count() or 1)


def check_out_dir(out_dir: str):
  """ConversionError unless `out_dir` is a directory, or can be made one, that this
  process can write to. Creates nothing."""
  if os.path.exists(out_dir) and not os.path.isdir(out_dir):
    raise ConversionError(f"--out {out_dir!r} is a file, not a directory")
  parent = os.path.abspath(out_dir)
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent):
    raise ConversionError(f"--out {out_dir!r} cannot be made: {parent!r} is a file, not a "
                          f"directory")
  if not os.access(parent, os.W_OK | os.X_OK):
    raise ConversionError(f"--out {out_dir!r} is not writable ({parent!r}: permission denied "
                          f"or a read-only file system)")


def _make_out_dir(out_dir: str) -> List[str]:
  """Creates `out_dir` (and its missing parents); returns those created, deepest first.
  ConversionError (with nothing left behind) when it cannot."""
  created, path = [], os.path.abspath(out_dir)
  while not os.path.exists(path):
    created.append(path)
    path = os.path.dirname(path)
  try:
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, manifest.LOCK), "a"):
      pass
  except OSError as e:
    _remove_dirs(created)
    raise ConversionError(f"cannot write to --out {out_dir!r}: {e.strerror or e}") from None
  return created


def _remove_dirs(created: Sequence[str]):
  for path in created:
    try:
      lock = os.path.join(path, manifest.LOCK)
      if os.listdir(path) == [manifest.LOCK]:
        os.remove(lock)
      os.rmdir(path)
    except OSError:
      return


def _existing_shard_count(split_dir: str, split: str, num_items: int) -> Optional[int]:
  """The shard count of shards already in `split_dir` (an earlier, maybe interrupted,
  conversion), when one that the default could have chosen for `num_items` videos
  (whatever the worker count): a rerun then resumes instead of starting afresh."""
  if not os.path.isdir(split_dir):
    return None
  pattern = re.compile(r"\.?" + re.escape(split) + r"-\d{5}-of-(\d{5})\.tfrecord")
  counts = {int(m.group(1)) for m in map(pattern.match, os.listdir(split_dir)) if m}
  if len(counts) != 1:
    return None
  count = counts.pop()
  least = min(MAX_SHARDS, max(1, math.ceil(num_items / VIDEOS_PER_SHARD)))
  return count if least <= count <= min(MAX_SHARDS, max(least, num_items)) else None


def convert(annotations: Annotations, out_dir: str, split: str,
            options: ConvertOptions = ConvertOptions(), num_shards: Optional[int] = None,
            workers: Optional[int] = None, shuffle_seed: int = 0,
            log: Callable[[str], None] = _stdout, warn: Callable[[str], None] = _stderr,
            processes=None) -> dict:
  """Writes `<out_dir>/<split>/<split>-XXXXX-of-YYYYY.tfrecord` and merges the split
  into `<out_dir>/manifest.json`; returns the split's manifest entry.

  Bad items are skipped and listed (with reasons) in the manifest; partial ones too,
  unless `options.allow_partial` (then they are written and listed under `partial`).
  Raises ConversionError when `out_dir` is unusable, when its manifest or a running
  conversion into it has another class list (checked before converting), or when no
  video at all could be converted (nothing of the existing manifest is changed then,
  and no shard of a split it does not list is left). `processes`: a `data_prep.pool.Pool` to use
  (kept by the caller across calls) instead of starting `workers` processes. The
  default shard count is the shard count already in `<out_dir>/<split>` when there is
  one (a resumed conversion), else `shards.default_num_shards`.
  """
  if not re.fullmatch(r"[A-Za-z0-9_.-]+", split):
    raise ConversionError(f"bad split name {split!r} (letters, digits, _ . - only)")
  check_out_dir(out_dir)
  if os.path.isdir(out_dir):
    manifest.check_classes(out_dir, annotations.classes)
  skipped = [s.to_json() for s in annotations.skipped]
  items = annotations.items
  if not items:
    _print_skips(skipped, warn)
    raise ConversionError(f"nothing to convert in {annotations.origin}: "
                          f"{_summary(skipped) or 'no videos listed'}")
  workers = processes.workers if processes is not None else (workers or default_workers())
  split_dir = os.path.join(out_dir, split)
  num_shards = (num_shards or _existing_shard_count(split_dir, split, len(items))
                or default_num_shards(len(items), workers))
  created = _make_out_dir(out_dir)
  with manifest.classes_held(out_dir, split, annotations.classes):
    split_created = not os.path.isdir(split_dir)
    os.makedirs(split_dir, exist_ok=True)
    shards = [shard_name(split, k, num_shards) for k in range(num_shards)]
    tasks = [ShardTask(split_dir, name, shard_items, options)
             for name, shard_items in zip(shards, assign(items, num_shards, shuffle_seed))]
    log(f"[{split}] {len(items)} videos -> {num_shards} shards in {split_dir} "
        f"({workers} worker{'s' * (workers > 1)})")
    results = write_shards(tasks, workers, log, processes=processes)
    partial = []
    for res in results:
      skipped.extend({"item": s["item"], "reason": s["reason"]} for s in res["skipped"])
      partial.extend({"item": p["item"], "reason": p["reason"]} for p in res["partial"])
    num_videos = sum(r["num_videos"] for r in results)
    _print_skips(skipped, warn)
    for p in partial:
      warn(f"partial {p['item']} (kept: --allow-partial): {p['reason']}")
    if num_videos == 0:
      if split not in (manifest.load(out_dir) or {}).get("splits", {}):
        _remove_shards(split_dir, shards, split_created)  # no 0-video shards left behind
    else:
      _remove_stale_shards(split_dir, split, set(shards), log)
      if options.layout != LAYOUT_FRAMES:  # .frames files of an earlier conversion's layout
        for name in shards:
          if os.path.exists(frames_path(os.path.join(split_dir, name))):
            os.remove(frames_path(os.path.join(split_dir, name)))
      # Per-shard counts (results are in task order) let every host of a multi-host
      # run know its epoch length, for exact resumption; per-shard byte sizes let the
      # reader name a shard that was cut short.
      entry = {"num_videos": num_videos, "layout": options.layout, "shards": shards,
               "shard_sizes": [int(r["num_videos"]) for r in results],
               "shard_bytes": [int(r["bytes"]) for r in results], "skipped": skipped,
               "partial": partial, "options": options.to_json()}
      if options.layout == LAYOUT_FRAMES:
        entry["frames_bytes"] = [int(r["frames_bytes"]) for r in results]
      _add_checks(entry, out_dir, split, results, warn)
      manifest.update(out_dir, annotations.dataset, annotations.classes,
                      annotations.multi_label, split, entry)
  if num_videos == 0:
    _remove_dirs(created)
    raise ConversionError(f"no video of split {split!r} could be converted "
                          f"({_summary(skipped)}); see the reasons above")
  log(f"[{split}] {num_videos} videos written, {len(skipped)} skipped"
      f"{f', {len(partial)} partial' if partial else ''}; manifest: "
      f"{os.path.join(out_dir, MANIFEST)}")
  return entry


def _add_checks(entry: dict, out_dir: str, split: str, results: Sequence[dict], warn):
  """The shards' checksums (the trainer verifies them at start-up, see
  reskd_jax.data.shard_check) and the videos this split shares with the splits already
  written (`leaks`: reported, with their ids)."""
  if all(r.get("sha256") for r in results):
    entry["shard_sha256"] = [r["sha256"] for r in results]
  found = leaks.report(out_dir, split, results, manifest.load(out_dir), warn)
  if found:
    entry["leaks"] = found


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


def _remove_shards(split_dir: str, shards: Sequence[str], split_created: bool):
  """The (empty) shards of a conversion that converted nothing."""
  for name in shards:
    for path in (os.path.join(split_dir, name), os.path.join(split_dir, f".{name}.json"),
                 frames_path(os.path.join(split_dir, name))):
      if os.path.exists(path):
        os.remove(path)
  if split_created and not os.listdir(split_dir):
    os.rmdir(split_dir)


def _remove_stale_shards(split_dir: str, split: str, keep: set, log):
  """Shards of an earlier conversion of this split with another shard count."""
  pattern = re.compile(re.escape(split) + r"-\d{5}-of-\d{5}\.tfrecord")
  for name in sorted(os.listdir(split_dir)):
    if pattern.fullmatch(name) and name not in keep:
      log(f"  removing {name} (from an earlier conversion with another shard count)")
      for path in (os.path.join(split_dir, name), os.path.join(split_dir, f".{name}.json"),
                   frames_path(os.path.join(split_dir, name))):
        if os.path.exists(path):
          os.remove(path)
  tmp = re.compile(r"(\.?" + re.escape(split)
                   + r"-\d{5}-of-\d{5}\.(tfrecord|tfrecord\.json|frames))\.tmp-\d+")
  for name in sorted(os.listdir(split_dir)):
    m = tmp.fullmatch(name)
    if m:  # temporaries of dead conversions, whatever their shard count
      recover(os.path.join(split_dir, m.group(1)))


def _unknown_labels_error(split: str, out: str, classes: Sequence[str],
                          unknown: Dict[str, int]) -> ConversionError:
  names = sorted(unknown)
  shown = ", ".join(repr(n) for n in names[:MAX_LISTED_LABELS])
  if len(names) > MAX_LISTED_LABELS:
    shown += f", ... ({len(names)} labels)"
  return ConversionError(
      f"split {split!r} has labels that are not among the {len(classes)} classes of "
      f"{os.path.join(out, MANIFEST)}: {shown} ({sum(unknown.values())} videos); nothing "
      f"was converted. Convert every split with --classes=<file listing all classes> into "
      f"a fresh --out, or this split into a fresh --out")


def convert_format(fmt: str, annotations: Optional[str], source: str, out: str, split: str,
                   classes: Optional[str] = None, options: ConvertOptions = ConvertOptions(),
                   num_shards: Optional[int] = None, workers: Optional[int] = None,
                   shuffle_seed: int = 0, dataset: Optional[str] = None,
                   log: Callable[[str], None] = _stdout,
                   warn: Callable[[str], None] = _stderr, processes=None) -> dict:
  """Reads the annotations of format `fmt` and converts them (see `convert`).

  The class list: the `classes` file when given; else the class list of a
  manifest already in `out` (so `val` gets the indices of `train`; a label
  outside it stops the conversion before any work); else derived from the
  annotations (see each reader). `dataset` overrides the data set name written
  in the manifest (default: the format's). A `source` that is not a directory,
  or an `out` that cannot be written, raises ConversionError before anything is
  read or created.
  """
  if not os.path.isdir(source):
    raise ConversionError(f"--source {source!r} "
                          f"{'is not a directory' if os.path.exists(source) else 'does not exist'}")
  check_out_dir(out)
  class_list = load_classes(classes) if classes else None
  from_manifest = False
  if class_list is None and os.path.isdir(out):
    class_list = manifest.existing_classes(out)
    if class_list is not None:
      from_manifest = True
      log(f"using the {len(class_list)} classes of {os.path.join(out, MANIFEST)}")
  ann = read_annotations(fmt, annotations, source, split, class_list)
  for note in ann.notes:
    warn(f"note: {note}")
  if dataset:
    ann.dataset = dataset
  if not ann.classes:
    raise ConversionError(f"no class labels found in {ann.origin}")
  if from_manifest and ann.unknown_labels:
    raise _unknown_labels_error(split, out, ann.classes, ann.unknown_labels)
  return convert(ann, out, split, options, num_shards=num_shards, workers=workers,
                 shuffle_seed=shuffle_seed, log=log, warn=warn, processes=processes)
