"""Frame size arithmetic and JPEG encoding (deterministic: same pixels -> same bytes)."""

from __future__ import annotations

import io

from PIL import Image

from reskd_jax.video_io import short_side_size  # noqa: F401  (the converter's resize rule)


def encode_jpeg(img: Image.Image, quality: int) -> bytes:
  buf = io.BytesIO()
  img.save(buf, format="JPEG", quality=int(quality))
  return buf.getvalue()
