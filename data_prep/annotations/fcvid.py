"""FCVID list files: a video path, then one or more labels (multi-label)."""

from __future__ import annotations

from typing import Optional, Sequence

import os

from data_prep.annotations.common import Entry, finish, relative, split_lines
from data_prep.items import Annotations, ItemError, Skipped
from data_prep.labels import relpath_id


def read(annotations: str, source: str, split: str, classes: Optional[Sequence[str]] = None
         ) -> Annotations:
  """`path label [label ...]` per line, whitespace separated (labels: indices or names)."""
  del split
  entries, skipped, notes = [], [], []
  for n, line in split_lines(annotations, source, notes):
    parts = line.split()
    if len(parts) < 2:
      skipped.append(Skipped(f"{annotations}:{n}", f"malformed line {line!r} (want `path label...`)"))
      continue
    try:
      rel = relative(source, parts[0])
    except ItemError as e:
      skipped.append(Skipped(parts[0], str(e)))
      continue
    entries.append(Entry(relpath_id(rel), os.path.join(source, rel), tuple(parts[1:])))
  return finish("fcvid", entries, classes, annotations, skipped, multi_label=True,
                root=source, notes=notes)
