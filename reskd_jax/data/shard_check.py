"""Naming a damaged, missing or unreadable TFRecord shard in one line, instead of a tf.data traceback.

tf.data reports a shard cut short or corrupted as `DataLossError: truncated
record at N` (or `corrupted record at N`) without saying which file. Two checks
name it:

* `check_sizes`, before reading: each shard's size against the byte count
  data_prep wrote into the manifest (`shard_bytes`). Cheap (one stat per
  shard); it catches a shard cut short, even one cut at a record boundary,
  which tf.data would read without complaint.
* `name_damaged_shards`, while reading: any I/O error of the input pipeline
  (a DataLossError, a shard deleted or made unreadable mid-run: NotFoundError,
  PermissionDeniedError, ...) becomes a DataError naming the shards (among
  those `create_dataset` registered with `register`) that fail to read
  through, found by reading each one again.

* `check_run_splits`, at training start-up, for every split the run will read:
  the manifest's counts agree with each other (`num_videos` is the sum of
  `shard_sizes`, one size, byte count and checksum per shard, and each shard's
  count in data_prep's sidecar `.<shard>.json` where there is one), and every
  shard exists with its recorded size. Then the shards' SHA-256 checksums
  (`shard_sha256`, where the manifest has them) are verified, in a background
  thread by default (its cost is logged: one read of every shard, see
  docs/benchmarks.md for the rate); a mismatch fails the next batch read through
  `name_damaged_shards`, naming the shard.

Either way the fix is to rerun data_prep, which verifies every shard against
its recorded size and checksum and rewrites the damaged ones (a shard that is
merely unreadable needs its permissions or storage fixed instead).

What the start-up check assumes of the manifest (`reskd_jax.data.records.read_manifest`):
per split `shards` (file names under `<data_dir>/<split>/`), `num_videos`, and,
each aligned with `shards` when present, `shard_sizes` (videos per shard),
`shard_bytes` (file sizes) and `shard_sha256` (hex digests of whole files). It
reads nothing of the records themselves, so any stored layout passes it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from typing import Iterable, Iterator, List, Optional, Sequence, Tuple

import tensorflow as tf

from reskd_jax.data.records import FRAMES_SUFFIX  # the "frames" layout's file of a shard's JPEGs
from reskd_jax.errors import DataError

RERUN = "rerun the data_prep command that wrote it: it rewrites damaged shards"
# tf.data's errors for a file that cannot be read (besides OSError from Python readers).
IO_ERRORS = (tf.errors.DataLossError, tf.errors.NotFoundError, tf.errors.PermissionDeniedError,
             tf.errors.UnavailableError, tf.errors.FailedPreconditionError)
_REGISTERED: List[str] = []  # shards of the datasets built in this process, in order
_BACKGROUND_ERRORS: List[str] = []  # found by the background checksum thread
_BLOCK = 1 << 20
CHECKSUM_MODES = ("background", "now", "off")


def register(files: Sequence[str]) -> None:
  """Remembers `files` as shards this process reads (see `name_damaged_shards`)."""
  for path in files:
    if path not in _REGISTERED:
      _REGISTERED.append(path)


def check_sizes(files: Sequence[str], expected_bytes: Optional[Sequence[int]]) -> None:
  """DataError naming every shard whose size differs from `expected_bytes` (the
  manifest's `shard_bytes`, aligned with `files`); nothing to check when None."""
  if expected_bytes is None or len(expected_bytes) != len(files):
    return
  bad = []
  for path, expected in zip(files, expected_bytes):
    size = tf.io.gfile.stat(path).length
    if size != int(expected):
      bad.append(f"{path} ({size} bytes, data_prep wrote {int(expected)})")
  if bad:
    raise DataError(f"damaged shard{'s' * (len(bad) > 1)} {', '.join(bad)}: {RERUN}")


def damaged(files: Iterable[str]) -> List[Tuple[str, str]]:
  """(path, error) for every shard that is gone, unreadable, or whose records do not read
  through (lengths and CRCs)."""
  found = []
  for path in files:
    try:
      if not tf.io.gfile.exists(path):
        found.append((path, "missing"))
        continue
      if path.endswith(FRAMES_SUFFIX):  # raw JPEG bytes (CRC-checked frame by frame as read)
        with tf.io.gfile.GFile(path, "rb") as f:
          f.read(1)
        continue
      tf.data.TFRecordDataset(path).reduce(tf.constant(0, tf.int64), lambda n, _: n + 1)
    except IO_ERRORS + (OSError,) as e:
      found.append((path, _why(e)))
  return found


def _why(error: Exception) -> str:
  if isinstance(error, tf.errors.PermissionDeniedError) or (
      isinstance(error, OSError) and getattr(error, "errno", None) == 13):
    return "permission denied"
  if isinstance(error, tf.errors.NotFoundError) or isinstance(error, FileNotFoundError):
    return "missing"
  return _first_line(error)


def _first_line(error: Exception) -> str:
  text = str(getattr(error, "message", error)).strip()
  if text.startswith("{{function_node"):  # tf's wrapper prefix
    text = text.split("}}", 1)[-1].strip()
  return text.split(" [Op:", 1)[0].splitlines()[0] if text else type(error).__name__


def sha256(path: str) -> str:
  digest = hashlib.sha256()
  with tf.io.gfile.GFile(path, "rb") as f:
    while True:
      block = f.read(_BLOCK)
      if not block:
        return digest.hexdigest()
      digest.update(block)


def _split_problems(data_dir: str, split: str, entry: dict) -> List[str]:
  """What is wrong with one split's manifest entry and files (counts, sizes)."""
  where = f"split {split!r} of {os.path.join(data_dir, 'manifest.json')}"
  shards = list(entry.get("shards") or [])
  if not shards:
    return [f"{where} lists no shards"]
  problems = []
  for key in ("shard_sizes", "shard_bytes", "shard_sha256"):
    if key in entry and len(entry[key]) != len(shards):
      problems.append(f"{where}: {len(entry[key])} {key} for {len(shards)} shards")
  if problems:
    return problems
  sizes = entry.get("shard_sizes")
  if sizes is not None and "num_videos" in entry and sum(map(int, sizes)) != int(entry["num_videos"]):
    problems.append(f"{where}: num_videos is {entry['num_videos']} but its shards hold "
                    f"{sum(map(int, sizes))} (shard_sizes)")
  files = [os.path.join(data_dir, split, name) for name in shards]
  for k, path in enumerate(files):
    if not tf.io.gfile.exists(path):
      problems.append(f"missing shard {path}")
      continue
    if "shard_bytes" in entry:
      size = tf.io.gfile.stat(path).length
      if size != int(entry["shard_bytes"][k]):
        problems.append(f"damaged shard {path} ({size} bytes, data_prep wrote "
                        f"{int(entry['shard_bytes'][k])})")
    side = os.path.join(data_dir, split, f".{shards[k]}.json")
    if sizes is not None and tf.io.gfile.exists(side):  # data_prep's own record of the count
      try:
        with tf.io.gfile.GFile(side) as f:
          count = json.load(f).get("num_videos")
      except (OSError, ValueError, AttributeError, tf.errors.OpError):
        count = None
      if count is not None and int(count) != int(sizes[k]):
        problems.append(f"{where}: shard {shards[k]} holds {count} videos (data_prep's "
                        f"record {side}), the manifest says {int(sizes[k])}")
  return problems


def check_run_splits(data_dir: str, splits: Sequence[str], checksums: str = "background",
                     log=logging.info) -> Optional[threading.Thread]:
  """Checks, before training, every split the run will read (see the module doc).

  Counts and sizes at once (one stat per shard): DataError naming every problem.
  `checksums`: "background" (default) verifies `shard_sha256` in a daemon thread,
  returned (a mismatch fails the next batch read through `name_damaged_shards`);
  "now" verifies them before returning; "off" skips them.
  """
  if checksums not in CHECKSUM_MODES:
    raise ValueError(f"checksums must be one of {CHECKSUM_MODES}, got {checksums!r}")
  from reskd_jax.data import records  # imported here: records imports TensorFlow helpers too

  manifest = records.read_manifest(data_dir)
  problems, to_hash = [], []
  for split in dict.fromkeys(splits):
    entry = (manifest.get("splits") or {}).get(split)
    if entry is None:
      continue  # config_checks.check_splits names a missing split
    found = _split_problems(data_dir, split, entry)
    problems.extend(found)
    if not found and entry.get("shard_sha256"):
      to_hash.extend(zip((os.path.join(data_dir, split, n) for n in entry["shards"]),
                         entry["shard_sha256"], entry.get("shard_bytes") or [0] * len(entry["shards"])))
  if problems:
    raise DataError(f"{'; '.join(problems[:5])}{'; ...' if len(problems) > 5 else ''}: {RERUN}")
  if not to_hash or checksums == "off":
    return None
  total = sum(int(b) for _, _, b in to_hash)
  log("verifying the SHA-256 checksums of %d shards (%.2f GB; about %.0f CPU-seconds) %s",
      len(to_hash), total / 1e9, max(1.0, total / 1.5e9),
      "in the background" if checksums == "background" else "before training")
  if checksums == "now":
    bad = _verify(to_hash)
    if bad:
      raise DataError(_checksum_message(bad))
    return None
  thread = threading.Thread(target=_verify_in_background, args=(to_hash, log),
                            name="shard-checksums", daemon=True)
  thread.start()
  return thread


def check_training_data(data_cfg, log=logging.info) -> Optional[threading.Thread]:
  """`check_run_splits` of the splits a training run reads (`data_cfg.train_split` and
  `eval_split`); `data_cfg.verify_checksums` (when set) picks the checksum mode."""
  from reskd_jax.errors import ConfigError

  splits = [data_cfg.train_split, data_cfg.eval_split]
  mode = data_cfg.get("verify_checksums", "background")
  if mode not in CHECKSUM_MODES:
    raise ConfigError(f"config.data.verify_checksums={mode!r}: expected one of {CHECKSUM_MODES}")
  return check_run_splits(data_cfg.data_dir, splits, mode, log=log)


def _verify(to_hash) -> List[str]:
  return [path for path, expected, _ in to_hash if sha256(path) != expected]


def _checksum_message(bad: Sequence[str]) -> str:
  return (f"damaged shard{'s' * (len(bad) > 1)} {', '.join(bad)} (SHA-256 checksum differs "
          f"from the one in the manifest): {RERUN}")


def _verify_in_background(to_hash, log):
  start = time.time()
  try:
    bad = _verify(to_hash)
  except Exception as e:  # noqa: BLE001  an unreadable shard: reported like a damaged one
    _BACKGROUND_ERRORS.append(f"a shard could not be read to verify its checksum ({e}): {RERUN}")
    return
  if bad:
    _BACKGROUND_ERRORS.append(_checksum_message(bad))
  else:
    log("shard checksums verified (%d shards, %.0f s)", len(to_hash), time.time() - start)


def raise_if_damaged() -> None:
  """DataError when the background checksum verification found a damaged shard."""
  if _BACKGROUND_ERRORS:
    raise DataError(_BACKGROUND_ERRORS[0])


def name_damaged_shards(iterator: Iterable, files: Optional[Sequence[str]] = None) -> Iterator:
  """Yields from `iterator`; an I/O error (`IO_ERRORS`, OSError) becomes a one-line
  DataError naming the damaged, missing or unreadable shards among `files` (default:
  those registered with `register`), and a damaged shard found by `check_run_splits`'
  background verification fails the next item."""
  try:
    for item in iterator:
      raise_if_damaged()
      yield item
  except IO_ERRORS + (OSError, tf.errors.UnknownError) as e:
    # UnknownError: a Python error inside tf.data, e.g. the "frames" layout's reader
    # (`records.read_frames`) finding its `.frames` file gone.
    candidates = list(files) if files is not None else list(_REGISTERED)
    bad = damaged(candidates)
    if not bad and isinstance(e, tf.errors.UnknownError):
      raise  # not an I/O problem of a shard: a bug keeps its traceback
    if bad:
      names = ", ".join(f"{path} ({why})" for path, why in bad)
      what = ("unreadable" if all(why in ("missing", "permission denied") for _, why in bad)
              else "damaged")
      fix = (RERUN if any(why != "permission denied" for _, why in bad)
             else "fix its permissions or storage")
      raise DataError(f"{what} shard{'s' * (len(bad) > 1)} {names}: {fix}") from None
    raise DataError(f"a shard could not be read ({_first_line(e)}): {RERUN}") from None
