"""Figures: the accuracy/computation trade-off (the paper's Figure 3).

``plot_tradeoff(points, out_png, teacher=None, baseline=None)`` draws accuracy
(or mAP) against GFLOPs per video for ResKD students (a line through
``points``), plain low-resolution baselines (``baseline``) and the teacher (a
star). Each point is a dict with ``gflops_per_video`` (or ``gflops``), the
metric (``top1`` or ``mAP``; fractions in [0, 1] are shown as percent) and
optionally ``resolution`` and ``label``.
"""

from __future__ import annotations

import os
from typing import Any, List, Mapping, Optional, Sequence, Union

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

Point = Mapping[str, Any]
METRIC_LABELS = {"top1": "Top-1 accuracy (%)", "top5": "Top-5 accuracy (%)",
                 "mAP": "mAP (%)", "mean_class_accuracy": "Mean class accuracy (%)"}


def save_figure(fig, out_png: str, dpi: int) -> str:
  """Lays out, writes (its folder made) and closes ``fig``; returns ``out_png``."""
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(out_png)), exist_ok=True)
  fig.savefig(out_png, dpi=dpi)
  plt.close(fig)
  return out_png

def _as_list(points: Union[None, Point, Sequence[Point]]) -> List[Point]:
  if points is None:
    return []
  if isinstance(points, Mapping):
    return [points]
  return list(points)


def _gflops(p: Point) -> float:
  for key in ("gflops_per_video", "gflops"):
    if p.get(key) is not None:
      return float(p[key])
  raise ValueError(f"point {dict(p)} has no 'gflops_per_video'")


def choose_metric(points: Sequence[Point]) -> str:
  """``mAP`` when every point has it (multi-label data sets), else ``top1``."""
  if points and all(p.get("mAP") is not None for p in points):
    return "mAP"
  return "top1"


def _values(points: Sequence[Point], metric: str, scale: float):
  xs, ys = [], []
  for p in points:
    if p.get(metric) is None:
      raise ValueError(f"point {dict(p)} has no {metric!r}")
    xs.append(_gflops(p))
    ys.append(float(p[metric]) * scale)
  order = np.argsort(xs)
  return np.asarray(xs)[order], np.asarray(ys)[order], [points[i] for i in order]


def _annotate(ax, xs, ys, pts, color):
  for x, y, p in zip(xs, ys, pts):
    text = p.get("label") or (f"{p['resolution']}px" if p.get("resolution") else None)
    if text:
      ax.annotate(str(text), (x, y), textcoords="offset points", xytext=(4, -11),
                  fontsize=8, color=color)


def plot_tradeoff(points: Sequence[Point], out_png: str, teacher: Optional[Point] = None,
                  baseline: Union[None, Point, Sequence[Point]] = None,
                  metric: Optional[str] = None, title: Optional[str] = None,
                  dpi: int = 100, figsize=(6.4, 4.8)) -> str:
  """Writes the trade-off figure to ``out_png`` and returns the path."""
  points = _as_list(points)
  baseline = _as_list(baseline)
  teachers = _as_list(teacher)
  every = points + baseline + teachers
  if not every:
    raise ValueError("plot_tradeoff: nothing to plot (no points, baseline or teacher)")
  metric = metric or choose_metric(every)
  values = [float(p[metric]) for p in every if p.get(metric) is not None]
  scale = 100.0 if values and max(values) <= 1.0 else 1.0

  fig, ax = plt.subplots(figsize=figsize, dpi=dpi)
  if baseline:
    xs, ys, pts = _values(baseline, metric, scale)
    ax.plot(xs, ys, "s--", color="tab:gray", label="Baseline (low-resolution training)")
    _annotate(ax, xs, ys, pts, "tab:gray")
  if points:
    xs, ys, pts = _values(points, metric, scale)
    ax.plot(xs, ys, "o-", color="tab:red", label="ResKD student")
    _annotate(ax, xs, ys, pts, "tab:red")
  for t in teachers:
    xs, ys, pts = _values([t], metric, scale)
    ax.plot(xs, ys, "*", color="tab:blue", markersize=14,
            label=t.get("label") and f"Teacher ({t['label']})" or "Teacher")
  ax.set_xlabel("GFLOPs per video")
  ax.set_ylabel(METRIC_LABELS.get(metric, metric))
  ax.set_title(title or f"{METRIC_LABELS.get(metric, metric).split(' (')[0]} vs. computation")
  ax.grid(True, alpha=0.3)
  ax.legend(loc="lower right")
  return save_figure(fig, out_png, dpi)
