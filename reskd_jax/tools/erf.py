"""The paper's Figure 4 as numbers: effective receptive field and activation attention.

- :func:`effective_receptive_field` (Luo et al. 2016): the gradient of one
  position of the last feature map (summed over its channels and frames)
  with respect to the input video, absolute value, averaged over samples,
  frames and colour channels. The default position is ``(h // 2, w // 2)``:
  the centre for odd maps (7x7 at 224 px) and, for even maps (4x4 at 112 px,
  which have no central pixel), the pixel just below-right of the centre, as
  the paper does.
- :func:`activation_attention` (Zagoruyko & Komodakis 2017): mean over
  channels of the squared last activations, per frame, upsampled to the
  frame size and normalised to [0, 1].
- :func:`erf_radii` puts a number on the ERF: for every clip and every
  position of the last feature map, the radius (in input pixels, around the
  ERF's centre of mass) of the disc holding half of the gradient mass.
  :func:`erf_summary` averages it over clips and positions; a smaller radius
  is a more concentrated (contracted) receptive field.

All take ``(model, variables, videos)`` with ``videos`` of shape
``(N, T, H, W, 3)`` (normalised as the model expects). `visualize` draws them.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np


def _features(model, variables, videos):
  out = model.apply(variables, videos, train=False, return_dict=True)
  return out["features"]  # (N, T, h, w, C)


def default_position(feature_hw: Tuple[int, int]) -> Tuple[int, int]:
  h, w = feature_hw
  return h // 2, w // 2


def effective_receptive_field(model, variables, videos, position: Optional[Tuple[int, int]] = None,
                              batch_size: int = 8) -> Tuple[np.ndarray, Tuple[int, int]]:
  """ERF map ``(H, W)`` (max-normalised to 1) and the feature position used."""
  videos = jnp.asarray(videos, jnp.float32)
  feat_shape = jax.eval_shape(lambda x: _features(model, variables, x), videos[:1]).shape
  if position is None:
    position = default_position(feat_shape[2:4])
  i, j = position
  if not (0 <= i < feat_shape[2] and 0 <= j < feat_shape[3]):
    raise ValueError(f"position {position} is outside the {feat_shape[2]}x{feat_shape[3]} "
                     f"feature map")

  @jax.jit
  def grad_map(x):
    def unit(x):
      return jnp.sum(_features(model, variables, x)[:, :, i, j, :])
    g = jax.grad(unit)(x)  # (n, T, H, W, 3)
    return jnp.sum(jnp.abs(g).mean(axis=(1, 4)), axis=0)  # summed over samples

  total = 0.0
  for start in range(0, videos.shape[0], batch_size):
    total = total + grad_map(videos[start:start + batch_size])
  erf = np.asarray(total) / videos.shape[0]
  peak = erf.max()
  return (erf / peak if peak > 0 else erf), (int(i), int(j))


def erf_radii(model, variables, videos, fraction: float = 0.5,
              batch_size: int = 8) -> np.ndarray:
  """``(N, h, w)``: per clip and feature position, the ERF radius in input pixels.

  The ERF of a position is |d(sum over channels and frames of the feature
  there) / d(input)|, averaged over frames and colour channels (as in
  :func:`effective_receptive_field`, but per clip). Its radius is the
  smallest r such that the disc of radius r around the map's centre of mass
  holds ``fraction`` of the map's total (:func:`half_mass_radius`). The
  centre of mass, rather than a nominal centre of the position, keeps the
  measure free of padding and resize conventions.
  """
  videos = jnp.asarray(videos, jnp.float32)
  n = videos.shape[0]
  fh, fw = jax.eval_shape(lambda x: _features(model, variables, x), videos[:1]).shape[2:4]
  positions = [(i, j) for i in range(fh) for j in range(fw)]

  @jax.jit
  def grad_maps(x):
    feats, pull = jax.vjp(lambda v: _features(model, variables, v), x)

    def one(position):
      cot = jnp.zeros_like(feats).at[:, :, position[0], position[1], :].set(1.0)
      return jnp.abs(pull(cot)[0]).mean(axis=(1, 4))  # (n, H, W)

    return jax.lax.map(one, jnp.asarray(positions))  # (P, n, H, W)

  maps = np.concatenate([np.asarray(grad_maps(videos[s:s + batch_size]))
                         for s in range(0, n, batch_size)], axis=1)
  radii = np.stack([half_mass_radius(maps[p], None, fraction)
                    for p in range(len(positions))], axis=1)
  return radii.reshape(n, fh, fw)


def half_mass_radius(maps, centre: Optional[Tuple[float, float]] = None,
                     fraction: float = 0.5) -> np.ndarray:
  """``(N,)``: for each non-negative map ``(N, H, W)``, the smallest distance r from
  ``centre`` (y, x in pixel coordinates; None: each map's centre of mass) such
  that the pixels within r hold ``fraction`` of the map's total."""
  maps = np.asarray(maps, np.float64)
  ys, xs = np.mgrid[:maps.shape[1], :maps.shape[2]]
  total = np.maximum(maps.sum(axis=(1, 2)), 1e-30)
  if centre is None:
    cy = (maps * ys).sum(axis=(1, 2)) / total
    cx = (maps * xs).sum(axis=(1, 2)) / total
  else:
    cy, cx = np.full(len(maps), centre[0]), np.full(len(maps), centre[1])
  dist = np.hypot(ys[None] - cy[:, None, None], xs[None] - cx[:, None, None])
  dist = dist.reshape(len(maps), -1)
  order = np.argsort(dist, axis=1, kind="stable")
  mass = np.take_along_axis(maps.reshape(len(maps), -1), order, axis=1)
  cum = np.cumsum(mass, axis=1) / total[:, None]
  first = np.argmax(cum >= fraction - 1e-12, axis=1)
  return np.take_along_axis(dist, order, axis=1)[np.arange(len(maps)), first]


def erf_summary(models: Mapping[str, Tuple[Any, Any]], videos,
                fraction: float = 0.5) -> Dict[str, Dict[str, float]]:
  """Per model: the ERF radius averaged over clips and positions (px and / frame side)."""
  videos = np.asarray(videos, np.float32)
  side = float(min(videos.shape[2:4]))
  out = {}
  for name, (model, variables) in models.items():
    radii = erf_radii(model, variables, videos, fraction)
    out[name] = {"radius_mean": float(radii.mean()), "radius_std": float(radii.std()),
                 "radius_frac": float(radii.mean() / side), "mass_fraction": fraction,
                 "num_clips": int(radii.shape[0]), "num_positions": int(radii[0].size),
                 "input_size": [int(videos.shape[2]), int(videos.shape[3])]}
  return out


def format_erf_summary(summary: Mapping[str, Mapping[str, float]]) -> str:
  """One line: each model's ERF radius (the disc holding half of the gradient mass)."""
  first = next(iter(summary.values()))
  parts = [f"{name} {s['radius_mean']:.2f} px ({100 * s['radius_frac']:.0f}% of the frame "
           f"side)" for name, s in summary.items()]
  return (f"ERF radius ({100 * first['mass_fraction']:.0f}% of the gradient mass, mean over "
          f"{first['num_clips']} clips x {first['num_positions']} positions of "
          f"{first['input_size'][0]}x{first['input_size'][1]} input): " + ", ".join(parts))


def activation_attention(model, variables, videos) -> np.ndarray:
  """``(N, T, H, W)`` attention maps in [0, 1] (each frame normalised)."""
  videos = jnp.asarray(videos, jnp.float32)
  n, t, h, w, _ = videos.shape

  @jax.jit
  def attention(x):
    f = _features(model, variables, x).astype(jnp.float32)
    a = jnp.mean(f ** 2, axis=-1)  # (N, T, h, w)
    a = jax.image.resize(a, (n, t, h, w), method="bilinear")
    a = a - a.min(axis=(2, 3), keepdims=True)
    return a / jnp.maximum(a.max(axis=(2, 3), keepdims=True), 1e-12)

  return np.asarray(attention(videos))
