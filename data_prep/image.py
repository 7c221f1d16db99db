"""JPEG encoding (deterministic: same pixels -> same bytes)."""

from __future__ import annotations

import io

from PIL import Image


def encode_jpeg(img: Image.Image, quality: int) -> bytes:
  buf = io.BytesIO()
  img.save(buf, format="JPEG", quality=int(quality))
  return buf.getvalue()
