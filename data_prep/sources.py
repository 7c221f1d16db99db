"""Finding an item's video file or frame folder; decoding is `reskd_jax.video_io`'s."""

from __future__ import annotations

import os
from typing import Iterator

from PIL import Image

from reskd_jax import video_io
from reskd_jax.video_io import (  # noqa: F401  (re-exported for the converter)
    VIDEO_EXTENSIONS, FrameOptions, VideoReadError, frame_files)

from data_prep.items import Item, ItemError


def resolve(item: Item) -> str:
  """The existing path of the item's video file or frame folder; ItemError when none."""
  candidates = (item.source,) + tuple(item.alternatives)
  for path in candidates:
    if os.path.exists(path):
      return path
  for path in candidates:
    for ext in VIDEO_EXTENSIONS:
      if os.path.isfile(path + ext):
        return path + ext
  tried = item.source if not item.alternatives else f"{item.source} (or {', '.join(item.alternatives)} with a video extension)"
  raise ItemError(f"missing file: {tried}")


def source_state(item: Item):
  """A cheap signature of the item's source on disk (path, size, mtime), None when missing."""
  try:
    path = resolve(item)
    st = os.stat(path)
  except (ItemError, OSError):
    return None
  if os.path.isdir(path):
    names = sorted(os.listdir(path))
    return [path, len(names), st.st_mtime_ns]
  return [path, st.st_size, st.st_mtime_ns]


def _item_errors(frames: Iterator[Image.Image]) -> Iterator[Image.Image]:
  """The reader's VideoReadError as the converter's ItemError (same message)."""
  try:
    yield from frames
  except VideoReadError as e:
    raise ItemError(str(e)) from None


def folder_frames(folder: str, opts: FrameOptions) -> Iterator[Image.Image]:
  yield from _item_errors(video_io.folder_frames(folder, opts))


def video_frames(path: str, opts: FrameOptions) -> Iterator[Image.Image]:
  yield from _item_errors(video_io.video_frames(path, opts))


def iter_frames(item: Item, opts: FrameOptions) -> Iterator[Image.Image]:
  """Every kept frame of the item (RGB, original size), streamed; ItemError names what went wrong."""
  path = resolve(item)
  if os.path.isdir(path):
    yield from folder_frames(path, opts)
  else:
    yield from video_frames(path, opts)
