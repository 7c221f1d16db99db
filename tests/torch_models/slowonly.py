"""A plain-PyTorch SlowOnly recogniser, transcribed from mmaction2 (no mmcv / mmengine).

``ResNet3dSlowOnly`` (``resnet3d_slowonly.py`` over ``resnet3d.py``: lateral
off, ``conv1_kernel=(1, 7, 7)``, ``conv1_stride_t=1``, ``pool1_stride_t=1``,
``inflate=(0, 0, 1, 1)``, ``inflate_style='3x1x1'``, ``with_pool2=False``,
``style='pytorch'``) and ``I3DHead`` (average pool over T, H, W, dropout,
``fc_cls``). Module names equal mmaction2's, so ``state_dict()`` keys are
those of a released checkpoint once prefixed with ``backbone.`` / ``cls_head.``
(see :func:`mmaction_state_dict`). Input ``(B, 3, T, H, W)`` as in mmaction2.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence

import torch
from torch import nn

from reskd_jax import models
from tests.torch_models import common

STAGE_SIZES = tuple(models.default_options("slowonly_r50")["stage_sizes"])


class ConvModule(nn.Module):
  """mmcv ConvModule(conv3d, BN3d, optional ReLU) with mmaction2's names ``conv`` / ``bn``."""

  def __init__(self, cin, cout, kernel, stride, padding, act=True):
    super().__init__()
    self.conv = nn.Conv3d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
    self.bn = nn.BatchNorm3d(cout)
    self.act = act

  def forward(self, x):
    x = self.bn(self.conv(x))
    return torch.relu(x) if self.act else x


class Bottleneck3d(nn.Module):
  expansion = 4

  def __init__(self, inplanes, planes, spatial_stride=1, downsample=None, inflate=True):
    super().__init__()
    # style='pytorch': the stride sits on conv2; inflate_style='3x1x1'.
    if inflate:
      k1, p1 = (3, 1, 1), (1, 0, 0)
    else:
      k1, p1 = (1, 1, 1), (0, 0, 0)
    self.conv1 = ConvModule(inplanes, planes, k1, (1, 1, 1), p1)
    self.conv2 = ConvModule(planes, planes, (1, 3, 3), (1, spatial_stride, spatial_stride),
                            (0, 1, 1))
    self.conv3 = ConvModule(planes, planes * self.expansion, 1, 1, 0, act=False)
    self.downsample = downsample

  def forward(self, x):
    identity = x if self.downsample is None else self.downsample(x)
    out = self.conv3(self.conv2(self.conv1(x)))
    return torch.relu(out + identity)


class SlowOnlyBackbone(nn.Module):
  def __init__(self, stage_sizes: Sequence[int] = STAGE_SIZES, width: int = 64,
               inflate: Sequence[int] = (0, 0, 1, 1),
               spatial_strides: Sequence[int] = (1, 2, 2, 2)):
    super().__init__()
    self.conv1 = ConvModule(3, width, (1, 7, 7), (1, 2, 2), (0, 3, 3))
    self.maxpool = nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))
    inplanes = width
    self.res_layers = []
    for i, (n, s) in enumerate(zip(stage_sizes, spatial_strides)):
      planes = width * 2**i
      downsample = None
      if s != 1 or inplanes != planes * 4:
        downsample = ConvModule(inplanes, planes * 4, 1, (1, s, s), 0, act=False)
      blocks = [Bottleneck3d(inplanes, planes, s, downsample, bool(inflate[i]))]
      inplanes = planes * 4
      blocks += [Bottleneck3d(inplanes, planes, 1, None, bool(inflate[i])) for _ in range(1, n)]
      name = f"layer{i + 1}"
      self.add_module(name, nn.Sequential(*blocks))
      self.res_layers.append(name)
    self.feat_dim = inplanes

  def forward(self, x):
    x = self.maxpool(self.conv1(x))
    for name in self.res_layers:
      x = getattr(self, name)(x)
    return x


class I3DHead(nn.Module):
  def __init__(self, num_classes: int, in_channels: int, dropout_ratio: float = 0.5):
    super().__init__()
    self.avg_pool = nn.AdaptiveAvgPool3d((1, 1, 1))
    self.dropout = nn.Dropout(p=dropout_ratio)
    self.fc_cls = nn.Linear(in_channels, num_classes)

  def forward(self, x):
    x = self.dropout(self.avg_pool(x)).flatten(1)
    return self.fc_cls(x)


class SlowOnly(nn.Module):
  """Recognizer3D: ``backbone`` + ``cls_head``; ``(B, 3, T, H, W)`` -> logits."""

  def __init__(self, num_classes: int = 400, **backbone_kwargs):
    super().__init__()
    self.backbone = SlowOnlyBackbone(**backbone_kwargs)
    self.cls_head = I3DHead(num_classes, self.backbone.feat_dim)

  def forward(self, video, return_features: bool = False):
    feats = self.backbone(video)
    logits = self.cls_head(feats)
    return (logits, feats) if return_features else logits


def mmaction_state_dict(model: SlowOnly) -> Dict[str, torch.Tensor]:
  """The model's weights under the keys of an mmaction2 checkpoint's ``state_dict``."""
  return dict(model.state_dict())  # module names already are backbone.* / cls_head.*


def randomize_(model: nn.Module, seed: int = 0,
               calibrate_with: Optional[torch.Tensor] = None) -> nn.Module:
  """Random weights and BN statistics (conversion tests).

  With ``calibrate_with`` (a video batch ``(B, 3, T, H, W)``), the running
  statistics are first set to that batch's (one train-mode pass, momentum 1),
  then perturbed, so activations stay O(1) through the 50 layers.
  """
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, nn.Conv3d):
        fan_out = m.out_channels * m.weight[0, 0].numel()
        m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_out) ** 0.5)
  common.randomize_bn_and_linear_(model, g, nn.BatchNorm3d, calibrate_with)
  return model.eval()
