"""config.model.remat: the blocks under nn.remat, the same numbers and variables as without."""

import chex
import jax
import jax.extend
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import default
from reskd_jax import config_checks, errors, losses, meta, models, optim, train_step

T, CROP, LOW, NUM_CLASSES = 4, 40, 32, 5
# Tiny nets with dropout and stochastic depth on, so that the rngs under remat are checked too.
CASES = {
    "tsm_r18": ("resnet18", dict(width=8, stage_sizes=(1, 1, 1, 1), tsm=True, stem="small")),
    "r50": ("resnet50", dict(width=8, stage_sizes=(1, 1, 1, 1), stem="small")),
    "slowonly": ("slowonly_r50", dict(width=8, stage_sizes=(1, 1, 1, 1))),
    "swin": ("swin_s", dict(embed_dim=8, depths=(2, 1, 1, 1), num_heads=(1, 1, 2, 2),
                            window_size=(2, 3, 3), drop_path_rate=0.3)),
}
# Blocks per case: residual blocks, or transformer blocks.
NUM_BLOCKS = {"tsm_r18": 4, "r50": 4, "slowonly": 4, "swin": 5}


def _build(case, remat, **overrides):
  name, options = CASES[case]
  return models.build_model(name, NUM_CLASSES, input_size=LOW, remat=remat,
                            **{**options, **overrides})


def _video(seed=0, n=2):
  return jax.random.normal(jax.random.key(seed), (n, T, CROP, CROP, 3), jnp.float32)


def _loss_and_grads(model, variables, video, labels):
  def loss_fn(params):
    out, new_state = model.apply({**variables, "params": params}, video, train=True,
                                 return_dict=True, mutable=["batch_stats"],
                                 rngs={"dropout": jax.random.key(7)})
    return losses.cross_entropy(out["logits"], labels), (new_state, out["features"])
  return jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(variables["params"])


@pytest.mark.parametrize("case", sorted(CASES))
def test_remat_gives_the_same_variables_loss_and_gradients(case):
  plain, remat = _build(case, False), _build(case, True)
  variables = models.init_variables(plain, jax.random.key(0), T, CROP)
  # Same names, shapes and initial values: a checkpoint of one loads into the other.
  chex.assert_trees_all_equal(models.init_variables(remat, jax.random.key(0), T, CROP),
                              variables)
  video, labels = _video(), jnp.array([1, 3])
  (loss0, (state0, feats0)), grads0 = _loss_and_grads(plain, variables, video, labels)
  (loss1, (state1, feats1)), grads1 = _loss_and_grads(remat, variables, video, labels)
  assert float(loss0) > 0.0
  chex.assert_trees_all_close(loss1, loss0, rtol=1e-6, atol=1e-7)
  chex.assert_trees_all_close(feats1, feats0, rtol=1e-6, atol=1e-7)
  chex.assert_trees_all_close(state1, state0, rtol=1e-6, atol=1e-7)
  chex.assert_trees_all_close(grads1, grads0, rtol=1e-5, atol=1e-7)
  assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grads0)) > 0.0


def _checkpoints(jaxpr) -> int:
  """The remat primitives in a jaxpr and in every jaxpr nested in its equations."""
  count = 0
  for eqn in jaxpr.eqns:
    if eqn.primitive.name in ("checkpoint", "remat", "remat2"):
      count += 1
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      count += _checkpoints(sub)
  return count


@pytest.mark.parametrize("case", sorted(CASES))
def test_remat_puts_every_block_under_a_checkpoint(case):
  video, labels = _video(), jnp.array([1, 3])
  counts = {}
  for flag in (False, True):
    model = _build(case, flag)
    variables = models.init_variables(model, jax.random.key(0), T, CROP)

    def loss_fn(params, model=model, variables=variables):
      out, _ = model.apply({**variables, "params": params}, video, train=True,
                           mutable=["batch_stats"], rngs={"dropout": jax.random.key(7)})
      return losses.cross_entropy(out, labels)
    counts[flag] = _checkpoints(jax.make_jaxpr(jax.grad(loss_fn))(variables["params"]).jaxpr)
  assert counts[False] == 0
  # One checkpoint per block, whose forward the backward pass recomputes.
  assert counts[True] == NUM_BLOCKS[case], counts


def test_remat_train_step_equals_plain_with_a_teacher():
  """The whole sharded ResKD step (teacher in train-mode BN, pixel-feature KD, SGD update)."""
  teacher = models.build_model("resnet34", NUM_CLASSES, width=8, stage_sizes=(1, 1, 1, 1),
                               stem="small", tsm=True, dropout_rate=0.0)
  tvars = models.init_variables(teacher, jax.random.key(1), T, CROP)
  opt_cfg = ml_collections.ConfigDict(dict(
      name="sgd", base_learning_rate=0.05, base_batch_size=16, momentum=0.9, nesterov=True,
      weight_decay=1e-4, bias_lr_mult=2.0, clip_grad_norm=0.0, warmup_epochs=0.0))
  rs = np.random.RandomState(0)
  batch = {"video": rs.randint(0, 256, (4, T, CROP, CROP, 3)).astype(np.uint8),
           "label": rs.randint(0, NUM_CLASSES, (4,)).astype(np.int32)}
  mesh = train_step.make_mesh(jax.devices()[:1])
  results = []
  for flag in (False, True):
    student = _build("tsm_r18", flag)
    svars = models.init_variables(student, jax.random.key(0), T, CROP)
    tx = optim.create_optimizer(opt_cfg, svars["params"],
                                optim.learning_rate_schedule(opt_cfg, 16, 10, 10))
    step = train_step.make_train_step(student=student, teacher=teacher, tx=tx, mode="reskd",
                                      kd_weight=100.0, mean=(127.5,) * 3, std=(64.0,) * 3)
    state = train_step.create_train_state(svars, tx)
    fn = train_step.shard_train_step(step, mesh, donate=False)
    results.append(fn(state, tvars, batch, jax.random.key(3)))
  (plain_state, plain_metrics), (remat_state, remat_metrics) = results
  assert float(plain_metrics["kd_loss"]) > 0.0
  chex.assert_trees_all_close(remat_metrics, plain_metrics, rtol=1e-5, atol=1e-7)
  chex.assert_trees_all_close(remat_state.params, plain_state.params, rtol=1e-5, atol=1e-7)
  chex.assert_trees_all_close(remat_state.batch_stats, plain_state.batch_stats, rtol=1e-5,
                              atol=1e-7)


def test_remat_flows_from_the_config_and_stays_out_of_the_teacher_and_meta():
  config = default.get_config()
  assert config.model.remat is False
  config.model.remat = True
  config.model.name = "resnet50"
  student = models.build_from_config(config.model, NUM_CLASSES)
  assert student.backbone.remat is True
  swin_cfg = default.get_model_config("swin_s", 112)
  swin_cfg.remat = True
  assert models.build_from_config(swin_cfg, NUM_CLASSES).backbone.remat is True
  slow_cfg = default.get_model_config("slowonly_r50", 112)
  slow_cfg.remat = True
  assert models.build_from_config(slow_cfg, NUM_CLASSES).remat is True
  # A memory/compute choice of this run: not a teacher key, not recorded as architecture,
  # so a run trained with remat is a teacher (or a checkpoint) like any other.
  assert "remat" not in default.get_teacher_config()
  assert "remat" not in meta.architecture(config.model)


def test_a_run_resumes_and_evaluates_with_remat_switched():
  """The checkpoints are the same either way: switching remat is not a changed setting."""
  config = default.get_config()
  saved = config_checks.config_to_json(config)
  config.model.remat = True
  assert config_checks.resume_differences(config, saved) == []
  config_checks.check_resume(config, saved, "wd")
  config_checks.check_eval(config, saved, "wd")
  config.model.width = 32  # an architecture key still is one
  with pytest.raises(errors.ConfigError, match="model.width: 64 -> 32"):
    config_checks.check_resume(config, saved, "wd")
