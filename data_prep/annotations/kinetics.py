"""Kinetics-400 CSV: label, youtube_id, time_start, time_end, split."""

from __future__ import annotations

import csv
import io
import os
from typing import Optional, Sequence

from data_prep.annotations.common import Entry, finish
from data_prep.items import Annotations, ConversionError, Skipped
from data_prep.labels import read_text

REQUIRED = ("youtube_id", "time_start", "time_end")


def clip_name(youtube_id: str, start: int, end: int) -> str:
  return f"{youtube_id}_{start:06d}_{end:06d}"


def read(annotations: str, source: str, split: str, classes: Optional[Sequence[str]] = None
         ) -> Annotations:
  """One trimmed clip per row: `<source>/<youtube_id>_<start:06d>_<end:06d>.mp4`.

  Also found: the clip in a per-class folder (`<source>/<label>/...`, the label
  as written or with spaces replaced by `_`), any video extension, or a frame
  folder of that name. When the `split` column holds several values, only the
  rows equal to `split` are kept. Rows without a label (the test CSV) are
  skipped.
  """
  text = read_text(annotations)
  reader = csv.DictReader(io.StringIO(text))
  fields = [f.strip() for f in (reader.fieldnames or [])]
  missing = [c for c in REQUIRED if c not in fields]
  if missing:
    raise ConversionError(f"annotation file {annotations!r} lacks the column(s) {missing} "
                          f"(a Kinetics CSV has label,youtube_id,time_start,time_end,split)")
  rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]
  splits = {r.get("split", "") for r in rows}
  if len(splits) > 1:
    rows = [r for r in rows if r.get("split") == split]
  entries, skipped = [], []
  for n, row in enumerate(rows, 2):
    try:
      start, end = int(float(row["time_start"])), int(float(row["time_end"]))
    except ValueError:
      skipped.append(Skipped(f"{annotations}:{n}", f"bad time_start/time_end in row {row}"))
      continue
    name = clip_name(row["youtube_id"], start, end)
    label = row.get("label", "")
    if not label:
      skipped.append(Skipped(name, "no label"))
      continue
    alternatives = (os.path.join(source, name), os.path.join(source, label, name),
                    os.path.join(source, label.replace(" ", "_"), name))
    entries.append(Entry(name, os.path.join(source, name + ".mp4"), (label,), alternatives))
  return finish("kinetics400", entries, classes, annotations, skipped, root=source)
