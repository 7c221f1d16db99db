"""The optimiser of the authors' release, as an optax chain.

mmaction2's TSM optimiser constructor, which the ResKD configs use:
  * conv and linear kernels: weight decay, 1x learning rate;
  * linear (and conv) biases: 2x learning rate, no decay;
  * BatchNorm scale and bias: no decay, 1x learning rate.
SGD with (Nesterov) momentum 0.9 and *coupled* weight decay (PyTorch adds
``wd * w`` to the gradient before momentum), gradients clipped to global L2
norm 20 first (mmcv's OptimizerHook), cosine annealing to 0. The base
learning rate is given per ``base_batch_size`` videos and scaled linearly.
"""

from __future__ import annotations

import flax
import jax
import jax.numpy as jnp
import optax

DECAY, BIAS, NO_DECAY = "decay", "bias", "no_decay"


def param_labels(params):
  """Labels each leaf 'decay' (kernels), 'bias' (non-BN biases) or 'no_decay' (BN)."""
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
  """Cosine annealing to 0 (optional linear warm-up), lr scaled by batch size.

  ``by_epoch`` holds the rate constant within an epoch, as mmcv's
  ``CosineAnnealing`` (by_epoch=True) does.
  """
  base_lr = opt_cfg.base_learning_rate * global_batch_size / opt_cfg.base_batch_size
  warmup_steps = int(opt_cfg.get("warmup_epochs", 0.0) * steps_per_epoch)
  decay_steps = max(num_train_steps - warmup_steps, 1)
  cosine = optax.cosine_decay_schedule(base_lr, decay_steps, alpha=0.0)

  def schedule(step):
    step = jnp.asarray(step)
    if by_epoch and steps_per_epoch > 1:
      step = (step // steps_per_epoch) * steps_per_epoch
    if warmup_steps:
      warm = base_lr * (step + 1) / warmup_steps
      return jnp.where(step < warmup_steps, warm, cosine(step - warmup_steps))
    return cosine(step)

  return schedule


def create_optimizer(opt_cfg, params, schedule) -> optax.GradientTransformation:
  """SGD (the paper) or AdamW (small-scale demos), with the parameter groups above."""
  labels = param_labels(params)
  decay_mask = jax.tree.map(lambda l: l == DECAY, labels)
  bias_mult = opt_cfg.get("bias_lr_mult", 2.0)
  lr_mult = jax.tree.map(lambda l: bias_mult if l == BIAS else 1.0, labels)
  name = opt_cfg.get("name", "sgd")
  chain = []
  if opt_cfg.get("clip_grad_norm"):
    chain.append(optax.clip_by_global_norm(opt_cfg.clip_grad_norm))
  if name == "sgd":
    chain += [
        optax.add_decayed_weights(opt_cfg.weight_decay, mask=decay_mask),
        optax.trace(decay=opt_cfg.momentum, nesterov=opt_cfg.nesterov),
    ]
  elif name == "adamw":
    chain += [
        optax.scale_by_adam(),
        optax.add_decayed_weights(opt_cfg.weight_decay, mask=decay_mask),
    ]
  else:
    raise ValueError(f"config.optimizer.name={name!r}: expected 'sgd' or 'adamw'")
  chain += [
      optax.scale_by_learning_rate(schedule),
      _scale_tree(lr_mult),
  ]
  return optax.chain(*chain)


def _scale_tree(multipliers) -> optax.GradientTransformation:
  """Multiplies each update leaf by a fixed per-leaf factor (per-group lr)."""

  def update_fn(updates, state, params=None):
    del params
    return jax.tree.map(lambda u, m: u * m if m != 1.0 else u, updates, multipliers), state

  return optax.GradientTransformation(lambda _: optax.EmptyState(), update_fn)
