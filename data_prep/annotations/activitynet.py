"""ActivityNet v1.3 JSON: database -> video_id -> {subset, annotations, duration}."""

from __future__ import annotations

import os
from typing import Optional, Sequence

from data_prep.annotations.common import Entry, finish
from data_prep.items import Annotations, ConversionError, Skipped
from data_prep.labels import read_json

SUBSETS = {"train": "training", "training": "training", "val": "validation",
           "validation": "validation", "test": "testing", "testing": "testing"}


def read(annotations: str, source: str, split: str, classes: Optional[Sequence[str]] = None
         ) -> Annotations:
  """Multi-label: a video's labels are the set of its segments' labels.

  `split` train/val/test selects the subset training/validation/testing. The
  class list (unless given) is every label of the whole file, sorted, so the
  splits agree. Videos: `<source>/v_<id>.<ext>` or `<source>/<id>.<ext>`
  (any video extension) or a frame folder of either name.
  """
  data = read_json(annotations)
  db = data.get("database", data) if isinstance(data, dict) else None
  if not isinstance(db, dict) or not db:
    raise ConversionError(f"annotation file {annotations!r} has no `database` of videos")
  subset = SUBSETS.get(split, split)
  all_labels, entries, skipped = set(), [], []
  for vid, info in db.items():
    if not isinstance(info, dict):
      skipped.append(Skipped(vid, "malformed entry (not an object)"))
      continue
    labels = []
    for ann in info.get("annotations") or []:
      if isinstance(ann, dict) and ann.get("label"):
        labels.append(str(ann["label"]))
    all_labels.update(labels)
    if info.get("subset") != subset:
      continue
    if not labels:
      skipped.append(Skipped(vid, "no label"))
      continue
    entries.append(Entry(vid, os.path.join(source, f"v_{vid}"), tuple(labels),
                         (os.path.join(source, vid),)))
  if classes is None:
    classes = sorted(all_labels)
  if not entries and not skipped:
    raise ConversionError(f"no videos of subset {subset!r} in {annotations!r}")
  return finish("activitynet", entries, classes, annotations, skipped, multi_label=True,
                root=source)
