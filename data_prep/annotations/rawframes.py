"""mmaction2 rawframes list files: `folder num_frames label [label ...]`."""

from __future__ import annotations

from typing import Optional, Sequence

import os

from data_prep.annotations.common import Entry, finish, relative, split_lines
from data_prep.items import Annotations, ItemError, Skipped


def read(annotations: str, source: str, split: str, classes: Optional[Sequence[str]] = None
         ) -> Annotations:
  """Frame folders relative to `source` (and inside it); a folder whose frame count
  differs from its `num_frames` is partial (see `reskd_jax.data.video_io.folder_frames`)."""
  del split
  entries, skipped, notes = [], [], []
  multi = False
  for n, line in split_lines(annotations, source, notes):
    parts = line.split()
    if len(parts) < 3 or not parts[1].isdigit():
      skipped.append(Skipped(f"{annotations}:{n}",
                             f"malformed line {line!r} (want `folder num_frames label...`)"))
      continue
    multi |= len(parts) > 3
    try:
      rel = relative(source, parts[0])
    except ItemError as e:
      skipped.append(Skipped(parts[0], str(e)))
      continue
    entries.append(Entry(rel.replace(os.sep, "/"), os.path.join(source, rel), tuple(parts[2:]),
                         num_frames=int(parts[1])))
  return finish("rawframes", entries, classes, annotations, skipped, multi_label=multi,
                root=source, notes=notes)
