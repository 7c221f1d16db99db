"""The paper's Figure 4 drawn: effective receptive field and activation attention.

The numbers are `erf`'s; the clips come from `figure_clips`. This module draws
them and is the command line.

:func:`plot_erf` and :func:`plot_attention` draw a baseline student beside a ResKD
student; :func:`figure4` writes both figures and the ERF radii.

CLI (``--videos``: ``.npy``/``.npz`` arrays, video files or frame folders,
comma-separated; or ``--data-dir`` for clips of a converted data set's eval
split)::

    python -m reskd_jax.tools.visualize --baseline=runs/minik_r50_112_baseline \\
        --reskd=runs/minik_r50_112 --videos=a.mp4,b.mp4 --out=figures/
    python -m reskd_jax.tools.visualize --baseline=... --reskd=... --data-dir=data/minik \\
        --num-clips=8 --out=figures/
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Dict, Mapping, Optional, Tuple

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from reskd_jax import augment, platforms  # noqa: E402
from reskd_jax.errors import ReskdError  # noqa: E402
from reskd_jax.fileio import write_json_atomic  # noqa: E402
from reskd_jax.tools import erf, figure_clips, inference, plots  # noqa: E402

def to_display(frames, mean=augment.IMAGENET_MEAN, std=augment.IMAGENET_STD) -> np.ndarray:
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
  return plots.save_figure(fig, out_png, dpi)


def plot_attention(videos, attentions: Mapping[str, np.ndarray], out_png: str,
                   frame_index: Optional[int] = None, alpha: float = 0.5, dpi: int = 100,
                   panel_size: float = 2.0, mean=augment.IMAGENET_MEAN, std=augment.IMAGENET_STD) -> str:
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
  return plots.save_figure(fig, out_png, dpi)


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
    erfs[name], positions[name] = erf.effective_receptive_field(model, variables, videos, position)
    atts[name] = erf.activation_attention(model, variables, shown)
  summary = erf.erf_summary(models, videos)
  os.makedirs(out_dir, exist_ok=True)
  labels = {name: f"{tuple(positions[name])}, ERF radius {summary[name]['radius_mean']:.1f} px"
            for name in models}
  return {
      "erf": plot_erf(erfs, os.path.join(out_dir, "erf.png"), labels),
      "attention": plot_attention(shown, atts, os.path.join(out_dir, "attention.png")),
      "erf_summary": write_json_atomic(os.path.join(out_dir, "erf.json"), summary),
  }


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m reskd_jax.tools.visualize",
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
  platforms.hide_gpus_from_tf()
  try:
    position = tuple(int(v) for v in args.position.split(",")) if args.position else None
    models = {"Baseline": figure_clips.model_from_workdir(args.baseline, {"arch": args.arch}),
              "ResKD": figure_clips.model_from_workdir(args.reskd, {"arch": args.arch})}
    if args.data_dir:
      videos = figure_clips.load_eval_clips(args.data_dir, inference.load(args.reskd), args.num_clips,
                               args.split, args.resolution or None)
    elif figure_clips.is_array_file(args.videos):
      resolution = 112 if args.resolution is None else args.resolution
      videos = figure_clips.load_videos(args.videos, resolution or None, args.normalized)
    else:
      videos = figure_clips.load_videos(args.videos, args.resolution or None,
                           transform=inference.load(args.reskd))
    out = figure4(models, videos, args.out, position)
  except (ReskdError, FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(erf.format_erf_summary(json.load(open(out["erf_summary"]))))
  print(f"wrote {out['erf']}, {out['attention']} and {out['erf_summary']}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
