"""What every annotation reader does after parsing: labels -> indices, duplicates, checks."""

from __future__ import annotations

import collections
import dataclasses
import os
from typing import List, Optional, Sequence, Tuple

from data_prep.items import Annotations, ConversionError, Item, ItemError, Skipped
from data_prep.labels import LabelMap, derive_classes, read_text


@dataclasses.dataclass
class Entry:
  """One parsed annotation record, labels still as written in the file."""
  video_id: str
  source: str
  label_tokens: Tuple[str, ...]
  alternatives: Tuple[str, ...] = ()
  num_frames: Optional[int] = None


def split_lines(path: str, source: Optional[str] = None,
                notes: Optional[List[str]] = None) -> List[Tuple[int, str]]:
  """(line number, stripped line) for every non-blank, non-comment line.

  A line starting with `#` is a comment, unless its path (first field, or all but the
  last field) names a file or folder under `source`: then it is a video whose name
  begins with `#`. The comment lines are reported in `notes` (count and line numbers),
  never dropped silently."""
  out, comments = [], []
  for n, line in enumerate(read_text(path).splitlines(), 1):
    line = line.strip()
    if not line:
      continue
    if line.startswith("#") and not (source and _names_a_source(source, line)):
      comments.append(n)
      continue
    out.append((n, line))
  if comments and notes is not None:
    shown = ", ".join(map(str, comments[:10])) + (", ..." if len(comments) > 10 else "")
    notes.append(f"{path}: {len(comments)} line(s) starting with '#' read as comments "
                 f"(line {shown}); a '#' line whose path exists under --source is read as a "
                 f"video")
  return out


def _names_a_source(source: str, line: str) -> bool:
  fields = {line.split()[0], line.rsplit(None, 1)[0]}
  return any(os.path.exists(os.path.join(source, f)) for f in fields)


def number_among_names(entries: Sequence[Entry], classes: Sequence[str]) -> set:
  """Label tokens written as numbers in a file where other labels are class names, and
  that are no class name themselves: taking them as class indices would be a guess."""
  tokens = {t for e in entries for t in e.label_tokens if isinstance(t, str)}
  names = set(classes)
  if not any(not t.isdigit() and t in names for t in tokens):
    return set()  # no label is a class name: the numbers are class indices
  return {t for t in tokens if t.isdigit() and t not in names}


def relative(root: str, path: str) -> str:
  """`path` as written in an annotation file (relative to `root`, or absolute) as a
  normalised path relative to `root`; ItemError when it leads outside `root`.

  The check is on the path's text (`..` and absolute paths), not on where symbolic
  links point: a source tree that links to another disk is the user's choice.
  """
  base = os.path.abspath(root)
  rel = os.path.relpath(os.path.normpath(os.path.join(base, path)), base)
  if rel == os.curdir or rel == os.pardir or rel.startswith(os.pardir + os.sep):
    raise ItemError(f"path {path!r} leads outside --source {root!r}")
  return rel


def _inside(root: str, path: str) -> bool:
  try:
    relative(root, os.path.abspath(path))
  except ItemError:
    return False
  return True


def finish(dataset: str, entries: Sequence[Entry], classes: Optional[Sequence[str]],
           origin: str, skipped: Sequence[Skipped] = (), multi_label: bool = False,
           root: Optional[str] = None, notes: Sequence[str] = ()) -> Annotations:
  """Resolves labels against `classes` (derived from the labels seen when None).

  An entry whose label is not in the class list, whose video id repeats an
  earlier one, or (when `root` is given) whose path leads outside `root`, is
  skipped with its reason (alternative paths outside `root` are dropped); the
  unknown labels are listed in
  `Annotations.unknown_labels`. Labels are class names or class indices, one or the
  other in a file: a number among names (that is no class name) is skipped with its
  reason. Raises ConversionError when the file held no usable record at all.
  """
  skipped = list(skipped)
  if classes is None:
    classes = derive_classes(t for e in entries for t in e.label_tokens)
  label_map = LabelMap(classes)
  numbers = number_among_names(entries, classes)
  items, seen, unknown = [], {}, collections.Counter()
  for e in entries:
    odd = [t for t in e.label_tokens if t in numbers]
    if odd:
      skipped.append(Skipped(e.video_id, f"label {odd[0]!r} is a number, but the other labels "
                             f"of {origin} are class names: write its class name (or use "
                             f"class indices throughout)"))
      continue
    if e.video_id in seen:
      skipped.append(Skipped(e.video_id,
                             f"duplicate video id (first listed as {seen[e.video_id]})"))
      continue
    alternatives = tuple(e.alternatives)
    try:
      if root is not None:
        relative(root, os.path.abspath(e.source))
        alternatives = tuple(a for a in alternatives if _inside(root, a))
      labels, names = label_map.resolve(e.label_tokens)
    except ItemError as err:
      unknown.update({t for t in e.label_tokens if not label_map.known(t)})
      skipped.append(Skipped(e.video_id, str(err)))
      continue
    seen[e.video_id] = e.source
    items.append(Item(e.video_id, e.source, labels, names, alternatives, e.num_frames))
  if not entries and not skipped:
    raise ConversionError(f"no videos listed in {origin}")
  return Annotations(dataset=dataset, classes=list(classes), items=items, skipped=skipped,
                     multi_label=multi_label, origin=origin,
                     unknown_labels=dict(sorted(unknown.items())), notes=list(notes))
