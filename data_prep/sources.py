"""Finding and decoding a video's frames: frame folders or video files (PyAV)."""

from __future__ import annotations

import dataclasses
import math
import os
import re
from typing import Iterator, List, Optional, Tuple

import av
from av.video.reformatter import VideoReformatter
from PIL import Image

from data_prep.items import Item, ItemError, PartialItem

VIDEO_EXTENSIONS = (".mp4", ".webm", ".avi", ".mkv", ".mov", ".m4v", ".flv", ".mpg", ".mpeg")
# A video missing more than this fraction of its declared frames (and at least 2) is partial.
PARTIAL_TOLERANCE = 0.05
PARTIAL_HINT = " (--allow-partial keeps such videos)"


@dataclasses.dataclass(frozen=True)
class FrameOptions:
  """How frames are picked from a source."""
  frame_stride: int = 1  # keep every n-th frame
  fps: Optional[float] = None  # video files: keep frames at about this rate (None: all)
  filename_tmpl: str = "img_{:05d}.jpg"  # frame folders
  decode_threads: int = 1  # PyAV decoder threads (parallelism is across processes)
  allow_partial: bool = False  # frame folders with gaps: decode what is there


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
  tried = item.source
  if item.alternatives:
    tried += f" (or {', '.join(item.alternatives)} with a video extension)"
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


def numbered_frames(folder: str, tmpl: str) -> List[Tuple[int, str]]:
  """(frame number, path) of the folder's files matching the template, in number order."""
  pattern = _tmpl_regex(tmpl)
  numbered = []
  for name in os.listdir(folder):
    m = pattern.match(name)
    if m:
      numbered.append((int(m.group(1)), os.path.join(folder, name)))
  return sorted(numbered)


def frame_files(folder: str, tmpl: str) -> List[str]:
  """The folder's frame files matching the template, in frame-number order."""
  return [path for _, path in numbered_frames(folder, tmpl)]


def _missing(numbers: List[int]) -> List[int]:
  """Frame numbers absent between the first (0 or 1) and the last one."""
  first = 0 if numbers[0] == 0 else 1
  present = set(numbers)
  return [k for k in range(first, numbers[-1] + 1) if k not in present]


def _ranges(numbers: List[int], limit: int = 5) -> str:
  runs = []
  for k in numbers:
    if runs and k == runs[-1][1] + 1:
      runs[-1][1] = k
    else:
      runs.append([k, k])
  text = ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs[:limit])
  return text + (", ..." if len(runs) > limit else "")


def folder_frames(folder: str, opts: FrameOptions,
                  expected: Optional[int] = None) -> Iterator[Image.Image]:
  """The folder's frames; PartialItem (after the frames, or at once without
  `allow_partial`) when numbers are missing or the count differs from `expected`."""
  numbered = numbered_frames(folder, opts.filename_tmpl)
  if not numbered:
    raise ItemError(f"no frames matching {opts.filename_tmpl!r} in folder {folder}")
  partial = None
  missing = _missing([k for k, _ in numbered])
  if missing:
    partial = (f"frame folder {folder} lacks {len(missing)} frame(s): number(s) "
               f"{_ranges(missing)} of {numbered[0][0] if numbered[0][0] == 0 else 1}.."
               f"{numbered[-1][0]}")
  elif expected is not None and expected != len(numbered):
    partial = (f"frame folder {folder} holds {len(numbered)} frames, the annotations say "
               f"{expected}")
  if partial and not opts.allow_partial:
    raise PartialItem(partial)
  for _, path in numbered[::max(1, opts.frame_stride)]:
    try:
      with Image.open(path) as img:
        img.load()
        yield img.convert("RGB")
    except Exception as e:  # noqa: BLE001  PIL raises many kinds
      raise ItemError(f"corrupt frame {path}: {e}") from None
  if partial:
    raise PartialItem(partial)


def declared_frames(container, stream) -> Optional[int]:
  """The frame count the container declares: the stream's count (mp4), else its duration
  (or the container's) times the frame rate; None when it declares neither."""
  if stream.frames:
    return int(stream.frames)
  rate = stream.average_rate or stream.guessed_rate
  if not rate:
    return None
  if stream.duration and stream.time_base:
    seconds = float(stream.duration * stream.time_base)
  elif container.duration:
    seconds = container.duration / av.time_base
  else:
    return None
  return int(round(seconds * float(rate)))


def frames_tolerance(declared: int) -> int:
  """Frames a complete video may lack against its declared count (rounded durations,
  audio streams a little longer than the video)."""
  return max(2, math.ceil(PARTIAL_TOLERANCE * declared))


def video_frames(path: str, opts: FrameOptions) -> Iterator[Image.Image]:
  """The video's kept frames; PartialItem after the last one when fewer frames were
  decoded than the container declares (see `frames_tolerance`) or decoding failed
  part way."""
  try:
    container = av.open(path)
  except Exception as e:  # noqa: BLE001
    raise ItemError(f"unreadable video {path}: {e}") from None
  with container:
    if not container.streams.video:
      raise ItemError(f"unreadable video {path}: no video stream")
    stream = container.streams.video[0]
    stream.thread_count = max(0, int(opts.decode_threads))
    declared = declared_frames(container, stream)
    to_rgb = VideoReformatter()  # keeps its conversion context from frame to frame
    step = 1.0 / opts.fps if opts.fps else None
    next_time, t0, n, decoded = None, None, 0, 0
    try:
      for i, frame in enumerate(container.decode(stream)):
        decoded = i + 1
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
      if n == 0:
        raise ItemError(f"cannot decode video {path}: {e}") from None
      raise PartialItem(f"cannot decode video {path} after {decoded} frames: {e}") from None
  if declared is not None and decoded < declared - frames_tolerance(declared):
    raise PartialItem(f"partial video {path}: {decoded} of the {declared} frames its container "
                      f"declares decoded (cut short?)")


def iter_frames(item: Item, opts: FrameOptions) -> Iterator[Image.Image]:
  """Every kept frame of the item (RGB, original size), streamed; ItemError names what
  went wrong. PartialItem, raised after the frames that could be read, says the video is
  incomplete (`encode.encode_frames` keeps it with `allow_partial`)."""
  path = resolve(item)
  if os.path.isdir(path):
    yield from folder_frames(path, opts, item.num_frames)
  else:
    yield from video_frames(path, opts)
