"""One item -> its JPEG frames (written by `shards.write_shard` in a reskd_jax.data.records layout)."""

from __future__ import annotations

import dataclasses
from typing import List, Optional, Tuple

from reskd_jax.data import resize
from reskd_jax.data.records import LAYOUT_FRAMES, LAYOUTS, make_sequence_example

from data_prep.image import encode_jpeg
from data_prep.items import Item, ItemError, PartialItem
from data_prep.sources import PARTIAL_HINT, FrameOptions, iter_frames


@dataclasses.dataclass(frozen=True)
class ConvertOptions:
  """Everything that decides the bytes written for an item."""
  short_side: int = 256  # 0: keep the source size
  jpeg_quality: int = 90
  frame_stride: int = 1
  fps: Optional[float] = None
  filename_tmpl: str = "img_{:05d}.jpg"
  decode_threads: int = 1
  allow_partial: bool = False  # keep partial videos (listed in the manifest) instead of skipping
  autorotate: bool = True  # apply a video's display rotation (as players do)
  resize_mixed_frames: bool = False  # frame folders of mixed sizes: squeeze, instead of skipping
  # At most this many frames per video (0: all), spread uniformly over the video: the
  # centre frame of each of max_frames equal segments (see `kept_frames`).
  max_frames: int = 0
  layout: str = LAYOUT_FRAMES  # reskd_jax.data.records layout written

  def __post_init__(self):
    if self.layout not in LAYOUTS:
      raise ValueError(f"unknown layout {self.layout!r} (known: {LAYOUTS})")
    if self.max_frames < 0:
      raise ValueError(f"max_frames must be >= 0, got {self.max_frames}")

  def frame_options(self) -> FrameOptions:
    return FrameOptions(frame_stride=self.frame_stride, fps=self.fps,
                        filename_tmpl=self.filename_tmpl, decode_threads=self.decode_threads,
                        allow_partial=self.allow_partial, autorotate=self.autorotate,
                        resize_mixed_frames=self.resize_mixed_frames)

  def to_json(self):
    return dataclasses.asdict(self)


def kept_frames(num_frames: int, max_frames: int) -> List[int]:
  """Indices of the frames kept of `num_frames` when at most `max_frames` are (0: all):
  the centre frame int((i + 0.5) * num_frames / max_frames) of each of `max_frames` equal
  segments, as mmaction2's test-time TSN sampling picks them."""
  if not max_frames or num_frames <= max_frames:
    return list(range(num_frames))
  return [int((i + 0.5) * num_frames / max_frames) for i in range(max_frames)]


def encode_frames(item: Item, options: ConvertOptions
                  ) -> Tuple[List[bytes], int, int, Optional[str]]:
  """(list of JPEG bytes, height, width, partial): frames resized to the short side
  (`reskd_jax.data.resize.resize_frames`, the predictor's loop too), streamed so that long
  videos never sit decoded in memory. Every frame gets the first frame's size. `partial`
  is None for a complete video, else why it is incomplete (only with
  `options.allow_partial`; without it a partial video raises PartialItem).
  With `options.max_frames`, only `kept_frames` of the decoded frames are returned (every
  frame is still decoded and encoded: the count is known only at the end of a stream)."""
  jpegs, size, partial = [], None, None  # size: (width, height), PIL's order
  try:
    for img in resize.resize_frames(iter_frames(item, options.frame_options()),
                                    options.short_side):
      size = img.size
      jpegs.append(encode_jpeg(img, options.jpeg_quality))
  except PartialItem as e:
    if not options.allow_partial or not jpegs:
      raise PartialItem(f"{e}{PARTIAL_HINT}") from None
    partial = str(e)
  if not jpegs:
    raise ItemError(f"no frames decoded from {item.source}")
  if options.max_frames:
    jpegs = [jpegs[i] for i in kept_frames(len(jpegs), options.max_frames)]
  return jpegs, size[1], size[0], partial


def encode_item(item: Item, options: ConvertOptions) -> Tuple[bytes, Optional[str]]:
  """(serialized SequenceExample of the "sequence_example" layout, partial: see
  `encode_frames`)."""
  # TensorFlow is imported only here and in `shards.write_shard` (the CLI quiets its
  # logging first, and reading annotations never needs it).
  import tensorflow as tf

  jpegs, height, width, partial = encode_frames(item, options)
  record = make_sequence_example(item.video_id, jpegs, item.labels, item.label_names, height,
                                 width)
  # Protobuf writes map fields (the context features) in an order that varies between
  # processes; re-serialising deterministically (keys sorted) makes shards byte-identical
  # whichever process wrote them, so a resumed conversion equals an uninterrupted one.
  example = tf.train.SequenceExample.FromString(record)
  return example.SerializeToString(deterministic=True), partial
