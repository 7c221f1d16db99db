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

- :func:`erf_radii` puts a number on the ERF: for every clip and every
  position of the last feature map, the radius (in input pixels, around the
  ERF's centre of mass) of the disc holding half of the gradient mass.
  :func:`erf_summary` averages it over clips and positions; a smaller radius
  is a more concentrated (contracted) receptive field.

All take ``(model, variables, videos)`` with ``videos`` of shape
``(N, T, H, W, 3)`` (normalised as the model expects). :func:`plot_erf` and
:func:`plot_attention` draw a baseline student beside a ResKD student.

CLI (``--videos``: ``.npy``/``.npz`` arrays, video files or frame folders,
comma-separated; or ``--data-dir`` for clips of a converted data set's eval
split)::

    python -m reskd_jax.visualize --baseline=runs/minik_r50_112_baseline \\
        --reskd=runs/minik_r50_112 --videos=a.mp4,b.mp4 --out=figures/
    python -m reskd_jax.visualize --baseline=... --reskd=... --data-dir=data/minik \\
        --num-clips=8 --out=figures/
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Dict, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp
import matplotlib
import ml_collections
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from reskd_jax import augment, input_pipeline, records, trained, video_io  # noqa: E402
from reskd_jax.errors import ReskdError  # noqa: E402
from reskd_jax.fileio import write_json_atomic  # noqa: E402

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
      where = positions[name]
      label += f"\nfeature pixel {where if isinstance(where, str) else tuple(where)}"
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
            position: Optional[Tuple[int, int]] = None,
            attention_rows: int = 4) -> Dict[str, str]:
  """ERF and attention figures for ``{"Baseline": (model, vars), "ResKD": (model, vars)}``.

  Also writes ``erf.json`` (:func:`erf_summary`: the ERF radius of each model,
  averaged over all clips and positions); the attention figure shows the
  first ``attention_rows`` clips.
  """
  erfs, positions, atts = {}, {}, {}
  shown = videos[:attention_rows]
  for name, (model, variables) in models.items():
    erfs[name], positions[name] = effective_receptive_field(model, variables, videos, position)
    atts[name] = activation_attention(model, variables, shown)
  summary = erf_summary(models, videos)
  os.makedirs(out_dir, exist_ok=True)
  labels = {name: f"{tuple(positions[name])}, ERF radius {summary[name]['radius_mean']:.1f} px"
            for name in models}
  return {
      "erf": plot_erf(erfs, os.path.join(out_dir, "erf.png"), labels),
      "attention": plot_attention(shown, atts, os.path.join(out_dir, "attention.png")),
      "erf_summary": write_json_atomic(os.path.join(out_dir, "erf.json"), summary),
  }


# ---------------------------------------------------------------------------
# CLI


def model_from_workdir(path: str, overrides: Optional[Mapping[str, Any]] = None):
  """(model, variables) from a variables directory / workdir and its meta.json.

  The model includes the run's in-model resize (a student given its
  teacher's crop sees its own resolution, as in training).
  """
  run = trained.load(path, meta_overrides=overrides)
  return run.model, run.variables


def _resize_normalize(arr, resolution, normalized, mean, std) -> np.ndarray:
  arr = np.asarray(arr, np.float32)
  if not normalized:
    arr = (arr - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
  if resolution and arr.shape[2:4] != (resolution, resolution):
    n, t, _, _, c = arr.shape
    arr = np.asarray(jax.image.resize(arr, (n, t, resolution, resolution, c), "bilinear",
                                      antialias=False))
  return arr


def _is_array_file(path: str) -> bool:
  return path.endswith((".npy", ".npz"))


def load_videos(path: str, resolution: Optional[int] = None, normalized: bool = False,
                mean=IMAGENET_MEAN, std=IMAGENET_STD,
                transform: Optional[trained.TrainedModel] = None) -> np.ndarray:
  """Clips ``(N, T, H, W, 3)``, normalised, from arrays or videos.

  ``path``: a ``.npy``/``.npz`` of ``(N, T, H, W, 3)`` (0-255 RGB unless
  ``normalized``), or comma-separated video files / frame folders, decoded by
  ``video_io`` and cut by the test transform of ``transform`` (a loaded run;
  the first view of each video). Resized bilinearly (no antialias, like the
  student's in-model resize) to ``resolution`` when given.
  """
  paths = [p for p in path.split(",") if p]
  if len(paths) == 1 and _is_array_file(paths[0]):
    if paths[0].endswith(".npz"):
      with np.load(paths[0]) as data:
        arr = data[data.files[0]]
    else:
      arr = np.load(paths[0])
    arr = np.asarray(arr, np.float32)
    if arr.ndim == 4:
      arr = arr[None]
    if arr.ndim != 5 or arr.shape[-1] != 3:
      raise ValueError(f"{path}: expected videos of shape (N, T, H, W, 3), got {arr.shape}")
    return _resize_normalize(arr, resolution, normalized, mean, std)
  if transform is None:
    raise ValueError("load_videos: video files need a run's test transform (transform=)")
  clips = []
  for p in paths:
    if _is_array_file(p):
      raise ValueError(f"{p}: give either one .npy/.npz or video files, not both")
    frames = video_io.read_video(p, transform.data.short_side)
    clips.append(transform.views(frames)[0])
  return _resize_normalize(np.stack(clips), resolution, False, transform.data.mean,
                           transform.data.std)


def load_eval_clips(data_dir: str, run: trained.TrainedModel, num_clips: int,
                    split: Optional[str] = None, resolution: Optional[int] = None) -> np.ndarray:
  """The first ``num_clips`` clips of a converted data set's eval split, cut by the run's
  test transform (first view), normalised; ``split`` defaults to "val", else "test"."""
  manifest = records.read_manifest(data_dir)
  splits = sorted(manifest.get("splits", {}))
  if split is None:
    split = next((s for s in ("val", "test") if s in splits), None)
    if split is None:
      raise ValueError(f"{data_dir!r} has no 'val' or 'test' split ({splits}); pass --split")
  data = ml_collections.ConfigDict(run.data.to_dict())
  data.data_dir, data.shuffle_buffer, data.cache = data_dir, 1, False
  ds = input_pipeline.create_dataset(data, split, train=False, batch_size=num_clips,
                                     num_classes=len(manifest.get("classes", ())) or 1)
  batch = next(ds.as_numpy_iterator())
  clips = batch["video"][:, 0][batch["mask"] > 0]
  return _resize_normalize(clips, resolution, False, run.data.mean, run.data.std)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m reskd_jax.visualize",
                              description="ERF and attention maps, baseline vs ResKD student.")
  p.add_argument("--baseline", required=True, help="baseline student workdir / variables dir")
  p.add_argument("--reskd", required=True, help="ResKD student workdir / variables dir")
  src = p.add_mutually_exclusive_group(required=True)
  src.add_argument("--videos", help=".npy/.npz of (N, T, H, W, 3) RGB 0-255 clips, or "
                                    "comma-separated video files / frame folders")
  src.add_argument("--data-dir", help="a converted data set: clips of its eval split")
  p.add_argument("--split", default=None, help="with --data-dir (default: val, else test)")
  p.add_argument("--num-clips", type=int, default=8, help="with --data-dir (default 8)")
  p.add_argument("--out", required=True, help="output directory")
  p.add_argument("--resolution", type=int, default=None,
                 help="resize clips to this before the models (default: as decoded, the "
                      "students' in-model resize applies; arrays: 112; 0: as given)")
  p.add_argument("--normalized", action="store_true", help="arrays are already normalised")
  p.add_argument("--arch", default=None, help="override meta.json's arch")
  p.add_argument("--position", default=None, help="feature pixel 'i,j' for the ERF")
  args = p.parse_args(argv)
  input_pipeline.hide_gpus_from_tf()
  try:
    position = tuple(int(v) for v in args.position.split(",")) if args.position else None
    models = {"Baseline": model_from_workdir(args.baseline, {"arch": args.arch}),
              "ResKD": model_from_workdir(args.reskd, {"arch": args.arch})}
    if args.data_dir:
      videos = load_eval_clips(args.data_dir, trained.load(args.reskd), args.num_clips,
                               args.split, args.resolution or None)
    elif _is_array_file(args.videos):
      resolution = 112 if args.resolution is None else args.resolution
      videos = load_videos(args.videos, resolution or None, args.normalized)
    else:
      videos = load_videos(args.videos, args.resolution or None,
                           transform=trained.load(args.reskd))
    out = figure4(models, videos, args.out, position)
  except (ReskdError, FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(format_erf_summary(json.load(open(out["erf_summary"]))))
  print(f"wrote {out['erf']}, {out['attention']} and {out['erf_summary']}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
