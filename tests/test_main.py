"""main.py end to end on a tiny converted data set (subprocesses, 8 CPU devices)."""

import json
import os
import signal
import subprocess
import sys
import time

import chex
import jax
import numpy as np
import pytest
import tensorflow as tf

from reskd_jax import checkpoints, errors, evaluate, meta as meta_lib, models
from data_helpers import write_tiny_dataset  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_CLASSES, FRAMES, SIDE = 4, 4, 40

# Every run is configs/minik_r50_112.py with its `:tiny` variant (configs/default.py `tiny`:
# resnet18 nets of width 8, one block per stage, 3x3/2 stem; 32 px crops, a 16 px student,
# 4 frames, batches of 8); the data and the teacher file below are made to fit it.
CONFIG = "configs/minik_r50_112.py:tiny"
SHRINK = [f"--config.num_classes={NUM_CLASSES}"]


def _write_data(data, splits, rs):
  return write_tiny_dataset(data, splits, rs, dataset="tiny", num_classes=NUM_CLASSES,
                            height=SIDE, width=SIDE + 8)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  root = tmp_path_factory.mktemp("main")
  data = str(root / "data")
  rs = np.random.RandomState(0)
  _write_data(data, {"train": 32, "val": 12}, rs)
  # A "converted" teacher file with random weights and statistics.
  teacher = models.build_model("resnet18", NUM_CLASSES, width=8, stage_sizes=(1, 1, 1, 1),
                               stem="small")
  tvars = models.init_variables(teacher, jax.random.key(7), FRAMES, 32)
  # Its meta.json describes it, so `:tiny` runs take the teacher's architecture from it.
  teacher_dir = checkpoints.save_variables(str(root / "teacher"), tvars, _teacher_meta(width=8))
  # A teacher twice as wide: a 128-channel map the 64-channel student cannot match.
  wide = models.build_model("resnet18", NUM_CLASSES, width=16, stage_sizes=(1, 1, 1, 1),
                            stem="small")
  wide_dir = checkpoints.save_variables(
      str(root / "wide_teacher"), models.init_variables(wide, jax.random.key(8), FRAMES, 32),
      _teacher_meta(width=16))
  # The same weights with an older, incomplete meta.json (no stem): the default stem
  # (imagenet) is filled in, and the weights do not fit it.
  legacy_dir = checkpoints.save_variables(
      str(root / "legacy_teacher"), tvars,
      {"arch": "resnet18", "num_classes": NUM_CLASSES, "width": 8, "stage_sizes": [1, 1, 1, 1]})
  return {"root": root, "data": data, "teacher": teacher_dir, "wide_teacher": wide_dir,
          "legacy_teacher": legacy_dir}


def _teacher_meta(width):
  return meta_lib.for_converted("resnet18", NUM_CLASSES, False, None, "random weights", "test",
                                {"width": width, "stage_sizes": (1, 1, 1, 1), "stem": "small"})


def _cmd(setup, workdir, *extra, config=CONFIG):
  return [sys.executable, "main.py", f"--config={config}", f"--workdir={workdir}",
          f"--config.data.data_dir={setup['data']}",
          f"--config.teacher.checkpoint={setup['teacher']}", *SHRINK, *extra]


def _env():
  env = dict(os.environ)
  env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
  env["JAX_PLATFORMS"] = "cpu"
  env["TF_CPP_MIN_LOG_LEVEL"] = "2"
  env["JAX_COMPILATION_CACHE_DIR"] = os.path.join(ROOT, ".cache", "jax")
  return env


def _run(cmd, timeout=300):
  return subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True,
                        timeout=timeout)


def test_minik_config_trains_then_evaluates(setup):
  workdir = str(setup["root"] / "run")
  proc = _run(_cmd(setup, workdir, "--config.num_train_steps=6",
                   "--config.data.test_num_clips=2"))
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "[train] step 6/6" in proc.stdout and "ETA" in proc.stdout
  results = json.load(open(os.path.join(workdir, "results.json")))
  assert results["mode"] == "reskd" and results["step"] == 6
  assert results["num_videos"] == 12 and 0.0 <= results["top1"] <= 1.0
  assert results["resolution"] == 16 and results["gflops_per_video"] > 0
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(workdir))
  assert os.path.isdir(os.path.join(workdir, "variables"))

  proc = _run(_cmd(setup, workdir, "--mode=eval", "--config.data.test_num_clips=2"))
  assert proc.returncode == 0, proc.stderr[-3000:]
  evaluated = json.load(open(os.path.join(workdir, "eval_results.json")))
  for key in ("top1", "top5", "mean_class_accuracy"):
    assert evaluated[key] == pytest.approx(results[key])


def test_sigterm_then_resume_equals_uninterrupted_run(setup):
  steps = ["--config.num_train_steps=14", "--config.steps_per_epoch=4"]
  straight = str(setup["root"] / "straight")
  proc = _run(_cmd(setup, straight, *steps))
  assert proc.returncode == 0, proc.stderr[-3000:]

  interrupted = str(setup["root"] / "interrupted")
  child = subprocess.Popen(_cmd(setup, interrupted, *steps), cwd=ROOT, env=_env(),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  lines = []
  for line in child.stdout:
    lines.append(line)
    if "[train] step 5/14" in line:
      child.send_signal(signal.SIGTERM)
  assert child.wait(timeout=300) == errors.EXIT_PREEMPTED, "".join(lines[-40:])
  out = "".join(lines)
  assert "saving a checkpoint and stopping" in out, out[-3000:]
  assert not os.path.exists(os.path.join(interrupted, "results.json"))

  proc = _run(_cmd(setup, interrupted, *steps))
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
  proc = _run(_cmd(setup, str(setup["root"] / "bad"), flag), timeout=120)
  assert proc.returncode != 0
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
  proc = _run(_cmd(setup, str(setup["root"] / "bad2"), *extra), timeout=120)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert needle in proc.stderr and "Traceback" not in proc.stderr


def test_missing_dataset_says_how_to_prepare(setup):
  cmd = _cmd(setup, str(setup["root"] / "nodata"), "--config.data.data_dir=/nonexistent/minik")
  proc = _run(cmd, timeout=120)
  assert proc.returncode == 2
  assert "/nonexistent/minik" in proc.stderr and "python -m data_prep" in proc.stderr
  assert "Traceback" not in proc.stderr


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
  proc = _run(_cmd(setup, str(setup["root"] / "bad3"), "--config.data.eval_split=test",
                   "--config.num_train_steps=1"), timeout=180)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert "config.data.eval_split='test'" in proc.stderr and "Traceback" not in proc.stderr
  proc = _run(_cmd(setup, str(setup["root"] / "bad4"),
                   f"--config.model.init_from={setup['root'] / 'missing_weights'}"), timeout=120)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert "missing_weights" in proc.stderr and "Traceback" not in proc.stderr


def test_rerun_of_a_finished_run_keeps_its_results(setup):
  workdir = str(setup["root"] / "finished")
  steps = ["--config.num_train_steps=2", "--config.mode=baseline"]
  assert _run(_cmd(setup, workdir, *steps)).returncode == 0
  first = json.load(open(os.path.join(workdir, "results.json")))
  proc = _run(_cmd(setup, workdir, *steps))  # resumes at the last step: nothing to train
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "[train] step" not in proc.stdout
  second = json.load(open(os.path.join(workdir, "results.json")))
  for key in ("top1", "top5", "mean_class_accuracy", "step"):
    assert second[key] == first[key], key
