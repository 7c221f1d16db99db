"""Finding and decoding a video's frames: frame folders or video files (PyAV)."""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Iterator, List, Optional

from PIL import Image

from data_prep.items import Item, ItemError

VIDEO_EXTENSIONS = (".mp4", ".webm", ".avi", ".mkv", ".mov", ".m4v", ".flv", ".mpg", ".mpeg")


@dataclasses.dataclass(frozen=True)
class FrameOptions:
  """How frames are picked from a source."""
  frame_stride: int = 1  # keep every n-th frame
  fps: Optional[float] = None  # video files: keep frames at about this rate (None: all)
  filename_tmpl: str = "img_{:05d}.jpg"  # frame folders
  decode_threads: int = 1  # PyAV decoder threads (parallelism is across processes)


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


def _tmpl_regex(tmpl: str) -> re.Pattern:
  """`img_{:05d}.jpg` -> a regex capturing the frame number."""
  head, _, tail = tmpl.partition("{")
  _, _, tail = tail.partition("}")
  return re.compile("^" + re.escape(head) + r"(\d+)" + re.escape(tail) + "$")


def frame_files(folder: str, tmpl: str) -> List[str]:
  """The folder's frame files matching the template, in frame-number order."""
  pattern = _tmpl_regex(tmpl)
  numbered = []
  for name in os.listdir(folder):
    m = pattern.match(name)
    if m:
      numbered.append((int(m.group(1)), name))
  return [os.path.join(folder, name) for _, name in sorted(numbered)]


def folder_frames(folder: str, opts: FrameOptions) -> Iterator[Image.Image]:
  files = frame_files(folder, opts.filename_tmpl)
  if not files:
    raise ItemError(f"no frames matching {opts.filename_tmpl!r} in folder {folder}")
  for path in files[::max(1, opts.frame_stride)]:
    try:
      with Image.open(path) as img:
        img.load()
        yield img.convert("RGB")
    except Exception as e:  # noqa: BLE001  PIL raises many kinds
      raise ItemError(f"corrupt frame {path}: {e}") from None


def video_frames(path: str, opts: FrameOptions) -> Iterator[Image.Image]:
  import av  # local: keeps the annotation readers importable without PyAV
  from av.video.reformatter import VideoReformatter

  try:
    container = av.open(path)
  except Exception as e:  # noqa: BLE001
    raise ItemError(f"unreadable video {path}: {e}") from None
  with container:
    if not container.streams.video:
      raise ItemError(f"unreadable video {path}: no video stream")
    stream = container.streams.video[0]
    stream.thread_count = max(0, int(opts.decode_threads))
    to_rgb = VideoReformatter()  # keeps its conversion context from frame to frame
    step = 1.0 / opts.fps if opts.fps else None
    next_time, t0, n = None, None, 0
    try:
      for i, frame in enumerate(container.decode(stream)):
        if step is None:
          if i % max(1, opts.frame_stride):
            continue
        else:
          t = frame.time
          if t is None:  # no timestamps: assume the stream's nominal rate
            t = i / float(stream.average_rate or 30)
          if t0 is None:
            t0, next_time = t, t
          if t + 1e-6 < next_time:
            continue
          while next_time <= t + 1e-6:
            next_time += step
        n += 1
        yield to_rgb.reformat(frame, format="rgb24").to_image()
    except ItemError:
      raise
    except Exception as e:  # noqa: BLE001  av.error.* for broken or truncated data
      raise ItemError(f"cannot decode video {path} after {n} frames: {e}") from None


def iter_frames(item: Item, opts: FrameOptions) -> Iterator[Image.Image]:
  """Every kept frame of the item (RGB, original size), streamed; ItemError names what went wrong."""
  path = resolve(item)
  if os.path.isdir(path):
    yield from folder_frames(path, opts)
  else:
    yield from video_frames(path, opts)
