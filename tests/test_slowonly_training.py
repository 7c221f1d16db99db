"""SlowOnly through the training stack: the sharded ResKD step (feature KD) on 8 CPU devices,
and main.py (train, multi-view eval, profile) on a tiny dense-sampled data set."""

import json
import os
import subprocess
import sys

import chex
import jax
import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from reskd_jax import checkpoints, models, optim, train_step
from data_helpers import write_tiny_dataset  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(width=8, stage_sizes=(1, 1, 1, 1), dropout_rate=0.0)
T, CROP, LOW, NUM_CLASSES = 2, 64, 32, 4


def _step_setup(sync_bn):
  axis = train_step.AXIS if sync_bn else None
  student = models.build_model("slowonly_r50", NUM_CLASSES, input_size=LOW, bn_axis_name=axis,
                               **TINY)
  teacher = models.build_model("slowonly_r50", NUM_CLASSES, bn_axis_name=axis, **TINY)
  svars = models.init_variables(student, jax.random.key(0), T, LOW)
  tvars = models.init_variables(teacher, jax.random.key(1), T, CROP)
  # mmaction2's zero-initialised last BN would hide the residual branches: perturb it.
  tvars = jax.tree.map(lambda x: x + 0.5, tvars)
  opt_cfg = ml_collections.ConfigDict(dict(
      name="sgd", base_learning_rate=0.05, base_batch_size=16, momentum=0.9, nesterov=False,
      weight_decay=1e-4, bias_lr_mult=1.0, clip_grad_norm=40.0, warmup_epochs=0.0))
  schedule = optim.learning_rate_schedule(opt_cfg, 16, 10, 10)
  tx = optim.create_optimizer(opt_cfg, svars["params"], schedule)
  step = train_step.make_train_step(student=student, teacher=teacher, tx=tx, mode="reskd",
                                    kd_method="pixel_feature", kd_weight=100.0,
                                    mean=(127.5,) * 3, std=(64.0,) * 3)
  return train_step.create_train_state(svars, tx), tvars, step


def test_sharded_reskd_step_with_feature_kd():
  rs = np.random.RandomState(0)
  batch = {"video": rs.randint(0, 256, (16, T, CROP, CROP, 3)).astype(np.uint8),
           "label": rs.randint(0, NUM_CLASSES, (16,)).astype(np.int32)}
  state, tvars, step = _step_setup(sync_bn=True)
  rng = jax.random.key(3)
  new8, m8 = train_step.shard_train_step(step, train_step.make_mesh(), donate=False)(
      state, tvars, batch, rng)
  chex.assert_tree_all_finite((new8.params, m8))
  assert float(m8["kd_loss"]) > 0 and int(new8.step) == 1
  # The student moved; synchronised BN over 8 devices equals one device on the whole batch.
  assert any(not np.array_equal(np.asarray(a), np.asarray(b))
             for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(new8.params)))
  new1, m1 = train_step.shard_train_step(step, train_step.make_mesh(jax.devices()[:1]),
                                         donate=False)(state, tvars, batch, rng)
  for a, b in zip(jax.tree.leaves(new8.params), jax.tree.leaves(new1.params)):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert np.abs(a - b).max() <= 1e-5 * max(np.abs(b).max(), 1e-6)
  np.testing.assert_allclose(m8["kd_loss"], m1["kd_loss"], rtol=1e-5)


# --- main.py on a tiny dense-sampled data set --------------------------------------------

FRAMES_PER_VIDEO, H, W = 12, 72, 80


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  root = tmp_path_factory.mktemp("slowonly_main")
  data = str(root / "data")
  rs = np.random.RandomState(0)
  write_tiny_dataset(data, {"train": 16, "val": 8}, rs, dataset="tiny_k400",
                     num_classes=NUM_CLASSES, height=H, width=W,
                     frames_per_video=FRAMES_PER_VIDEO)
  teacher = models.build_model("slowonly_r50", NUM_CLASSES, width=8, stage_sizes=(1, 1, 1, 1))
  tvars = models.init_variables(teacher, jax.random.key(7), 4, 64)
  teacher_dir = checkpoints.save_variables(str(root / "teacher"), tvars,
                                          {"arch": "slowonly_r50"})
  return {"root": root, "data": data, "teacher": teacher_dir}


def _run(setup, workdir, *extra, config="configs/k400_slowonly_r50_112.py:tiny"):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2",
             JAX_COMPILATION_CACHE_DIR=os.path.join(ROOT, ".cache", "jax"))
  cmd = [sys.executable, "main.py", f"--config={config}", f"--workdir={workdir}",
         f"--config.data.data_dir={setup['data']}", f"--config.num_classes={NUM_CLASSES}",
         f"--config.teacher.checkpoint={setup['teacher']}", *extra]
  return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_main_trains_evaluates_multiview_and_profiles(setup):
  workdir = str(setup["root"] / "run")
  # 4 micro-batches, 2 optimizer updates (gradient accumulation through the trainer).
  proc = _run(setup, workdir, "--config.num_train_steps=4",
              "--config.optimizer.grad_accum_steps=2")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "[train] step 4/4" in proc.stdout
  results = json.load(open(os.path.join(workdir, "results.json")))
  assert results["mode"] == "reskd" and results["model"] == "slowonly_r50"
  assert results["step"] == 4 and results["num_videos"] == 8
  assert results["resolution"] == 32 and results["num_frames"] == 4
  assert 0.0 <= results["top1"] <= 1.0 and results["gflops_per_video"] > 0
  meta = checkpoints.load_metadata(os.path.join(workdir, "variables"))
  assert meta["arch"] == "slowonly_r50"
  # Multi-view testing: 2 clips x 3 crops (ThreeCrop) of the tiny variant.
  proc = _run(setup, workdir, "--mode=eval")
  assert proc.returncode == 0, proc.stderr[-3000:]
  evaluated = json.load(open(os.path.join(workdir, "eval_results.json")))
  assert evaluated["top1"] == pytest.approx(results["top1"])
  proc = _run(setup, str(setup["root"] / "profile"), "--mode=profile")
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.load(open(os.path.join(setup["root"], "profile", "profile.json")))
  assert report["model"]["name"] == "slowonly_r50"
  assert [row["resolution"] for row in report["rows"]] == [64, 32]


def test_unknown_model_name_is_one_line(setup):
  proc = _run(setup, str(setup["root"] / "bad"), "--config.model.name=slowonly_r99")
  assert proc.returncode == 2
  err = proc.stderr.strip().splitlines()
  assert err[-1].startswith("error: unknown config.model.name 'slowonly_r99'; expected one of")
  assert "slowonly_r50" in err[-1] and "Traceback" not in proc.stderr
