"""Reading a video's frames: a video file (PyAV) or a folder of numbered images.

The one reader shared by the converter (`data_prep` turns the frames into
TFRecords) and the predictor (`reskd_jax.predict` runs a trained model on the
frames directly), so that both see the same pixels. Frames come out as RGB
PIL images at the source size; :func:`short_side_size` is the converter's
resize rule (mmcv ``rescale_size``, short side exact).
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Iterator, List, Optional, Tuple

import numpy as np
from PIL import Image

from reskd_jax.errors import DataError

VIDEO_EXTENSIONS = (".mp4", ".webm", ".avi", ".mkv", ".mov", ".m4v", ".flv", ".mpg", ".mpeg")


class VideoReadError(DataError):
  """A video file or frame folder that cannot be read; the message says why."""


@dataclasses.dataclass(frozen=True)
class FrameOptions:
  """How frames are picked from a source."""
  frame_stride: int = 1  # keep every n-th frame
  fps: Optional[float] = None  # video files: keep frames at about this rate (None: all)
  filename_tmpl: str = "img_{:05d}.jpg"  # frame folders
  decode_threads: int = 1  # PyAV decoder threads (parallelism is across processes)


def short_side_size(width: int, height: int, short_side: int) -> Tuple[int, int]:
  """(new_w, new_h) with the short side exactly `short_side`, aspect kept (mmcv.rescale_size)."""
  scale = short_side / min(width, height)
  new_w, new_h = int(width * scale + 0.5), int(height * scale + 0.5)
  if width <= height:
    new_w = short_side
  else:
    new_h = short_side
  return new_w, new_h


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
  """The frames of a frame folder (every `frame_stride`-th), as RGB images."""
  files = frame_files(folder, opts.filename_tmpl)
  if not files:
    raise VideoReadError(f"no frames matching {opts.filename_tmpl!r} in folder {folder}")
  for path in files[::max(1, opts.frame_stride)]:
    try:
      with Image.open(path) as img:
        img.load()
        yield img.convert("RGB")
    except Exception as e:  # noqa: BLE001  PIL raises many kinds
      raise VideoReadError(f"corrupt frame {path}: {e}") from None


def video_frames(path: str, opts: FrameOptions) -> Iterator[Image.Image]:
  """The kept frames of a video file (all, every `frame_stride`-th, or about `fps` a second)."""
  import av  # optional dependency: only video files need PyAV
  from av.video.reformatter import VideoReformatter

  try:
    container = av.open(path)
  except Exception as e:  # noqa: BLE001
    raise VideoReadError(f"unreadable video {path}: {e}") from None
  with container:
    if not container.streams.video:
      raise VideoReadError(f"unreadable video {path}: no video stream")
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
    except VideoReadError:
      raise
    except Exception as e:  # noqa: BLE001  av.error.* for broken or truncated data
      raise VideoReadError(f"cannot decode video {path} after {n} frames: {e}") from None


def read_frames(path: str, opts: FrameOptions = FrameOptions()) -> Iterator[Image.Image]:
  """Every kept frame of a video file or frame folder (RGB, source size), streamed."""
  if os.path.isdir(path):
    yield from folder_frames(path, opts)
  elif os.path.isfile(path):
    yield from video_frames(path, opts)
  else:
    raise VideoReadError(f"missing file: {path}")


def read_video(path: str, short_side: int = 0,
               opts: FrameOptions = FrameOptions()) -> np.ndarray:
  """All kept frames as uint8 ``(N, H, W, 3)``, resized as the converter does.

  With ``short_side`` > 0 every frame is resized (PIL bilinear) so that its
  short side is ``short_side`` (the first frame's size decides, as in the
  converter); 0 keeps the source size.
  """
  frames, size = [], None
  for img in read_frames(path, opts):
    if size is None:
      size = short_side_size(img.width, img.height, short_side) if short_side else img.size
    if img.size != size:
      img = img.resize(size, Image.BILINEAR)
    frames.append(np.asarray(img, np.uint8))
  if not frames:
    raise VideoReadError(f"no frames decoded from {path}")
  return np.stack(frames)
