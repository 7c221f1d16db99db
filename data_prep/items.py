"""The data model shared by the annotation readers and the converter."""

from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional, Tuple

from reskd_jax.errors import DataError


class ConversionError(DataError):
  """Bad input that stops a conversion before it writes anything, or leaves nothing to
  convert (the CLI prints it as one line and exits with `exit_status`, 2)."""


class DiskFull(ConversionError):
  """The file system of --out filled up while a shard was written (its partial file is
  removed). `written`: bytes of the partial shard; `num_items`: videos of that shard."""

  def __init__(self, path: str, written: int = 0, num_items: int = 0):
    super().__init__(f"disk full while writing {path}")
    self.path, self.written, self.num_items = path, written, num_items

  def __reduce__(self):  # crosses the worker pipe (pickle) with its fields
    return DiskFull, (self.path, self.written, self.num_items)


class ItemError(Exception):
  """One video cannot be converted; the message is the reason in the manifest."""


class PartialItem(ItemError):
  """A video decoded only in part (fewer frames than its container or list declares, or a
  frame folder with gaps). Raised after every decodable frame was yielded, so that
  `--allow-partial` can keep what was read."""


@dataclasses.dataclass(frozen=True)
class Item:
  """One video to convert.

  `source` is the path of a video file or of a frame folder. When it does not
  exist as given, each path of `alternatives` is tried, and for each of them
  the video extensions (see `reskd_jax.data.video_io.VIDEO_EXTENSIONS`) are appended in turn,
  so a reader that only knows a stem (`<root>/<video_id>`) can leave the
  extension open. `num_frames`: the frame count the annotations declare (rawframes
  lists), checked against the frame folder; None when they declare none.
  """
  video_id: str
  source: str
  labels: Tuple[int, ...]
  label_names: Tuple[str, ...]
  alternatives: Tuple[str, ...] = ()
  num_frames: Optional[int] = None


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
  # Labels of the file that are not in `classes` -> how many videos carry them (those
  # videos are in `skipped`).
  unknown_labels: Dict[str, int] = dataclasses.field(default_factory=dict)
  # Annotation file(s) read, for messages.
  origin: Optional[str] = None
  # What the reader did that the user should hear of (comment lines, empty class folders).
  notes: List[str] = dataclasses.field(default_factory=list)
