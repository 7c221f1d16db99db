"""A plain-PyTorch reference ResNet / TSM video classifier (no torchvision).

Used only by the weight-conversion tests and the PyTorch-vs-JAX benchmarks.
Module names follow torchvision exactly (``conv1``, ``bn1``, ``layerX.Y.convN``, ``layerX.Y.bnN``,
``layerX.Y.downsample.{0,1}``, ``fc``), so a torchvision ImageNet state dict
loads with ``load_state_dict`` (the ``fc`` shape aside).

Video convention (TSN): ``forward`` takes ``(B, T, 3, H, W)``, runs every frame
through the 2D trunk, average-pools each frame's last map, averages over the
T segments and applies ``fc``. With ``tsm=True`` each residual block shifts the
input of its ``conv1`` in time, exactly like mmaction2's residual
``TemporalShift`` (fold = C // 8; channels ``[0, fold)`` take frame ``t+1``,
``[fold, 2*fold)`` frame ``t-1``, zero padded; identity path unshifted).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from reskd_jax import models
from tests.torch_models import common

# Depth -> (block type, blocks per stage), from the model registry (written once).
ARCHS = {int(name[len("resnet"):]): (models.default_options(name)["block"],
                                     models.default_options(name)["stage_sizes"])
         for name in models.names("resnet")}


def temporal_shift(x: torch.Tensor, num_segments: int, shift_div: int = 8) -> torch.Tensor:
  """mmaction2 ``TemporalShift.shift`` on ``(N*T, C, H, W)``."""
  nt, c, h, w = x.shape
  if nt % num_segments:
    raise ValueError(f"batch of {nt} frames is not a multiple of num_segments={num_segments}")
  fold = c // shift_div
  if fold == 0:
    return x
  x = x.view(nt // num_segments, num_segments, c, h, w)
  out = torch.zeros_like(x)
  out[:, :-1, :fold] = x[:, 1:, :fold]  # from the next frame
  out[:, 1:, fold:2 * fold] = x[:, :-1, fold:2 * fold]  # from the previous frame
  out[:, :, 2 * fold:] = x[:, :, 2 * fold:]
  return out.view(nt, c, h, w)


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
  return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


def _conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
  return nn.Conv2d(cin, cout, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
  expansion = 1

  def __init__(self, inplanes: int, planes: int, stride: int = 1,
               downsample: Optional[nn.Module] = None, num_segments: Optional[int] = None):
    super().__init__()
    self.conv1 = _conv3x3(inplanes, planes, stride)
    self.bn1 = nn.BatchNorm2d(planes)
    self.relu = nn.ReLU(inplace=True)
    self.conv2 = _conv3x3(planes, planes)
    self.bn2 = nn.BatchNorm2d(planes)
    self.downsample = downsample
    self.num_segments = num_segments

  def forward(self, x):
    identity = x
    y = x if self.num_segments is None else temporal_shift(x, self.num_segments)
    y = self.relu(self.bn1(self.conv1(y)))
    y = self.bn2(self.conv2(y))
    if self.downsample is not None:
      identity = self.downsample(x)
    return self.relu(y + identity)


class Bottleneck(nn.Module):
  """torchvision v1.5 bottleneck: the stride sits on the 3x3 conv."""
  expansion = 4

  def __init__(self, inplanes: int, planes: int, stride: int = 1,
               downsample: Optional[nn.Module] = None, num_segments: Optional[int] = None):
    super().__init__()
    self.conv1 = _conv1x1(inplanes, planes)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = _conv3x3(planes, planes, stride)
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv3 = _conv1x1(planes, planes * self.expansion)
    self.bn3 = nn.BatchNorm2d(planes * self.expansion)
    self.relu = nn.ReLU(inplace=True)
    self.downsample = downsample
    self.num_segments = num_segments

  def forward(self, x):
    identity = x
    y = x if self.num_segments is None else temporal_shift(x, self.num_segments)
    y = self.relu(self.bn1(self.conv1(y)))
    y = self.relu(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    if self.downsample is not None:
      identity = self.downsample(x)
    return self.relu(y + identity)


class ResNetVideo(nn.Module):
  """torchvision-layout ResNet trunk + TSN head over ``(B, T, 3, H, W)`` videos."""

  def __init__(self, block: str, layers: Sequence[int], num_classes: int = 1000,
               tsm: bool = False, num_segments: int = 8, width: int = 64,
               strides: Sequence[int] = (1, 2, 2, 2)):
    super().__init__()
    block_cls = BasicBlock if block == "basic" else Bottleneck
    self.tsm = tsm
    self.num_segments = num_segments
    self.inplanes = width
    self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
    self.bn1 = nn.BatchNorm2d(width)
    self.relu = nn.ReLU(inplace=True)
    self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
    seg = num_segments if tsm else None
    for i, (n, s) in enumerate(zip(layers, strides)):
      setattr(self, f"layer{i + 1}", self._make_layer(block_cls, width * 2**i, n, s, seg))
    self.avgpool = nn.AdaptiveAvgPool2d(1)
    self.fc = nn.Linear(width * 8 * block_cls.expansion, num_classes)
    for m in self.modules():
      if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
      elif isinstance(m, nn.BatchNorm2d):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)

  def _make_layer(self, block_cls, planes, blocks, stride, seg):
    downsample = None
    if stride != 1 or self.inplanes != planes * block_cls.expansion:
      downsample = nn.Sequential(
          _conv1x1(self.inplanes, planes * block_cls.expansion, stride),
          nn.BatchNorm2d(planes * block_cls.expansion))
    layers = [block_cls(self.inplanes, planes, stride, downsample, seg)]
    self.inplanes = planes * block_cls.expansion
    for _ in range(1, blocks):
      layers.append(block_cls(self.inplanes, planes, num_segments=seg))
    return nn.Sequential(*layers)

  def features(self, frames: torch.Tensor) -> torch.Tensor:
    """Per-frame trunk: ``(N, 3, H, W) -> (N, C, h, w)`` after the last ReLU."""
    x = self.maxpool(self.relu(self.bn1(self.conv1(frames))))
    x = self.layer1(x)
    x = self.layer2(x)
    x = self.layer3(x)
    return self.layer4(x)

  def forward(self, video: torch.Tensor, return_features: bool = False):
    """``(B, T, 3, H, W)`` -> logits ``(B, K)`` [and features ``(B, T, C, h, w)``]."""
    if video.dim() != 5:
      raise ValueError(f"expected a (B, T, 3, H, W) video, got shape {tuple(video.shape)}")
    b, t = video.shape[:2]
    if self.tsm and t != self.num_segments:
      raise ValueError(f"video has T={t} frames but the TSM model has num_segments="
                       f"{self.num_segments}")
    feats = self.features(video.reshape(b * t, *video.shape[2:]))
    pooled = self.avgpool(feats).flatten(1).view(b, t, -1).mean(dim=1)
    logits = self.fc(pooled)
    if return_features:
      return logits, feats.view(b, t, *feats.shape[1:])
    return logits


def resnet(depth: int, num_classes: int = 1000, tsm: bool = False,
           num_segments: int = 8, **kwargs) -> ResNetVideo:
  """ResNet-``depth`` (18/34/50/101/152) video classifier in torchvision layout."""
  if isinstance(depth, str):
    depth = int(depth.lower().replace("resnet", ""))
  if depth not in ARCHS:
    raise ValueError(f"unknown ResNet depth {depth}; expected one of {sorted(ARCHS)}")
  block, layers = ARCHS[depth]
  return ResNetVideo(block, layers, num_classes=num_classes, tsm=tsm,
                     num_segments=num_segments, **kwargs)


def randomize_(model: nn.Module, seed: int = 0,
               calibrate_with: Optional[torch.Tensor] = None) -> nn.Module:
  """Random BN statistics and affine parameters, random ``fc`` (conversion tests).

  With ``calibrate_with`` (a video batch), the running statistics are first set
  to that batch's statistics (one train-mode pass with momentum 1), then
  perturbed randomly, so activations stay O(1) through deep nets; without it
  they are drawn from fixed ranges (fine for shallow nets).
  """
  g = torch.Generator().manual_seed(seed)
  return common.randomize_bn_and_linear_(model, g, nn.BatchNorm2d, calibrate_with)
