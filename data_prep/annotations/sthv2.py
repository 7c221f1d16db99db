"""Something-Something V2: per-split JSON list of {id, template, label} + labels JSON."""

from __future__ import annotations

import os
from typing import Optional, Sequence

from data_prep.annotations.common import Entry, finish
from data_prep.items import Annotations, ConversionError, Skipped
from data_prep.labels import load_classes, read_json

LABEL_FILES = ("something-something-v2-labels.json", "labels.json")


def strip_template(template: str) -> str:
  """As the official code: `Putting [something] on [something]` -> `Putting something on something`."""
  return template.replace("[", "").replace("]", "")


def read(annotations: str, source: str, split: str, classes: Optional[Sequence[str]] = None
         ) -> Annotations:
  """Videos `<source>/<id>.webm` (or another extension, or a frame folder `<source>/<id>`).

  The class list is the labels JSON (template -> index), given as `--classes`
  or found beside the annotation file under one of LABEL_FILES.
  """
  del split
  if classes is None:
    here = os.path.dirname(os.path.abspath(annotations))
    found = [os.path.join(here, n) for n in LABEL_FILES if os.path.isfile(os.path.join(here, n))]
    if not found:
      raise ConversionError(f"Something-Something needs its labels JSON: pass --classes=... "
                            f"(none of {LABEL_FILES} beside {annotations!r})")
    classes = load_classes(found[0])
  data = read_json(annotations)
  if not isinstance(data, list):
    raise ConversionError(f"annotation file {annotations!r}: expected a JSON list of videos")
  entries, skipped = [], []
  for n, rec in enumerate(data):
    if not isinstance(rec, dict) or "id" not in rec:
      skipped.append(Skipped(f"{annotations}[{n}]", "malformed record (no `id`)"))
      continue
    vid = str(rec["id"])
    if not rec.get("template"):
      skipped.append(Skipped(vid, "no label (no `template`)"))
      continue
    entries.append(Entry(vid, os.path.join(source, vid + ".webm"), (strip_template(rec["template"]),),
                         (os.path.join(source, vid),)))
  return finish("sthv2", entries, classes, annotations, skipped, root=source)
