"""Class lists: the one parser of class list files and the one comparison of two lists.

A class list names the classes in label order. The converter (`data_prep --classes`),
the weights converter and the predictor (`--classes`) read one with
:func:`read_class_names`; a converted data set's manifest and a model's
``meta.json`` store it as a JSON list. The start-up checks compare the list a
teacher was trained on with the data set's by :func:`difference`, so that logits
that mean other classes, or the same classes in another order, are never distilled.
"""

from __future__ import annotations

import json
import os
from typing import List, Optional, Sequence

from reskd_jax.data import records
from reskd_jax.errors import DataError


class ClassListError(DataError):
  """A class list that cannot be read or makes no sense; the message names the file."""


def read_text(path: str, what: str = "class list") -> str:
  """A whole UTF-8 text file; every failure is a ClassListError naming it (``what``).

  A leading byte-order mark (files saved by Windows tools or exported from
  spreadsheets) is dropped: it would otherwise stick to the first class name,
  path or column name.
  """
  try:
    with open(path, encoding="utf-8-sig") as f:
      text = f.read()
  except FileNotFoundError:
    raise ClassListError(f"{what} {path!r} does not exist") from None
  except IsADirectoryError:
    raise ClassListError(f"{what} {path!r} is a directory, not a file") from None
  except (OSError, UnicodeDecodeError) as e:
    raise ClassListError(f"cannot read {what} {path!r}: {e}") from None
  if not text.strip():
    raise ClassListError(f"{what} {path!r} is empty")
  return text


def read_json(path: str, what: str = "class list"):
  """The JSON in ``path`` (see :func:`read_text`); invalid JSON is a ClassListError."""
  text = read_text(path, what)
  try:
    return json.loads(text)
  except json.JSONDecodeError as e:
    raise ClassListError(f"{what} {path!r} is not valid JSON: {e}") from None


def load_classes(path: str) -> List[str]:
  """The class names of a class list file, in label order.

  Text: one class name per line (blank lines ignored), the line order gives the
  indices; a line `<index> <name>` or `<name> <index>` also works when every
  line has that form (mmaction2's label maps). JSON: a list of names, or an
  object mapping name -> index (Something-Something's labels file). A name
  given twice is an error naming the file: labels would be ambiguous.
  """
  if path.endswith(".json"):
    data = read_json(path)
    if isinstance(data, list):
      names = [str(n) for n in data]
    elif isinstance(data, dict):
      try:
        pairs = sorted((int(v), str(k)) for k, v in data.items())
      except (TypeError, ValueError):
        raise ClassListError(f"class list {path!r}: values must be class indices") from None
      if [i for i, _ in pairs] != list(range(len(pairs))):
        raise ClassListError(f"class list {path!r}: indices are not 0..{len(pairs) - 1}")
      names = [n for _, n in pairs]
    else:
      raise ClassListError(f"class list {path!r}: expected a JSON list or object")
  else:
    lines = [l.strip() for l in read_text(path).splitlines() if l.strip()]
    names = _maybe_indexed(lines) or lines
  check_unique(names, f"class list {path!r}")
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


def check_unique(names: Sequence[str], where: str) -> None:
  """ClassListError naming ``where`` when a class name appears twice."""
  names = list(names)
  if len(set(names)) != len(names):
    dup = sorted({n for n in names if names.count(n) > 1})
    raise ClassListError(f"{where} repeats class names: {dup[:5]}")


def read_class_names(source: str) -> tuple:
  """The class names of a class list file (:func:`load_classes`) or of a converted data
  set directory (its manifest's ``classes``)."""
  if os.path.isdir(source):
    names = tuple(records.read_manifest(source).get("classes", ()))
    check_unique(names, f"the manifest of {source!r}")
    return names
  return tuple(load_classes(source))


def difference(theirs: Sequence[str], ours: Sequence[str], them: str = "the teacher",
               us: str = "the data set") -> Optional[str]:
  """How class list ``theirs`` differs from ``ours`` (a phrase for an error message), or
  None when they are equal or either is unknown (empty).

  Names decide, not counts: the same classes in another order are a difference
  (label i would mean another class), named by the first label that differs.
  """
  theirs, ours = [str(n) for n in theirs or ()], [str(n) for n in ours or ()]
  if not theirs or not ours or theirs == ours:
    return None
  if sorted(theirs) == sorted(ours):
    first = next(i for i, (a, b) in enumerate(zip(theirs, ours)) if a != b)
    return (f"the same {len(ours)} classes in another order (label {first} is "
            f"{theirs[first]!r} for {them}, {ours[first]!r} in {us})")
  only = sorted(set(theirs) - set(ours))[:3] or sorted(set(ours) - set(theirs))[:3]
  return f"other classes ({len(theirs)} vs {len(ours)}; e.g. {only} in one but not the other)"
