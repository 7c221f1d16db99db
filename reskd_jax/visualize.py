"""The paper's Figure 4: effective receptive field and activation attention.

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

Both take ``(model, variables, videos)`` with ``videos`` of shape
``(N, T, H, W, 3)`` (normalised as the model expects). :func:`plot_erf` and
:func:`plot_attention` draw a baseline student beside a ResKD student.

CLI::

    python -m reskd_jax.visualize --baseline=runs/minik_r50_112_baseline \\
        --reskd=runs/minik_r50_112 --videos=clips.npy --out=figures/
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from reskd_jax import augment  # noqa: E402
from reskd_jax.models import registry as model_registry  # noqa: E402

IMAGENET_MEAN, IMAGENET_STD = augment.IMAGENET_MEAN, augment.IMAGENET_STD


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


def to_display(frames, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> np.ndarray:
  """Frames as float RGB in [0, 1]: undoes the mean/std normalisation when the
  values look normalised (any negative), scales 0-255 data otherwise."""
  x = np.asarray(frames, np.float32)
  if x.min() < 0:
    x = x * np.asarray(std, np.float32) + np.asarray(mean, np.float32)
    x = x / 255.0
  elif x.max() > 1.0:
    x = x / 255.0
  return np.clip(x, 0.0, 1.0)


def plot_erf(erfs: Mapping[str, np.ndarray], out_png: str, positions: Optional[Mapping] = None,
             title: str = "Effective receptive field", dpi: int = 100,
             panel_size: float = 3.0) -> str:
  """One panel per model (e.g. {"Baseline": erf, "ResKD": erf})."""
  names = list(erfs)
  if not names:
    raise ValueError("plot_erf: no maps")
  fig, axes = plt.subplots(1, len(names), figsize=(panel_size * len(names), panel_size + 0.4),
                           dpi=dpi, squeeze=False)
  for ax, name in zip(axes[0], names):
    ax.imshow(erfs[name], cmap="inferno", vmin=0.0, vmax=max(float(np.max(erfs[name])), 1e-12))
    label = name
    if positions and name in positions:
      label += f"\nfeature pixel {tuple(positions[name])}"
    ax.set_title(label, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(out_png)), exist_ok=True)
  fig.savefig(out_png, dpi=dpi)
  plt.close(fig)
  return out_png


def plot_attention(videos, attentions: Mapping[str, np.ndarray], out_png: str,
                   frame_index: Optional[int] = None, alpha: float = 0.5, dpi: int = 100,
                   panel_size: float = 2.0, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> str:
  """Rows: videos; columns: the frame, then each model's attention overlaid on it."""
  videos = np.asarray(videos)
  n, t = videos.shape[:2]
  k = t // 2 if frame_index is None else int(frame_index)
  names = list(attentions)
  cols = 1 + len(names)
  fig, axes = plt.subplots(n, cols, figsize=(panel_size * cols, panel_size * n + 0.4), dpi=dpi,
                           squeeze=False)
  cmap = plt.get_cmap("viridis")  # high attention = bright yellow, as in the paper
  for r in range(n):
    frame = to_display(videos[r, k], mean, std)
    axes[r, 0].imshow(frame)
    if r == 0:
      axes[r, 0].set_title(f"frame {k}", fontsize=9)
    for c, name in enumerate(names, start=1):
      heat = cmap(np.asarray(attentions[name])[r, k])[..., :3]
      axes[r, c].imshow((1 - alpha) * frame + alpha * heat)
      if r == 0:
        axes[r, c].set_title(name, fontsize=9)
  for ax in axes.ravel():
    ax.set_xticks([])
    ax.set_yticks([])
  fig.suptitle("Activation-based attention", fontsize=10)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(out_png)), exist_ok=True)
  fig.savefig(out_png, dpi=dpi)
  plt.close(fig)
  return out_png


def figure4(models: Mapping[str, Tuple[Any, Any]], videos, out_dir: str,
            position: Optional[Tuple[int, int]] = None) -> Dict[str, str]:
  """ERF and attention figures for ``{"Baseline": (model, vars), "ResKD": (model, vars)}``."""
  erfs, positions, atts = {}, {}, {}
  for name, (model, variables) in models.items():
    erfs[name], positions[name] = effective_receptive_field(model, variables, videos, position)
    atts[name] = activation_attention(model, variables, videos)
  os.makedirs(out_dir, exist_ok=True)
  return {
      "erf": plot_erf(erfs, os.path.join(out_dir, "erf.png"), positions),
      "attention": plot_attention(videos, atts, os.path.join(out_dir, "attention.png")),
  }


# ---------------------------------------------------------------------------
# CLI


def model_from_workdir(path: str, overrides: Optional[Mapping[str, Any]] = None):
  """(model, variables) from a variables directory / workdir and its meta.json."""
  from reskd_jax import checkpoints

  meta = dict(checkpoints.load_metadata(path))
  meta.update({k: v for k, v in (overrides or {}).items() if v is not None})
  variables = checkpoints.load_variables(path)
  if "arch" not in meta:
    raise ValueError(f"{path}: meta.json has no 'arch'; pass --arch")
  num_classes = meta.get("num_classes") or int(variables["params"]["fc"]["bias"].shape[0])
  tsm = bool(meta.get("tsm", False))
  # The videos are resized by load_videos, not inside the model.
  model = model_registry.build_from_config(
      meta, int(num_classes), num_segments=meta.get("num_segments") if tsm else None
  ).clone(input_size=None)
  return model, {k: variables[k] for k in ("params", "batch_stats") if k in variables}


def load_videos(path: str, resolution: Optional[int] = None, normalized: bool = False,
                mean=IMAGENET_MEAN, std=IMAGENET_STD) -> np.ndarray:
  """``.npy``/``.npz`` of ``(N, T, H, W, 3)`` (0-255 RGB unless ``normalized``),
  bilinearly resized (no antialias, like the student's in-model resize) to
  ``resolution`` when given, and normalised."""
  if path.endswith(".npz"):
    with np.load(path) as data:
      arr = data[data.files[0]]
  else:
    arr = np.load(path)
  arr = np.asarray(arr, np.float32)
  if arr.ndim == 4:
    arr = arr[None]
  if arr.ndim != 5 or arr.shape[-1] != 3:
    raise ValueError(f"{path}: expected videos of shape (N, T, H, W, 3), got {arr.shape}")
  if not normalized:
    arr = (arr - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
  if resolution and arr.shape[2:4] != (resolution, resolution):
    n, t, _, _, c = arr.shape
    arr = np.asarray(jax.image.resize(arr, (n, t, resolution, resolution, c), "bilinear",
                                      antialias=False))
  return arr


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m reskd_jax.visualize",
                              description="ERF and attention maps, baseline vs ResKD student.")
  p.add_argument("--baseline", required=True, help="baseline student workdir / variables dir")
  p.add_argument("--reskd", required=True, help="ResKD student workdir / variables dir")
  p.add_argument("--videos", required=True,
                 help=".npy/.npz of (N, T, H, W, 3) RGB 0-255 clips (e.g. 224 centre crops)")
  p.add_argument("--out", required=True, help="output directory")
  p.add_argument("--resolution", type=int, default=112, help="student input size (0: as given)")
  p.add_argument("--normalized", action="store_true", help="videos are already normalised")
  p.add_argument("--arch", default=None, help="override meta.json's arch")
  p.add_argument("--position", default=None, help="feature pixel 'i,j' for the ERF")
  args = p.parse_args(argv)
  try:
    position = tuple(int(v) for v in args.position.split(",")) if args.position else None
    videos = load_videos(args.videos, args.resolution or None, args.normalized)
    models = {"Baseline": model_from_workdir(args.baseline, {"arch": args.arch}),
              "ResKD": model_from_workdir(args.reskd, {"arch": args.arch})}
    out = figure4(models, videos, args.out, position)
  except (FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"wrote {out['erf']} and {out['attention']}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
