"""Video Swin Transformer (the official ``SwinTransformer3D``) with an I3D head, in Flax Linen.

A port of the Video Swin release (``mmaction/models/backbones/swin_transformer.py``)
that gives the same numbers as converted PyTorch weights, including the parts
of the release that look odd:

* ``get_window_size``: along any dimension where the feature map is not larger
  than the window, the window shrinks to the map and the shift along it is 0;
* the shifted-window mask labels 27 regions with the slices ``(-w)``,
  ``(-w, -s)``, ``(-s, None)`` on the padded map and fills -100.0;
* the relative position bias table has ``(2Wd-1)(2Wh-1)(2Ww-1)`` rows indexed
  d-major for the *configured* window; when the window shrinks (e.g. stage 4 at
  112 px: 8x4x4, N=128 tokens) the release indexes it with the top-left slice
  ``relative_position_index[:N, :N]`` of the full index, and so do we;
* PatchMerging zero-pads odd H/W at the bottom/right.

Layout is channels-last: video ``(B, T, H, W, C)``, feature maps
``(B, T', h, w, C')`` with ``T' = T / 2``. The classifier (mmaction2's I3DHead:
average over T', h, w, dropout, linear) is the top-level module ``fc``.
Built through the registry (``reskd_jax.models.build_model("swin_s", ...)``).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from reskd_jax.models import layers

PATCH_SIZE = (2, 4, 4)
WINDOW_SIZE = (8, 7, 7)
LN_EPSILON = 1e-5
# jax.named_scope of the two attention matrix products (q @ k^T, attn @ v), so
# that a FLOPs count can tell them from the linear layers.
ATTENTION_SCOPE = "swin_attention_matrix"

# The release: timm's trunc_normal_(std=.02) for Linear weights and the bias table
# (its bounds are -2 and 2 in absolute value, 100 standard deviations: a plain
# normal), zero biases; I3DHead: normal_init(fc_cls, std=0.01).
dense_init = nn.initializers.normal(stddev=0.02)
head_kernel_init = nn.initializers.normal(stddev=0.01)


def _torch_default_conv_init(key, shape, dtype=jnp.float32):
  """PyTorch's default Conv3d weight init, uniform(+-1/sqrt(fan_in)); kernel (t, h, w, i, o)."""
  bound = 1.0 / math.sqrt(math.prod(shape[:-1]))
  return jax.random.uniform(key, shape, dtype, -bound, bound)


def _layer_norm(name: str, dtype) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=LN_EPSILON, use_fast_variance=False, dtype=dtype, name=name)


def _dense(features: int, name: str, dtype, use_bias: bool = True) -> nn.Dense:
  return nn.Dense(features, use_bias=use_bias, kernel_init=dense_init, dtype=dtype, name=name)


# ---------------------------------------------------------------------------
# Window helpers (static shapes; numpy at trace time where possible)


def get_window_size(x_size: Sequence[int], window_size: Sequence[int],
                    shift_size: Sequence[int]) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
  """The release's rule: a dimension no larger than the window takes the map's size, shift 0."""
  use_window, use_shift = list(window_size), list(shift_size)
  for i, size in enumerate(x_size):
    if size <= window_size[i]:
      use_window[i] = size
      use_shift[i] = 0
  return tuple(use_window), tuple(use_shift)


@functools.lru_cache(maxsize=None)
def relative_position_index(window_size: Tuple[int, int, int]) -> np.ndarray:
  """``(N, N)`` rows of the bias table for every token pair of a full window, d-major."""
  wd, wh, ww = window_size
  coords = np.stack(np.meshgrid(np.arange(wd), np.arange(wh), np.arange(ww), indexing="ij"))
  flat = coords.reshape(3, -1)
  rel = (flat[:, :, None] - flat[:, None, :]).transpose(1, 2, 0)
  rel = rel + np.array([wd - 1, wh - 1, ww - 1])
  return (rel[..., 0] * (2 * wh - 1) * (2 * ww - 1) + rel[..., 1] * (2 * ww - 1)
          + rel[..., 2]).astype(np.int32)


def window_partition(x, window_size: Sequence[int]):
  """``(B, D, H, W, C) -> (B * num_windows, Wd * Wh * Ww, C)``, windows in (B, D, H, W) order."""
  b, d, h, w, c = x.shape
  wd, wh, ww = window_size
  x = x.reshape(b, d // wd, wd, h // wh, wh, w // ww, ww, c)
  return x.transpose(0, 1, 3, 5, 2, 4, 6, 7).reshape(-1, wd * wh * ww, c)


def window_reverse(windows, window_size: Sequence[int], b: int, d: int, h: int, w: int):
  """Inverse of :func:`window_partition`."""
  wd, wh, ww = window_size
  x = windows.reshape(b, d // wd, h // wh, w // ww, wd, wh, ww, -1)
  return x.transpose(0, 1, 4, 2, 5, 3, 6, 7).reshape(b, d, h, w, -1)


@functools.lru_cache(maxsize=None)
def compute_mask(d: int, h: int, w: int, window_size: Tuple[int, int, int],
                 shift_size: Tuple[int, int, int]) -> np.ndarray:
  """The shifted-window mask ``(num_windows, N, N)``: 0 within a region, -100.0 across.

  Computed on the padded sizes with the release's slices; a zero shift makes
  the slice ``(-0, None)`` cover the whole axis, as in the release.
  """
  img_mask = np.zeros((1, d, h, w, 1), np.float32)
  cnt = 0
  slices = [(slice(-ws), slice(-ws, -ss), slice(-ss, None))
            for ws, ss in zip(window_size, shift_size)]
  for sd in slices[0]:
    for sh in slices[1]:
      for sw in slices[2]:
        img_mask[:, sd, sh, sw, :] = cnt
        cnt += 1
  windows = window_partition(img_mask, window_size)[..., 0]  # (nW, N)
  diff = windows[:, None, :] - windows[:, :, None]
  return np.where(diff != 0, np.float32(-100.0), np.float32(0.0))


# ---------------------------------------------------------------------------
# Modules (names follow the release's state dict)


class WindowAttention3D(nn.Module):
  """Multi-head self-attention inside windows, with the relative position bias."""
  dim: int
  num_heads: int
  window_size: Tuple[int, int, int]  # the configured (full) window
  qkv_bias: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, mask: Optional[jnp.ndarray] = None):
    b_, n, c = x.shape
    heads = self.num_heads
    head_dim = c // heads
    rows = math.prod(2 * s - 1 for s in self.window_size)
    table = self.param("relative_position_bias_table", dense_init, (rows, heads))
    qkv = _dense(3 * c, "qkv", self.dtype, self.qkv_bias)(x).reshape(b_, n, 3, heads, head_dim)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # (B_, N, heads, head_dim)
    q = q * head_dim**-0.5
    with jax.named_scope(ATTENTION_SCOPE):
      attn = jnp.einsum("bnhd,bmhd->bhnm", q, k)
    index = relative_position_index(tuple(self.window_size))[:n, :n].reshape(-1)
    bias = jnp.asarray(table)[index].reshape(n, n, heads).transpose(2, 0, 1)
    attn = attn.astype(jnp.float32) + bias[None]
    if mask is not None:
      nw = mask.shape[0]
      attn = attn.reshape(b_ // nw, nw, heads, n, n) + mask[None, :, None]
      attn = attn.reshape(b_, heads, n, n)
    attn = jax.nn.softmax(attn, axis=-1).astype(self.dtype)
    with jax.named_scope(ATTENTION_SCOPE):
      out = jnp.einsum("bhnm,bmhd->bnhd", attn, v.astype(self.dtype))
    return _dense(c, "proj", self.dtype)(out.reshape(b_, n, c))


class Mlp(nn.Module):
  """fc1 -> exact (erf) GELU -> fc2."""
  hidden: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    y = _dense(self.hidden, "fc1", self.dtype)(x)
    y = nn.gelu(y, approximate=False)
    return _dense(x.shape[-1], "fc2", self.dtype)(y)


def _drop_path(rate: float, train: bool) -> nn.Dropout:
  """Stochastic depth: the whole residual branch of a sample dropped, kept ones scaled."""
  return nn.Dropout(rate, broadcast_dims=(1, 2, 3, 4), deterministic=not train or rate == 0.0)


class SwinTransformerBlock3D(nn.Module):
  """(Shifted-)window attention and MLP, each pre-norm with a residual."""
  dim: int
  num_heads: int
  window_size: Tuple[int, int, int]
  shift_size: Tuple[int, int, int]
  mlp_ratio: float = 4.0
  qkv_bias: bool = True
  drop_path: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, mask, train: bool = False):
    b, d, h, w, c = x.shape
    window, shift = get_window_size((d, h, w), self.window_size, self.shift_size)
    y = _layer_norm("norm1", self.dtype)(x)
    pads = [(-size) % win for size, win in zip((d, h, w), window)]
    y = jnp.pad(y, ((0, 0), (0, pads[0]), (0, pads[1]), (0, pads[2]), (0, 0)))
    _, dp, hp, wp, _ = y.shape
    shifted = any(s > 0 for s in shift)
    if shifted:
      y = jnp.roll(y, tuple(-s for s in shift), axis=(1, 2, 3))
    windows = window_partition(y, window)
    windows = WindowAttention3D(self.dim, self.num_heads, tuple(self.window_size),
                                qkv_bias=self.qkv_bias, dtype=self.dtype, name="attn")(
                                    windows, jnp.asarray(mask) if shifted else None)
    y = window_reverse(windows, window, b, dp, hp, wp)
    if shifted:
      y = jnp.roll(y, tuple(shift), axis=(1, 2, 3))
    y = y[:, :d, :h, :w]
    x = x + _drop_path(self.drop_path, train)(y)
    y = Mlp(int(self.dim * self.mlp_ratio), dtype=self.dtype, name="mlp")(
        _layer_norm("norm2", self.dtype)(x))
    return x + _drop_path(self.drop_path, train)(y)


class PatchMerging(nn.Module):
  """2x2 spatial neighbours concatenated (odd H/W zero-padded), LayerNorm, linear 4C -> 2C."""
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    _, _, h, w, c = x.shape
    if h % 2 or w % 2:
      x = jnp.pad(x, ((0, 0), (0, 0), (0, h % 2), (0, w % 2), (0, 0)))
    x = jnp.concatenate([x[:, :, 0::2, 0::2], x[:, :, 1::2, 0::2],
                         x[:, :, 0::2, 1::2], x[:, :, 1::2, 1::2]], axis=-1)
    x = _layer_norm("norm", self.dtype)(x)
    return _dense(2 * c, "reduction", self.dtype, use_bias=False)(x)


class BasicLayer(nn.Module):
  """One stage: ``depth`` blocks alternating plain and shifted windows, then PatchMerging."""
  dim: int
  depth: int
  num_heads: int
  window_size: Tuple[int, int, int]
  drop_paths: Tuple[float, ...]
  mlp_ratio: float = 4.0
  qkv_bias: bool = True
  downsample: bool = True
  dtype: Any = jnp.float32
  remat: bool = False  # recompute each block's activations in the backward pass

  @nn.compact
  def __call__(self, x, train: bool = False):
    _, d, h, w, _ = x.shape
    shift_size = tuple(s // 2 for s in self.window_size)
    window, shift = get_window_size((d, h, w), self.window_size, shift_size)
    padded = [-(-size // win) * win for size, win in zip((d, h, w), window)]
    mask = compute_mask(*padded, window, shift)
    # `train` (argument 3, counting self) picks Python branches: static. The lifted
    # block keeps its `name`, so the parameter names are the same either way.
    block_cls = (nn.remat(SwinTransformerBlock3D, static_argnums=(3,)) if self.remat
                 else SwinTransformerBlock3D)
    for j in range(self.depth):
      x = block_cls(
          self.dim, self.num_heads, tuple(self.window_size),
          (0, 0, 0) if j % 2 == 0 else shift_size, mlp_ratio=self.mlp_ratio,
          qkv_bias=self.qkv_bias, drop_path=self.drop_paths[j], dtype=self.dtype,
          name=f"blocks_{j}")(x, mask, train)
    if self.downsample:
      x = PatchMerging(dtype=self.dtype, name="downsample")(x)
    return x


class PatchEmbed3D(nn.Module):
  """Zero-pads H/W to patch multiples, non-overlapping Conv3d patches, LayerNorm."""
  embed_dim: int
  patch_size: Tuple[int, int, int]
  patch_norm: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    _, _, h, w, c = x.shape
    pt, ph, pw = self.patch_size
    x = jnp.pad(x, ((0, 0), (0, 0), (0, (-h) % ph), (0, (-w) % pw), (0, 0)))
    bound = 1.0 / math.sqrt(pt * ph * pw * c)  # PyTorch's default Conv3d bias init
    x = nn.Conv(self.embed_dim, self.patch_size, strides=self.patch_size, padding="VALID",
                kernel_init=_torch_default_conv_init,
                bias_init=lambda key, shape, dtype=jnp.float32: jax.random.uniform(
                    key, shape, dtype, -bound, bound),
                dtype=self.dtype, name="proj")(x)
    if self.patch_norm:
      x = _layer_norm("norm", self.dtype)(x)
    return x


class SwinTransformer3D(nn.Module):
  """The backbone: ``(B, T, H, W, C) -> (B, T/2, h, w, C')`` after the final LayerNorm."""
  embed_dim: int = 96
  depths: Tuple[int, ...] = (2, 2, 6, 2)
  num_heads: Tuple[int, ...] = (3, 6, 12, 24)
  window_size: Tuple[int, int, int] = WINDOW_SIZE
  patch_size: Tuple[int, int, int] = PATCH_SIZE
  mlp_ratio: float = 4.0
  qkv_bias: bool = True
  patch_norm: bool = True
  drop_path_rate: float = 0.1
  dtype: Any = jnp.float32
  remat: bool = False  # nn.remat around every transformer block

  @property
  def num_features(self) -> int:
    return self.embed_dim * 2**(len(self.depths) - 1)

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = PatchEmbed3D(self.embed_dim, tuple(self.patch_size), self.patch_norm, dtype=self.dtype,
                     name="patch_embed")(x)
    # Stochastic depth rising linearly over all blocks (torch.linspace(0, rate, n)).
    dpr = np.linspace(0.0, self.drop_path_rate, sum(self.depths)).tolist()
    for i, depth in enumerate(self.depths):
      start = sum(self.depths[:i])
      x = BasicLayer(self.embed_dim * 2**i, depth, self.num_heads[i], tuple(self.window_size),
                     tuple(dpr[start:start + depth]), mlp_ratio=self.mlp_ratio,
                     qkv_bias=self.qkv_bias, downsample=i < len(self.depths) - 1,
                     dtype=self.dtype, remat=self.remat, name=f"layers_{i}")(x, train)
    return _layer_norm("norm", self.dtype)(x)


class SwinClassifier(nn.Module):
  """Video Swin with mmaction2's I3D head, under the registry's model contract.

  ``__call__(video, train)`` takes ``(B, T, H, W, C)`` with ``T`` a multiple of
  the patch's temporal size (2) and returns logits ``(B, num_classes)``:
  backbone, average over (T', h, w), dropout, linear ``fc``.
  ``return_features=True`` returns ``(logits, features)`` with the last map
  ``(B, T', h, w, C')`` after the final LayerNorm, before pooling;
  ``return_dict=True`` returns ``logits``, ``features``, ``frame_logits``
  ``(B, T', K)`` and ``position_logits`` ``(B, T', h, w, K)`` (the classifier
  per time step / per position, without dropout). Stochastic depth and the
  head's dropout draw from the ``"dropout"`` rng when ``train`` is set.
  """
  backbone: SwinTransformer3D
  num_classes: int
  dropout_rate: float = 0.5
  input_size: Optional[int] = None  # in-model bilinear resize (antialias off), e.g. 112
  in_channels: int = 3
  dtype: Any = jnp.float32

  def _check(self, video):
    if video.ndim != 5 or video.shape[-1] != self.in_channels:
      raise ValueError(f"video of shape {tuple(video.shape)}: expected (B, T, H, W, "
                       f"{self.in_channels})")
    t = video.shape[1]
    pt = self.backbone.patch_size[0]
    if t % pt:
      raise ValueError(f"Video Swin takes clips of a multiple of {pt} frames (its temporal "
                       f"patch size); got T={t} (video shape {tuple(video.shape)})")

  @nn.compact
  def __call__(self, video, train: bool = False, return_features: bool = False,
               return_dict: bool = False):
    self._check(video)
    video = layers.resize_input(video, self.input_size)
    feats = self.backbone(video.astype(self.dtype), train=train)
    # I3DHead: average over (T', h, w), dropout, fc.
    return layers.classify(feats, jnp.mean(feats, axis=(1, 2, 3)),
                           num_classes=self.num_classes, dropout_rate=self.dropout_rate,
                           train=train, dtype=self.dtype, kernel_init=head_kernel_init,
                           return_features=return_features, return_dict=return_dict)


# ---------------------------------------------------------------------------
# Registry hooks


def build(num_classes: int, *, embed_dim: int, depths: Sequence[int], num_heads: Sequence[int],
          window_size: Sequence[int] = WINDOW_SIZE, patch_size: Sequence[int] = PATCH_SIZE,
          mlp_ratio: float = 4.0, drop_path_rate: float = 0.1,
          input_size: Optional[int] = None, dropout_rate: float = 0.5,
          dtype: Any = jnp.float32, bn_axis_name: Optional[str] = None,
          in_channels: int = 3, remat: bool = False) -> SwinClassifier:
  """A Video Swin classifier (the registry gives embed_dim/depths/num_heads per name).

  Args:
    embed_dim: channels of stage 1 (96 for T/S, 128 for B); doubles per stage.
    depths: blocks per stage, e.g. (2, 2, 18, 2).
    num_heads: attention heads per stage; each must divide its stage's channels.
    window_size: (Wd, Wh, Ww) attention window, (8, 7, 7) in the release.
    patch_size: (Pt, Ph, Pw) of the patch embedding, (2, 4, 4) in the release.
    drop_path_rate: stochastic depth of the last block (linear from 0); the
      release uses 0.1 for Swin-S and 0.2 for Swin-B on Kinetics-400.
    input_size: resize frames inside the model (bilinear, no antialiasing).
    dropout_rate: the head's dropout (0.5 in I3DHead).
    dtype: compute dtype (parameters stay float32).
    bn_axis_name: ignored (Swin has no BatchNorm); accepted for a uniform interface.
    remat: wrap every transformer block in ``nn.remat``: its activations (attention
      maps, MLP hidden layer) are recomputed in the backward pass instead of kept, less
      memory for more compute, the same numbers and the same variables.
  """
  del bn_axis_name
  depths = tuple(int(v) for v in depths)
  num_heads = tuple(int(v) for v in num_heads)
  window_size = tuple(int(v) for v in window_size)
  patch_size = tuple(int(v) for v in patch_size)
  if len(depths) != len(num_heads) or not depths or min(depths) < 1:
    raise ValueError(f"depths={depths} and num_heads={num_heads}: expected one positive "
                     f"depth and one head count per stage")
  if len(window_size) != 3 or len(patch_size) != 3 or min(window_size + patch_size) < 1:
    raise ValueError(f"window_size={window_size}, patch_size={patch_size}: expected three "
                     f"positive values (t, h, w) each")
  for i, heads in enumerate(num_heads):
    dim = embed_dim * 2**i
    if heads < 1 or dim % heads:
      raise ValueError(f"stage {i + 1} has {dim} channels, not divisible into {heads} heads "
                       f"(embed_dim={embed_dim}, num_heads={num_heads})")
  if not 0.0 <= drop_path_rate < 1.0:
    raise ValueError(f"drop_path_rate={drop_path_rate}: expected a value in [0, 1)")
  backbone = SwinTransformer3D(embed_dim=int(embed_dim), depths=depths, num_heads=num_heads,
                               window_size=window_size, patch_size=patch_size,
                               mlp_ratio=float(mlp_ratio), drop_path_rate=float(drop_path_rate),
                               dtype=dtype, remat=bool(remat))
  return SwinClassifier(backbone=backbone, num_classes=num_classes, dropout_rate=dropout_rate,
                        input_size=input_size, in_channels=in_channels, dtype=dtype)


def feature_channels(model: SwinClassifier) -> int:
  """Channels of the last feature map (8 x embed_dim for four stages)."""
  return model.backbone.num_features


def feature_shape(model: SwinClassifier, num_frames: int, resolution: int) -> Tuple[int, int, int]:
  """``(T', h, w)`` of the last map: patch embedding, then one halving (rounded up) per merge."""
  bb = model.backbone
  size = model.input_size or resolution
  t = -(-num_frames // bb.patch_size[0])
  h = -(-size // bb.patch_size[1])
  w = -(-size // bb.patch_size[2])
  for _ in range(len(bb.depths) - 1):
    h, w = -(-h // 2), -(-w // 2)
  return t, h, w


def min_resolution(model: SwinClassifier) -> int:
  """The patch side: smaller inputs would be mostly padding (the release pads any size)."""
  return model.backbone.patch_size[1]


def with_bn_axis(model: SwinClassifier, axis_name: Optional[str]) -> SwinClassifier:
  """Swin has no BatchNorm: the model itself."""
  del axis_name
  return model
