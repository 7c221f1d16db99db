"""What the model families share: the input resize and the classification head.

Both are plain functions called inside a family's ``@nn.compact`` ``__call__``,
so the head's parameters stay where the released checkpoints put them (the
family's top-level ``fc``), whichever family calls it.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

# The classifier's module name, the same in every family (the released checkpoints' ``fc``):
# what the optimizer, the weight converters and the checkpoint loaders call the head.
HEAD_NAME = "fc"


def resize_input(video, input_size):
  """(B, T, H, W, C) video resized to ``input_size`` squared, or unchanged (None or equal).

  PyTorch's ``interpolate(mode="bilinear", align_corners=False)``, the release's
  in-model resize: bilinear without antialiasing.
  """
  b, t, h, w, c = video.shape
  if input_size is None or (h, w) == (input_size, input_size):
    return video
  return jax.image.resize(video, (b, t, input_size, input_size, c), method="bilinear",
                          antialias=False)


def classify(feats, clip, *, num_classes: int, dropout_rate: float, train: bool, dtype,
             kernel_init, return_features: bool, return_dict: bool):
  """The head: dropout and the linear classifier ``fc`` on the pooled features ``clip``.

  Args:
    feats: the backbone's last feature map (B, T, h, w, C).
    clip: its average (B, C), pooled the family's way (TSN: per frame, then the
      segmental consensus; I3D: over T, h, w at once).

  Returns ``logits`` (B, K); with ``return_features`` also ``feats``; with
  ``return_dict`` a dict of ``logits``, ``features``, ``frame_logits``
  (B, T, K: the classifier on each frame's pooled features) and
  ``position_logits`` (B, T, h, w, K: on each position of the map).
  """
  fc = nn.Dense(num_classes, kernel_init=kernel_init, dtype=dtype, name=HEAD_NAME)
  logits = fc(nn.Dropout(dropout_rate, deterministic=not train)(clip))
  if return_dict:
    return {
        "logits": logits,
        "features": feats,
        "frame_logits": fc(jnp.mean(feats, axis=(2, 3))),
        "position_logits": fc(feats),
    }
  if return_features:
    return logits, feats
  return logits
