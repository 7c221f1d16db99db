"""Frame size arithmetic and JPEG encoding (deterministic: same pixels -> same bytes)."""

from __future__ import annotations

import io

from PIL import Image


def short_side_size(width: int, height: int, short_side: int):
  """(new_w, new_h) with the short side exactly `short_side`, aspect kept (mmcv.rescale_size)."""
  scale = short_side / min(width, height)
  new_w, new_h = int(width * scale + 0.5), int(height * scale + 0.5)
  if width <= height:
    new_w = short_side
  else:
    new_h = short_side
  return new_w, new_h


def encode_jpeg(img: Image.Image, quality: int) -> bytes:
  buf = io.BytesIO()
  img.save(buf, format="JPEG", quality=int(quality))
  return buf.getvalue()
