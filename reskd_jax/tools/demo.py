"""`make demo`: the whole method on a fresh machine in minutes.

Prepares the synthetic demo data set (real video files -> TFRecords, by
`python -m data_prep demo`, run as a command), trains the teacher at 64 px,
a baseline student and a ResKD student at 32 px, evaluates all three and
prints a table of accuracy, GFLOPs per video and videos per second, also
written to `<workdir>/demo_results.json` with the students' effective
receptive field radius. Runs that already finished are reused, an
interrupted run resumes.

  python -m reskd_jax.tools.demo --workdir=runs/demo
  python -m reskd_jax.tools.demo --workdir=runs/demo --ablations

The runs are those of the config file `--config` (default `configs/demo.py` of the
repository checkout this runs from): its `get_config(run)`, `RUNS`, `ABLATIONS`,
`TEACHER_RUNS` and `NUM_CLASSES`. It is loaded by path as `main.py --config` loads
config files; the package itself never imports `configs`.

`--ablations` then trains the paper's ablations in miniature (Tables 5 and
6, `configs/demo.py`), reusing the demo's data, teacher and students, and
writes `<workdir>/ablations.json` and `<workdir>/ablations.png`.
"""

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import time

from reskd_jax import augment, checkpoints, train, workdir as workdir_lib
from reskd_jax.data import clips, pipeline
from reskd_jax.fileio import read_json, write_json_atomic
from reskd_jax.models import build_from_config
from reskd_jax.tools import ablation_table, erf, plots, profiling, visualize


DEFAULT_CONFIG = "configs/demo.py"


def load_config_file(path: str):
  """The config file `path` as a module, with its repository root (the folder above
  `configs/`) on the import path for the file's own `from configs import ...`."""
  path = os.path.abspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"demo config file {path!r} not found: run from the repository "
                            f"root or pass --config=PATH/configs/demo.py")
  root = os.path.dirname(os.path.dirname(path))
  if root not in sys.path:
    sys.path.insert(0, root)
  spec = importlib.util.spec_from_file_location("reskd_demo_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def prepare_data(workdir: str, num_train: int, num_test: int) -> str:
  """`python -m data_prep demo` in a child process; returns the records directory."""
  out = os.path.join(workdir, "data")
  cmd = [sys.executable, "-m", "data_prep", "demo", f"--out={out}",
         f"--num-train={num_train}", f"--num-test={num_test}"]
  if subprocess.run(cmd, check=False).returncode != 0:
    raise RuntimeError(f"demo data preparation failed: {' '.join(cmd)}")
  return os.path.join(out, "records")


def _train_or_reuse(demo_config, run: str, workdir: str, records: str):
  """(config, run directory, results) of `configs/demo.py:<run>`, trained unless finished."""
  cfg = demo_config.get_config(run)
  cfg.data.data_dir = records
  # Teacher checkpoints name a demo run ("runs/demo/teacher"): point them into workdir.
  cfg.teacher.checkpoint = os.path.join(workdir, os.path.basename(cfg.teacher.checkpoint))
  run_dir = os.path.join(workdir, run)
  results_path = os.path.join(run_dir, workdir_lib.RESULTS)
  print(f"\n=== {run}: {cfg.model.name} at {train.student_resolution(cfg)} px "
        f"({cfg.mode}{', ' + cfg.kd_method + ' KD' if cfg.mode == 'reskd' else ''}) ===",
        flush=True)
  res = read_json(results_path)
  if res is not None:
    print(f"reusing {results_path}")
    return cfg, run_dir, res
  t0, c0 = time.time(), time.process_time()
  res = train.train_and_evaluate(cfg, run_dir)
  if res.get("preempted"):
    return cfg, run_dir, res
  print(f"{run} trained in {time.time() - t0:.0f} s ({time.process_time() - c0:.0f} s CPU)",
        flush=True)
  return cfg, run_dir, res


def _measure_all(runs, batch_size: int, rounds: int = 3):
  """Inference videos/s of each trained model, measured side by side.

  The rounds interleave the models so that load on a shared machine hits all
  of them alike; each figure is the median over rounds of a median of 5 runs.
  """
  speeds = {name: [] for name in runs}
  for _ in range(rounds):
    for name, (cfg, workdir, num_classes) in runs.items():
      model = build_from_config(cfg.model, num_classes).clone(input_size=None)
      speed = profiling.measure_throughput(model, checkpoints.load_variables(workdir),
                                           batch_size=batch_size,
                                           num_frames=clips.frames_per_clip(cfg.data),
                                           resolution=train.student_resolution(cfg),
                                           timed_runs=5)
      speeds[name].append(speed["videos_per_s"])
  return {name: statistics.median(v) for name, v in speeds.items()}


def _figures(trained, results, out_dir, num_clips: int = 64):
  """The paper's Figure 3 (accuracy vs GFLOPs) and Figure 4 (ERF, attention) for the demo.

  The ERF radius (`erf.erf_summary`) is averaged over `num_clips` test clips; the
  attention figure shows the first four. Returns the figure paths and the ERF summary.
  """
  cfg = trained["reskd"][0]
  batch = next(pipeline.create_dataset(
      cfg.data, cfg.data.eval_split, train=False, batch_size=num_clips,
      num_classes=trained["reskd"][2]).as_numpy_iterator())
  videos = augment.normalize(batch["video"][:, 0], cfg.data.mean, cfg.data.std)
  models = {}
  for run, name in (("baseline", "Baseline"), ("reskd", "ResKD")):
    run_cfg, workdir, num_classes = trained[run]
    models[name] = (build_from_config(run_cfg.model, num_classes),
                    checkpoints.load_variables(workdir))
  paths = visualize.figure4(models, videos, out_dir)
  points = {run: dict(r, label=f"{run} ({r['resolution']} px)") for run, r in results.items()}
  paths["trade_off"] = plots.plot_tradeoff(
      [points["reskd"]], os.path.join(out_dir, "trade_off.png"), teacher=points["teacher"],
      baseline=points["baseline"], title="Demo: accuracy vs cost")
  return paths, read_json(paths["erf_summary"])


def run_ablations(demo_config, workdir: str, records: str, results) -> int:
  """Tables 5 and 6 in miniature; writes ablations.json and ablations.png."""
  start, cpu0 = time.time(), time.process_time()
  runs = {name: {"top1": r["top1"], "resolution": r["resolution"]}
          for name, r in results.items()}
  for run in demo_config.ABLATIONS:
    _, _, res = _train_or_reuse(demo_config, run, workdir, records)
    if res.get("preempted"):
      print("ablations interrupted; rerun the same command to resume", file=sys.stderr)
      return 1
    runs[run] = {"top1": res["top1"], "resolution": res["resolution"]}
  rows = ablation_table.table(runs)
  teachers = {name: runs[name] for name in demo_config.TEACHER_RUNS}
  text = ablation_table.format_table(rows, teachers)
  print("\nAblations in miniature (demo top-1 on 400 test clips; paper: ActivityNet mAP)\n"
        + text)
  payload = {"rows": rows, "teachers": teachers,
             "seconds": time.time() - start, "cpu_seconds": time.process_time() - cpu0}
  out = write_json_atomic(os.path.join(workdir, "ablations.json"), payload)
  png = ablation_table.plot(rows, os.path.join(workdir, "ablations.png"))
  print(f"\nwritten {out} and {png} ({payload['seconds']:.0f} s, "
        f"{payload['cpu_seconds']:.0f} s CPU in this process)")
  return 0


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", default="runs/demo")
  parser.add_argument("--config", default=DEFAULT_CONFIG,
                      help="the demo's config file (default: %(default)s)")
  parser.add_argument("--num-train", type=int, default=600)
  parser.add_argument("--num-test", type=int, default=400)
  parser.add_argument("--throughput-batch", type=int, default=32)
  parser.add_argument("--ablations", action="store_true",
                      help="also train the ablations of Tables 5 and 6 (after the demo)")
  args = parser.parse_args(argv)

  try:
    demo_config = load_config_file(args.config)
  except FileNotFoundError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  start = time.time()
  workdir = os.path.abspath(args.workdir)
  records = prepare_data(workdir, args.num_train, args.num_test)
  results, trained = {}, {}
  for run in demo_config.RUNS:
    cfg, run_dir, res = _train_or_reuse(demo_config, run, workdir, records)
    if res.get("preempted"):
      print("demo interrupted; rerun `make demo` to resume", file=sys.stderr)
      return 1
    results[run] = {
        "top1": res["top1"],
        "top5": res["top5"],
        "gflops_per_video": res["gflops_per_video"],
        "resolution": res["resolution"],
    }
    trained[run] = (cfg, run_dir, demo_config.NUM_CLASSES)

  print("\nmeasuring inference throughput (side by side)...", flush=True)
  for run, speed in _measure_all(trained, args.throughput_batch).items():
    results[run]["videos_per_sec"] = speed

  lines = [f"{'model':<10} {'res':>4} {'top-1':>7} {'GFLOPs/video':>13} {'videos/s':>9}"]
  for run, r in results.items():
    lines.append(f"{run:<10} {r['resolution']:>4} {100 * r['top1']:>6.1f}% "
                 f"{r['gflops_per_video']:>13.4f} {r['videos_per_sec']:>9.1f}")
  gain = 100 * (results["reskd"]["top1"] - results["baseline"]["top1"])
  ratio = results["teacher"]["gflops_per_video"] / results["reskd"]["gflops_per_video"]
  lines.append(f"ResKD student vs baseline at the same cost: {gain:+.1f} points top-1; "
               f"{ratio:.1f}x fewer GFLOPs than the teacher")
  print("\n" + "\n".join(lines))
  figures, radii = _figures(trained, results, os.path.join(workdir, "figures"))
  print(erf.format_erf_summary(radii))
  print("figures: " + ", ".join(sorted(figures.values())))
  for run, name in (("baseline", "Baseline"), ("reskd", "ResKD")):
    results[run]["erf_radius_px"] = radii[name]["radius_mean"]
    results[run]["erf_radius_frac"] = radii[name]["radius_frac"]
  out = write_json_atomic(os.path.join(workdir, "demo_results.json"), results, sort_keys=False)
  print(f"\nwritten {out} in {time.time() - start:.0f} s total")
  if args.ablations:
    return run_ablations(demo_config, workdir, records, results)
  return 0


if __name__ == "__main__":
  sys.exit(main())
