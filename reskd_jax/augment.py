"""On-device preprocessing, run inside the jitted train and eval steps.

The host (tf.data) delivers uint8 RGB videos; the accelerator flips them
(training) and normalises them with the ImageNet statistics below, the one
place those constants are written.
"""

from __future__ import annotations

from typing import Sequence

import dm_pix
import jax
import jax.numpy as jnp

# ImageNet mean and std on 0-255 RGB (mmaction2 / torchvision).
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


def normalize(video, mean: Sequence[float] = IMAGENET_MEAN,
              std: Sequence[float] = IMAGENET_STD):
  """uint8 video [..., 3] -> float32 (video - mean) / std, per channel (0-255 RGB stats)."""
  mean = jnp.asarray(mean, jnp.float32)
  std = jnp.asarray(std, jnp.float32)
  return (video.astype(jnp.float32) - mean) / std


def random_flip(rng, video, probability: float = 0.5):
  """Left-right flips each video of a batch [B, ..., H, W, C] with `probability` (dm-pix).

  All frames (and views) of one video get the same flip.
  """
  keys = jax.random.split(rng, video.shape[0])
  return jax.vmap(lambda k, v: dm_pix.random_flip_left_right(k, v, probability=probability))(
      keys, video)


def preprocess(video, rng, *, mean, std, flip: bool, dtype=jnp.float32):
  """Per-video random horizontal flip (training, when ``flip``) and normalisation."""
  if flip:
    video = random_flip(rng, video)
  return normalize(video, mean, std).astype(dtype)
