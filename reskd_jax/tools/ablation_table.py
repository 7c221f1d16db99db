"""The paper's ablations (Tables 5 and 6) in miniature: the table, beside the paper's, and a chart.

`python -m reskd_jax.tools.demo --ablations` trains the runs of `configs/demo.py`
(`ABLATIONS`) and hands their results here. Each row pairs one demo run
(top-1 on the demo's test split) with the paper's row (mAP on ActivityNet,
ResNet-50 student at 112 px, ResNet-152 teacher at 224 px).
"""

from __future__ import annotations

import textwrap
from typing import Any, Dict, List, Mapping, Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from reskd_jax.tools import plots  # noqa: E402

# (table, row label, demo run, paper's mAP in %, what differs from the baseline)
ROWS = (
    ("Table 5", "Baseline (no KD)", "baseline", 71.8, "cross-entropy only"),
    ("Table 5", "Clip-level KD", "clip", 73.4, "KL on clip logits"),
    ("Table 5", "Frame-level KD", "frame", 76.6, "KL on per-frame logits"),
    ("Table 5", "Pixel-level feature KD (ResKD)", "reskd", 78.5, "MSE on the last feature map"),
    ("Table 5", "Pixel-level logit KD (A.1)", "pixel_logit", None,
     "KL on per-position logits, T=4, alpha 500"),
    ("Table 6", "Baseline", "baseline", 71.8, "no teacher"),
    ("Table 6", "Model distillation", "model", 73.3, "deeper teacher, low resolution"),
    ("Table 6", "Resolution distillation", "reskd", 76.2, "student's own network at 2x"),
    ("Table 6", "ResKD (both)", "both", 78.5, "deeper teacher at 2x"),
)

# Which teacher each run learns from, in the demo (for the table's last column).
TEACHERS = {"baseline": "-", "clip": "same size, 64 px", "frame": "same size, 64 px",
            "reskd": "same size, 64 px", "pixel_logit": "same size, 64 px",
            "model": "deeper, 32 px", "both": "deeper, 64 px"}


def table(results: Mapping[str, Mapping[str, Any]]) -> List[Dict[str, Any]]:
  """One dict per row: table, setting, run, demo top-1 (%), paper mAP (%), teacher."""
  rows = []
  for tab, label, run, paper, what in ROWS:
    res = results.get(run, {})
    rows.append({
        "table": tab, "setting": label, "run": run, "what": what,
        "teacher": TEACHERS[run],
        "demo_top1": round(100 * res["top1"], 2) if "top1" in res else None,
        "paper_map": paper,
    })
  return rows


def format_table(rows: Sequence[Mapping[str, Any]],
                 teachers: Optional[Mapping[str, Mapping[str, Any]]] = None) -> str:
  """The rows as text, the teachers' own accuracy below."""
  lines = [f"{'':8} {'setting':<31} {'teacher':<17} {'demo top-1':>10} {'paper mAP':>9}"]
  for r in rows:
    demo = f"{r['demo_top1']:.1f}%" if r["demo_top1"] is not None else "-"
    paper = f"{r['paper_map']:.1f}%" if r["paper_map"] is not None else "-"
    lines.append(f"{r['table']:8} {r['setting']:<31} {r['teacher']:<17} {demo:>10} {paper:>9}")
  for name, res in (teachers or {}).items():
    lines.append(f"teacher {name}: {res['resolution']} px, top-1 {100 * res['top1']:.1f}%")
  return "\n".join(lines)


def plot(rows: Sequence[Mapping[str, Any]], out_png: str, dpi: int = 100) -> str:
  """Two bar groups (Table 5, Table 6): the demo's top-1 beside the paper's mAP."""
  groups = [[r for r in rows if r["table"] == t] for t in ("Table 5", "Table 6")]
  fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), dpi=dpi)
  for ax, group, title in zip(axes, groups, ("Table 5: where to distil",
                                             "Table 6: model vs resolution")):
    x = range(len(group))
    demo = [r["demo_top1"] or 0.0 for r in group]
    paper = [r["paper_map"] or 0.0 for r in group]
    ax.bar([i - 0.2 for i in x], demo, 0.4, label="demo top-1 (%)", color="tab:blue")
    ax.bar([i + 0.2 for i in x], paper, 0.4, label="paper mAP (%)", color="tab:gray")
    for i, (d, p) in enumerate(zip(demo, paper)):
      if d:
        ax.text(i - 0.2, d + 0.5, f"{d:.1f}", ha="center", fontsize=7)
      if p:
        ax.text(i + 0.2, p + 0.5, f"{p:.1f}", ha="center", fontsize=7)
    ax.set_xticks(list(x))
    ax.set_xticklabels([textwrap.fill(r["setting"], 14) for r in group], fontsize=7)
    low = min([v for v in demo + paper if v] or [0.0])
    ax.set_ylim(max(0.0, low - 15.0), 112.0)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="upper left", ncol=2)
  return plots.save_figure(fig, out_png, dpi)
