"""`make demo`: the whole method on a fresh machine in minutes.

Prepares the synthetic demo data set (real video files -> TFRecords, by
`data_prep`), trains the teacher at 64 px, a baseline student and a ResKD
student at 32 px, evaluates all three and prints a table of accuracy,
GFLOPs per video and videos per second, also written to
`<workdir>/demo_results.json`. Runs that already finished are reused, an
interrupted run resumes.

  python -m reskd_jax.demo --workdir=runs/demo
"""

import argparse
import json
import os
import sys
import time


def _measure_all(runs, batch_size: int, rounds: int = 3):
  """Inference videos/s of each trained model, measured side by side.

  The rounds interleave the models so that load on a shared machine hits all
  of them alike; each figure is the median over rounds of a median of 5 runs.
  """
  import statistics
  from reskd_jax import checkpoints, profiling, train
  speeds = {name: [] for name in runs}
  for _ in range(rounds):
    for name, (cfg, workdir, num_classes) in runs.items():
      model = train.build_from_config(cfg.model, num_classes).clone(input_size=None)
      speed = profiling.measure_throughput(model, checkpoints.load_variables(workdir),
                                           batch_size=batch_size,
                                           num_frames=cfg.data.num_frames,
                                           resolution=train.student_resolution(cfg),
                                           timed_runs=5)
      speeds[name].append(speed["videos_per_s"])
  return {name: statistics.median(v) for name, v in speeds.items()}


def _figures(trained, results, out_dir, num_clips: int = 4):
  """The paper's Figure 3 (accuracy vs GFLOPs) and Figure 4 (ERF, attention) for the demo."""
  from reskd_jax import augment, checkpoints, input_pipeline, plots, train, visualize
  cfg = trained["reskd"][0]
  batch = next(input_pipeline.create_dataset(
      cfg.data, cfg.data.eval_split, train=False, batch_size=num_clips,
      num_classes=trained["reskd"][2]).as_numpy_iterator())
  videos = augment.normalize(batch["video"][:, 0], cfg.data.mean, cfg.data.std)
  models = {}
  for run, name in (("baseline", "Baseline"), ("reskd", "ResKD")):
    run_cfg, workdir, num_classes = trained[run]
    models[name] = (train.build_from_config(run_cfg.model, num_classes),
                    checkpoints.load_variables(workdir))
  paths = visualize.figure4(models, videos, out_dir)
  points = {run: dict(r, label=f"{run} ({r['resolution']} px)") for run, r in results.items()}
  paths["trade_off"] = plots.plot_tradeoff(
      [points["reskd"]], os.path.join(out_dir, "trade_off.png"), teacher=points["teacher"],
      baseline=points["baseline"], title="Demo: accuracy vs cost")
  return paths


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", default="runs/demo")
  parser.add_argument("--num-train", type=int, default=600)
  parser.add_argument("--num-test", type=int, default=400)
  parser.add_argument("--throughput-batch", type=int, default=32)
  args = parser.parse_args(argv)

  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  from configs import demo as demo_config
  from data_prep.demo_data import prepare_demo
  from reskd_jax import train

  start = time.time()
  workdir = os.path.abspath(args.workdir)
  records = prepare_demo(os.path.join(workdir, "data"), num_train=args.num_train,
                         num_test=args.num_test)
  results, trained = {}, {}
  for run in demo_config.RUNS:
    cfg = demo_config.get_config(run)
    cfg.data.data_dir = records
    cfg.teacher.checkpoint = os.path.join(workdir, "teacher")
    run_dir = os.path.join(workdir, run)
    results_path = os.path.join(run_dir, train.RESULTS_FILE)
    print(f"\n=== {run}: {cfg.model.name} at {train.student_resolution(cfg)} px "
          f"({cfg.mode}) ===", flush=True)
    if os.path.isfile(results_path):
      with open(results_path) as f:
        res = json.load(f)
      print(f"reusing {results_path}")
    else:
      t0 = time.time()
      res = train.train_and_evaluate(cfg, run_dir)
      if res.get("preempted"):
        print("demo interrupted; rerun `make demo` to resume", file=sys.stderr)
        return 1
      print(f"{run} trained in {time.time() - t0:.0f} s", flush=True)
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
  lines.append(f"ResKD student vs baseline at the same cost: {gain:+.1f} points top-1; "
               f"{results['teacher']['gflops_per_video'] / results['reskd']['gflops_per_video']:.1f}x "
               f"fewer GFLOPs than the teacher")
  table = "\n".join(lines)
  print("\n" + table)
  figures = _figures(trained, results, os.path.join(workdir, "figures"))
  print("figures: " + ", ".join(sorted(figures.values())))
  out = os.path.join(workdir, "demo_results.json")
  with open(out + ".tmp", "w") as f:
    json.dump(results, f, indent=2)
  os.replace(out + ".tmp", out)
  print(f"\nwritten {out} in {time.time() - start:.0f} s total")
  return 0


if __name__ == "__main__":
  sys.exit(main())
