"""Plain-PyTorch reference of Video Swin (``SwinTransformer3D``) with mmaction2's I3D head.

Written from the Video Swin release (``mmaction/models/backbones/swin_transformer.py``
and ``mmaction/models/heads/i3d_head.py``), without timm, einops or mmcv, and
kept in the release's NCTHW layout and state-dict names (``backbone.*``,
``cls_head.fc_cls.*``), so that its state dict is what an official checkpoint
holds. Only for tests: the Flax port must give the same numbers.
"""

from functools import reduce
from operator import mul

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class DropPath(nn.Module):
  """timm's DropPath: per-sample stochastic depth."""

  def __init__(self, p):
    super().__init__()
    self.p = p

  def forward(self, x):
    if self.p == 0.0 or not self.training:
      return x
    keep = 1 - self.p
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x / keep * mask


class Mlp(nn.Module):

  def __init__(self, in_features, hidden_features):
    super().__init__()
    self.fc1 = nn.Linear(in_features, hidden_features)
    self.act = nn.GELU()
    self.fc2 = nn.Linear(hidden_features, in_features)

  def forward(self, x):
    return self.fc2(self.act(self.fc1(x)))


def window_partition(x, window_size):
  b, d, h, w, c = x.shape
  x = x.view(b, d // window_size[0], window_size[0], h // window_size[1], window_size[1],
             w // window_size[2], window_size[2], c)
  return x.permute(0, 1, 3, 5, 2, 4, 6, 7).contiguous().view(-1, reduce(mul, window_size), c)


def window_reverse(windows, window_size, b, d, h, w):
  x = windows.view(b, d // window_size[0], h // window_size[1], w // window_size[2],
                   window_size[0], window_size[1], window_size[2], -1)
  return x.permute(0, 1, 4, 2, 5, 3, 6, 7).contiguous().view(b, d, h, w, -1)


def get_window_size(x_size, window_size, shift_size=None):
  use_window_size = list(window_size)
  if shift_size is not None:
    use_shift_size = list(shift_size)
  for i in range(len(x_size)):
    if x_size[i] <= window_size[i]:
      use_window_size[i] = x_size[i]
      if shift_size is not None:
        use_shift_size[i] = 0
  if shift_size is None:
    return tuple(use_window_size)
  return tuple(use_window_size), tuple(use_shift_size)


class WindowAttention3D(nn.Module):

  def __init__(self, dim, window_size, num_heads, qkv_bias=True):
    super().__init__()
    self.dim = dim
    self.window_size = window_size
    self.num_heads = num_heads
    self.scale = (dim // num_heads)**-0.5
    self.relative_position_bias_table = nn.Parameter(torch.zeros(
        (2 * window_size[0] - 1) * (2 * window_size[1] - 1) * (2 * window_size[2] - 1),
        num_heads))
    coords = torch.stack(torch.meshgrid(torch.arange(window_size[0]),
                                        torch.arange(window_size[1]),
                                        torch.arange(window_size[2]), indexing="ij"))
    coords_flatten = torch.flatten(coords, 1)
    relative_coords = coords_flatten[:, :, None] - coords_flatten[:, None, :]
    relative_coords = relative_coords.permute(1, 2, 0).contiguous()
    relative_coords[:, :, 0] += window_size[0] - 1
    relative_coords[:, :, 1] += window_size[1] - 1
    relative_coords[:, :, 2] += window_size[2] - 1
    relative_coords[:, :, 0] *= (2 * window_size[1] - 1) * (2 * window_size[2] - 1)
    relative_coords[:, :, 1] *= (2 * window_size[2] - 1)
    self.register_buffer("relative_position_index", relative_coords.sum(-1))
    self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
    self.proj = nn.Linear(dim, dim)
    nn.init.trunc_normal_(self.relative_position_bias_table, std=.02)

  def forward(self, x, mask=None):
    b_, n, c = x.shape
    qkv = self.qkv(x).reshape(b_, n, 3, self.num_heads, c // self.num_heads).permute(
        2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    q = q * self.scale
    attn = q @ k.transpose(-2, -1)
    bias = self.relative_position_bias_table[
        self.relative_position_index[:n, :n].reshape(-1)].reshape(n, n, -1)
    attn = attn + bias.permute(2, 0, 1).contiguous().unsqueeze(0)
    if mask is not None:
      nw = mask.shape[0]
      attn = attn.view(b_ // nw, nw, self.num_heads, n, n) + mask.unsqueeze(1).unsqueeze(0)
      attn = attn.view(-1, self.num_heads, n, n)
    attn = attn.softmax(dim=-1)
    x = (attn @ v).transpose(1, 2).reshape(b_, n, c)
    return self.proj(x)


class SwinTransformerBlock3D(nn.Module):

  def __init__(self, dim, num_heads, window_size, shift_size, mlp_ratio=4.0, drop_path=0.0):
    super().__init__()
    self.window_size = window_size
    self.shift_size = shift_size
    self.norm1 = nn.LayerNorm(dim)
    self.attn = WindowAttention3D(dim, window_size, num_heads)
    self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
    self.norm2 = nn.LayerNorm(dim)
    self.mlp = Mlp(dim, int(dim * mlp_ratio))

  def forward_part1(self, x, mask_matrix):
    b, d, h, w, c = x.shape
    window_size, shift_size = get_window_size((d, h, w), self.window_size, self.shift_size)
    x = self.norm1(x)
    pad_d1 = (window_size[0] - d % window_size[0]) % window_size[0]
    pad_b = (window_size[1] - h % window_size[1]) % window_size[1]
    pad_r = (window_size[2] - w % window_size[2]) % window_size[2]
    x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b, 0, pad_d1))
    _, dp, hp, wp, _ = x.shape
    if any(i > 0 for i in shift_size):
      shifted_x = torch.roll(x, shifts=(-shift_size[0], -shift_size[1], -shift_size[2]),
                             dims=(1, 2, 3))
      attn_mask = mask_matrix
    else:
      shifted_x = x
      attn_mask = None
    x_windows = window_partition(shifted_x, window_size)
    attn_windows = self.attn(x_windows, mask=attn_mask)
    attn_windows = attn_windows.view(-1, *(window_size + (c,)))
    shifted_x = window_reverse(attn_windows, window_size, b, dp, hp, wp)
    if any(i > 0 for i in shift_size):
      x = torch.roll(shifted_x, shifts=shift_size, dims=(1, 2, 3))
    else:
      x = shifted_x
    if pad_d1 > 0 or pad_r > 0 or pad_b > 0:
      x = x[:, :d, :h, :w, :].contiguous()
    return x

  def forward(self, x, mask_matrix):
    x = x + self.drop_path(self.forward_part1(x, mask_matrix))
    return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):

  def __init__(self, dim):
    super().__init__()
    self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
    self.norm = nn.LayerNorm(4 * dim)

  def forward(self, x):
    _, _, h, w, _ = x.shape
    if (h % 2 == 1) or (w % 2 == 1):
      x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
    x0 = x[:, :, 0::2, 0::2, :]
    x1 = x[:, :, 1::2, 0::2, :]
    x2 = x[:, :, 0::2, 1::2, :]
    x3 = x[:, :, 1::2, 1::2, :]
    return self.reduction(self.norm(torch.cat([x0, x1, x2, x3], -1)))


def compute_mask(d, h, w, window_size, shift_size, device):
  img_mask = torch.zeros((1, d, h, w, 1), device=device)
  cnt = 0
  for sd in slice(-window_size[0]), slice(-window_size[0], -shift_size[0]), slice(
      -shift_size[0], None):
    for sh in slice(-window_size[1]), slice(-window_size[1], -shift_size[1]), slice(
        -shift_size[1], None):
      for sw in slice(-window_size[2]), slice(-window_size[2], -shift_size[2]), slice(
          -shift_size[2], None):
        img_mask[:, sd, sh, sw, :] = cnt
        cnt += 1
  mask_windows = window_partition(img_mask, window_size).squeeze(-1)
  attn_mask = mask_windows.unsqueeze(1) - mask_windows.unsqueeze(2)
  return attn_mask.masked_fill(attn_mask != 0, float(-100.0)).masked_fill(
      attn_mask == 0, float(0.0))


class BasicLayer(nn.Module):

  def __init__(self, dim, depth, num_heads, window_size, mlp_ratio, drop_path, downsample):
    super().__init__()
    self.window_size = window_size
    self.shift_size = tuple(i // 2 for i in window_size)
    self.blocks = nn.ModuleList([
        SwinTransformerBlock3D(dim, num_heads, window_size,
                               (0, 0, 0) if i % 2 == 0 else self.shift_size, mlp_ratio,
                               drop_path[i]) for i in range(depth)])
    self.downsample = PatchMerging(dim) if downsample else None

  def forward(self, x):
    b, c, d, h, w = x.shape
    window_size, shift_size = get_window_size((d, h, w), self.window_size, self.shift_size)
    x = x.permute(0, 2, 3, 4, 1)
    dp = int(np.ceil(d / window_size[0])) * window_size[0]
    hp = int(np.ceil(h / window_size[1])) * window_size[1]
    wp = int(np.ceil(w / window_size[2])) * window_size[2]
    attn_mask = compute_mask(dp, hp, wp, window_size, shift_size, x.device)
    for blk in self.blocks:
      x = blk(x, attn_mask)
    x = x.view(b, d, h, w, -1)
    if self.downsample is not None:
      x = self.downsample(x)
    return x.permute(0, 4, 1, 2, 3)


class PatchEmbed3D(nn.Module):

  def __init__(self, patch_size, in_chans, embed_dim):
    super().__init__()
    self.patch_size = patch_size
    self.embed_dim = embed_dim
    self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
    self.norm = nn.LayerNorm(embed_dim)

  def forward(self, x):
    _, _, d, h, w = x.size()
    if w % self.patch_size[2] != 0:
      x = F.pad(x, (0, self.patch_size[2] - w % self.patch_size[2]))
    if h % self.patch_size[1] != 0:
      x = F.pad(x, (0, 0, 0, self.patch_size[1] - h % self.patch_size[1]))
    if d % self.patch_size[0] != 0:
      x = F.pad(x, (0, 0, 0, 0, 0, self.patch_size[0] - d % self.patch_size[0]))
    x = self.proj(x)
    d, wh, ww = x.size(2), x.size(3), x.size(4)
    x = self.norm(x.flatten(2).transpose(1, 2))
    return x.transpose(1, 2).view(-1, self.embed_dim, d, wh, ww)


class SwinTransformer3D(nn.Module):

  def __init__(self, patch_size=(2, 4, 4), in_chans=3, embed_dim=96, depths=(2, 2, 6, 2),
               num_heads=(3, 6, 12, 24), window_size=(8, 7, 7), mlp_ratio=4.0,
               drop_path_rate=0.1):
    super().__init__()
    self.patch_embed = PatchEmbed3D(patch_size, in_chans, embed_dim)
    dpr = [x.item() for x in torch.linspace(0, drop_path_rate, sum(depths))]
    self.layers = nn.ModuleList()
    for i in range(len(depths)):
      self.layers.append(BasicLayer(
          embed_dim * 2**i, depths[i], num_heads[i], window_size, mlp_ratio,
          dpr[sum(depths[:i]):sum(depths[:i + 1])], downsample=i < len(depths) - 1))
    self.num_features = embed_dim * 2**(len(depths) - 1)
    self.norm = nn.LayerNorm(self.num_features)

  def forward(self, x):
    x = self.patch_embed(x)
    for layer in self.layers:
      x = layer(x.contiguous())
    x = self.norm(x.permute(0, 2, 3, 4, 1))
    return x.permute(0, 4, 1, 2, 3)


class I3DHead(nn.Module):

  def __init__(self, num_classes, in_channels, dropout_ratio=0.5):
    super().__init__()
    self.dropout = nn.Dropout(p=dropout_ratio)
    self.fc_cls = nn.Linear(in_channels, num_classes)
    self.avg_pool = nn.AdaptiveAvgPool3d((1, 1, 1))

  def forward(self, x):
    x = self.dropout(self.avg_pool(x))
    return self.fc_cls(x.view(x.shape[0], -1))


class Recognizer3D(nn.Module):
  """``backbone`` + ``cls_head``; ``forward(x NCTHW) -> (logits, feature map NCTHW)``."""

  def __init__(self, num_classes, **backbone_kwargs):
    super().__init__()
    self.backbone = SwinTransformer3D(**backbone_kwargs)
    self.cls_head = I3DHead(num_classes, self.backbone.num_features)

  def forward(self, x):
    feats = self.backbone(x)
    return self.cls_head(feats), feats


def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
  """Random LayerNorm affine parameters and biases too (init leaves them 1 / 0)."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith("relative_position_bias_table"):
        p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
      elif p.ndim == 1:
        base = 1.0 if ("norm" in name and name.endswith("weight")) else 0.0
        p.copy_(base + 0.1 * torch.randn(p.shape, generator=gen))
      else:
        fan_in = p[0].numel()
        p.copy_(torch.randn(p.shape, generator=gen) / fan_in**0.5)
  return model
