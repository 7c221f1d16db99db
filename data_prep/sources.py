"""Finding a video's frames (frame folders or video files) and decoding them.

Decoding is `reskd_jax.data.video_io`, the reader `reskd_jax.tools.predict` uses too, so
converted data and predictions see the same pixels; here its errors become
the converter's `ItemError` (skip the item, say why) and `PartialItem` (an
incomplete video, kept with --allow-partial).
"""

from __future__ import annotations

import errno
import os
from typing import Iterator, List, Optional

from PIL import Image
from reskd_jax.data import video_io
from reskd_jax.data.video_io import VIDEO_EXTENSIONS, FrameOptions

from data_prep.items import Item, ItemError, PartialItem

PARTIAL_HINT = " (--allow-partial keeps such videos)"


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
  for path in candidates:
    broken = broken_link(path)
    if broken:
      raise ItemError(broken)
  tried = item.source
  if item.alternatives:
    tried += f" (or {', '.join(item.alternatives)} with a video extension)"
  raise ItemError(f"missing file: {tried}")


def broken_link(path: str) -> Optional[str]:
  """Why `path`, a symbolic link (or a path through one) that does not lead to a file,
  cannot be read: a loop of links, or a link to nothing; None when it is no such link."""
  try:
    os.stat(path)
  except OSError as e:
    if e.errno == errno.ELOOP:
      return f"symbolic link loop: {path} (its links lead back to themselves)"
    if os.path.islink(path):
      return f"broken symbolic link: {path} -> {os.readlink(path)} (which does not exist)"
  return None


def source_state(item: Item) -> Optional[List]:
  """A cheap signature of what the item is made from, None when it is missing: a video
  file's [path, size, mtime]; a frame folder's [path, number of files, total size,
  latest mtime] (one stat per frame file, so a frame replaced in place counts)."""
  try:
    path = resolve(item)
    st = os.stat(path)
  except (ItemError, OSError):
    return None
  if os.path.isdir(path):
    count, size, mtime = 0, 0, st.st_mtime_ns
    try:
      with os.scandir(path) as entries:
        for entry in entries:
          try:
            est = entry.stat()
          except OSError:
            continue
          count, size, mtime = count + 1, size + est.st_size, max(mtime, est.st_mtime_ns)
    except OSError:
      return None
    return [path, count, size, mtime]
  return [path, st.st_size, st.st_mtime_ns]


def iter_frames(item: Item, opts: FrameOptions) -> Iterator[Image.Image]:
  """Every kept frame of the item (RGB, original size), streamed; ItemError names what
  went wrong. PartialItem, raised after the frames that could be read, says the video is
  incomplete (`encode.encode_frames` keeps it with `allow_partial`)."""
  path = resolve(item)
  try:
    if os.path.isdir(path):
      yield from video_io.folder_frames(path, opts, item.num_frames)
    else:
      yield from video_io.video_frames(path, opts)
  except video_io.PartialVideo as e:
    raise PartialItem(str(e)) from None
  except video_io.VideoReadError as e:
    raise ItemError(str(e)) from None
