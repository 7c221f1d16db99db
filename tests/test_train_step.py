"""The sharded ResKD train step on 8 CPU devices."""

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from reskd_jax import models, optim, train_step

TINY = dict(width=8, stage_sizes=(1, 1, 1, 1), dropout_rate=0.0)
T, CROP, LOW = 2, 64, 32


def _opt_cfg(**overrides):
  cfg = ml_collections.ConfigDict(dict(
      name="sgd", base_learning_rate=0.05, base_batch_size=16, momentum=0.9, nesterov=True,
      weight_decay=1e-4, bias_lr_mult=2.0, clip_grad_norm=0.0, warmup_epochs=0.0))
  cfg.update(overrides)
  return cfg


def _setup(sync_bn=False, opt_cfg=None, num_steps=10, student_kw=None):
  axis = train_step.AXIS if sync_bn else None
  student = models.build_model("resnet18", 5, input_size=LOW, bn_axis_name=axis,
                               **(student_kw or TINY))
  teacher = models.build_model("resnet34", 5, bn_axis_name=axis, **TINY)
  svars = models.init_variables(student, jax.random.key(0), T, LOW)
  tvars = models.init_variables(teacher, jax.random.key(1), T, CROP)
  opt_cfg = opt_cfg or _opt_cfg()
  schedule = optim.learning_rate_schedule(opt_cfg, 16, num_steps, num_steps)
  tx = optim.create_optimizer(opt_cfg, svars["params"], schedule)
  step = train_step.make_train_step(student=student, teacher=teacher, tx=tx, mode="reskd",
                                    kd_weight=100.0, mean=(127.5,) * 3, std=(64.0,) * 3)
  return train_step.create_train_state(svars, tx), tvars, step


def _batch(n=16, seed=0):
  rs = np.random.RandomState(seed)
  return {"video": rs.randint(0, 256, (n, T, CROP, CROP, 3)).astype(np.uint8),
          "label": rs.randint(0, 5, (n,)).astype(np.int32)}


def _rel_close(a, b, tol=1e-5):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    scale = max(np.abs(y).max(), 1e-6)
    assert np.abs(x - y).max() / scale < tol, (np.abs(x - y).max(), scale)


def test_sharded_step_equals_device_by_device_average():
  state, tvars, step = _setup()
  batch, rng = _batch(), jax.random.key(3)
  mesh8 = train_step.make_mesh()
  assert mesh8.size == 8
  new8, metrics8 = train_step.shard_train_step(step, mesh8, donate=False)(state, tvars, batch,
                                                                          rng)
  # The same computation one device at a time: plain per-device BN means each
  # device's 2 videos are normalised alone. The first SGD step is linear in
  # the gradient, so averaging the per-device results equals averaging
  # gradients. Device d's dropout/flip rng is folded with d in the step, so
  # we reproduce it by running device d's shard on a 1-device mesh whose
  # axis index is 0 (dropout and flip are off here anyway).
  mesh1 = train_step.make_mesh(jax.devices()[:1])
  single = train_step.shard_train_step(step, mesh1, donate=False)
  results = [single(state, tvars, jax.tree.map(lambda x: x[2 * d:2 * d + 2], batch), rng)
             for d in range(8)]
  avg_state = jax.tree.map(lambda *xs: np.mean(np.stack(xs), 0), *[r[0] for r in results])
  avg_metrics = jax.tree.map(lambda *xs: np.mean(np.stack(xs), 0), *[r[1] for r in results])
  _rel_close(new8.params, avg_state.params)
  _rel_close(new8.batch_stats, avg_state.batch_stats)
  for key in ("loss", "ce_loss", "kd_loss", "accuracy"):
    np.testing.assert_allclose(metrics8[key], avg_metrics[key], rtol=1e-5)
  # ...and it is not the whole-batch computation (per-device BN differs).
  whole, _ = single(state, tvars, batch, rng)
  diff = max(float(np.abs(np.asarray(a) - np.asarray(b)).max())
             for a, b in zip(jax.tree.leaves(whole.params), jax.tree.leaves(new8.params)))
  assert diff > 1e-6


def test_sync_bn_step_equals_single_device_whole_batch():
  state, tvars, step = _setup(sync_bn=True)
  batch, rng = _batch(seed=1), jax.random.key(4)
  new8, m8 = train_step.shard_train_step(step, train_step.make_mesh(), donate=False)(
      state, tvars, batch, rng)
  new1, m1 = train_step.shard_train_step(step, train_step.make_mesh(jax.devices()[:1]),
                                         donate=False)(state, tvars, batch, rng)
  _rel_close(new8.params, new1.params)
  _rel_close(new8.batch_stats, new1.batch_stats)
  np.testing.assert_allclose(m8["loss"], m1["loss"], rtol=1e-5)


def test_teacher_is_bit_identical_after_many_steps_and_state_is_donated():
  state, tvars, step = _setup()
  before = jax.tree.map(np.array, tvars)
  mesh = train_step.make_mesh()
  tvars = train_step.replicate(tvars, mesh)
  fn = train_step.shard_train_step(step, mesh)
  batch = _batch(seed=2)
  first_params = jax.tree.map(np.array, state.params)
  given = []
  for i in range(5):
    given.append(state)
    state, _ = fn(state, tvars, batch, jax.random.key(i))
  chex.assert_trees_all_equal(jax.tree.map(np.asarray, tvars), before)
  assert int(state.step) == 5
  # Donated: each step's input state (once it lives on the mesh, from step 2 on) is freed,
  # not kept beside the new one; the teacher, not donated, stays.
  for old in given[1:]:
    assert all(leaf.is_deleted() for leaf in jax.tree.leaves(old.params)), "not donated"
  assert not any(leaf.is_deleted() for leaf in jax.tree.leaves(tvars))
  # The student did change.
  assert any(not np.array_equal(a, np.asarray(b))
             for a, b in zip(jax.tree.leaves(first_params), jax.tree.leaves(state.params)))


def test_learning_reduces_kd_term_tenfold():
  # A learning test, not a timing: fixed random videos, tiny nets, 200 steps.
  # The student (3x3/2 stem, two blocks per stage) at 32 px ends on the same
  # 2x2 grid as the teacher at 64 px; the teacher's BN runs in train mode.
  opt_cfg = _opt_cfg(name="adamw", base_learning_rate=1e-2, weight_decay=0.0)
  student_kw = dict(TINY, stem="small", stage_sizes=(2, 2, 2, 2))
  state, tvars, step = _setup(opt_cfg=opt_cfg, num_steps=200, student_kw=student_kw)
  fn = train_step.shard_train_step(step, train_step.make_mesh(jax.devices()[:1]))
  batch = _batch(n=4, seed=5)
  kd = []
  for i in range(200):
    state, metrics = fn(state, tvars, batch, jax.random.key(i))
    kd.append(float(metrics["kd_loss"]))
  assert kd[-1] < kd[0] / 10, (kd[0], kd[-1])


def test_baseline_mode_has_no_kd_and_no_teacher():
  student = models.build_model("resnet18", 5, input_size=LOW, **TINY)
  svars = models.init_variables(student, jax.random.key(0), T, LOW)
  tx = optim.create_optimizer(_opt_cfg(), svars["params"], lambda s: 0.01)
  step = train_step.make_train_step(student=student, tx=tx, mode="baseline")
  state, metrics = train_step.shard_train_step(step, train_step.make_mesh(), donate=False)(
      train_step.create_train_state(svars, tx), {}, _batch(), jax.random.key(0))
  assert float(metrics["kd_loss"]) == 0.0
  np.testing.assert_allclose(float(metrics["loss"]), float(metrics["ce_loss"]), rtol=1e-6)


def test_step_compiles_once():
  state, tvars, step = _setup()
  traces = []

  def counted(*args):
    traces.append(1)
    return step(*args)

  mesh = train_step.make_mesh()
  fn = train_step.shard_train_step(counted, mesh)
  # Placed on the mesh as the trainer does, so the first step's inputs have the
  # same shardings as its outputs.
  state, tvars = train_step.replicate(state, mesh), train_step.replicate(tvars, mesh)
  for i in range(3):
    state, _ = fn(state, tvars, _batch(seed=i), jax.random.key(i))
  assert len(traces) == 1


def test_unknown_mode_and_method_are_refused():
  student = models.build_model("resnet18", 5, **TINY)
  with pytest.raises(ValueError, match="config.mode='distill'"):
    train_step.make_train_step(student=student, tx=None, mode="distill")
  with pytest.raises(ValueError, match="config.kd_method='attention'"):
    train_step.make_train_step(student=student, teacher=student, tx=None, mode="reskd",
                               kd_method="attention")


def test_param_groups_and_lr_schedule():
  student = models.build_model("resnet18", 5, **TINY)
  params = models.init_variables(student, jax.random.key(0), 1, 32)["params"]
  labels = optim.param_labels(params)
  assert labels["fc"] == {"kernel": "decay", "bias": "bias"}
  assert labels["backbone"]["bn1"] == {"scale": "no_decay", "bias": "no_decay"}
  assert labels["backbone"]["conv1"] == {"kernel": "decay"}
  cfg = _opt_cfg(base_learning_rate=0.01, base_batch_size=64, momentum=0.0)
  sched = optim.learning_rate_schedule(cfg, 128, steps_per_epoch=10, num_train_steps=100)
  np.testing.assert_allclose(float(sched(0)), 0.02, rtol=1e-6)  # scaled with the batch
  assert float(sched(5)) == float(sched(0))  # constant within an epoch (mmcv by_epoch)
  np.testing.assert_allclose(float(sched(50)), 0.01, rtol=1e-5)  # half-way: half
  # Biases move with twice the learning rate and no decay; BN params no decay.
  tx = optim.create_optimizer(cfg, params, lambda s: 1.0)
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(np.asarray(updates["fc"]["bias"]), -2.0, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(updates["backbone"]["bn1"]["scale"]), -1.0, rtol=1e-6)
  want = -(1.0 + 1e-4 * np.asarray(params["backbone"]["conv1"]["kernel"]))
  np.testing.assert_allclose(np.asarray(updates["backbone"]["conv1"]["kernel"]), want,
                             rtol=1e-6)
