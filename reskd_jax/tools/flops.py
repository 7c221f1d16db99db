"""`python -m reskd_jax.tools.flops`: GFLOPs per video per resolution, beside the paper's.

The count itself (the papers' convention, and XLA's) is `reskd_jax.gflops`.
"""
from __future__ import annotations

from typing import Dict, Iterable, List

import jax

from reskd_jax import gflops, models


def gflops_table(model, variables, num_frames: int, resolutions: Iterable[int],
                 with_xla: bool = True) -> List[Dict[str, float]]:
  """:func:`reskd_jax.gflops.video_gflops` for each resolution; raises a clear error for a
  resolution the model cannot take."""
  rows = []
  stride = models.min_resolution(model)
  for r in resolutions:
    r = int(r)
    if r < stride:
      raise ValueError(f"resolution {r} is smaller than the model's total stride {stride}")
    rows.append(gflops.video_gflops(model, variables, num_frames, r, with_xla=with_xla))
  return rows


def format_table(rows, reference=None, views: int = 1) -> str:
  """A plain-text table; ``reference`` maps resolution -> paper GFLOPs per video.

  With ``views > 1`` (multi-view testing: clips x crops) the GFLOPs per video
  are ``views`` times those of one view, and both are shown. For models with
  attention, ``+attention`` adds the attention matrix products per video.
  """
  attention = any(row.get("attention_gflops") for row in rows)
  head = f"{'resolution':>10}"
  if views > 1:
    head += f" {'GFLOPs/view':>12}"
  head += f" {'GFLOPs/video':>13}"
  if attention:
    head += f" {'+attention':>11}"
  head += f" {'XLA GFLOPs':>11}"
  if reference:
    head += f" {'paper':>7} {'diff':>7}"
  lines = [head]
  for row in rows:
    xla = row.get("xla_gflops")
    xla = f"{xla * views:>11.2f}" if xla is not None else f"{'-':>11}"
    per_video = row["gflops"] * views
    line = f"{row['resolution']:>10}"
    if views > 1:
      line += f" {row['gflops']:>12.2f}"
    line += f" {per_video:>13.2f}"
    if attention:
      line += f" {(row['gflops'] + row['attention_gflops']) * views:>11.2f}"
    line += f" {xla}"
    if reference and row["resolution"] in reference:
      ref = reference[row["resolution"]]
      line += f" {ref:>7.1f} {100 * (per_video - ref) / ref:>+6.1f}%"
    lines.append(line)
  return "\n".join(lines)


# The paper's GFLOPs columns: Table 4 (ResNet-50 TSN, 16 frames) and
# Table 2 (TSM ResNet-50, 8 frames).
PAPER_TABLE4 = {224: 65.9, 144: 28.3, 112: 17.4, 96: 12.1, 72: 8.3, 56: 4.8}
PAPER_TABLE2 = {224: 32.7, 112: 8.7}
# Table 3 (other architectures): GFLOPs per video over the test views (clips x crops).
PAPER_TABLE3 = {
    "slowonly_r50": {"frames": 8, "views": 30, "gflops": {224: 1260.0, 112: 332.0}},
    # Table 3 labels both Swin rows Swin_S (224 and 112); they match Swin-S's conv +
    # linear multiply-adds (136.6 and 35.1 per 32x2x1 view x 4 clips x 3 crops), without
    # the attention matrix products. The paper gives no figure for the Swin-B teacher.
    "swin_s": {"frames": 32, "views": 12, "gflops": {224: 1639.0, 112: 421.0}},
    "swin_b": {"frames": 32, "views": 12, "gflops": {}},
    "swin_t": {"frames": 32, "views": 12, "gflops": {}},
}
# Resolutions shown for a Table 3 architecture without paper figures.
TABLE3_RESOLUTIONS = (224, 112)


def main(argv=None) -> int:
  """``python -m reskd_jax.tools.flops``: the GFLOPs tables, beside the paper's figures."""
  import argparse
  import sys

  parser = argparse.ArgumentParser(description=main.__doc__)
  parser.add_argument("--arch", default="resnet50", help=f"one of {', '.join(models.names())}")
  parser.add_argument("--tsm", action="store_true")
  parser.add_argument("--frames", type=int, default=None,
                      help="default: 16 (TSN) / 8 (TSM) / Table 3's for its architectures")
  parser.add_argument("--views", type=int, default=None,
                      help="test views per video (clips x crops); default: Table 3's (30 "
                           "for SlowOnly), else 1")
  parser.add_argument("--resolutions", default=None,
                      help="comma-separated; default: the paper's table for the model")
  parser.add_argument("--num-classes", type=int, default=None,
                      help="default: 400 for Table 3's architectures, else 200")
  parser.add_argument("--xla", action="store_true", help="also compile for XLA's count")
  args = parser.parse_args(argv)
  table3 = PAPER_TABLE3.get(args.arch)
  if table3 is not None:
    reference, frames, views = table3["gflops"], table3["frames"], table3["views"]
  else:
    reference = PAPER_TABLE2 if args.tsm else PAPER_TABLE4
    frames, views = (8 if args.tsm else 16), 1
  show_reference = ((args.frames in (None, frames)) and (args.views in (None, views))
                    and (table3 is not None or args.arch == "resnet50"))
  frames = args.frames or frames
  views = args.views or views
  num_classes = args.num_classes or (400 if table3 is not None else 200)
  try:
    models.check_name(args.arch, "--arch")
    resolutions = ([int(r) for r in args.resolutions.split(",")] if args.resolutions
                   else sorted(reference or TABLE3_RESOLUTIONS, reverse=True))
    options = {"tsm": True, "num_segments": frames} if args.tsm else {}
    model = models.build_model(args.arch, num_classes, **options)
    variables = jax.eval_shape(lambda: models.init_variables(model, jax.random.key(0), frames,
                                                             max(resolutions)))
    rows = gflops_table(model, variables, frames, resolutions, with_xla=args.xla)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  if table3 is not None:
    title = f"{args.arch}, {frames} frames x {views} views (Table 3)"
  else:
    title = f"{'TSM ' if args.tsm else 'TSN '}{args.arch}, {frames} frames"
  print(f"{title}, GFLOPs per video (multiply-adds of conv and linear layers)")
  print(format_table(rows, reference if show_reference else None, views=views))
  if any(row.get("attention_gflops") for row in rows):
    print("GFLOPs/video counts conv and linear layers only (the paper's convention, as "
          "mmcv's counter);\n+attention adds the attention matrix products q @ k^T and "
          "attn @ v (as the Video Swin release's own count).")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
