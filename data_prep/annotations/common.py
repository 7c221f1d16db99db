"""What every annotation reader does after parsing: labels -> indices, duplicates, checks."""

from __future__ import annotations

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


def split_lines(path: str) -> List[Tuple[int, str]]:
  """(line number, stripped line) for every non-blank, non-comment line."""
  out = []
  for n, line in enumerate(read_text(path).splitlines(), 1):
    line = line.strip()
    if line and not line.startswith("#"):
      out.append((n, line))
  return out


def join(root: str, rel: str) -> str:
  return rel if os.path.isabs(rel) else os.path.join(root, rel)


def finish(dataset: str, entries: Sequence[Entry], classes: Optional[Sequence[str]],
           origin: str, skipped: Sequence[Skipped] = (), multi_label: bool = False) -> Annotations:
  """Resolves labels against `classes` (derived from the labels seen when None).

  An entry whose label is not in the class list, or whose video id repeats an
  earlier one, is skipped with its reason. Raises ConversionError when the
  file held no usable record at all.
  """
  skipped = list(skipped)
  if classes is None:
    classes = derive_classes(t for e in entries for t in e.label_tokens)
  label_map = LabelMap(classes)
  items, seen = [], {}
  for e in entries:
    if e.video_id in seen:
      skipped.append(Skipped(e.video_id, f"duplicate video id (first listed as {seen[e.video_id]})"))
      continue
    try:
      labels, names = label_map.resolve(e.label_tokens)
    except ItemError as err:
      skipped.append(Skipped(e.video_id, str(err)))
      continue
    seen[e.video_id] = e.source
    items.append(Item(e.video_id, e.source, labels, names, tuple(e.alternatives)))
  if not entries and not skipped:
    raise ConversionError(f"no videos listed in {origin}")
  return Annotations(dataset=dataset, classes=list(classes), items=items, skipped=skipped,
                     multi_label=multi_label, origin=origin)
