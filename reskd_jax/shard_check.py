"""Naming a damaged TFRecord shard in one line, instead of a tf.data DataLossError traceback.

tf.data reports a shard cut short or corrupted as `DataLossError: truncated
record at N` (or `corrupted record at N`) without saying which file. Two checks
name it:

* `check_sizes`, before reading: each shard's size against the byte count
  data_prep wrote into the manifest (`shard_bytes`). Cheap (one stat per
  shard); it catches a shard cut short, even one cut at a record boundary,
  which tf.data would read without complaint.
* `name_damaged_shards`, while reading: a DataLossError becomes a DataError
  naming the shards (among those `create_dataset` registered with `register`)
  that fail to read through, found by reading each one again.

Either way the fix is to rerun data_prep, which verifies every shard against
its recorded size and checksum and rewrites the damaged ones.
"""

from __future__ import annotations

from typing import Iterable, Iterator, List, Optional, Sequence, Tuple

import tensorflow as tf

from reskd_jax.errors import DataError

RERUN = "rerun the data_prep command that wrote it: it rewrites damaged shards"
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
  """(path, error) for every shard whose records do not read through (lengths and CRCs)."""
  found = []
  for path in files:
    try:
      tf.data.TFRecordDataset(path).reduce(tf.constant(0, tf.int64), lambda n, _: n + 1)
    except tf.errors.DataLossError as e:
      found.append((path, _first_line(e)))
  return found


def _first_line(error: Exception) -> str:
  text = str(getattr(error, "message", error)).strip()
  if text.startswith("{{function_node"):  # tf's wrapper prefix
    text = text.split("}}", 1)[-1].strip()
  return text.split(" [Op:", 1)[0].splitlines()[0] if text else type(error).__name__


def name_damaged_shards(iterator: Iterable, files: Optional[Sequence[str]] = None) -> Iterator:
  """Yields from `iterator`; a DataLossError becomes a one-line DataError naming the
  damaged shards among `files` (default: those registered with `register`)."""
  try:
    yield from iterator
  except tf.errors.DataLossError as e:
    candidates = list(files) if files is not None else list(_REGISTERED)
    bad = damaged(candidates)
    if bad:
      names = ", ".join(f"{path} ({why})" for path, why in bad)
      raise DataError(f"damaged shard{'s' * (len(bad) > 1)} {names}: {RERUN}") from None
    raise DataError(f"a shard could not be read ({_first_line(e)}): {RERUN}") from None
