"""Class lists: loading `--classes` files and mapping annotation labels to indices."""

from __future__ import annotations

import json
import os
from typing import Iterable, List, Optional, Sequence, Tuple

from data_prep.items import ConversionError, ItemError


def read_text(path: str, what: str = "annotation file") -> str:
  """Reads a whole UTF-8 text file; every failure becomes a ConversionError naming it.

  A leading byte-order mark (files saved by Windows tools or exported from
  spreadsheets) is dropped: it would otherwise stick to the first class name,
  path or column name.
  """
  try:
    with open(path, encoding="utf-8-sig") as f:
      text = f.read()
  except FileNotFoundError:
    raise ConversionError(f"{what} {path!r} does not exist") from None
  except IsADirectoryError:
    raise ConversionError(f"{what} {path!r} is a directory, not a file") from None
  except (OSError, UnicodeDecodeError) as e:
    raise ConversionError(f"cannot read {what} {path!r}: {e}") from None
  if not text.strip():
    raise ConversionError(f"{what} {path!r} is empty")
  return text


def read_json(path: str, what: str = "annotation file"):
  text = read_text(path, what)
  try:
    return json.loads(text)
  except json.JSONDecodeError as e:
    raise ConversionError(f"{what} {path!r} is not valid JSON: {e}") from None


def load_classes(path: str) -> List[str]:
  """A class list file.

  Text: one class name per line (blank lines ignored), the line order gives the
  indices; a line `<index> <name>` or `<name> <index>` also works when every
  line has that form (mmaction2's label maps). JSON: a list of names, or an
  object mapping name -> index (Something-Something's labels file).
  """
  if path.endswith(".json"):
    data = read_json(path, "class list")
    if isinstance(data, list):
      names = [str(n) for n in data]
    elif isinstance(data, dict):
      try:
        pairs = sorted((int(v), str(k)) for k, v in data.items())
      except (TypeError, ValueError):
        raise ConversionError(f"class list {path!r}: values must be class indices") from None
      if [i for i, _ in pairs] != list(range(len(pairs))):
        raise ConversionError(f"class list {path!r}: indices are not 0..{len(pairs) - 1}")
      names = [n for _, n in pairs]
    else:
      raise ConversionError(f"class list {path!r}: expected a JSON list or object")
  else:
    lines = [l.strip() for l in read_text(path, "class list").splitlines() if l.strip()]
    names = _maybe_indexed(lines) or lines
  if len(set(names)) != len(names):
    dup = sorted({n for n in names if names.count(n) > 1})
    raise ConversionError(f"class list {path!r} repeats class names: {dup[:5]}")
  return names


def _maybe_indexed(lines: Sequence[str]) -> Optional[List[str]]:
  """`0 abseiling` / `abseiling 0` lines -> names in index order, else None."""
  pairs = []
  for line in lines:
    parts = line.split(None, 1)
    if len(parts) != 2:
      return None
    if parts[0].isdigit():
      pairs.append((int(parts[0]), parts[1].strip()))
    else:
      last = line.rsplit(None, 1)
      if not last[1].isdigit():
        return None
      pairs.append((int(last[1]), last[0].strip()))
  pairs.sort()
  if [i for i, _ in pairs] != list(range(len(pairs))):
    return None
  return [n for _, n in pairs]


def is_index(token: str) -> bool:
  return token.isdigit()


class LabelMap:
  """Maps annotation label tokens (class names or integer indices) to indices."""

  def __init__(self, classes: Sequence[str]):
    self.classes = list(classes)
    self._index = {n: i for i, n in enumerate(self.classes)}

  def lookup(self, token) -> int:
    """Index of one label: an int, a decimal string index, or a class name."""
    if isinstance(token, int) or (isinstance(token, str) and is_index(token)
                                  and token not in self._index):
      i = int(token)
      if not 0 <= i < len(self.classes):
        raise ItemError(f"label index {i} not in the class list ({len(self.classes)} classes)")
      return i
    if token not in self._index:
      raise ItemError(f"label {token!r} not in the class list")
    return self._index[token]

  def known(self, token) -> bool:
    """Whether `lookup(token)` succeeds."""
    try:
      self.lookup(token)
    except ItemError:
      return False
    return True

  def resolve(self, tokens: Iterable) -> Tuple[Tuple[int, ...], Tuple[str, ...]]:
    """Sorted unique indices and their names; raises ItemError for an unknown label."""
    idx = sorted({self.lookup(t) for t in tokens})
    if not idx:
      raise ItemError("no label")
    return tuple(idx), tuple(self.classes[i] for i in idx)


def derive_classes(tokens: Iterable[str]) -> List[str]:
  """Class list from the labels seen: all integer indices -> "0".."max"; else sorted names."""
  tokens = set(tokens)
  if not tokens:
    return []
  if all(is_index(t) for t in tokens):
    return [str(i) for i in range(max(int(t) for t in tokens) + 1)]
  return sorted(t for t in tokens if not is_index(t))


def relpath_id(path: str) -> str:
  """`abseiling/x.mp4` -> `abseiling/x`: a video id from a relative path."""
  path = path.replace(os.sep, "/").strip("/")
  stem, ext = os.path.splitext(path)
  return stem if ext.lower() in (".mp4", ".webm", ".avi", ".mkv", ".mov", ".m4v") else path
