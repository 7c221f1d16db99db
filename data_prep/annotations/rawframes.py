"""mmaction2 rawframes list files: `folder num_frames label [label ...]`."""

from __future__ import annotations

from typing import Optional, Sequence

from data_prep.annotations.common import Entry, finish, join, split_lines
from data_prep.items import Annotations, Skipped


def read(annotations: str, source: str, split: str, classes: Optional[Sequence[str]] = None
         ) -> Annotations:
  """Frame folders relative to `source`; `num_frames` is informational (the folder is listed)."""
  del split
  entries, skipped = [], []
  multi = False
  for n, line in split_lines(annotations):
    parts = line.split()
    if len(parts) < 3 or not parts[1].isdigit():
      skipped.append(Skipped(f"{annotations}:{n}",
                             f"malformed line {line!r} (want `folder num_frames label...`)"))
      continue
    multi |= len(parts) > 3
    folder = parts[0].rstrip("/")
    entries.append(Entry(folder, join(source, folder), tuple(parts[2:])))
  return finish("rawframes", entries, classes, annotations, skipped, multi_label=multi)
