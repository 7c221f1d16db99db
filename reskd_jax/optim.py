"""The optimiser of the authors' release, as an optax chain.

mmaction2's TSM optimiser constructor, which the ResKD configs use:
  * conv and linear kernels: weight decay, 1x learning rate;
  * linear (and conv) biases: 2x learning rate, no decay;
  * BatchNorm scale and bias: no decay, 1x learning rate.
SGD with (Nesterov) momentum 0.9 and *coupled* weight decay (PyTorch adds
``wd * w`` to the gradient before momentum), gradients clipped to global L2
norm 20 first (mmcv's OptimizerHook), cosine annealing to 0. The base
learning rate is given per ``base_batch_size`` videos and scaled linearly.

For the Table 3 architectures (``optimizer.name = "adamw"``): decoupled
weight decay on kernels only (not on norms, biases or relative-position bias
tables), ``backbone_lr_mult`` for everything but the classifier ``fc`` (0.1
for Video Swin), linear warm-up then cosine, and gradient accumulation over
``grad_accum_steps`` micro-batches (``optax.MultiSteps``). With accumulation
the schedule counts optimizer updates, the trainer's step counts micro-batches
(:func:`schedule_steps` converts).
"""

from __future__ import annotations

import flax
import jax
import jax.numpy as jnp
import optax

from reskd_jax.models import HEAD_NAME

DECAY, BIAS, NO_DECAY = "decay", "bias", "no_decay"


def param_labels(params):
  """Labels each leaf 'decay' (kernels), 'bias' (non-norm biases) or 'no_decay' (norms and
  anything else, e.g. relative-position bias tables)."""
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params))

  def label(path):
    leaf = path[-1]
    is_norm = (*path[:-1], "scale") in flat  # BatchNorm: scale and bias
    if leaf == "kernel":
      return DECAY
    if leaf == "bias" and not is_norm:
      return BIAS
    return NO_DECAY

  return flax.traverse_util.unflatten_dict({k: label(k) for k in flat})


def learning_rate_schedule(opt_cfg, global_batch_size: int, steps_per_epoch: int,
                           num_train_steps: int, by_epoch: bool = True):
  """Cosine annealing to 0, or step decay, after an optional linear warm-up; lr scaled by
  batch size.

  ``optimizer.schedule``: ``"cosine"`` (default) or ``"step"`` (mmcv's step
  policy: x ``lr_step_gamma`` (0.1) at each epoch of ``lr_step_epochs``,
  counted from the start, as the released SlowOnly runs). ``by_epoch`` holds
  the rate constant within an epoch, as mmcv's ``by_epoch=True`` does.
  """
  base_lr = opt_cfg.base_learning_rate * global_batch_size / opt_cfg.base_batch_size
  warmup_steps = int(opt_cfg.get("warmup_epochs", 0.0) * steps_per_epoch)
  decay_steps = max(num_train_steps - warmup_steps, 1)
  kind = opt_cfg.get("schedule", "cosine")
  if kind == "cosine":
    after_warmup = optax.cosine_decay_schedule(base_lr, decay_steps, alpha=0.0)
  elif kind == "step":
    bounds = jnp.asarray([int(e * steps_per_epoch) for e in opt_cfg.lr_step_epochs])
    gamma = opt_cfg.get("lr_step_gamma", 0.1)

    def after_warmup(s):
      return base_lr * gamma**jnp.sum(s + warmup_steps >= bounds)
  else:
    raise ValueError(f"config.optimizer.schedule={kind!r}: expected 'cosine' or 'step'")

  def schedule(step):
    step = jnp.asarray(step)
    if by_epoch and steps_per_epoch > 1:
      step = (step // steps_per_epoch) * steps_per_epoch
    if warmup_steps:
      warm = base_lr * (step + 1) / warmup_steps
      return jnp.where(step < warmup_steps, warm, after_warmup(step - warmup_steps))
    return after_warmup(step)

  return schedule


def grad_accum_steps(opt_cfg) -> int:
  """Micro-batches per optimizer update (``optimizer.grad_accum_steps``, default 1)."""
  k = int(opt_cfg.get("grad_accum_steps", 1) or 1)
  if k < 1:
    raise ValueError(f"config.optimizer.grad_accum_steps={k} must be positive")
  return k


def schedule_steps(opt_cfg, global_batch_size: int, steps_per_epoch: int,
                   num_train_steps: int):
  """(videos per update, updates per epoch, total updates) for :func:`learning_rate_schedule`
  from the trainer's micro-batch counts."""
  k = grad_accum_steps(opt_cfg)
  return global_batch_size * k, max(steps_per_epoch // k, 1), max(num_train_steps // k, 1)


def _lr_multipliers(params, labels, bias_mult: float, backbone_mult: float):
  """Per-leaf lr factor: ``bias_mult`` for biases, ``backbone_mult`` outside the head."""
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(labels))
  mult = {path: (bias_mult if label == BIAS else 1.0)
          * (1.0 if path[0] == HEAD_NAME else backbone_mult) for path, label in flat.items()}
  return flax.traverse_util.unflatten_dict(mult)


def create_optimizer(opt_cfg, params, schedule) -> optax.GradientTransformation:
  """SGD (the paper) or AdamW (Table 3 architectures, small demos), with the groups above.

  With ``grad_accum_steps > 1`` the chain is wrapped in ``optax.MultiSteps``:
  gradients are averaged over that many calls and the inner optimizer (and
  its schedule) advances once per average.
  """
  labels = param_labels(params)
  decay_mask = jax.tree.map(lambda l: l == DECAY, labels)
  bias_mult = opt_cfg.get("bias_lr_mult", 2.0)
  lr_mult = _lr_multipliers(params, labels, bias_mult, opt_cfg.get("backbone_lr_mult", 1.0))
  name = opt_cfg.get("name", "sgd")
  chain = []
  if opt_cfg.get("clip_grad_norm"):
    chain.append(optax.clip_by_global_norm(opt_cfg.clip_grad_norm))
  if name == "sgd":
    chain += [
        optax.add_decayed_weights(opt_cfg.weight_decay, mask=decay_mask),
        optax.trace(decay=opt_cfg.momentum, nesterov=opt_cfg.nesterov),
    ]
  elif name == "adamw":  # PyTorch AdamW: betas (0.9, 0.999), eps 1e-8, decoupled decay
    chain += [
        optax.scale_by_adam(b1=opt_cfg.get("b1", 0.9), b2=opt_cfg.get("b2", 0.999), eps=1e-8),
        optax.add_decayed_weights(opt_cfg.weight_decay, mask=decay_mask),
    ]
  else:
    raise ValueError(f"config.optimizer.name={name!r}: expected 'sgd' or 'adamw'")
  chain += [
      optax.scale_by_learning_rate(schedule),
      _scale_tree(lr_mult),
  ]
  tx = optax.chain(*chain)
  k = grad_accum_steps(opt_cfg)
  return optax.MultiSteps(tx, every_k_schedule=k).gradient_transformation() if k > 1 else tx


def _scale_tree(multipliers) -> optax.GradientTransformation:
  """Multiplies each update leaf by a fixed per-leaf factor (per-group lr)."""

  def update_fn(updates, state, params=None):
    del params
    return jax.tree.map(lambda u, m: u * m if m != 1.0 else u, updates, multipliers), state

  return optax.GradientTransformation(lambda _: optax.EmptyState(), update_fn)
