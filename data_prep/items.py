"""The data model shared by the annotation readers and the converter."""

from __future__ import annotations

import dataclasses
from typing import List, Optional, Tuple


class ConversionError(Exception):
  """Bad input that leaves nothing to convert (the CLI exits with status 2)."""


class ItemError(Exception):
  """One video cannot be converted; the message is the reason in the manifest."""


@dataclasses.dataclass(frozen=True)
class Item:
  """One video to convert.

  `source` is the path of a video file or of a frame folder. When it does not
  exist as given, each path of `alternatives` is tried, and for each of them
  the video extensions (see `sources.VIDEO_EXTENSIONS`) are appended in turn,
  so a reader that only knows a stem (`<root>/<video_id>`) can leave the
  extension open.
  """
  video_id: str
  source: str
  labels: Tuple[int, ...]
  label_names: Tuple[str, ...]
  alternatives: Tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Skipped:
  item: str
  reason: str

  def to_json(self):
    return {"item": self.item, "reason": self.reason}


@dataclasses.dataclass
class Annotations:
  """What an annotation reader returns for one split."""
  dataset: str
  classes: List[str]
  items: List[Item]
  skipped: List[Skipped] = dataclasses.field(default_factory=list)
  multi_label: bool = False
  # Annotation file(s) read, for messages.
  origin: Optional[str] = None
