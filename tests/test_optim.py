"""The optimiser: parameter groups, AdamW for the Table 3 families, step decay, accumulation."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from reskd_jax import optim


def _cfg(**overrides):
  cfg = ml_collections.ConfigDict(dict(
      name="adamw", base_learning_rate=0.1, base_batch_size=8, momentum=0.9, nesterov=False,
      weight_decay=0.5, bias_lr_mult=1.0, clip_grad_norm=0.0, warmup_epochs=0.0,
      backbone_lr_mult=0.1, grad_accum_steps=1))
  cfg.update(overrides)
  return cfg


def _params():
  ones = lambda *s: jnp.ones(s, jnp.float32)  # noqa: E731
  return {
      "backbone": {
          "block": {"attn": {"relative_position_bias_table": ones(5, 2),
                             "qkv": {"kernel": ones(4, 12), "bias": ones(12)}},
                    "norm1": {"scale": ones(4), "bias": ones(4)},
                    "bn": {"scale": ones(4), "bias": ones(4)}},
      },
      "fc": {"kernel": ones(4, 3), "bias": ones(3)},
  }


def test_adamw_decays_kernels_only_with_backbone_multiplier():
  params = _params()
  cfg = _cfg()
  tx = optim.create_optimizer(cfg, params, lambda step: 0.1)
  zeros = jax.tree.map(jnp.zeros_like, params)  # Adam's own update is 0: only decay moves
  updates, _ = tx.update(zeros, tx.init(params), params)
  new = optax.apply_updates(params, updates)
  # Kernels: p - lr * mult * wd * p; the head's mult is 1, the backbone's 0.1.
  np.testing.assert_allclose(new["fc"]["kernel"], 1 - 0.1 * 0.5, rtol=1e-6)
  np.testing.assert_allclose(new["backbone"]["block"]["attn"]["qkv"]["kernel"],
                             1 - 0.1 * 0.1 * 0.5, rtol=1e-6)
  # No decay on biases, norms, relative-position bias tables.
  for leaf in (new["fc"]["bias"], new["backbone"]["block"]["attn"]["qkv"]["bias"],
               new["backbone"]["block"]["attn"]["relative_position_bias_table"],
               new["backbone"]["block"]["norm1"]["scale"], new["backbone"]["block"]["bn"]["bias"]):
    np.testing.assert_array_equal(leaf, 1.0)


def test_backbone_multiplier_scales_the_adam_step():
  params = _params()
  tx = optim.create_optimizer(_cfg(weight_decay=0.0), params, lambda step: 0.1)
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  # First Adam step with a constant gradient is -lr * sign(g) (up to eps).
  np.testing.assert_allclose(updates["fc"]["bias"], -0.1, rtol=1e-5)
  np.testing.assert_allclose(updates["backbone"]["block"]["norm1"]["scale"], -0.01, rtol=1e-5)


def test_grad_accumulation_averages_and_the_schedule_counts_updates():
  params = {"w": jnp.zeros((3,))}
  cfg = _cfg(name="sgd", momentum=0.0, weight_decay=0.0, backbone_lr_mult=1.0,
             grad_accum_steps=2)

  def schedule(count):
    return jnp.where(count == 0, 1.0, 0.5)

  tx = optim.create_optimizer(cfg, params, schedule)
  assert isinstance(tx, optax.GradientTransformation)
  state = tx.init(params)
  grads = [{"w": jnp.full((3,), g)} for g in (1.0, 3.0, 5.0, 7.0)]
  out = []
  for g in grads:
    updates, state = tx.update(g, state, params)
    params = optax.apply_updates(params, updates)
    out.append(np.asarray(params["w"]).copy())
  np.testing.assert_array_equal(out[0], 0.0)  # first micro-batch: no update yet
  np.testing.assert_allclose(out[1], -1.0 * 2.0)  # lr 1 (update 0) x mean(1, 3)
  np.testing.assert_allclose(out[2], out[1])
  np.testing.assert_allclose(out[3], -2.0 - 0.5 * 6.0)  # lr 0.5 (update 1) x mean(5, 7)
  assert int(state.gradient_step) == 2


def test_schedule_steps_and_step_decay():
  cfg = _cfg(grad_accum_steps=4, schedule="step", lr_step_epochs=(2, 3), warmup_epochs=1.0)
  batch, per_epoch, total = optim.schedule_steps(cfg, 8, 40, 160)
  assert (batch, per_epoch, total) == (32, 10, 40)
  sched = optim.learning_rate_schedule(cfg, batch, per_epoch, total)
  base = 0.1 * 32 / 8
  lrs = [float(sched(s)) for s in (0, 9, 10, 19, 20, 29, 30, 39)]
  np.testing.assert_allclose(lrs, [base / 10, base / 10, base, base, base / 10, base / 10,
                                   base / 100, base / 100], rtol=1e-6)
  with pytest.raises(ValueError, match="grad_accum_steps=-1"):
    optim.grad_accum_steps(_cfg(grad_accum_steps=-1))
