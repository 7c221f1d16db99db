"""Helpers shared by the reference models: random weights and BN statistics for tests."""

from __future__ import annotations

from typing import Optional, Type

import torch
from torch import nn


def randomize_bn_and_linear_(model: nn.Module, g: torch.Generator,
                             bn_type: Type[nn.Module] = nn.BatchNorm2d,
                             calibrate_with: Optional[torch.Tensor] = None) -> nn.Module:
  """Random BN statistics and affine parameters (``bn_type`` layers) and random linear layers.

  With ``calibrate_with`` (an input batch), the running statistics are first
  set to that batch's statistics (one train-mode pass with momentum 1), then
  perturbed randomly, so activations stay O(1) through deep nets; without it
  they are drawn from fixed ranges (fine for shallow nets). Draws from ``g``
  in a fixed order; the model's train/eval mode is left as it was.
  """
  bns = [m for m in model.modules() if isinstance(m, bn_type)]
  with torch.no_grad():
    for m in bns:
      n = m.num_features
      m.weight.copy_(0.5 + torch.rand(n, generator=g))
      m.bias.copy_(0.2 * torch.randn(n, generator=g))
      m.running_mean.copy_(0.2 * torch.randn(n, generator=g))
      m.running_var.copy_(0.5 + torch.rand(n, generator=g))
    if calibrate_with is not None:
      was_training = model.training
      momenta = [bn.momentum for bn in bns]
      for bn in bns:
        bn.momentum = 1.0
      model.train()
      model(calibrate_with)
      model.train(was_training)
      for bn, mom in zip(bns, momenta):
        bn.momentum = mom
      for m in bns:  # perturb: statistics must not equal any batch's exactly
        n = m.num_features
        m.running_mean.add_(0.1 * m.running_var.sqrt() * torch.randn(n, generator=g))
        m.running_var.mul_(0.8 + 0.4 * torch.rand(n, generator=g)).add_(1e-3)
    for m in model.modules():
      if isinstance(m, nn.Linear):
        m.weight.copy_(0.05 * torch.randn(m.weight.shape, generator=g))
        m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
  return model
