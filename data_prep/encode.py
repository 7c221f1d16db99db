"""One item -> one serialized SequenceExample (reskd_jax.records format)."""

from __future__ import annotations

import dataclasses
from typing import Optional

from data_prep.image import encode_jpeg, short_side_size
from data_prep.items import Item, ItemError
from data_prep.sources import FrameOptions, iter_frames


@dataclasses.dataclass(frozen=True)
class ConvertOptions:
  """Everything that decides the bytes written for an item."""
  short_side: int = 256  # 0: keep the source size
  jpeg_quality: int = 90
  frame_stride: int = 1
  fps: Optional[float] = None
  filename_tmpl: str = "img_{:05d}.jpg"
  decode_threads: int = 1

  def frame_options(self) -> FrameOptions:
    return FrameOptions(frame_stride=self.frame_stride, fps=self.fps,
                        filename_tmpl=self.filename_tmpl, decode_threads=self.decode_threads)

  def to_json(self):
    return dataclasses.asdict(self)


def encode_frames(item: Item, options: ConvertOptions):
  """(list of JPEG bytes, height, width): frames resized to the short side, streamed so
  that long videos never sit decoded in memory. Every frame gets the first frame's size."""
  from PIL import Image

  jpegs, size = [], None
  for img in iter_frames(item, options.frame_options()):
    if size is None:
      size = (short_side_size(img.width, img.height, options.short_side)
              if options.short_side else img.size)
    if img.size != size:
      img = img.resize(size, Image.BILINEAR)
    jpegs.append(encode_jpeg(img, options.jpeg_quality))
  if not jpegs:
    raise ItemError(f"no frames decoded from {item.source}")
  return jpegs, size[1], size[0]


def encode_item(item: Item, options: ConvertOptions) -> bytes:
  import tensorflow as tf
  from reskd_jax.records import make_sequence_example

  jpegs, height, width = encode_frames(item, options)
  record = make_sequence_example(item.video_id, jpegs, item.labels, item.label_names, height,
                                 width)
  # Protobuf writes map fields (the context features) in an order that varies between
  # processes; re-serialising deterministically (keys sorted) makes shards byte-identical
  # whichever process wrote them, so a resumed conversion equals an uninterrupted one.
  example = tf.train.SequenceExample.FromString(record)
  return example.SerializeToString(deterministic=True)
