"""main.py on a tiny converted data set (8 CPU devices): most runs in this process
(helpers.run_main), a subprocess where the process is what is tested (another device count,
SIGTERM, the one-line error of a real process)."""

import json
import os
import signal
import subprocess
import sys

import chex
import numpy as np
import pytest
import tensorflow as tf

from helpers import ROOT, main_env, one_line_error, popen, run_main, run_subprocess, tiny_args
from reskd_jax import checkpoints, errors, evaluate


@pytest.fixture(scope="module")
def setup(tiny):
  return tiny


def _tensorboard_tags(workdir):
  """{tag: kind} of the workdir's event files (kind: 'image' or 'scalar')."""
  tags = {}
  for name in os.listdir(workdir):
    if name.startswith("events.out.tfevents"):
      for event in tf.compat.v1.train.summary_iterator(os.path.join(workdir, name)):
        for value in event.summary.value:
          plugin = value.metadata.plugin_data.plugin_name
          tags[value.tag] = "image" if plugin == "images" else "scalar"
  return tags


@pytest.fixture(scope="module")
def trained_run(setup):
  """A 3-step ResKD run started with the whole command (8 devices)."""
  workdir = str(setup["root"] / "run")
  proc = run_main(tiny_args(setup, workdir, "--config.num_train_steps=3",
                            "--config.data.test_num_clips=2"))
  assert proc.returncode == 0, proc.stderr[-3000:]
  return workdir, proc


@pytest.mark.e2e
def test_workdir_alone_resumes_evaluates_and_says_it_is_finished(setup, trained_run):
  workdir, first = trained_run
  out = first.stdout
  # The start-up block, the progress (its first ETA after compilation) and the summary.
  for needle in ("[run] reskd run of resnet18, starting in", "platform    cpu, 8 devices",
                 "train 32, val 12 videos, 4 classes", "8 global, 1 per device",
                 "3 steps", f"teacher     resnet18 from {setup['teacher']}",
                 "[train] step 3/3", "ETA", "[done] step 3", "results.json", "variables"):
    assert needle in out, (needle, out[-3000:])
  results = json.load(open(os.path.join(workdir, "results.json")))
  assert results["mode"] == "reskd" and results["step"] == 3
  assert results["num_videos"] == 12 and 0.0 <= results["top1"] <= 1.0
  assert results["resolution"] == 16 and results["gflops_per_video"] > 0
  config_before = open(os.path.join(workdir, "config.json")).read()

  # Resume with --workdir alone (+ overrides, checked as usual) on another device count: a
  # new process with 4 devices.
  proc = run_subprocess([f"--workdir={workdir}", "--config.num_train_steps=5",
                         "--config.kd_weight=50.0"], devices=4)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "resumed from step 3" in proc.stdout and "[train] step 5/5" in proc.stdout
  assert "[train] step 1/" not in proc.stdout
  changed = [l for l in proc.stdout.splitlines() if l.strip().startswith("changed")]
  assert len(changed) == 1 and "kd_weight: 100.0 -> 50.0" in changed[0], proc.stdout
  devices = [l for l in proc.stdout.splitlines() if l.strip().startswith("devices")]
  assert len(devices) == 1 and "8 devices / 1 processes -> 4 / 1" in devices[0], proc.stdout
  history = json.load(open(os.path.join(workdir, "history.json")))
  assert [h["start_step"] for h in history] == [0, 3]
  assert [h["devices"] for h in history] == [8, 4]
  assert "kd_weight: 100.0 -> 50.0" in history[1]["changes"]
  assert "num_train_steps: 3 -> 5" in history[1]["changes"]
  assert "device_change" in history[1] and "device_change" not in history[0]
  assert json.load(open(os.path.join(workdir, "config.json")))["kd_weight"] == 50.0
  results = json.load(open(os.path.join(workdir, "results.json")))
  assert results["step"] == 5

  # train.log: both starts, each start-up block, the progress and the summary.
  log = open(os.path.join(workdir, "train.log")).read()
  assert log.count("=== ") >= 4 and log.count(" start on ") == 2
  assert "starting in" in log and "resumed from step 3" in log and "[done] step 5" in log
  assert "[train] step 5/5" in log and "kd_weight: 100.0 -> 50.0" in log

  # TensorBoard: rates, evaluation loss and one image of a training clip per view.
  tags = _tensorboard_tags(workdir)
  for tag in ("train/steps_per_sec", "train/videos_per_sec", "train/loss", "eval/loss",
              "eval/top1"):
    assert tags.get(tag) == "scalar", (tag, sorted(tags))
  assert tags.get("train/teacher_view") == "image", sorted(tags)
  assert tags.get("train/student_view") == "image", sorted(tags)

  # Evaluate with --workdir alone: the saved config (data set, test clips) is used.
  proc = run_main([f"--workdir={workdir}", "--mode=eval"])
  assert proc.returncode == 0, proc.stderr[-3000:]
  evaluated = json.load(open(os.path.join(workdir, "eval_results.json")))
  for key in ("top1", "top5", "mean_class_accuracy", "loss"):
    assert evaluated[key] == pytest.approx(results[key]), key

  # A rerun of the finished run says so at once, rewrites nothing, exits 0.
  config_now = open(os.path.join(workdir, "config.json")).read()
  proc = run_main([f"--workdir={workdir}"])
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "is finished" in proc.stdout and "results.json" in proc.stdout
  assert "[train] step" not in proc.stdout
  # ... and one with a smaller num_train_steps is refused in one line (exit 2), config.json
  # and results.json still agree.
  proc = run_main([f"--workdir={workdir}", "--config.num_train_steps=2"])
  assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
  assert "trained to step 5 already" in proc.stderr
  assert open(os.path.join(workdir, "config.json")).read() == config_now != config_before
  assert json.load(open(os.path.join(workdir, "results.json")))["step"] == 5


def test_checkpoint_that_does_not_fit_is_one_line(setup, trained_run):
  """A --config that builds another model: refused naming the keys; with
  allow_config_change, the first differing parameter and both shapes (eval and resume);
  config.json and the checkpoints stay as they were."""
  workdir, _ = trained_run
  config_json = open(os.path.join(workdir, "config.json")).read()
  steps = sorted(os.listdir(os.path.join(workdir, "checkpoints")))
  proc = run_main(tiny_args(setup, workdir, "--mode=eval", "--config.model.width=16"))
  line = _one_line(proc)
  assert "model.width: 8 -> 16" in line and "--mode=eval" in line
  for mode in ("eval", "train"):
    proc = run_main(tiny_args(setup, workdir, f"--mode={mode}",
                              "--config.allow_config_change=True",
                              "--config.model.stage_sizes=(2,1,1,1)",
                              "--config.num_train_steps=9"))
    line = _one_line(proc)
    assert "does not fit" in line and "layer1_1" in line, line
    assert "checkpoint missing, model (8,)" in line, line
  assert open(os.path.join(workdir, "config.json")).read() == config_json
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == steps
  assert not os.path.exists(os.path.join(workdir, "checkpoints_unusable"))


def _one_line(proc, status=errors.EXIT_BAD_INPUT):
  return one_line_error(proc, status)


def test_input_problems_are_one_line_and_bugs_keep_their_traceback(monkeypatch, capsys,
                                                                   tmp_path):
  """main.py's split: reskd_jax.errors (and a missing file) -> `error: ...`, exit 2; any
  other exception (a ValueError of the code itself) propagates: traceback, exit 1."""
  import main as main_module
  from reskd_jax import train
  monkeypatch.setattr(main_module, "_initialize_distributed", lambda: None)
  main_module.FLAGS(["main.py", f"--config={ROOT}/configs/minik_r50_112.py:tiny",
                     f"--workdir={tmp_path}", "--mode=eval"])
  # main() latches the stop signals for the rest of its process: give this one them back.
  handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM,
                                                     signal.SIGHUP)}
  try:
    def bad_input(config, workdir):
      raise errors.DataError("the data set does not fit")
    monkeypatch.setattr(train, "evaluate_workdir", bad_input)
    with pytest.raises(SystemExit) as exit_info:
      main_module.main(["main.py"])
    assert exit_info.value.code == errors.EXIT_BAD_INPUT
    assert capsys.readouterr().err.strip() == "error: the data set does not fit"

    for exc in (ValueError("invalid literal"), KeyError("oops"), TypeError("bad operand")):
      def raising(config, workdir, exc=exc):
        raise exc
      monkeypatch.setattr(train, "evaluate_workdir", raising)
      with pytest.raises(type(exc)):
        main_module.main(["main.py"])
    assert "error:" not in capsys.readouterr().err
  finally:
    main_module.FLAGS.unparse_flags()
    for sig, handler in handlers.items():
      signal.signal(sig, handler)


@pytest.mark.e2e
def test_sigterm_then_resume_equals_uninterrupted_run(setup):
  """SIGTERM to a real process: checkpoint, exit 143; the resumed run (in this process) ends
  where the uninterrupted one (in this process too) does."""
  steps = ["--config.num_train_steps=14", "--config.steps_per_epoch=4"]
  straight = str(setup["root"] / "straight")
  proc = run_main(tiny_args(setup, straight, *steps))
  assert proc.returncode == 0, proc.stderr[-3000:]

  interrupted = str(setup["root"] / "interrupted")
  child = popen(tiny_args(setup, interrupted, *steps))
  lines = []
  for line in child.stdout:
    lines.append(line)
    if "[train] step 5/14" in line:
      child.send_signal(signal.SIGTERM)
  assert child.wait(timeout=300) == errors.EXIT_PREEMPTED, "".join(lines[-40:])
  out = "".join(lines)
  assert "saving a checkpoint and stopping" in out, out[-3000:]
  assert not os.path.exists(os.path.join(interrupted, "results.json"))

  proc = run_main(tiny_args(setup, interrupted, *steps))
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "[train] step 1/14" not in proc.stdout  # it resumed
  a = json.load(open(os.path.join(straight, "results.json")))
  b = json.load(open(os.path.join(interrupted, "results.json")))
  for key in ("top1", "top5", "mean_class_accuracy", "step"):
    assert a[key] == b[key], key
  chex.assert_trees_all_close(checkpoints.load_variables(straight),
                              checkpoints.load_variables(interrupted), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("flag,needle", [
    ("--config.no_such_key=1", "no_such_key"),
    ("--config.batch_size=eight", "batch_size"),
    ("--config.optimizer.momentum=fast", "momentum"),
])
def test_bad_config_key_or_type_is_named(setup, flag, needle):
  proc = run_main(tiny_args(setup, str(setup["root"] / "bad"), flag))
  assert proc.returncode == errors.EXIT_BAD_INPUT
  assert needle in proc.stderr
  assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("flag,needle", [
    ("--config.mode=distill", "config.mode='distill'"),
    ("--config.kd_method=attention", "config.kd_method='attention'"),
    ("--config.teacher.width=16", "cannot align the student's 64-channel map"),
    ("--config.teacher.stem=imagenet", "config.teacher.stem='imagenet' but the teacher at"),
    ("--config.teacher.name=resnet50", "config.teacher.name='resnet50' but the teacher"),
    ("legacy_teacher", "does not fit config.teacher"),
])
def test_bad_method_or_unalignable_teacher_fails_at_start(setup, flag, needle):
  extra = [flag]
  if "width=16" in flag:
    extra.append(f"--config.teacher.checkpoint={setup['wide_teacher']}")
  if flag == "legacy_teacher":
    extra = [f"--config.teacher.checkpoint={setup['legacy_teacher']}"]
  proc = run_main(tiny_args(setup, str(setup["root"] / "bad2"), *extra))
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert needle in proc.stderr and "Traceback" not in proc.stderr
  assert not os.path.exists(setup["root"] / "bad2")  # a failed start-up leaves no workdir


def test_missing_dataset_says_how_to_prepare(setup):
  proc = run_main(tiny_args(setup, str(setup["root"] / "nodata"),
                            "--config.data.data_dir=/nonexistent/minik"))
  line = _one_line(proc)
  assert "/nonexistent/minik" in line and "python -m data_prep minik" in line, line


@pytest.mark.e2e
def test_a_real_process_reports_bad_input_in_one_line_on_stderr(setup):
  """The same as a program: exit status 2, one `error:` line on stderr, no traceback, no
  workdir left behind (the in-process runs above share main.py's code, not its process)."""
  workdir = setup["root"] / "nodata_process"
  proc = run_subprocess(tiny_args(setup, workdir, "--config.data.data_dir=/nonexistent/minik"),
                        timeout=120)
  line = _one_line(proc)
  assert "/nonexistent/minik" in line and "python -m data_prep minik" in line, line
  assert proc.stderr.strip() == line and not os.path.exists(workdir), proc.stderr


def test_map_equals_sklearn():
  sklearn_metrics = pytest.importorskip("sklearn.metrics")
  rs = np.random.RandomState(0)
  scores = rs.rand(60, 7)
  targets = (rs.rand(60, 7) < 0.3).astype(np.float32)
  targets[:, 3] = 0  # a class without positives is left out
  scores[:10, 1] = 0.5  # ties
  want = np.mean([sklearn_metrics.average_precision_score(targets[:, k], scores[:, k])
                  for k in range(7) if targets[:, k].any()])
  assert evaluate.mean_average_precision(scores, targets) == pytest.approx(want, rel=1e-9)


def test_topk_and_mean_class_accuracy():
  probs = np.array([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2], [0.2, 0.3, 0.5], [0.6, 0.3, 0.1]])
  labels = np.array([1, 1, 0, 0])
  assert evaluate.topk_accuracy(probs, labels, 1) == 0.5
  assert evaluate.topk_accuracy(probs, labels, 2) == 0.75
  # class 0: 1 of 2 right; class 1: 1 of 2 right.
  assert evaluate.mean_class_accuracy(probs, labels) == 0.5


def test_unknown_split_and_bad_init_file_are_one_line_errors(setup):
  proc = run_main(tiny_args(setup, str(setup["root"] / "bad3"), "--config.data.eval_split=test",
                            "--config.num_train_steps=1"))
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert "config.data.eval_split='test'" in proc.stderr and "Traceback" not in proc.stderr
  proc = run_main(tiny_args(setup, str(setup["root"] / "bad4"),
                            f"--config.model.init_from={setup['root'] / 'missing_weights'}"))
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert "missing_weights" in proc.stderr and "Traceback" not in proc.stderr


def test_progress_eta_excludes_compilation():
  """clu's ReportProgress underneath: the first call (after the first step, compilation
  included) only starts the clock; rates and ETA come from the steps after it."""
  import io
  from reskd_jax import train_utils

  class Writer:
    def __init__(self):
      self.scalars = {}

    def write_scalars(self, step, scalars):
      self.scalars.setdefault(step, {}).update(scalars)

  stream, writer = io.StringIO(), Writer()
  progress = train_utils.Progress(10, 8, writer=writer, every_steps=1, stream=stream)
  progress._t0 = 0.0
  progress.metrics = {"loss": 2.0}
  progress(1, t=30.0)  # 30 s of compilation and the first step
  progress(2, t=31.0)
  progress(3, t=33.0)
  lines = stream.getvalue().splitlines()
  assert lines[0].startswith("[train] step 1/10 (10.0%) | first step (compilation included) "
                             "after 30.0 s | loss=2"), lines
  assert lines[1] == ("[train] step 2/10 (20.0%) | 1.00 steps/s, 8.0 videos/s | loss=2 | "
                      "ETA 0m08s"), lines
  assert lines[2].endswith("0.50 steps/s, 4.0 videos/s | loss=2 | ETA 0m14s"), lines
  assert writer.scalars[2] == {"train/steps_per_sec": 1.0, "train/videos_per_sec": 8.0}


@pytest.mark.parametrize("config_file,converter", [
    ("minik_r50_112", "minik"), ("k400_slowonly_r50_112", "kinetics"),
    ("activitynet_r50_112", "activitynet"), ("fcvid_r50_112", "fcvid"),
    ("ssv2_tsm_r50_112", "sthv2"), ("demo", "demo"),
])
def test_missing_data_names_the_converter_of_the_config(config_file, converter):
  import importlib
  from reskd_jax import train
  config = importlib.import_module(f"configs.{config_file}").get_config()
  config.data.data_dir = "/nonexistent/data"
  with pytest.raises(errors.DataError, match=f"python -m data_prep {converter} "):
    train.dataset_info(config)


# TensorFlow reads TF_CPP_MIN_LOG_LEVEL once, on its first import: records what it sees.
TF_LEVEL_PROBE = """
import importlib.abc, os, sys
seen = []
class Probe(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path=None, target=None):
    if name == "tensorflow" and not seen:
      seen.append(os.environ.get("TF_CPP_MIN_LOG_LEVEL"))
sys.meta_path.insert(0, Probe())
import {module}
import tensorflow
print("TF saw", seen[0])
"""


@pytest.mark.parametrize("module,args,level", [
    ("main", [], "2"), ("main", ["--verbosity=1"], "0"), ("data_prep.cli", [], "2"),
    ("reskd_jax.tools.predict", [], "2")])
def test_tensorflow_is_quiet_from_its_first_import_in_every_entry_point(module, args, level):
  """platforms.quiet_tensorflow, run by the package's __init__, comes before TensorFlow."""
  env = {k: v for k, v in main_env().items() if k != "TF_CPP_MIN_LOG_LEVEL"}
  proc = subprocess.run([sys.executable, "-c", TF_LEVEL_PROBE.format(module=module), *args],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.strip().splitlines()[-1] == f"TF saw {level}"
