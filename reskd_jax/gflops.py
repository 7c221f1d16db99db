"""GFLOPs per video in the video-literature convention, and XLA's own count.

The convention of the papers (what mmcv/fvcore report as "FLOPs"):
multiply-adds of the convolution and linear layers, padding taps included,
for one video. We count them exactly from the jaxpr: every
``conv_general_dilated`` costs ``prod(out.shape) * kh * kw * C_in/groups`` and
every ``dot_general`` costs ``prod(lhs.shape) * (free size of rhs)``.
"""

from __future__ import annotations

import functools
import math
from typing import Dict, Optional

import jax
import jax.numpy as jnp

from reskd_jax.models import swin


def _sub_jaxprs(params):
  for value in params.values():
    for item in (value if isinstance(value, (tuple, list)) else (value,)):
      if hasattr(item, "eqns"):
        yield item
      elif hasattr(item, "jaxpr") and hasattr(item.jaxpr, "eqns"):
        yield item.jaxpr


def count_macs(jaxpr, within: Optional[str] = None, _inside: bool = False) -> int:
  """Multiply-adds of convolutions and dot products in a (closed) jaxpr.

  With ``within``, only the operations traced under a ``jax.named_scope`` of
  that name count (e.g. ``models.swin.ATTENTION_SCOPE``: the attention matrix
  products ``q @ k^T`` and ``attn @ v``, which are not conv/linear layers).
  """
  jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
  total = 0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    inside = _inside or (within is not None and within in str(eqn.source_info.name_stack))
    counted = within is None or inside
    if name == "conv_general_dilated" and counted:
      out = eqn.outvars[0].aval.shape
      rhs = eqn.invars[1].aval.shape
      out_feature_dim = eqn.params["dimension_numbers"].rhs_spec[0]
      total += math.prod(out) * (math.prod(rhs) // rhs[out_feature_dim])
    elif name == "dot_general" and counted:
      lhs = eqn.invars[0].aval.shape
      rhs = eqn.invars[1].aval.shape
      (_, rhs_contract), (_, rhs_batch) = eqn.params["dimension_numbers"]
      rhs_free = math.prod(d for i, d in enumerate(rhs)
                           if i not in rhs_contract and i not in rhs_batch)
      total += math.prod(lhs) * rhs_free
    else:
      multiplier = eqn.params.get("length", 1) if name == "scan" else 1
      for sub in _sub_jaxprs(eqn.params):
        total += multiplier * count_macs(sub, within, inside)
  return total


def _forward(model, variables, video):
  return model.apply(variables, video, train=False)


def video_gflops(model, variables, num_frames: int, resolution: int,
                 with_xla: bool = True) -> Dict[str, float]:
  """GFLOPs for one video of ``num_frames`` frames at ``resolution``.

  The model must not carry an in-model resize (``input_size``): the count is
  for a network fed ``resolution`` directly, as the paper reports.

  Returns ``{"gflops": paper convention (GMACs of conv and linear layers),
  "attention_gflops": GMACs of the attention matrix products (transformers; not
  in ``gflops``), "xla_gflops": XLA's compiled count (it counts a multiply-add
  as 2 and includes BN, ReLU, pooling), ...}``.
  """
  if model.input_size is not None:
    model = model.clone(input_size=None)
  video = jax.ShapeDtypeStruct((1, num_frames, resolution, resolution, model.in_channels),
                               jnp.float32)
  fn = functools.partial(_forward, model)
  jaxpr = jax.make_jaxpr(fn)(variables, video)
  macs = count_macs(jaxpr)
  attention = count_macs(jaxpr, within=swin.ATTENTION_SCOPE)
  result = {"resolution": resolution, "num_frames": num_frames,
            "gflops": (macs - attention) / 1e9, "attention_gflops": attention / 1e9}
  if with_xla:
    compiled = jax.jit(fn).lower(variables, video).compile()
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
      cost = cost[0] if cost else {}
    flops = (cost or {}).get("flops")
    result["xla_gflops"] = float(flops) / 1e9 if flops is not None else float("nan")
  return result
