"""main.py as 2 processes x 2 CPU devices on localhost (explicit launch flags, gloo collectives).

What a multi-node SLURM job or a TPU pod slice does, on one machine: train,
evaluate across hosts, save, and stop on SIGTERM at a step both processes
agree on.
"""

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

from configs import minik_r50_112
from reskd_jax import checkpoints, errors, evaluate, models, train_step, workdir as workdir_lib
from reskd_jax.data import pipeline
from helpers import (MULTI_STEPS, NUM_CLASSES, ROOT, STOP_LIMIT, TIMEOUT, kill_all as _kill,
                     launch as _launch, make_multihost_setup, multihost_env, tail as _tail,
                     wait_all as _wait, wait_for as _wait_for)

STEPS = MULTI_STEPS


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  return make_multihost_setup(tmp_path_factory.mktemp("multihost"))


def _run2(setup, workdir):
  procs, logs = _launch(setup, workdir, str(setup["root"]))
  try:
    return _wait(procs, logs, time.time() + TIMEOUT), logs
  finally:
    _kill(procs)


@pytest.fixture(scope="module")
def straight(setup):
  """An uninterrupted 2-process run."""
  workdir = str(setup["root"] / "straight")
  codes, logs = _run2(setup, workdir)
  assert codes == [0, 0], _tail(logs)
  return workdir


@pytest.mark.e2e
def test_two_processes_train_evaluate_save(setup, straight):
  results = json.load(open(os.path.join(straight, workdir_lib.RESULTS)))
  assert results["step"] == STEPS and results["num_videos"] == 11
  variables = checkpoints.load_variables(straight)
  best = checkpoints.load_variables(os.path.join(straight, workdir_lib.BEST_VARIABLES))
  chex.assert_trees_all_equal_shapes(variables, best)

  # The same variables evaluated by this single process (8 devices): same metrics.
  config = minik_r50_112.get_config("tiny")
  config.data.data_dir = setup["data"]
  config.data.eval_split = "val"
  config.data.test_num_clips = 2
  config.num_classes = NUM_CLASSES
  info = pipeline.dataset_info(setup["data"])
  model = models.build_from_config(config.model, NUM_CLASSES)
  mesh = train_step.make_mesh()
  metrics = evaluate.Evaluator(config, model, mesh, NUM_CLASSES, info)(
      train_step.replicate(variables, mesh))
  assert metrics["num_videos"] == 11
  for key in ("top1", "top5", "mean_class_accuracy"):
    assert results[key] == pytest.approx(metrics[key], abs=1e-12), key


@pytest.mark.e2e
def test_sigterm_to_one_process_stops_both_then_resumes_bit_identical(setup, straight):
  """As a scheduler signals: one process, at a step where a checkpoint is being saved; then
  a late SIGTERM to the other one while it shuts down (node skew) changes nothing."""
  workdir = str(setup["root"] / "interrupted")
  procs, logs = _launch(setup, workdir, str(setup["root"]), "--config.checkpoint_every_steps=4")
  try:
    _wait_for(logs, procs, "[train] step 4/")  # process 1 is saving step 4 now
    signalled = time.time()
    procs[1].send_signal(signal.SIGTERM)  # the process that prints no progress
    _wait_for(logs, procs, "stopped at step ")
    procs[0].send_signal(signal.SIGTERM)  # late: it has agreed to stop already
    codes = _wait(procs, logs, signalled + STOP_LIMIT)
    stop_seconds = time.time() - signalled
  finally:
    _kill(procs)
  assert codes == [errors.EXIT_PREEMPTED] * 2, _tail(logs)
  steps = []
  for path in logs:
    text = open(path).read()
    steps.append([int(line.split("stopped at step ")[1].split()[0])
                  for line in text.splitlines() if "stopped at step " in line])
  assert len(steps[0]) == 1 and steps[0] == steps[1], _tail(logs)
  stopped = steps[0][0]
  assert 4 <= stopped <= 8, stopped  # soon after the signal, not the last step
  assert "received SIGTERM" in open(logs[1]).read().split("stopped at step")[0]
  assert stop_seconds < STOP_LIMIT
  assert not os.path.exists(os.path.join(workdir, workdir_lib.RESULTS))
  ckpt_steps = sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints"))
                      if d.isdigit())
  assert ckpt_steps[-1] == stopped and 4 in ckpt_steps, ckpt_steps
  sums = json.load(open(os.path.join(workdir, "checkpoints", checkpoints.CHECKSUMS_FILE)))
  assert sorted(map(int, sums)) == ckpt_steps
  assert not [n for n in os.listdir(os.path.join(workdir, "checkpoints")) if "tmp" in n]
  text = "".join(open(path).read() for path in logs)
  assert "Traceback" not in text and "[Gloo]" not in text, _tail(logs)

  codes, logs = _run2(setup, workdir)  # the same command again: resumes
  assert codes == [0, 0], _tail(logs)
  assert f"[train] step {stopped + 1}/" in open(logs[0]).read().split("stopped at step")[-1]
  a = json.load(open(os.path.join(straight, workdir_lib.RESULTS)))
  b = json.load(open(os.path.join(workdir, workdir_lib.RESULTS)))
  for key in ("top1", "top5", "mean_class_accuracy", "num_videos", "step"):
    assert a[key] == b[key], key
  chex.assert_trees_all_equal(checkpoints.load_variables(straight),
                              checkpoints.load_variables(workdir))


def _batches(masks, error=None):
  for mask in masks:
    yield {"video": np.zeros((len(mask), 1), np.uint8), "label": np.arange(len(mask)) % 3,
           "mask": np.asarray(mask, np.float32)}
  if error is not None:
    raise error


def _uniform(variables, batch):
  del variables
  return jax.numpy.full((batch["video"].shape[0], 3), 1 / 3)


def test_eval_video_count_must_match_the_manifest():
  masks = [[1, 1, 1, 1], [1, 1, 0, 0]]
  probs, labels, _ = evaluate.predict(_uniform, {}, _batches(masks), lambda b: b,
                                      split="val", expected_videos=6)
  chex.assert_shape(probs, (6, 3))
  np.testing.assert_array_equal(labels, [0, 1, 2, 0, 0, 1])  # padding dropped
  with pytest.raises(errors.DataError, match=r"split 'val'.* saw 6 videos .* says 7"):
    evaluate.predict(_uniform, {}, _batches(masks), lambda b: b, split="val",
                     expected_videos=7)
  damaged = tf.errors.DataLossError(None, None, "corrupted record at 1234")
  with pytest.raises(errors.DataError, match=r"split 'val'.*corrupted record"):
    evaluate.predict(_uniform, {}, _batches(masks, damaged), lambda b: b, split="val",
                     expected_videos=6)


@pytest.mark.e2e
def test_cluster_that_cannot_be_joined_is_one_line(tmp_path):
  """A real process (joining needs a JAX that has not started yet)."""
  cmd = [sys.executable, "main.py", f"--config={os.path.join(ROOT, 'configs', 'demo.py')}",
         f"--workdir={tmp_path}"]
  proc = subprocess.run(cmd, cwd=ROOT, env={**multihost_env(),
                                            "JAX_COORDINATOR_ADDRESS": "localhost:1234"},
                        capture_output=True, text=True, timeout=TIMEOUT)
  assert proc.returncode == errors.EXIT_BAD_INPUT, proc.stderr[-2000:]
  needle = ("could not join the cluster with coordinator_address=localhost:1234 (flags / JAX_* "
            "variables): Number of processes must be defined")
  assert needle in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]


def test_a_launch_variable_that_is_not_a_number_is_named(monkeypatch):
  """Read before JAX is asked to join: checked here, in this process."""
  import main as main_module
  monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "localhost:1234")
  monkeypatch.setenv("JAX_NUM_PROCESSES", "two")
  with pytest.raises(errors.ConfigError, match="JAX_NUM_PROCESSES='two' is not an integer"):
    main_module._initialize_distributed()
