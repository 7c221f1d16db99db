"""Flax Linen 2D video backbones: ResNet (torchvision layout), TSM and a TSN head.

Everything is NHWC. Convolutions and the stem max-pool use explicit symmetric
padding, so that converted PyTorch weights give the same outputs (Flax's
``SAME`` pads stride-2 layers asymmetrically, which PyTorch never does).

Built through the registry (``reskd_jax.models.build_model``), which names the
depths. Models know nothing about data or training; they map a video
``(B, T, H, W, 3)`` to logits ``(B, num_classes)``.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional, Sequence, Tuple

import flax.linen as nn
import jax.numpy as jnp

from reskd_jax.models import layers

ModuleDef = Any

# torchvision: kaiming_normal_(mode="fan_out", nonlinearity="relu").
conv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
# mmaction2 TSN/TSM head: normal_init(fc_cls, std=0.001), bias 0.
head_kernel_init = nn.initializers.normal(stddev=0.001)

BN_MOMENTUM = 0.9  # PyTorch momentum 0.1
BN_EPSILON = 1e-5


def temporal_shift(x: jnp.ndarray, num_segments: int, shift_div: int = 8) -> jnp.ndarray:
  """mmaction2's temporal shift on frames folded into the batch.

  ``x`` is ``(N*T, H, W, C)``. With ``fold = C // shift_div``, channels
  ``[0, fold)`` take the value of frame ``t+1``, channels ``[fold, 2*fold)``
  the value of frame ``t-1``, and the rest are unchanged; clip ends are zero
  padded.
  """
  nt, h, w, c = x.shape
  if nt % num_segments:
    raise ValueError(
        f"temporal_shift: batch of {nt} frames is not a multiple of "
        f"num_segments={num_segments}")
  fold = c // shift_div
  if fold == 0:
    return x
  x = x.reshape(nt // num_segments, num_segments, h, w, c)
  zeros = jnp.zeros_like(x[:, :1, :, :, :fold])
  from_next = jnp.concatenate([x[:, 1:, :, :, :fold], zeros], axis=1)
  from_prev = jnp.concatenate([zeros, x[:, :-1, :, :, fold:2 * fold]], axis=1)
  out = jnp.concatenate([from_next, from_prev, x[:, :, :, :, 2 * fold:]], axis=-1)
  return out.reshape(nt, h, w, c)


def _conv(features: int, kernel: int, stride: int, name: str, dtype) -> nn.Conv:
  pad = (kernel - 1) // 2
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=[(pad, pad), (pad, pad)], use_bias=False,
                 kernel_init=conv_kernel_init, dtype=dtype, name=name)


class BasicBlock(nn.Module):
  """ResNet-18/34 block; TSM shifts the input of conv1 only (residual shift)."""
  features: int
  stride: int
  norm: ModuleDef
  dtype: Any
  num_segments: Optional[int] = None  # set to enable the temporal shift
  shift_div: int = 8
  expansion = 1

  @nn.compact
  def __call__(self, x):
    identity = x
    y = x if self.num_segments is None else temporal_shift(x, self.num_segments, self.shift_div)
    y = _conv(self.features, 3, self.stride, "conv1", self.dtype)(y)
    y = nn.relu(self.norm(name="bn1")(y))
    y = _conv(self.features, 3, 1, "conv2", self.dtype)(y)
    y = self.norm(name="bn2")(y)
    if x.shape[-1] != self.features or self.stride != 1:
      identity = _conv(self.features, 1, self.stride, "downsample_conv", self.dtype)(x)
      identity = self.norm(name="downsample_bn")(identity)
    return nn.relu(y + identity)


class Bottleneck(nn.Module):
  """ResNet-50/101/152 block (v1.5: stride on the 3x3 conv)."""
  features: int
  stride: int
  norm: ModuleDef
  dtype: Any
  num_segments: Optional[int] = None
  shift_div: int = 8
  expansion = 4

  @nn.compact
  def __call__(self, x):
    out_features = self.features * self.expansion
    identity = x
    y = x if self.num_segments is None else temporal_shift(x, self.num_segments, self.shift_div)
    y = _conv(self.features, 1, 1, "conv1", self.dtype)(y)
    y = nn.relu(self.norm(name="bn1")(y))
    y = _conv(self.features, 3, self.stride, "conv2", self.dtype)(y)
    y = nn.relu(self.norm(name="bn2")(y))
    y = _conv(out_features, 1, 1, "conv3", self.dtype)(y)
    y = self.norm(name="bn3")(y)
    if x.shape[-1] != out_features or self.stride != 1:
      identity = _conv(out_features, 1, self.stride, "downsample_conv", self.dtype)(x)
      identity = self.norm(name="downsample_bn")(identity)
    return nn.relu(y + identity)


class ResNet(nn.Module):
  """Per-frame 2D ResNet trunk: ``(N, H, W, 3) -> (N, h, w, C)`` (after the last ReLU)."""
  stage_sizes: Sequence[int]
  block_cls: ModuleDef
  strides: Sequence[int] = (1, 2, 2, 2)
  width: int = 64
  stem: str = "imagenet"  # "imagenet": 7x7/2 conv + 3x3/2 max-pool; "small": 3x3/2 conv, no pool
  dtype: Any = jnp.float32
  bn_axis_name: Optional[str] = None  # set for synchronised BatchNorm
  remat: bool = False  # recompute each block's activations in the backward pass

  @property
  def total_stride(self) -> int:
    stride = 4 if self.stem == "imagenet" else 2
    for s in self.strides:
      stride *= s
    return stride

  @nn.compact
  def __call__(self, x, train: bool = False, num_segments: Optional[int] = None):
    norm = functools.partial(nn.BatchNorm, use_running_average=not train,
                             momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
                             dtype=self.dtype, axis_name=self.bn_axis_name)
    if self.stem == "imagenet":
      x = _conv(self.width, 7, 2, "conv1", self.dtype)(x)
      x = nn.relu(norm(name="bn1")(x))
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    elif self.stem == "small":
      x = _conv(self.width, 3, 2, "conv1", self.dtype)(x)
      x = nn.relu(norm(name="bn1")(x))
    else:
      raise ValueError(f"unknown stem {self.stem!r}: expected 'imagenet' or 'small'")
    # Same parameter names either way: the lifted block keeps its `name`.
    block_cls = nn.remat(self.block_cls) if self.remat else self.block_cls
    for i, (num_blocks, stage_stride) in enumerate(zip(self.stage_sizes, self.strides)):
      for j in range(num_blocks):
        x = block_cls(self.width * 2**i, stride=stage_stride if j == 0 else 1,
                      norm=norm, dtype=self.dtype, num_segments=num_segments,
                      name=f"layer{i + 1}_{j}")(x)
    return x


class VideoClassifier(nn.Module):
  """TSN-style video classifier over a per-frame backbone.

  ``__call__(video, train)`` takes ``(B, T, H, W, C)`` (or frames folded into
  the batch, ``(B*T, H, W, C)``, when ``num_segments`` is set) and returns
  clip logits ``(B, num_classes)``: frames through the backbone, spatial
  average pool, average over the T segments, dropout, linear layer.

  ``return_features=True`` returns ``(logits, features)`` with the last-stage
  map ``(B, T, h, w, C)`` after the final ReLU, before pooling;
  ``return_dict=True`` returns a dict with ``logits``, ``features``,
  ``frame_logits`` ``(B, T, K)`` and ``position_logits`` ``(B, T, h, w, K)``
  (the classifier applied per frame / per position, without dropout). Under
  ``jit`` the outputs a caller does not use cost nothing.
  """
  backbone: ResNet
  num_classes: int
  dropout_rate: float = 0.5
  input_size: Optional[int] = None  # in-model bilinear resize (antialias off), e.g. 112
  tsm: bool = False
  num_segments: Optional[int] = None
  in_channels: int = 3
  dtype: Any = jnp.float32

  def _check_and_fold(self, video):
    if video.ndim == 5:
      b, t, h, w, c = video.shape
      if self.num_segments is not None and self.tsm and t != self.num_segments:
        raise ValueError(f"video has T={t} frames but the TSM model was built with "
                         f"num_segments={self.num_segments}")
    elif video.ndim == 4:
      if self.num_segments is None:
        raise ValueError(
            f"video of shape {tuple(video.shape)} has rank 4; expected (B, T, H, W, "
            f"{self.in_channels}), or frames folded into the batch with num_segments set")
      n, h, w, c = video.shape
      t = self.num_segments
      if n % t:
        raise ValueError(f"num_segments={t} does not divide the batch of {n} frames "
                         f"(video shape {tuple(video.shape)})")
      b = n // t
    else:
      raise ValueError(f"video of shape {tuple(video.shape)} has rank {video.ndim}; "
                       f"expected (B, T, H, W, {self.in_channels})")
    if c != self.in_channels:
      raise ValueError(f"video of shape {tuple(video.shape)} has {c} channels; "
                       f"expected {self.in_channels}")
    return video.reshape(b, t, h, w, c)

  @nn.compact
  def __call__(self, video, train: bool = False, return_features: bool = False,
               return_dict: bool = False):
    video = self._check_and_fold(video)
    video = layers.resize_input(video, self.input_size)
    b, t, h, w, c = video.shape
    min_side = self.backbone.total_stride
    if min(h, w) < min_side:
      raise ValueError(f"input resolution {h}x{w} is smaller than the backbone's total "
                       f"stride {min_side}")
    frames = video.reshape(b * t, h, w, c).astype(self.dtype)
    feats = self.backbone(frames, train=train, num_segments=t if self.tsm else None)
    fh, fw, fc = feats.shape[1:]
    feats = feats.reshape(b, t, fh, fw, fc)
    # TSN head: average each frame's map, segmental consensus (average), dropout, fc.
    clip = jnp.mean(jnp.mean(feats, axis=(2, 3)), axis=1)
    return layers.classify(feats, clip, num_classes=self.num_classes,
                           dropout_rate=self.dropout_rate, train=train, dtype=self.dtype,
                           kernel_init=head_kernel_init, return_features=return_features,
                           return_dict=return_dict)


BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}


def build(num_classes: int, *, block: str, stage_sizes: Sequence[int], tsm: bool = False,
          num_segments: Optional[int] = None, strides: Sequence[int] = (1, 2, 2, 2),
          width: int = 64, stem: str = "imagenet", input_size: Optional[int] = None,
          dropout_rate: float = 0.5, dtype: Any = jnp.float32,
          bn_axis_name: Optional[str] = None, in_channels: int = 3,
          remat: bool = False) -> VideoClassifier:
  """A 2D ResNet video classifier (the registry gives ``block``/``stage_sizes`` per name).

  Args:
    block: ``"basic"`` (ResNet-18/34) or ``"bottleneck"`` (ResNet-50 and deeper).
    stage_sizes: blocks per stage (the depth).
    tsm: temporal shift (residual shift before conv1 of every block).
    num_segments: frames per clip; required for TSM on rank-4 inputs.
    strides: per-stage strides; ``(1, 1, 2, 2)`` is the paper's R50-S.
    width: channels of the first stage (64 in torchvision); tiny nets use 8.
    stem: ``"imagenet"`` (7x7/2 conv + max-pool) or ``"small"`` (3x3/2 conv).
    input_size: resize frames inside the model (bilinear, no antialiasing),
      how the ResKD student gets 112 px from the teacher's 224 crop.
    dtype: compute dtype (parameters stay float32).
    bn_axis_name: mesh axis for synchronised BatchNorm (None: per device).
    remat: wrap every residual block in ``nn.remat``: its activations are recomputed in
      the backward pass instead of kept, less memory for more compute, the same numbers
      and the same variables.
  """
  if block not in BLOCKS:
    raise ValueError(f"block={block!r}: expected one of {sorted(BLOCKS)}")
  strides = tuple(int(s) for s in strides)
  if len(strides) != 4 or any(s not in (1, 2) for s in strides):
    raise ValueError(f"strides={strides}: expected four values, each 1 or 2")
  if tsm and num_segments is not None and num_segments < 1:
    raise ValueError(f"num_segments={num_segments} must be positive")
  sizes = tuple(int(s) for s in stage_sizes)
  if len(sizes) != 4:
    raise ValueError(f"stage_sizes={sizes}: expected four values")
  backbone = ResNet(stage_sizes=sizes, block_cls=BLOCKS[block], strides=strides,
                    width=width, stem=stem, dtype=dtype, bn_axis_name=bn_axis_name,
                    remat=bool(remat))
  return VideoClassifier(backbone=backbone, num_classes=num_classes,
                         dropout_rate=dropout_rate, input_size=input_size, tsm=tsm,
                         num_segments=num_segments, in_channels=in_channels, dtype=dtype)


def with_bn_axis(model: VideoClassifier, axis_name: Optional[str]) -> VideoClassifier:
  """The same model with BatchNorm synchronised over ``axis_name`` (None: local)."""
  return model.clone(backbone=model.backbone.clone(bn_axis_name=axis_name))


def feature_channels(model: VideoClassifier) -> int:
  """Channels of the last-stage feature map."""
  bb = model.backbone
  return bb.width * 2**(len(bb.stage_sizes) - 1) * bb.block_cls.expansion


def feature_shape(model: VideoClassifier, num_frames: int, resolution: int):
  """``(T, h, w)`` of the last-stage map for ``num_frames`` square frames of ``resolution``."""
  size = model.input_size or resolution
  conv = lambda s, k, st: (s + 2 * ((k - 1) // 2) - k) // st + 1
  bb = model.backbone
  if bb.stem == "imagenet":
    size = conv(conv(size, 7, 2), 3, 2)
  else:
    size = conv(size, 3, 2)
  for s in bb.strides:
    size = conv(size, 3, s)
  return num_frames, size, size


def min_resolution(model: VideoClassifier) -> int:
  """The smallest input side the model takes (its total stride)."""
  return model.backbone.total_stride
