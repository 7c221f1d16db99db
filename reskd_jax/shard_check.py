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

Either way the fix is to rerun data_prep, which verifies every shard against
its recorded size and checksum and rewrites the damaged ones (a shard that is
merely unreadable needs its permissions or storage fixed instead).
"""

from __future__ import annotations

from typing import Iterable, Iterator, List, Optional, Sequence, Tuple

import tensorflow as tf

from reskd_jax.errors import DataError

RERUN = "rerun the data_prep command that wrote it: it rewrites damaged shards"
# tf.data's errors for a file that cannot be read (besides OSError from Python readers).
IO_ERRORS = (tf.errors.DataLossError, tf.errors.NotFoundError, tf.errors.PermissionDeniedError,
             tf.errors.UnavailableError, tf.errors.FailedPreconditionError)
_REGISTERED: List[str] = []  # shards of the datasets built in this process, in order


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


def name_damaged_shards(iterator: Iterable, files: Optional[Sequence[str]] = None) -> Iterator:
  """Yields from `iterator`; an I/O error (`IO_ERRORS`, OSError) becomes a one-line
  DataError naming the damaged, missing or unreadable shards among `files` (default:
  those registered with `register`)."""
  try:
    yield from iterator
  except IO_ERRORS + (OSError,) as e:
    candidates = list(files) if files is not None else list(_REGISTERED)
    bad = damaged(candidates)
    if bad:
      names = ", ".join(f"{path} ({why})" for path, why in bad)
      what = ("unreadable" if all(why in ("missing", "permission denied") for _, why in bad)
              else "damaged")
      fix = (RERUN if any(why != "permission denied" for _, why in bad)
             else "fix its permissions or storage")
      raise DataError(f"{what} shard{'s' * (len(bad) > 1)} {names}: {fix}") from None
    raise DataError(f"a shard could not be read ({_first_line(e)}): {RERUN}") from None
