"""KD losses against NumPy references (and PyTorch's interpolate where installed)."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from reskd_jax import losses, train_step


def _src_index(out_size, in_size):
  """PyTorch area_pixel_compute_source_index, align_corners=False."""
  src = (np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5
  src = np.maximum(src, 0.0)
  i0 = np.floor(src).astype(int)
  i1 = np.minimum(i0 + 1, in_size - 1)
  return i0, i1, src - i0


def torch_bilinear(x, out_h, out_w):
  """NumPy `interpolate(mode="bilinear", align_corners=False)` on (..., H, W, C)."""
  h0, h1, lh = _src_index(out_h, x.shape[-3])
  w0, w1, lw = _src_index(out_w, x.shape[-2])
  top = x[..., h0, :, :] * (1 - lh)[:, None, None] + x[..., h1, :, :] * lh[:, None, None]
  return top[..., w0, :] * (1 - lw)[:, None] + top[..., w1, :] * lw[:, None]


def _rand(shape, seed):
  return np.random.RandomState(seed).randn(*shape).astype(np.float32)


def _np_kl(s, t, temp, reduce):
  def log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))
  lt, ls = log_softmax(t / temp), log_softmax(s / temp)
  kl = np.exp(lt) * (lt - ls)
  return (kl.mean() if reduce == "mean" else kl.sum(-1).mean()) * temp**2


@pytest.mark.parametrize("student_side,teacher_side", [(4, 7), (2, 4), (5, 5), (3, 7)])
def test_pixel_feature_kd_matches_numpy(student_side, teacher_side):
  s = _rand((2, 3, student_side, student_side, 6), 0)
  t = _rand((2, 3, teacher_side, teacher_side, 6), 1)
  want = np.mean((torch_bilinear(s, teacher_side, teacher_side) - t) ** 2)
  got = losses.pixel_feature_kd(jnp.asarray(s), jnp.asarray(t))
  chex.assert_shape(got, ())
  np.testing.assert_allclose(float(got), want, rtol=1e-5)


def test_resize_matches_torch_interpolate():
  torch = pytest.importorskip("torch")
  s = _rand((2, 3, 4, 4, 5), 2)
  got = np.asarray(losses.resize_to(jnp.asarray(s), (7, 7)))
  ref = torch.nn.functional.interpolate(
      torch.from_numpy(s.reshape(6, 4, 4, 5)).permute(0, 3, 1, 2), size=(7, 7),
      mode="bilinear", align_corners=False).permute(0, 2, 3, 1).numpy().reshape(2, 3, 7, 7, 5)
  np.testing.assert_allclose(got, ref, atol=1e-5)
  np.testing.assert_allclose(torch_bilinear(s, 7, 7), ref, atol=1e-5)


def test_zero_when_student_equals_teacher():
  f = jnp.asarray(np.abs(_rand((2, 2, 4, 4, 8), 3)))
  assert float(losses.pixel_feature_kd(f, f)) == 0.0
  logits = jnp.asarray(_rand((2, 5), 4))
  np.testing.assert_allclose(float(losses.clip_kd(logits, logits, 4.0)), 0.0, atol=1e-6)
  pos = jnp.asarray(_rand((2, 2, 3, 3, 5), 5))
  np.testing.assert_allclose(float(losses.pixel_logit_kd(pos, pos, 4.0)), 0.0, atol=1e-6)


def test_gradient_reaches_student_never_teacher():
  s = jnp.asarray(_rand((2, 2, 4, 4, 8), 6))
  t = jnp.asarray(_rand((2, 2, 7, 7, 8), 7))
  gs, gt = jax.grad(losses.pixel_feature_kd, argnums=(0, 1))(s, t)
  assert float(jnp.abs(gs).max()) > 0.0
  assert float(jnp.abs(gt).max()) == 0.0
  # The KL's gradient towards the teacher's distribution: T (softmax(s/T) - softmax(t/T)) over
  # the number of averaged rows (clips; clips x frames), or over every element (pixel-level,
  # PyTorch's reduction="mean"; equal maps, so no resize).
  for fn, shape, temp, count in [(losses.clip_kd, (2, 5), 1.0, 2),
                                 (losses.frame_kd, (2, 3, 5), 1.0, 6),
                                 (losses.pixel_logit_kd, (2, 3, 2, 2, 5), 4.0, 120)]:
    a, b = jnp.asarray(_rand(shape, 8)), jnp.asarray(_rand(shape, 9))
    ga, gb = jax.grad(fn, argnums=(0, 1))(a, b)
    want = temp * (jax.nn.softmax(a / temp) - jax.nn.softmax(b / temp)) / count
    np.testing.assert_allclose(ga, want, atol=1e-6, err_msg=fn.__name__)
    assert float(jnp.abs(ga).max()) > 1e-3, fn.__name__  # the comparison above means something
    assert float(jnp.abs(gb).max()) == 0.0, fn.__name__


def test_same_value_under_jit_and_split_over_8_devices():
  s = jnp.asarray(_rand((8, 2, 4, 4, 8), 10))
  t = jnp.asarray(_rand((8, 2, 7, 7, 8), 11))
  eager = losses.pixel_feature_kd(s, t)
  jitted = jax.jit(losses.pixel_feature_kd)(s, t)
  mesh = train_step.make_mesh()
  assert mesh.size == 8

  @jax.jit
  @functools.partial(jax.shard_map, mesh=mesh, in_specs=(P("data"), P("data")), out_specs=P())
  def sharded(a, b):
    return jax.lax.pmean(losses.pixel_feature_kd(a, b), "data")

  chex.assert_trees_all_close(eager, jitted, rtol=1e-6)
  chex.assert_trees_all_close(eager, sharded(s, t), rtol=1e-6)


def test_bfloat16_inputs_accepted():
  s = _rand((2, 2, 4, 4, 8), 12)
  t = _rand((2, 2, 7, 7, 8), 13)
  got = losses.pixel_feature_kd(jnp.asarray(s, jnp.bfloat16), jnp.asarray(t, jnp.bfloat16))
  assert got.dtype == jnp.float32
  want = losses.pixel_feature_kd(jnp.asarray(s), jnp.asarray(t))
  np.testing.assert_allclose(float(got), float(want), rtol=2e-2)
  got = losses.clip_kd(jnp.asarray(s[:, 0, 0, 0], jnp.bfloat16), jnp.asarray(t[:, 0, 0, 0], jnp.bfloat16))
  assert got.dtype == jnp.float32


@pytest.mark.parametrize("temp", [1.0, 4.0])
def test_kl_losses_match_numpy(temp):
  s, t = _rand((3, 6), 14), _rand((3, 6), 15)
  np.testing.assert_allclose(float(losses.clip_kd(s, t, temp)), _np_kl(s, t, temp, "batch"),
                             rtol=1e-5)
  s, t = _rand((3, 4, 6), 16), _rand((3, 4, 6), 17)
  np.testing.assert_allclose(float(losses.frame_kd(s, t, temp)), _np_kl(s, t, temp, "batch"),
                             rtol=1e-5)
  s, t = _rand((2, 3, 4, 4, 6), 18), _rand((2, 3, 7, 7, 6), 19)
  want = _np_kl(torch_bilinear(s, 7, 7), t, temp, "mean")
  np.testing.assert_allclose(float(losses.pixel_logit_kd(s, t, temp)), want, rtol=1e-5)


def test_cross_entropy_matches_numpy():
  logits, labels = _rand((4, 5), 20), np.array([0, 3, 4, 1])
  shifted = logits - logits.max(-1, keepdims=True)
  logp = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
  want = -logp[np.arange(4), labels].mean()
  np.testing.assert_allclose(float(losses.cross_entropy(logits, labels)), want, rtol=1e-5)
  smooth = float(losses.cross_entropy(logits, labels, label_smoothing=0.1))
  targets = np.full((4, 5), 0.1 / 5)
  targets[np.arange(4), labels] += 0.9
  np.testing.assert_allclose(smooth, -(targets * logp).sum(-1).mean(), rtol=1e-5)


def test_misaligned_maps_are_refused():
  with pytest.raises(ValueError, match="cannot be aligned"):
    losses.pixel_feature_kd(jnp.zeros((2, 2, 4, 4, 512)), jnp.zeros((2, 2, 7, 7, 2048)))
  with pytest.raises(ValueError, match="unknown KD method 'attention'"):
    losses.kd_loss("attention", {}, {}, 1.0)
