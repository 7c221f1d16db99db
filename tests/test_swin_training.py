"""Video Swin through the training stack: the sharded ResKD step (pixel-level logit KD, Swin-B
-> Swin-S shaped pair) on 8 CPU devices, and main.py (train, multi-view eval, profile) on a tiny
dense-sampled data set."""

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

from reskd_jax import checkpoints, losses, models, optim, train_step
from data_helpers import write_tiny_dataset  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Teacher and student differ in width, as Swin-B (1024 channels) and Swin-S (768).
STUDENT = dict(embed_dim=8, depths=(2, 1, 1, 1), num_heads=(1, 1, 2, 2), window_size=(2, 3, 3))
TEACHER = dict(embed_dim=12, depths=(2, 1, 1, 1), num_heads=(1, 1, 2, 2), window_size=(2, 3, 3))
T, CROP, LOW, NUM_CLASSES = 4, 32, 16, 4


def test_sharded_reskd_step_with_pixel_logit_kd():
  student = models.build_model("swin_s", NUM_CLASSES, input_size=LOW, drop_path_rate=0.1,
                               **STUDENT)
  teacher = models.build_model("swin_b", NUM_CLASSES, dropout_rate=0.0, drop_path_rate=0.1,
                               **TEACHER)
  assert models.feature_channels(student) != models.feature_channels(teacher)
  svars = models.init_variables(student, jax.random.key(0), T, LOW)
  tvars = models.init_variables(teacher, jax.random.key(1), T, CROP)
  opt_cfg = ml_collections.ConfigDict(dict(
      name="adamw", base_learning_rate=1e-3, base_batch_size=16, weight_decay=0.02,
      bias_lr_mult=1.0, backbone_lr_mult=0.1, clip_grad_norm=0.0, warmup_epochs=0.0))
  schedule = optim.learning_rate_schedule(opt_cfg, 16, 10, 10)
  tx = optim.create_optimizer(opt_cfg, svars["params"], schedule)
  step = train_step.make_train_step(student=student, teacher=teacher, tx=tx, mode="reskd",
                                    kd_method="pixel_logit", kd_weight=200.0,
                                    kd_temperature=2.0, mean=(127.5,) * 3, std=(64.0,) * 3)
  state = train_step.create_train_state(svars, tx)
  rs = np.random.RandomState(0)
  batch = {"video": rs.randint(0, 256, (16, T, CROP, CROP, 3)).astype(np.uint8),
           "label": rs.randint(0, NUM_CLASSES, (16,)).astype(np.int32)}
  new, metrics = train_step.shard_train_step(step, train_step.make_mesh(), donate=False)(
      state, tvars, batch, jax.random.key(3))
  chex.assert_tree_all_finite((new.params, metrics))
  assert float(metrics["kd_loss"]) > 0 and int(new.step) == 1
  changed = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(state.params),
                                                      jax.tree.leaves(new.params))]
  assert all(changed)  # every parameter gets a gradient (no BatchNorm statistics to keep)


@pytest.mark.filterwarnings("ignore:reduction")
def test_pixel_logit_kd_matches_the_released_head():
  # The release upsamples the student's *features* (4x4 -> 7x7), applies fc_cls at every
  # position, and takes KLDivLoss(reduction="mean") (over positions and classes) times T^2;
  # we upsample the per-position *logits*: the same, since fc is affine and bilinear
  # weights sum to 1.
  torch = pytest.importorskip("torch")
  rs = np.random.RandomState(0)
  s_feats = rs.randn(2, 3, 4, 4, 6).astype(np.float32)
  t_logits = rs.randn(2, 3, 7, 7, 5).astype(np.float32) * 3
  w, b = rs.randn(6, 5).astype(np.float32), rs.randn(5).astype(np.float32)
  ours = losses.pixel_logit_kd(s_feats @ w + b, t_logits, temperature=2.0)
  s = torch.from_numpy(s_feats).permute(0, 1, 4, 2, 3).reshape(6, 6, 4, 4)
  s = torch.nn.functional.interpolate(s, size=(7, 7), mode="bilinear", align_corners=False)
  s = s.reshape(2, 3, 6, 7, 7).permute(0, 1, 3, 4, 2) @ torch.from_numpy(w) + torch.from_numpy(b)
  t = torch.from_numpy(t_logits)
  kl = torch.nn.KLDivLoss(reduction="mean")(torch.log_softmax(s / 2.0, -1),
                                            torch.softmax(t / 2.0, -1)) * 4.0
  np.testing.assert_allclose(float(ours), float(kl), rtol=1e-5)


# --- main.py on a tiny dense-sampled data set --------------------------------------------

FRAMES_PER_VIDEO, H, W = 12, 40, 44


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  root = tmp_path_factory.mktemp("swin_main")
  data = str(root / "data")
  rs = np.random.RandomState(0)
  write_tiny_dataset(data, {"train": 16, "val": 8}, rs, dataset="tiny_k400",
                     num_classes=NUM_CLASSES, height=H, width=W,
                     frames_per_video=FRAMES_PER_VIDEO)
  # The teacher as configs/default._tiny_swin makes it (swin_b with tiny options).
  tiny = dict(embed_dim=8, depths=(2, 1, 1, 1), num_heads=(1, 1, 2, 2), window_size=(2, 3, 3))
  teacher = models.build_model("swin_b", NUM_CLASSES, **tiny)
  tvars = models.init_variables(teacher, jax.random.key(7), T, CROP)
  teacher_dir = checkpoints.save_variables(str(root / "teacher"), tvars,
                                          {"arch": "swin_b", **tiny})
  return {"root": root, "data": data, "teacher": teacher_dir}


def _run(setup, workdir, *extra, config="configs/k400_swin_s_112.py:tiny"):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2",
             JAX_COMPILATION_CACHE_DIR=os.path.join(ROOT, ".cache", "jax"))
  cmd = [sys.executable, "main.py", f"--config={config}", f"--workdir={workdir}",
         f"--config.data.data_dir={setup['data']}", f"--config.num_classes={NUM_CLASSES}",
         f"--config.teacher.checkpoint={setup['teacher']}", *extra]
  return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


def test_main_trains_evaluates_multiview_and_profiles(setup):
  workdir = str(setup["root"] / "run")
  # 4 micro-batches, 2 AdamW updates (the tiny variant accumulates 2).
  proc = _run(setup, workdir, "--config.num_train_steps=4")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "[train] step 4/4" in proc.stdout
  results = json.load(open(os.path.join(workdir, "results.json")))
  assert results["mode"] == "reskd" and results["model"] == "swin_s"
  assert results["step"] == 4 and results["num_videos"] == 8
  assert results["resolution"] == 16 and results["num_frames"] == 4
  assert 0.0 <= results["top1"] <= 1.0 and results["gflops_per_video"] > 0
  assert checkpoints.load_metadata(os.path.join(workdir, "variables"))["arch"] == "swin_s"
  # Multi-view testing: 2 clips x 3 crops (ThreeCrop) of the tiny variant.
  proc = _run(setup, workdir, "--mode=eval")
  assert proc.returncode == 0, proc.stderr[-3000:]
  evaluated = json.load(open(os.path.join(workdir, "eval_results.json")))
  assert evaluated["top1"] == pytest.approx(results["top1"])
  proc = _run(setup, str(setup["root"] / "profile"), "--mode=profile")
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.load(open(os.path.join(setup["root"], "profile", "profile.json")))
  assert report["model"]["name"] == "swin_s"
  assert [row["resolution"] for row in report["rows"]] == [32, 16]


def test_odd_frame_count_is_one_line(setup):
  proc = _run(setup, str(setup["root"] / "odd"), "--config.data.clip_len=3")
  assert proc.returncode == 2
  err = proc.stderr.strip().splitlines()[-1]
  assert err.startswith("error: clips have 3 frames") and "multiple of 2" in err
  assert "Traceback" not in proc.stderr
