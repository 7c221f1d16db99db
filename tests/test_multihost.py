"""main.py as 2 processes x 2 CPU devices on localhost (explicit launch flags, gloo collectives).

What a multi-node SLURM job or a TPU pod slice does, on one machine: train,
evaluate across hosts, save, and stop on SIGTERM at a step both processes
agree on.
"""

import json
import os
import signal
import socket
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
from data_helpers import write_tiny_dataset  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_CLASSES, FRAMES, SIDE = 4, 4, 40
STEPS = 16  # long enough that a signal lands mid-run
TIMEOUT = 480  # seconds a launch may take before it is killed (a loaded 2-core machine)
STOP_LIMIT = 120  # seconds from SIGTERM to both processes' exit (checkpoint written)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  root = tmp_path_factory.mktemp("multihost")
  data = str(root / "data")
  rs = np.random.RandomState(0)
  # Two train shards (each host reads one), an eval split that does not fill
  # the last batch (padding), on two shards.
  write_tiny_dataset(data, {"train": [16, 16], "val": [6, 5]}, rs, dataset="tiny",
                     num_classes=NUM_CLASSES, height=SIDE, width=SIDE + 8)
  teacher = models.build_model("resnet18", NUM_CLASSES, width=8, stage_sizes=(1, 1, 1, 1),
                               stem="small")
  tvars = models.init_variables(teacher, jax.random.key(7), FRAMES, 32)
  arch = {"name": "resnet18", "width": 8, "stage_sizes": [1, 1, 1, 1], "stem": "small"}
  teacher_dir = checkpoints.save_variables(
      str(root / "teacher"), tvars,
      {"arch": "resnet18", "num_classes": NUM_CLASSES, "tsm": False, "model": arch})
  return {"root": root, "data": data, "teacher": teacher_dir}


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _env():
  env = dict(os.environ)
  env.update({"XLA_FLAGS": "--xla_force_host_platform_device_count=2",
              "JAX_PLATFORMS": "cpu", "JAX_CPU_COLLECTIVES_IMPLEMENTATION": "gloo",
              "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": ROOT,
              "JAX_COMPILATION_CACHE_DIR": os.path.join(ROOT, ".cache", "jax")})
  for key in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
    env.pop(key, None)
  return env


def _args(setup, workdir):
  return [f"--config={os.path.join(ROOT, 'configs', 'minik_r50_112.py')}:tiny",
          f"--workdir={workdir}", f"--config.data.data_dir={setup['data']}",
          f"--config.teacher.checkpoint={setup['teacher']}",
          f"--config.num_classes={NUM_CLASSES}", "--config.data.eval_split=val",
          f"--config.num_train_steps={STEPS}", "--config.steps_per_epoch=4",
          "--config.eval_every_epochs=100", "--config.log_every_steps=1",
          "--config.data.test_num_clips=2"]


def _launch(setup, workdir, logdir, *extra, ids=(0, 1), ports=None):
  """Starts the processes `ids` of 2 (each told the coordinator port in `ports`, default one
  free port for all), as a cluster launcher would; returns (procs, log paths)."""
  port = _free_port()
  procs, logs = [], []
  for i, pid in enumerate(ids):
    logs.append(os.path.join(logdir, f"{os.path.basename(workdir)}.{i}.log"))
    cmd = [sys.executable, "main.py", *_args(setup, workdir), *extra,
           f"--coordinator_address=localhost:{ports[i] if ports else port}",
           "--num_processes=2", f"--process_id={pid}"]
    with open(logs[-1], "a") as log:
      procs.append(subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=log,
                                    stderr=subprocess.STDOUT, text=True))
  return procs, logs


def _wait(procs, logs, deadline):
  codes = []
  for proc in procs:
    try:
      codes.append(proc.wait(timeout=max(deadline - time.time(), 1)))
    except subprocess.TimeoutExpired:
      codes.append(None)
  if None in codes:
    pytest.fail(f"timed out: {codes}\n" + _tail(logs))
  return codes


def _tail(logs, n=3000):
  return "\n".join(f"--- {path}\n{open(path).read()[-n:]}" for path in logs)


def _kill(procs):
  for proc in procs:
    if proc.poll() is None:
      proc.kill()
      proc.wait()


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


def _wait_for(logs, procs, needle, index=0):
  deadline = time.time() + TIMEOUT
  while needle not in open(logs[index]).read():
    assert time.time() < deadline and all(p.poll() is None for p in procs), _tail(logs)
    time.sleep(0.05)


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
  assert 4 <= stopped < STEPS, stopped
  assert stop_seconds < STOP_LIMIT
  assert not os.path.exists(os.path.join(workdir, workdir_lib.RESULTS))
  ckpt_steps = sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints"))
                      if d.isdigit())
  assert ckpt_steps[-1] == stopped and 4 in ckpt_steps, ckpt_steps
  sums = json.load(open(os.path.join(workdir, "checkpoints", checkpoints.CHECKSUMS_FILE)))
  assert sorted(map(int, sums)) == ckpt_steps
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


@pytest.mark.parametrize("env,needle", [
    ({"JAX_COORDINATOR_ADDRESS": "localhost:1234"},
     "could not join the cluster with coordinator_address=localhost:1234 (flags / JAX_* "
     "variables): Number of processes must be defined"),
    ({"JAX_COORDINATOR_ADDRESS": "localhost:1234", "JAX_NUM_PROCESSES": "two"},
     "JAX_NUM_PROCESSES='two' is not an integer"),
])
def test_cluster_that_cannot_be_joined_is_one_line(tmp_path, env, needle):
  cmd = [sys.executable, "main.py", f"--config={os.path.join(ROOT, 'configs', 'demo.py')}",
         f"--workdir={tmp_path}"]
  proc = subprocess.run(cmd, cwd=ROOT, env={**_env(), **env}, capture_output=True, text=True,
                        timeout=TIMEOUT)
  assert proc.returncode == errors.EXIT_BAD_INPUT, proc.stderr[-2000:]
  assert needle in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]
