"""`python -m reskd_jax.tools.predict`: a trained model's top-5 classes for video files.

  python -m reskd_jax.tools.predict --workdir=runs/minik_r50_112 video.mp4 frames_dir/ ...
  python -m reskd_jax.tools.predict --workdir=RUN --json a.mp4 b.webm > predictions.json

RUN is a training workdir or a variables directory (`python -m
reskd_jax.tools.convert_weights` output). Each VIDEO is a file in any format PyAV/FFmpeg
reads (mp4, webm, avi, mkv, ...) or a folder of frames (`img_00001.jpg`, ...).
Frames are decoded by the converter's reader (`reskd_jax.data.video_io`), resized
to the run's short side as the converter does, and sampled and cropped by the
evaluator's test transform (recorded in the run's meta.json; flags override
it); the views' softmax scores are averaged, as in evaluation.

A video that cannot be read is reported with its reason (stderr, and under
"errors" with --json) and the others are still predicted. Exit status: 0 when
at least one video was predicted, 2 when none was (or the model cannot be
loaded). Timings split decoding (host) from the model (the accelerator when
there is one); the one-off compilation is reported apart.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

import jax
import numpy as np

from reskd_jax import platforms
from reskd_jax.data import clips, video_io
from reskd_jax.errors import EXIT_BAD_INPUT, ReskdError
from reskd_jax.tools import inference


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m reskd_jax.tools.predict",
                              description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter,
                              epilog=__doc__.split("\n\n", 1)[1])
  p.add_argument("videos", nargs="+", metavar="VIDEO", help="video files or frame folders")
  p.add_argument("--workdir", required=True, help="training workdir or variables directory")
  p.add_argument("--json", action="store_true", help="print machine-readable JSON on stdout")
  p.add_argument("--top-k", type=int, default=5, help="classes shown per video (default 5)")
  p.add_argument("--classes", default=None,
                 help="class names when meta.json has none: a text file (one a line, or "
                      "'0 abseiling' lines), a JSON list, or a converted data set directory "
                      "(manifest.json)")
  g = p.add_argument_group("test transform (default: the run's, from meta.json)")
  g.add_argument("--num-frames", type=int, default=None,
                 help="frames per clip T (TSN segments, or a dense model's clip_len)")
  g.add_argument("--short-side", type=int, default=None, help="resize the short side to this")
  g.add_argument("--crop-size", type=int, default=None, help="square crop side")
  g.add_argument("--num-clips", type=int, default=None, help="test clips per video")
  g.add_argument("--num-crops", type=int, default=None, choices=(1, 3),
                 help="1: centre crop, 3: three crops")
  r = p.add_argument_group("decoding").add_mutually_exclusive_group()
  r.add_argument("--fps", type=float, default=None,
                 help="keep frames at about this rate (as the converter's --fps; long videos)")
  r.add_argument("--frame-stride", type=int, default=1, help="keep every N-th frame")
  p.add_argument("--filename-tmpl", default="img_{:05d}.jpg", help="frame names in folders")
  p.add_argument("--allow-partial", action="store_true",
                 help="predict from the frames an incomplete video has (a frame folder with "
                      "gaps, a video cut short) instead of reporting it as an error")
  return p


def predict_videos(model: inference.TrainedModel, paths: Sequence[str], top_k: int = 5,
                   frame_options: video_io.FrameOptions = video_io.FrameOptions()
                   ) -> Dict[str, Any]:
  """Top-k predictions of each video; unreadable ones are listed under "errors".

  Returns {"results": [{"video", "top": [{"class", "index", "probability"}],
  "num_frames", "decode_s", "model_s"}], "errors": [{"video", "error"}],
  "timing": {"decode_s", "model_s", "compile_s"}} (compile_s: compilation and
  warm-up, kept out of the per-video times).
  """
  data = model.data
  views_shape = (1, clips.num_views(data), clips.frames_per_clip(data),
                 data.crop_size, data.crop_size, 3)
  t0 = time.perf_counter()
  compiled = jax.jit(model.probabilities_fn()).lower(
      model.variables, jax.ShapeDtypeStruct(views_shape, np.uint8)).compile()
  variables = jax.device_put(model.variables)
  # One-off start-up costs (compilation, first TF and device calls) are kept
  # out of the per-video times.
  model.views(np.zeros((1, data.crop_size, data.crop_size, 3), np.uint8))
  jax.block_until_ready(compiled(variables, np.zeros(views_shape, np.uint8)))
  compile_s = time.perf_counter() - t0
  results: List[Dict[str, Any]] = []
  errors: List[Dict[str, str]] = []
  decode_total = model_total = 0.0
  for path in paths:
    t0 = time.perf_counter()
    try:
      frames = video_io.read_video(path, data.short_side, frame_options)
      views = model.views(frames)
    except video_io.PartialVideo as e:
      errors.append({"video": path, "error": f"{e} (--allow-partial predicts from its frames)"})
      continue
    except video_io.VideoReadError as e:
      errors.append({"video": path, "error": str(e)})
      continue
    except (OSError, ValueError) as e:  # e.g. a frame folder we may not list
      errors.append({"video": path, "error": f"cannot read {path}: {e}"})
      continue
    t1 = time.perf_counter()
    probs = np.asarray(jax.block_until_ready(compiled(variables, views[None])))[0]
    t2 = time.perf_counter()
    order = np.argsort(-probs, kind="stable")[:top_k]
    results.append({
        "video": path,
        "top": [{"class": model.class_name(int(k)), "index": int(k),
                 "probability": float(probs[k])} for k in order],
        "num_frames": int(frames.shape[0]),
        "decode_s": t1 - t0,
        "model_s": t2 - t1,
    })
    decode_total += t1 - t0
    model_total += t2 - t1
  return {"results": results, "errors": errors,
          "timing": {"decode_s": decode_total, "model_s": model_total,
                     "compile_s": compile_s}}


def _print_text(out: Dict[str, Any], device: str) -> None:
  for r in out["results"]:
    print(f"{r['video']}  ({r['num_frames']} frames; decode {r['decode_s']:.3f} s, "
          f"model {r['model_s']:.3f} s)")
    width = max(len(t["class"]) for t in r["top"])
    for rank, t in enumerate(r["top"], start=1):
      print(f"  {rank}. {t['class']:<{width}}  {t['probability']:.4f}")
  timing = out["timing"]
  print(f"predicted {len(out['results'])} of {len(out['results']) + len(out['errors'])} "
        f"videos on {device}: decode {timing['decode_s']:.3f} s, model "
        f"{timing['model_s']:.3f} s (compilation {timing['compile_s']:.2f} s apart)")


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = _parser().parse_args(argv)
  platforms.hide_gpus_from_tf()
  transform = {"short_side": args.short_side, "crop_size": args.crop_size,
               "test_num_clips": args.num_clips, "test_num_crops": args.num_crops}
  try:
    model = inference.load(args.workdir, classes=args.classes, transform=transform)
    if args.num_frames is not None:  # T is clip_len for a model of dense sampling
      model.data[clips.frames_key(model.data)] = args.num_frames
    options = video_io.FrameOptions(frame_stride=args.frame_stride, fps=args.fps,
                                    filename_tmpl=args.filename_tmpl,
                                    allow_partial=args.allow_partial)
    out = predict_videos(model, args.videos, args.top_k, options)
  except (ReskdError, FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return EXIT_BAD_INPUT
  device = f"{jax.devices()[0].platform} ({jax.devices()[0].device_kind})"
  for err in out["errors"]:
    print(f"error: {err['error']}", file=sys.stderr)
  if not model.class_names and out["results"]:
    print(f"note: {args.workdir} records no class names (converted weights?), so classes are "
          f"shown as class_<index>; pass --classes=FILE (one name a line, a JSON list, or the "
          f"converted data set directory) to name them", file=sys.stderr)
  if args.json:
    payload = {"workdir": args.workdir, "device": device,
               "transform": {k: (list(v) if isinstance(v, tuple) else v)
                             for k, v in model.data.items()}, **out}
    json.dump(payload, sys.stdout, indent=2)
    print()
  else:
    _print_text(out, device)
  return 0 if out["results"] else EXIT_BAD_INPUT


if __name__ == "__main__":
  sys.exit(main())
