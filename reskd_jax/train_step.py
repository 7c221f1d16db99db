"""The ResKD train and eval steps, written per device and run over a 1-D mesh.

Each step is a per-device function with named-axis collectives
(``lax.pmean`` over ``"data"``), wrapped in ``jax.jit(jax.shard_map(...))``
over a mesh of all devices: pmap's programming model in its current form.

The method itself is a few lines of :func:`make_train_step`'s ``step`` and
its ``loss_fn``: run the frozen teacher on the high-resolution crop
(BatchNorm in train mode, no gradient), run the student on the same crop
resized inside the model, and add ``kd_weight * KD(student, teacher)`` to the
cross-entropy.
"""

from __future__ import annotations

from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from reskd_jax import augment, losses
from reskd_jax.errors import ConfigError

AXIS = "data"


@flax.struct.dataclass
class TrainState:
  step: jnp.ndarray
  params: Any
  batch_stats: Any
  opt_state: Any

  @property
  def variables(self):
    return {"params": self.params, "batch_stats": self.batch_stats}


def create_train_state(variables, tx) -> TrainState:
  params = variables["params"]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    batch_stats=variables.get("batch_stats", {}), opt_state=tx.init(params))


def make_mesh(devices=None) -> Mesh:
  """A 1-D ``data`` mesh over all devices (every host's, in multi-host runs)."""
  devices = np.asarray(devices if devices is not None else jax.devices())
  return Mesh(devices.reshape(-1), (AXIS,))


MODES = ("teacher", "baseline", "reskd")  # config.mode: what a run trains


def check_mode(mode: str, kd_method: str) -> None:
  """``config.mode`` and, for ResKD, ``config.kd_method``: the steps this module can build
  (checked at start-up by ``config_checks.check_config`` and again by the step builder)."""
  if mode not in MODES:
    raise ConfigError(f"config.mode={mode!r}: expected one of {MODES}")
  if mode == "reskd" and kd_method not in losses.KD_METHODS:
    raise ConfigError(f"config.kd_method={kd_method!r}: expected one of {losses.KD_METHODS}")


def make_train_step(*, student, tx, mode: str, teacher=None, kd_method: str = "pixel_feature",
                    kd_weight: float = 100.0, kd_temperature: float = 1.0,
                    teacher_train_mode_bn: bool = True, label_smoothing: float = 0.0,
                    mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), flip: bool = False,
                    dtype=jnp.float32) -> Callable:
  """Returns the per-device step ``(state, teacher_vars, batch, rng) -> (state, metrics)``.

  ``batch`` holds this device's videos: ``video`` uint8 ``(b, T, H, W, 3)``
  (the teacher's crop) and ``label`` int32 ``(b,)``. Must run inside a
  ``shard_map`` (or any context) where the ``"data"`` axis is bound.
  """
  check_mode(mode, kd_method)
  use_kd = mode == "reskd"
  if use_kd and teacher is None:
    raise ValueError("config.mode='reskd' needs a teacher model")

  def step(state: TrainState, teacher_vars, batch, rng):
    rng = jax.random.fold_in(jax.random.fold_in(rng, state.step), jax.lax.axis_index(AXIS))
    flip_rng, dropout_rng = jax.random.split(rng)
    video = augment.preprocess(batch["video"], flip_rng, mean=mean, std=std, flip=flip, dtype=dtype)
    labels = batch["label"]

    teacher_out = None
    if use_kd:
      # The authors' teacher: BatchNorm on batch statistics, no gradient, no update
      # (Video Swin: stochastic depth active, as the release's teacher in train mode).
      if teacher_train_mode_bn:
        teacher_out, _ = teacher.apply(teacher_vars, video, train=True, return_dict=True,
                                       mutable=["batch_stats"],
                                       rngs={"dropout": jax.random.fold_in(dropout_rng, 1)})
      else:
        teacher_out = teacher.apply(teacher_vars, video, train=False, return_dict=True)
      teacher_out = jax.lax.stop_gradient(teacher_out)

    def loss_fn(params):
      out, new_model_state = student.apply(
          {"params": params, "batch_stats": state.batch_stats}, video, train=True,
          return_dict=True, mutable=["batch_stats"], rngs={"dropout": dropout_rng})
      ce = losses.cross_entropy(out["logits"], labels, label_smoothing)
      kd = (losses.kd_loss(kd_method, out, teacher_out, kd_temperature) if use_kd
            else jnp.zeros((), jnp.float32))
      loss = ce + kd_weight * kd
      return loss, (new_model_state["batch_stats"], out["logits"], ce, kd)

    # Differentiate w.r.t. a device-varying copy of the replicated params, so
    # that each device gets its local gradient (as under pmap) instead of
    # shard_map's implicit psum, and average them with an explicit pmean.
    local_params = jax.lax.pcast(state.params, AXIS, to="varying")
    (loss, (batch_stats, logits, ce, kd)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(local_params)
    grads = jax.lax.pmean(grads, AXIS)
    # Each device normalises with its own batch statistics (plain BN, as the
    # release); the running averages are linear in the batch statistics, so
    # averaging them every step equals syncing them before eval/checkpoints.
    batch_stats = jax.lax.pmean(batch_stats, AXIS)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = jax.tree.map(lambda p, u: p + u, state.params, updates)
    new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                              opt_state=opt_state)
    grad_norm = _global_norm(grads)
    metrics = jax.lax.pmean({
        "loss": loss,
        "ce_loss": ce,
        "kd_loss": kd,
        "accuracy": jnp.mean(jnp.argmax(logits, -1) == labels).astype(jnp.float32),
    }, AXIS)
    metrics["grad_norm"] = grad_norm
    # Divergence guard, on device: a step whose loss, gradient norm or new
    # state is not finite keeps the old state; the host reads the flag at
    # its log/checkpoint/eval boundaries and stops there.
    non_finite = (jnp.where(jnp.isfinite(metrics["loss"]), 0, 1)
                  + jnp.where(jnp.isfinite(grad_norm), 0, 2)
                  + jnp.where(all_finite((params, batch_stats)), 0, 4))
    ok = non_finite == 0
    new_state = jax.tree.map(lambda new, old: jnp.where(ok, new, old), new_state, state)
    metrics["non_finite"] = non_finite.astype(jnp.int32)
    return new_state, metrics

  return step


def all_finite(tree) -> jnp.ndarray:
  """True when every floating leaf of ``tree`` is finite (a scalar bool)."""
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def _global_norm(tree):
  return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32)))
                      for x in jax.tree.leaves(tree)))


def shard_train_step(step_fn: Callable, mesh: Mesh, donate: bool = True) -> Callable:
  """``jit(shard_map(step))``: state, teacher and rng replicated, batch split on ``data``."""
  sharded = jax.shard_map(step_fn, mesh=mesh, in_specs=(P(), P(), P(AXIS), P()),
                          out_specs=(P(), P()))
  return jax.jit(sharded, donate_argnums=(0,) if donate else ())


def make_eval_step(*, model, mean, std, dtype=jnp.float32) -> Callable:
  """Per-device eval: ``video`` (b, V, T, H, W, 3) -> class probabilities (b, K).

  Multi-view testing: softmax of every view, averaged over the V views.
  """

  def step(variables, batch):
    video = batch["video"]
    b, v = video.shape[:2]
    flat = video.reshape((b * v,) + video.shape[2:])
    flat = augment.preprocess(flat, None, mean=mean, std=std, flip=False, dtype=dtype)
    logits = model.apply(variables, flat, train=False)
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    return jnp.mean(probs.reshape(b, v, -1), axis=1)

  return step


def shard_eval_step(step_fn: Callable, mesh: Mesh) -> Callable:
  return jax.jit(jax.shard_map(step_fn, mesh=mesh, in_specs=(P(), P(AXIS)),
                               out_specs=P(AXIS)))


def replicate(tree, mesh: Mesh):
  """Places a host pytree on every device of ``mesh`` (replicated)."""
  return jax.device_put(tree, NamedSharding(mesh, P()))
