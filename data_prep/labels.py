"""Class lists: loading `--classes` files and mapping annotation labels to indices."""

from __future__ import annotations

import contextlib
import os
from typing import Iterable, List, Sequence, Tuple

from reskd_jax.data import labels

from data_prep.items import ConversionError, ItemError


def read_text(path: str, what: str = "annotation file") -> str:
  """A whole UTF-8 text file (`reskd_jax.data.labels.read_text`: a byte-order mark
  dropped); every failure is a ConversionError naming it."""
  with _conversion_errors():
    return labels.read_text(path, what)


def read_json(path: str, what: str = "annotation file"):
  with _conversion_errors():
    return labels.read_json(path, what)


def load_classes(path: str) -> List[str]:
  """A `--classes` file, parsed by the one rule (`reskd_jax.data.labels.load_classes`:
  one name a line, `0 abseiling` lines, JSON lists and name -> index objects; repeated
  names refused); its errors are ConversionErrors, which stop a conversion."""
  with _conversion_errors():
    return labels.load_classes(path)


@contextlib.contextmanager
def _conversion_errors():
  try:
    yield
  except labels.ClassListError as e:
    raise ConversionError(str(e)) from None


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
