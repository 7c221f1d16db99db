"""Flax SlowOnly (mmaction2 ``ResNet3dSlowOnly`` + ``I3DHead``): a 3D ResNet-50 for 8x8 clips.

The layers, in mmaction2's terms (lateral off, ``inflate_style='3x1x1'``):
  * stem: conv (1,7,7) stride (1,2,2) padding (0,3,3), BN, ReLU; max-pool
    (1,3,3) stride (1,2,2) padding (0,1,1); no pool2;
  * four stages of Bottleneck3d blocks, spatial strides (1,2,2,2) on conv2,
    no temporal stride anywhere; ``inflate=(0,0,1,1)``: in the inflated
    stages every block's conv1 is (3,1,1) with temporal padding 1, elsewhere
    1x1x1; conv2 is always (1,3,3); conv3 1x1x1; downsample 1x1x1 conv + BN;
  * head: average over T, H, W, dropout 0.5, linear (``fc``).

Everything is channels-last, ``(B, T, H, W, C)``, with explicit symmetric
padding so that converted PyTorch weights give PyTorch's numbers. Built
through ``reskd_jax.models.build_model("slowonly_r50", ...)``.
"""

from __future__ import annotations

import functools
from typing import Any, Optional, Sequence, Tuple

import flax.linen as nn
import jax.numpy as jnp

from reskd_jax.models import layers
from reskd_jax.models.resnet import BN_EPSILON, BN_MOMENTUM, conv_kernel_init

ModuleDef = Any

# mmaction2 I3DHead: normal_init(fc_cls, std=0.01), bias 0.
head_kernel_init = nn.initializers.normal(stddev=0.01)
EXPANSION = 4
STEM_STRIDE = 4  # conv1 stride 2, max-pool stride 2
INFLATE = (0, 0, 1, 1)  # per stage: 1 = every block's conv1 is (3, 1, 1)


def _conv3d(features: int, kernel: Tuple[int, int, int], stride: Tuple[int, int, int],
            name: str, dtype) -> nn.Conv:
  padding = [((k - 1) // 2, (k - 1) // 2) for k in kernel]
  return nn.Conv(features, kernel, strides=stride, padding=padding, use_bias=False,
                 kernel_init=conv_kernel_init, dtype=dtype, name=name)


class Bottleneck3d(nn.Module):
  """mmaction2 Bottleneck3d (``style='pytorch'``: stride on conv2, ``inflate_style='3x1x1'``)."""
  features: int
  spatial_stride: int
  inflate: bool
  norm: ModuleDef
  dtype: Any

  @nn.compact
  def __call__(self, x):
    out_features = self.features * EXPANSION
    conv1_kernel = (3, 1, 1) if self.inflate else (1, 1, 1)
    s = self.spatial_stride
    y = _conv3d(self.features, conv1_kernel, (1, 1, 1), "conv1", self.dtype)(x)
    y = nn.relu(self.norm(name="bn1")(y))
    y = _conv3d(self.features, (1, 3, 3), (1, s, s), "conv2", self.dtype)(y)
    y = nn.relu(self.norm(name="bn2")(y))
    y = _conv3d(out_features, (1, 1, 1), (1, 1, 1), "conv3", self.dtype)(y)
    # zero_init_residual=True in mmaction2's ResNet3d: the last BN starts at 0.
    y = self.norm(name="bn3", scale_init=nn.initializers.zeros)(y)
    identity = x
    if x.shape[-1] != out_features or s != 1:
      identity = _conv3d(out_features, (1, 1, 1), (1, s, s), "downsample_conv", self.dtype)(x)
      identity = self.norm(name="downsample_bn")(identity)
    return nn.relu(y + identity)


class SlowOnly(nn.Module):
  """SlowOnly video classifier: ``(B, T, H, W, C) -> (B, num_classes)``.

  ``return_features=True`` returns ``(logits, features)`` with the last map
  ``(B, T, h, w, C)`` after the final ReLU, before pooling;
  ``return_dict=True`` returns ``logits``, ``features``, ``frame_logits``
  ``(B, T, K)`` and ``position_logits`` ``(B, T, h, w, K)`` (the classifier
  per frame / per position, without dropout).
  """
  num_classes: int
  stage_sizes: Sequence[int] = (3, 4, 6, 3)
  width: int = 64
  inflate: Sequence[int] = INFLATE
  spatial_strides: Sequence[int] = (1, 2, 2, 2)
  dropout_rate: float = 0.5
  input_size: Optional[int] = None  # in-model bilinear resize (antialias off), e.g. 112
  in_channels: int = 3
  dtype: Any = jnp.float32
  bn_axis_name: Optional[str] = None  # set for synchronised BatchNorm
  remat: bool = False  # recompute each block's activations in the backward pass

  @property
  def total_stride(self) -> int:
    stride = STEM_STRIDE
    for s in self.spatial_strides:
      stride *= s
    return stride

  @nn.compact
  def __call__(self, video, train: bool = False, return_features: bool = False,
               return_dict: bool = False):
    if video.ndim != 5 or video.shape[-1] != self.in_channels:
      raise ValueError(f"video of shape {tuple(video.shape)}: expected (B, T, H, W, "
                       f"{self.in_channels})")
    video = layers.resize_input(video, self.input_size)
    h, w = video.shape[2:4]
    if min(h, w) < self.total_stride:
      raise ValueError(f"input resolution {h}x{w} is smaller than the backbone's total "
                       f"stride {self.total_stride}")
    norm = functools.partial(nn.BatchNorm, use_running_average=not train,
                             momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
                             dtype=self.dtype, axis_name=self.bn_axis_name)
    x = video.astype(self.dtype)
    x = _conv3d(self.width, (1, 7, 7), (1, 2, 2), "conv1", self.dtype)(x)
    x = nn.relu(norm(name="bn1")(x))
    x = nn.max_pool(x, (1, 3, 3), strides=(1, 2, 2), padding=((0, 0), (1, 1), (1, 1)))
    # Same parameter names either way: the lifted block keeps its `name`.
    block_cls = nn.remat(Bottleneck3d) if self.remat else Bottleneck3d
    for i, (num_blocks, stride) in enumerate(zip(self.stage_sizes, self.spatial_strides)):
      for j in range(num_blocks):
        x = block_cls(self.width * 2**i, spatial_stride=stride if j == 0 else 1,
                      inflate=bool(self.inflate[i]), norm=norm, dtype=self.dtype,
                      name=f"layer{i + 1}_{j}")(x)
    # I3DHead: average over (T, h, w), dropout, fc.
    return layers.classify(x, jnp.mean(x, axis=(1, 2, 3)), num_classes=self.num_classes,
                           dropout_rate=self.dropout_rate, train=train, dtype=self.dtype,
                           kernel_init=head_kernel_init, return_features=return_features,
                           return_dict=return_dict)


def build(num_classes: int, *, stage_sizes: Sequence[int] = (3, 4, 6, 3), width: int = 64,
          inflate: Sequence[int] = INFLATE, input_size: Optional[int] = None,
          dropout_rate: float = 0.5, dtype: Any = jnp.float32,
          bn_axis_name: Optional[str] = None, in_channels: int = 3,
          remat: bool = False) -> SlowOnly:
  """A SlowOnly classifier.

  Args:
    stage_sizes: blocks per stage ((3, 4, 6, 3) is depth 50); tiny nets use (1, 1, 1, 1).
    width: channels of the first stage (64); tiny nets use 8.
    inflate: per stage, 1 for a (3,1,1) conv1 in every block.
    input_size: resize frames inside the model (bilinear, no antialiasing),
      how the ResKD student gets 112 px from the teacher's 224 crop.
    dtype: compute dtype (parameters stay float32).
    bn_axis_name: mesh axis for synchronised BatchNorm (None: per device).
    remat: wrap every residual block in ``nn.remat`` (activations recomputed in the
      backward pass: less memory, the same numbers and variables).
  """
  sizes = tuple(int(s) for s in stage_sizes)
  inflate = tuple(int(i) for i in inflate)
  if len(sizes) != 4 or min(sizes) < 1:
    raise ValueError(f"stage_sizes={sizes}: expected four positive values")
  if len(inflate) != 4 or any(i not in (0, 1) for i in inflate):
    raise ValueError(f"inflate={inflate}: expected four values, each 0 or 1")
  return SlowOnly(num_classes=num_classes, stage_sizes=sizes, width=int(width),
                  inflate=inflate, dropout_rate=dropout_rate, input_size=input_size,
                  in_channels=in_channels, dtype=dtype, bn_axis_name=bn_axis_name,
                  remat=bool(remat))


def with_bn_axis(model: SlowOnly, axis_name: Optional[str]) -> SlowOnly:
  """The same model with BatchNorm synchronised over ``axis_name`` (None: local)."""
  return model.clone(bn_axis_name=axis_name)


def feature_channels(model: SlowOnly) -> int:
  """Channels of the last feature map (2048 for depth 50)."""
  return model.width * 2**(len(model.stage_sizes) - 1) * EXPANSION


def feature_shape(model: SlowOnly, num_frames: int, resolution: int) -> Tuple[int, int, int]:
  """``(T, h, w)`` of the last map: T is kept, space shrinks by 32 (rounding up)."""
  size = model.input_size or resolution
  conv = lambda s, k, st: (s + 2 * ((k - 1) // 2) - k) // st + 1
  size = conv(conv(size, 7, 2), 3, 2)
  for s in model.spatial_strides:
    size = conv(size, 3, s)
  return num_frames, size, size


def min_resolution(model: SlowOnly) -> int:
  """The smallest input side the model takes (its total stride)."""
  return model.total_stride
