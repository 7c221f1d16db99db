"""Losses: cross-entropy and the ResKD distillation terms. Pure functions.

Shapes: feature maps ``(B, T, h, w, C)``, clip logits ``(B, K)``, frame logits
``(B, T, K)``, position logits ``(B, T, h, w, K)``. Every loss returns a
float32 scalar averaged the way the authors' PyTorch code averages, without
the KD weight alpha (the trainer multiplies).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def cross_entropy(logits, labels, label_smoothing: float = 0.0):
  """Mean softmax cross-entropy with integer labels (optional label smoothing)."""
  logits = logits.astype(jnp.float32)
  num_classes = logits.shape[-1]
  targets = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  if label_smoothing:
    targets = optax.smooth_labels(targets, label_smoothing)
  return jnp.mean(optax.softmax_cross_entropy(logits, targets))


def resize_to(student_features, spatial_size):
  """Bilinear resize of ``(B, T, h, w, C)`` to ``spatial_size`` = (H, W).

  Half-pixel centres, i.e. PyTorch ``interpolate(mode="bilinear",
  align_corners=False)``; antialiasing off so that downsizing matches too.
  """
  b, t, h, w, c = student_features.shape
  if (h, w) == tuple(spatial_size):
    return student_features
  return jax.image.resize(student_features, (b, t, *spatial_size, c), method="bilinear",
                          antialias=False)


def pixel_feature_kd(student_features, teacher_features):
  """The paper's KD: MSE(teacher map, bilinear-resized student map).

  Averaged over every element (B, T, H, W, C) of the teacher's map. Channel
  counts must agree (use :func:`pixel_logit_kd` when they do not).
  """
  if student_features.ndim != 5 or teacher_features.ndim != 5:
    raise ValueError(f"pixel_feature_kd takes (B, T, h, w, C) maps; got student "
                     f"{student_features.shape} and teacher {teacher_features.shape}")
  if (student_features.shape[:2] != teacher_features.shape[:2]
      or student_features.shape[-1] != teacher_features.shape[-1]):
    raise ValueError(f"student map {student_features.shape} cannot be aligned with teacher "
                     f"map {teacher_features.shape}: batch, frames and channels must agree")
  student = resize_to(student_features.astype(jnp.float32), teacher_features.shape[2:4])
  teacher = jax.lax.stop_gradient(teacher_features.astype(jnp.float32))
  return jnp.mean(jnp.square(student - teacher))


def _kl(student_logits, teacher_logits, temperature, per_element: bool):
  """KL(softmax(t/T) || softmax(s/T)) times T^2, the teacher held constant.

  ``per_element``: averaged over every element, positions x classes (PyTorch
  ``KLDivLoss(reduction="mean")``, the authors' pixel-level logit KD);
  otherwise summed over classes and averaged over the rest (Hinton's KD).
  """
  s = student_logits.astype(jnp.float32) / temperature
  t = jax.lax.stop_gradient(teacher_logits.astype(jnp.float32)) / temperature
  log_p_s = jax.nn.log_softmax(s, axis=-1)
  log_p_t = jax.nn.log_softmax(t, axis=-1)
  kl = jnp.exp(log_p_t) * (log_p_t - log_p_s)
  if not per_element:
    kl = jnp.sum(kl, axis=-1)
  return jnp.mean(kl) * temperature**2


def clip_kd(student_logits, teacher_logits, temperature: float = 1.0):
  """Clip-level KD: KL between clip logits ``(B, K)`` (Table 5, first row)."""
  _check_same(student_logits, teacher_logits, "clip_kd", 2)
  return _kl(student_logits, teacher_logits, temperature, per_element=False)


def frame_kd(student_frame_logits, teacher_frame_logits, temperature: float = 1.0):
  """Frame-level KD: KL on per-frame logits ``(B, T, K)``, averaged over B and T."""
  _check_same(student_frame_logits, teacher_frame_logits, "frame_kd", 3)
  return _kl(student_frame_logits, teacher_frame_logits, temperature, per_element=False)


def pixel_logit_kd(student_position_logits, teacher_position_logits,
                   temperature: float = 4.0):
  """Pixel-level logit KD (paper appendix A.1; Swin-B -> Swin-S).

  Per-position logits ``(B, T, h, w, K)``; the student map is resized
  bilinearly to the teacher's spatial size, then KL is averaged over every
  position and class (PyTorch ``reduction="mean"``) and multiplied by T^2.
  """
  s, t = student_position_logits, teacher_position_logits
  if s.ndim != 5 or t.ndim != 5 or s.shape[:2] != t.shape[:2] or s.shape[-1] != t.shape[-1]:
    raise ValueError(f"pixel_logit_kd: student {s.shape} and teacher {t.shape} must be "
                     f"(B, T, h, w, K) with equal B, T and K")
  s = resize_to(s.astype(jnp.float32), t.shape[2:4])
  return _kl(s, t, temperature, per_element=True)


def _check_same(s, t, name, ndim):
  if s.ndim != ndim or s.shape != t.shape:
    raise ValueError(f"{name}: student {s.shape} and teacher {t.shape} must have the same "
                     f"rank-{ndim} shape")


KD_METHODS = ("pixel_feature", "pixel_logit", "frame", "clip")


def kd_loss(method: str, student_out, teacher_out, temperature: float):
  """Dispatches on ``method`` given the models' ``return_dict`` outputs."""
  if method == "pixel_feature":
    return pixel_feature_kd(student_out["features"], teacher_out["features"])
  if method == "pixel_logit":
    return pixel_logit_kd(student_out["position_logits"], teacher_out["position_logits"],
                          temperature)
  if method == "frame":
    return frame_kd(student_out["frame_logits"], teacher_out["frame_logits"], temperature)
  if method == "clip":
    return clip_kd(student_out["logits"], teacher_out["logits"], temperature)
  raise ValueError(f"unknown KD method {method!r}; expected one of {KD_METHODS}")
