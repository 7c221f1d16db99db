"""Reading a video's frames: a video file (PyAV) or a folder of numbered images.

The one reader shared by the converter (`data_prep` turns the frames into
TFRecords) and the predictor (`reskd_jax.tools.predict` runs a trained model on the
frames directly), so that both see the same pixels. Frames come out as RGB
PIL images at the source size; :func:`read_video` resizes them as the converter
does (`reskd_jax.data.resize`).

Incomplete sources are told apart from unreadable ones: a frame folder with
gaps in its numbering (or fewer frames than its annotation says), or a video
that falls short of the length its container declares (see
:func:`completeness_problem`: its frame count, else its duration, judged by
timestamps) or fails part way, raises :class:`PartialVideo` (after the frames
that could be read, or at once for a folder unless
``FrameOptions.allow_partial``).

Frames come out as players show them: a video's display rotation (display
matrix side data) is applied (``FrameOptions.autorotate``), and high bit depth
images are scaled to 8 bits (:func:`to_rgb8`).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import struct
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from reskd_jax.data import resize
from reskd_jax.errors import DataError

VIDEO_EXTENSIONS = (".mp4", ".webm", ".avi", ".mkv", ".mov", ".m4v", ".flv", ".mpg", ".mpeg")
# A video missing more than this fraction of its declared frames (and at least 2) is partial.
PARTIAL_TOLERANCE = 0.05


class VideoReadError(DataError):
  """A video file or frame folder that cannot be read; the message says why."""


class PartialVideo(VideoReadError):
  """A video or frame folder that is incomplete (frames missing); the message says which."""


@dataclasses.dataclass(frozen=True)
class FrameOptions:
  """How frames are picked from a source."""
  frame_stride: int = 1  # keep every n-th frame
  fps: Optional[float] = None  # video files: keep frames at about this rate (None: all)
  filename_tmpl: str = "img_{:05d}.jpg"  # frame folders
  decode_threads: int = 1  # PyAV decoder threads (parallelism is across processes)
  allow_partial: bool = False  # frame folders with gaps: decode what is there
  autorotate: bool = True  # video files: apply the stream's display rotation, as players do
  resize_mixed_frames: bool = False  # frame folders: squeeze frames to the first one's size


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


def duplicate_numbers(numbered: List[Tuple[int, str]]) -> List[Tuple[int, List[str]]]:
  """(frame number, file names) of every number that two or more files parse to
  (`img_00001.jpg` and `img_1.jpg`)."""
  names: dict = {}
  for k, path in numbered:
    names.setdefault(k, []).append(os.path.basename(path))
  return [(k, sorted(v)) for k, v in sorted(names.items()) if len(v) > 1]


def to_rgb8(img: Image.Image) -> Image.Image:
  """An RGB image with 8 bits per channel. High bit depth images are scaled, not clipped:
  16-bit grayscale (PIL mode `I;16*`, or `I` as older Pillows open 16-bit PNGs) maps
  0..65535 to 0..255; 16-bit colour PNGs already come as 8-bit `RGB` (PIL keeps the high
  byte). Floating-point images (mode `F`) have no agreed range: VideoReadError."""
  if img.mode.startswith("I;16") or img.mode == "I":
    wide = np.asarray(img).astype(np.float64)
    if img.mode == "I" and wide.size and (wide.min() < 0 or wide.max() > 65535):
      raise VideoReadError(f"32-bit integer image (values {int(wide.min())}..{int(wide.max())}): "
                           f"save it with 8 or 16 bits per channel")
    gray = np.clip(np.rint(wide / 257.0), 0, 255).astype(np.uint8)
    return Image.fromarray(gray, "L").convert("RGB")
  if img.mode == "F":
    raise VideoReadError("floating-point image (PIL mode F): save it with 8 or 16 bits per "
                         "channel")
  return img.convert("RGB")


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
  """The frames of a frame folder (every `frame_stride`-th), as RGB images.

  PartialVideo (after the frames, or at once without `allow_partial`) when
  numbers are missing or the count differs from `expected`.
  """
  numbered = numbered_frames(folder, opts.filename_tmpl)
  if not numbered:
    raise VideoReadError(f"no frames matching {opts.filename_tmpl!r} in folder {folder}")
  dups = duplicate_numbers(numbered)
  if dups:
    shown = "; ".join(f"{k}: {', '.join(names)}" for k, names in dups[:3])
    raise VideoReadError(f"frame folder {folder} has {len(dups)} frame number(s) given by two "
                         f"or more files ({shown}{'; ...' if len(dups) > 3 else ''}): keep one "
                         f"file per number")
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
    raise PartialVideo(partial)
  first = None
  for _, path in numbered[::max(1, opts.frame_stride)]:
    try:
      with Image.open(path) as img:
        img.load()
        rgb = to_rgb8(img)
    except VideoReadError as e:
      raise VideoReadError(f"frame {path}: {e}") from None
    except Exception as e:  # noqa: BLE001  PIL raises many kinds
      raise VideoReadError(f"corrupt frame {path}: {e}") from None
    if first is None:
      first = (os.path.basename(path), rgb.size)
    elif rgb.size != first[1] and not opts.resize_mixed_frames:
      raise VideoReadError(
          f"frame folder {folder} mixes frame sizes: {first[0]} is {first[1][0]}x{first[1][1]}, "
          f"{os.path.basename(path)} is {rgb.width}x{rgb.height} (--resize-mixed-frames "
          f"squeezes every frame to the first one's size)")
    yield rgb
  if partial:
    raise PartialVideo(partial)


def declared_frames(container, stream) -> Optional[int]:
  """The frame count the container declares (mp4, avi: the stream's count); None when it
  declares none (mkv, webm: their length is a duration, see `declared_end`)."""
  del container
  return int(stream.frames) if stream.frames else None


def declared_end(container, stream) -> Optional[float]:
  """The time (seconds, on the frames' clock) at which the container says the video
  stream ends: its start plus the stream's duration, else the container's; None when it
  declares no duration (a live recording, e.g. a webm written while streaming)."""
  import av

  if stream.duration and stream.time_base:
    start = float(stream.start_time * stream.time_base) if stream.start_time else 0.0
    return start + float(stream.duration * stream.time_base)
  if container.duration:
    start = container.start_time / av.time_base if container.start_time else 0.0
    return start + container.duration / av.time_base
  return None


def _frame_seconds(stream) -> float:
  rate = stream.average_rate or stream.guessed_rate
  return 1.0 / float(rate) if rate else 1.0 / 30


def time_tolerance(end: float, frame_seconds: float) -> float:
  """Seconds a complete video's last frame may end before its declared end (rounded
  durations, audio a little longer than the video): 5%, at least two frames."""
  return max(2 * frame_seconds, PARTIAL_TOLERANCE * end)


def completeness_problem(path: str, container, stream, decoded: int,
                         last_time: Optional[float]) -> Optional[str]:
  """Why a fully decoded video is not known to be complete, None when it is.

  The container decides: its frame count when it has one (mp4, avi); else its
  duration: decoding must reach the stream's end time (variable frame rate videos,
  whose duration times the nominal rate is no frame count, are judged by their
  timestamps). A container that declares neither (a live-recorded webm) cannot tell
  a cut-short file from a complete one: that is a problem too."""
  declared = declared_frames(container, stream)
  if declared is not None:
    if decoded < declared - frames_tolerance(declared):
      return (f"partial video {path}: {decoded} of the {declared} frames its container "
              f"declares decoded (cut short?)")
    return None
  end = declared_end(container, stream)
  if end is None:
    return (f"video {path} declares neither a frame count nor a duration (a live "
            f"recording?): whether it was cut short cannot be checked")
  step = _frame_seconds(stream)
  reached = (last_time + step) if last_time is not None else decoded * step
  if reached < end - time_tolerance(end, step):
    return (f"partial video {path}: decoding stopped at {reached:.2f} s of the {end:.2f} s "
            f"its container declares ({decoded} frames; cut short?)")
  return None


def display_matrix(frame) -> Optional[Tuple[int, ...]]:
  """The frame's display matrix (9 int32, 16.16 fixed point), None when it has none."""
  for data in frame.side_data:
    if "DISPLAYMATRIX" in str(data.type):
      raw = bytes(data)
      return struct.unpack("<9i", raw[:36]) if len(raw) >= 36 else None
  return None


def display_transposes(rotation: float, matrix: Optional[Sequence[int]]) -> List:
  """The PIL transposes that show a frame as players do (FFmpeg's autorotate: quarter
  turns, and the mirroring a display matrix may add). `rotation`: PyAV's
  `VideoFrame.rotation` (counter-clockwise degrees); `matrix`: see `display_matrix`."""
  T = Image.Transpose
  theta = (-int(round(rotation))) % 360  # clockwise, as FFmpeg's get_rotation
  m = matrix or (65536, 0, 0, 0, 65536, 0, 0, 0, 1 << 30)
  if abs(theta - 90) < 1:
    return [T.TRANSPOSE if m[3] > 0 else T.ROTATE_270]
  if abs(theta - 270) < 1:
    return [T.TRANSVERSE if m[3] < 0 else T.ROTATE_90]
  if abs(theta - 180) < 1:
    return ([T.FLIP_LEFT_RIGHT] if m[0] < 0 else []) + ([T.FLIP_TOP_BOTTOM] if m[4] < 0 else [])
  if theta < 1 or theta > 359:
    return [T.FLIP_TOP_BOTTOM] if m[4] < 0 else []
  return []  # not a quarter turn (rare): the stored pixels


def _shown(img: Image.Image, frame) -> Image.Image:
  """`img` (the decoded `frame`) as a player shows it."""
  for transpose in display_transposes(frame.rotation, display_matrix(frame)):
    img = img.transpose(transpose)
  return img


def frames_tolerance(declared: int) -> int:
  """Frames a complete video may lack against its declared count (rounded durations,
  audio streams a little longer than the video)."""
  return max(2, math.ceil(PARTIAL_TOLERANCE * declared))


def video_frames(path: str, opts: FrameOptions) -> Iterator[Image.Image]:
  """The kept frames of a video file (all, every `frame_stride`-th, or about `fps` a second).

  PartialVideo after the last frame when fewer frames were decoded than the
  container declares (see `frames_tolerance`) or decoding failed part way.
  """
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
    next_time, t0, n, decoded, last_time = None, None, 0, 0, None
    try:
      for i, frame in enumerate(container.decode(stream)):
        decoded = i + 1
        if frame.time is not None:
          last_time = frame.time if last_time is None else max(last_time, frame.time)
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
        img = to_rgb.reformat(frame, format="rgb24").to_image()
        yield _shown(img, frame) if opts.autorotate and frame.side_data else img
    except VideoReadError:
      raise
    except Exception as e:  # noqa: BLE001  av.error.* for broken or truncated data
      if n == 0:
        raise VideoReadError(f"cannot decode video {path}: {e}") from None
      raise PartialVideo(f"cannot decode video {path} after {decoded} frames: {e}") from None
    problem = completeness_problem(path, container, stream, decoded, last_time)
  if problem:
    raise PartialVideo(problem)


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
  converter); 0 keeps the source size. An incomplete video raises
  PartialVideo unless ``opts.allow_partial``, which keeps the frames read.
  """
  frames = []
  try:
    for img in resize.resize_frames(read_frames(path, opts), short_side):
      frames.append(np.asarray(img, np.uint8))
  except PartialVideo:
    if not opts.allow_partial or not frames:
      raise
  if not frames:
    raise VideoReadError(f"no frames decoded from {path}")
  return np.stack(frames)
