"""A folder per class: `<root>/<class_name>/<video file or frame folder>`."""

from __future__ import annotations

import os
from typing import List, Optional, Sequence

from reskd_jax.data.video_io import VIDEO_EXTENSIONS

from data_prep.annotations.common import Entry, finish
from data_prep.items import Annotations, ConversionError


def _visible(folder: str) -> List[str]:
  return [name for name in os.listdir(folder) if not name.startswith(".")]


def read(annotations: Optional[str], source: str, split: str,
         classes: Optional[Sequence[str]] = None) -> Annotations:
  """Classes are the sub-folders of `source` (sorted; an empty one too, reported) unless
  given; a class
  folder holds video files (by extension) and/or frame folders. Video ids are
  `<class>/<name without extension>`. Hidden entries (names starting with `.`, such as
  `.git` or `.ipynb_checkpoints`) are ignored at both levels."""
  del annotations, split
  if not os.path.isdir(source):
    raise ConversionError(f"source folder {source!r} does not exist")
  class_dirs = sorted(d for d in _visible(source) if os.path.isdir(os.path.join(source, d)))
  entries = []
  for cls in class_dirs:
    cdir = os.path.join(source, cls)
    for name in sorted(_visible(cdir)):
      path = os.path.join(cdir, name)
      stem, ext = os.path.splitext(name)
      if os.path.isdir(path):
        entries.append(Entry(f"{cls}/{name}", path, (cls,)))
      elif ext.lower() in VIDEO_EXTENSIONS:
        entries.append(Entry(f"{cls}/{stem}", path, (cls,)))
  if not entries:
    raise ConversionError(f"no videos under {source!r} (want <class>/<video or frame folder>)")
  notes = []
  used = {e.label_tokens[0] for e in entries}
  empty = [c for c in class_dirs if c not in used]
  if classes is None:
    classes = class_dirs  # every class folder, an empty one too: later splits keep its index
    if empty:
      notes.append(f"{len(empty)} class folder(s) of {source} hold no videos, kept in the "
                   f"class list: {', '.join(empty[:10])}{', ...' if len(empty) > 10 else ''}")
  elif empty:
    notes.append(f"{len(empty)} class folder(s) of {source} hold no videos: "
                 f"{', '.join(empty[:10])}{', ...' if len(empty) > 10 else ''}")
  return finish("folder", entries, classes, source, root=source, notes=notes)
