"""Mini-Kinetics / mmaction2 video list files: `path label` per line."""

from __future__ import annotations

from typing import Optional, Sequence

import os

from data_prep.annotations.common import Entry, finish, relative, split_lines
from data_prep.items import Annotations, ItemError, Skipped
from data_prep.labels import relpath_id


def read(annotations: str, source: str, split: str, classes: Optional[Sequence[str]] = None,
         dataset: str = "minik") -> Annotations:
  """One `relative/path.mp4 label` per line (the label: class index or name).

  The path may contain spaces (the label is the last field). Paths are taken
  relative to `source` and must stay inside it; the video id is the path
  relative to `source` without its extension.
  """
  del split
  entries, skipped, notes = [], [], []
  for n, line in split_lines(annotations, source, notes):
    parts = line.rsplit(None, 1)
    if len(parts) != 2:
      skipped.append(Skipped(f"{annotations}:{n}", f"malformed line {line!r} (want `path label`)"))
      continue
    path, label = parts
    try:
      rel = relative(source, path)
    except ItemError as e:
      skipped.append(Skipped(path, str(e)))
      continue
    entries.append(Entry(relpath_id(rel), os.path.join(source, rel), (label,)))
  return finish(dataset, entries, classes, annotations, skipped, root=source, notes=notes)
