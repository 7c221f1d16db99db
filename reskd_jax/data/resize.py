"""The short-side resize: one size rule and one loop that resizes a video's frames.

mmaction2's ``Resize(scale=(-1, S))`` (``mmcv.rescale_size``) scales a frame so
that its short side is S, the aspect ratio kept. Three places apply it: the input
pipeline inside a tf.data graph (`decode`, on tensors), the converter
(`data_prep.encode`) and the predictor (`video_io.read_video`), both on PIL frames.
:func:`short_side_size` is the rule for all three and :func:`resize_frames` the loop
of the last two, so stored frames, predicted-on frames and the pipeline's test
transform have the same sizes. Sizes are ``(height, width)`` everywhere, as in
`sampling`; only PIL's ``Image.size`` is ``(width, height)``.

Importing this module does not import TensorFlow: the converter reads annotations,
and an export predicts, without it.
"""

from __future__ import annotations

import numbers
import types
from typing import Iterable, Iterator

from PIL import Image

# The four operations of the rule, on Python numbers.
_PYTHON = types.SimpleNamespace(minimum=lambda a, b: min(int(a), int(b)), f64=float, i32=int)


def _tensorflow():
  """The same four operations as TF ops (imported only when a tensor is given)."""
  import tensorflow as tf
  return types.SimpleNamespace(
      minimum=lambda a, b: tf.minimum(tf.cast(a, tf.int32), tf.cast(b, tf.int32)),
      f64=lambda x: tf.cast(x, tf.float64), i32=lambda x: tf.cast(x, tf.int32))


def short_side_size(height, width, short_side):
  """``(new_h, new_w)``: the size with the short side ``short_side``, aspect kept
  (mmcv ``rescale_size``: each side times ``short_side / min(h, w)``, rounded half up).

  One formula for Python ints (the converter, the predictor: returns ints) and
  for TF tensors (the tf.data graph, where sizes are known only at run time:
  returns int32 tensors). The arithmetic below is written once against four
  operations (min, to float64, truncate to int) that each input kind supplies,
  so both kinds evaluate the same float64 operations in the same order and
  agree bit for bit. The short side comes out exactly ``short_side``: the
  float64 product ``min(h, w) * (short_side / min(h, w))`` is within an ulp of
  it, far from the rounding boundary.
  """
  python = (isinstance(height, numbers.Integral) and isinstance(width, numbers.Integral)
            and isinstance(short_side, numbers.Real))
  ops = _PYTHON if python else _tensorflow()
  scale = ops.f64(short_side) / ops.f64(ops.minimum(height, width))
  return ops.i32(ops.f64(height) * scale + 0.5), ops.i32(ops.f64(width) * scale + 0.5)


def resize_frames(frames: Iterable[Image.Image], short_side: int) -> Iterator[Image.Image]:
  """The frames of one video, each resized (PIL bilinear) to the size
  :func:`short_side_size` gives the first frame (0: the first frame's size).

  The first frame decides for all: a stream whose frames change size (rare, but
  some files do) still yields one size, as the stored format and the model need.
  Frames already at that size are passed through untouched. Streamed: a long
  video is never held decoded here.
  """
  size = None
  for img in frames:
    if size is None:
      if short_side:
        new_h, new_w = short_side_size(img.height, img.width, int(short_side))
        size = (new_w, new_h)  # PIL order
      else:
        size = img.size
    yield img if img.size == size else img.resize(size, Image.BILINEAR)
