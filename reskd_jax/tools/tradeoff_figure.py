"""Trade-off figure from finished runs (the paper's Figure 3).

    python -m reskd_jax.tools.tradeoff_figure --workdirs=runs/r50_56,runs/r50_80,runs/r50_112 \\
        --out=trade_off.png [--teacher=runs/r152_224] [--baseline=runs/b56,runs/b112]

Reads each workdir's ``results.json`` (written by the trainer: ``top1``,
``top5``, ``mean_class_accuracy``, optionally ``mAP``, ``gflops_per_video``,
``resolution``, ``num_frames``, ``mode``: the run's ``config.mode``). Runs given in ``--workdirs`` whose
``mode`` is ``baseline`` join the baseline curve, ``teacher`` runs the teacher
star. Also writes a ``.json`` summary beside the figure.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Dict, List

from reskd_jax import workdir as workdir_lib
from reskd_jax.fileio import write_json_atomic
from reskd_jax.tools import plots

def read_results(workdir: str) -> Dict[str, Any]:
  path = os.path.join(workdir, workdir_lib.RESULTS)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{workdir!r} has no {workdir_lib.RESULTS} (has the run finished its "
                            f"final evaluation?)")
  with open(path) as f:
    try:
      res = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}: not valid JSON ({e})") from e
  if res.get("gflops_per_video") is None:
    raise ValueError(f"{path} has no 'gflops_per_video'")
  res = dict(res)
  res.setdefault("workdir", workdir)
  return res


def _split(arg: str) -> List[str]:
  return [s for s in (arg or "").split(",") if s.strip()]


def collect(workdirs, teacher=None, baseline=()):
  """(points, teacher point or None, baseline points) from workdirs."""
  points, base, teach = [], [read_results(w) for w in baseline], None
  for w in workdirs:
    r = read_results(w)
    mode = r.get("mode", "reskd")
    (base if mode == "baseline" else points if mode != "teacher" else []).append(r)
    if mode == "teacher" and teacher is None:
      teach = r
  if teacher:
    teach = read_results(teacher)
  return points, teach, base


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m reskd_jax.tools.tradeoff_figure", description=__doc__.split("\n")[0])
  p.add_argument("--workdirs", required=True, help="comma-separated run directories")
  p.add_argument("--out", default="trade_off.png")
  p.add_argument("--teacher", default=None, help="the teacher's run directory")
  p.add_argument("--baseline", default="", help="comma-separated baseline run directories")
  p.add_argument("--metric", default=None, choices=sorted(plots.METRIC_LABELS),
                 help="default: mAP if every run has it, else top1")
  p.add_argument("--title", default=None)
  args = p.parse_args(argv)
  try:
    points, teacher, baseline = collect(_split(args.workdirs), args.teacher,
                                        _split(args.baseline))
    plots.plot_tradeoff(points, args.out, teacher=teacher, baseline=baseline,
                        metric=args.metric, title=args.title)
  except (FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  summary = os.path.splitext(args.out)[0] + ".json"
  write_json_atomic(summary, {"reskd": points, "baseline": baseline, "teacher": teacher},
                    sort_keys=False)
  metric = args.metric or plots.choose_metric(points + baseline + ([teacher] if teacher else []))
  for name, group in (("reskd", points), ("baseline", baseline), ("teacher", [teacher] if teacher else [])):
    for r in sorted(group, key=lambda r: r["gflops_per_video"]):
      value = r.get(metric)
      shown = f"{value:.4g}" if isinstance(value, (int, float)) else value
      print(f"{name:>8} {r.get('resolution', '?'):>5}px {r['gflops_per_video']:8.3g} GFLOPs "
            f"{metric}={shown}  ({r['workdir']})")
  print(f"wrote {args.out} and {summary}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
