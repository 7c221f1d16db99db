"""Models: shapes, parameter counts, TSM shift, in-model resize, FLOPs, errors."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reskd_jax import gflops, models
from reskd_jax.tools import flops

TINY = dict(width=8, stage_sizes=(1, 1, 1, 1))


def _abstract_vars(model, frames, res):
  return jax.eval_shape(lambda: models.init_variables(model, jax.random.key(0), frames, res))


@pytest.mark.parametrize("name,expected", [
    ("resnet18", 11_689_512), ("resnet50", 25_557_032), ("resnet152", 60_192_808)])
def test_parameter_counts_match_torchvision(name, expected):
  model = models.build_model(name, 1000)
  variables = _abstract_vars(model, 1, 224)
  assert sum(x.size for x in jax.tree.leaves(variables["params"])) == expected


def _numpy_shift(x, t, div=8):
  nt, h, w, c = x.shape
  x = x.reshape(nt // t, t, h, w, c)
  out = np.zeros_like(x)
  fold = c // div
  out[:, :-1, ..., :fold] = x[:, 1:, ..., :fold]  # from the next frame
  out[:, 1:, ..., fold:2 * fold] = x[:, :-1, ..., fold:2 * fold]  # from the previous
  out[..., 2 * fold:] = x[..., 2 * fold:]
  return out.reshape(nt, h, w, c)


@pytest.mark.parametrize("channels", [8, 16, 20])
def test_temporal_shift_matches_numpy(channels):
  x = np.random.RandomState(0).randn(2 * 4, 3, 2, channels).astype(np.float32)
  got = models.temporal_shift(jnp.asarray(x), num_segments=4)
  np.testing.assert_array_equal(np.asarray(got), _numpy_shift(x, 4))
  # The shift really moves data: frame 0's first fold now holds frame 1's values.
  assert not np.array_equal(np.asarray(got), x)


@pytest.mark.parametrize("name", models.names("resnet"))
@pytest.mark.parametrize("tsm", [False, True])
def test_output_shapes_every_depth(name, tsm):
  model = models.build_model(name, 7, tsm=tsm, num_segments=4, width=8)
  video = jax.ShapeDtypeStruct((2, 4, 64, 64, 3), jnp.float32)
  variables = _abstract_vars(model, 4, 64)
  logits = jax.eval_shape(lambda v, x: model.apply(v, x), variables, video)
  chex.assert_shape(logits, (2, 7))
  assert logits.dtype == jnp.float32
  logits, feats = jax.eval_shape(lambda v, x: model.apply(v, x, return_features=True),
                                 variables, video)
  channels = models.feature_channels(model)
  chex.assert_shape(feats, (2, 4, 2, 2, channels))
  chex.assert_shape(logits, (2, 7))
  out = jax.eval_shape(lambda v, x: model.apply(v, x, return_dict=True), variables, video)
  chex.assert_shape(out["frame_logits"], (2, 4, 7))
  chex.assert_shape(out["position_logits"], (2, 4, 2, 2, 7))


def test_tiny_model_runs_and_dict_outputs_agree():
  model = models.build_model("resnet18", 5, tsm=True, num_segments=4, **TINY)
  variables = models.init_variables(model, jax.random.key(0), 4, 32)
  # Non-zero head so that the logits carry signal.
  variables = jax.tree_util.tree_map_with_path(
      lambda p, x: jax.random.normal(jax.random.key(1), x.shape) if "fc" in str(p) else x,
      variables)
  video = jax.random.normal(jax.random.key(2), (3, 4, 32, 32, 3))
  out = model.apply(variables, video, return_dict=True)
  chex.assert_trees_all_equal_dtypes(out["logits"], jnp.zeros((), jnp.float32))
  # Linear head: the clip logits are the mean of the frame logits and of the
  # position logits (dropout is off in eval).
  chex.assert_trees_all_close(out["logits"], out["frame_logits"].mean(1), atol=1e-5)
  chex.assert_trees_all_close(out["logits"], out["position_logits"].mean((1, 2, 3)), atol=1e-5)
  # Features are after the final ReLU: never negative, and some are cut to exactly 0 (not
  # so before it).
  assert float(out["features"].min()) == 0.0


def test_bfloat16_compute():
  model = models.build_model("resnet18", 5, dtype=jnp.bfloat16, **TINY)
  variables = models.init_variables(model, jax.random.key(0), 2, 32)
  logits, feats = model.apply(variables, jnp.ones((1, 2, 32, 32, 3)), return_features=True)
  assert feats.dtype == jnp.bfloat16
  assert jax.tree.leaves(variables["params"])[0].dtype == jnp.float32


@pytest.mark.parametrize("strides,side", [((1, 2, 2, 2), 7), ((1, 1, 2, 2), 14),
                                           ((1, 1, 1, 2), 28), ((1, 2, 2, 1), 14)])
def test_stage_strides_change_feature_size(strides, side):
  model = models.build_model("resnet50", 3, strides=strides, width=8)
  variables = _abstract_vars(model, 1, 224)
  _, feats = jax.eval_shape(lambda v, x: model.apply(v, x, return_features=True), variables,
                            jax.ShapeDtypeStruct((1, 1, 224, 224, 3), jnp.float32))
  assert feats.shape[2:4] == (side, side)
  assert models.feature_size(model, 224) == side


@pytest.mark.parametrize("res,side", [(224, 7), (112, 4), (144, 5), (56, 2)])
def test_feature_size_at_resolutions(res, side):
  model = models.build_model("resnet50", 3, width=8)
  assert models.feature_size(model, res) == side
  _, feats = jax.eval_shape(lambda v, x: model.apply(v, x, return_features=True),
                            _abstract_vars(model, 1, res),
                            jax.ShapeDtypeStruct((1, 1, res, res, 3), jnp.float32))
  assert feats.shape[2] == side


def _torch_bilinear_downsample_2x(x):
  """PyTorch interpolate(scale 1/2, bilinear, align_corners=False): mean of 2x2."""
  return 0.25 * (x[..., 0::2, 0::2, :] + x[..., 1::2, 0::2, :] + x[..., 0::2, 1::2, :]
                 + x[..., 1::2, 1::2, :])


def test_in_model_resize_is_pytorch_bilinear_without_antialias():
  model = models.build_model("resnet18", 5, input_size=32, **TINY)
  plain = models.build_model("resnet18", 5, **TINY)
  variables = models.init_variables(plain, jax.random.key(0), 2, 32)
  video = np.random.RandomState(0).rand(1, 2, 64, 64, 3).astype(np.float32)
  got = model.apply(variables, video, return_features=True)[1]
  want = plain.apply(variables, _torch_bilinear_downsample_2x(video), return_features=True)[1]
  chex.assert_trees_all_close(got, want, atol=1e-5, rtol=1e-5)
  # An antialiased resize would differ: the test can tell the two apart.
  aa = jax.image.resize(video, (1, 2, 32, 32, 3), "bilinear", antialias=True)
  assert np.abs(np.asarray(aa) - _torch_bilinear_downsample_2x(video)).max() > 1e-3


def test_no_retrace_on_repeated_calls():
  model = models.build_model("resnet18", 5, **TINY)
  variables = models.init_variables(model, jax.random.key(0), 2, 32)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def forward(v, x):
    return model.apply(v, x)

  for i in range(3):
    forward(variables, jnp.full((2, 2, 32, 32, 3), float(i)))


def test_rank4_input_with_num_segments():
  model = models.build_model("resnet18", 5, tsm=True, num_segments=2, **TINY)
  variables = models.init_variables(model, jax.random.key(0), 2, 32)
  x = jax.random.normal(jax.random.key(1), (2, 2, 32, 32, 3))
  chex.assert_trees_all_close(model.apply(variables, x.reshape(4, 32, 32, 3)),
                              model.apply(variables, x), atol=1e-6)


@pytest.mark.parametrize("shape,match", [
    ((2, 32, 32), "rank 3"),
    ((1, 2, 32, 32, 4), "4 channels"),
    ((1, 2, 32, 32, 3, 1), "rank 6"),
    ((1, 2, 4, 4, 3), "smaller than the backbone's total stride 32"),
])
def test_bad_input_shapes_are_named(shape, match):
  model = models.build_model("resnet18", 5, **TINY)
  variables = _abstract_vars(model, 2, 32)
  with pytest.raises(ValueError, match=match):
    model.apply(variables, jnp.zeros(shape))


def test_num_segments_not_dividing_batch():
  model = models.build_model("resnet18", 5, tsm=True, num_segments=3, **TINY)
  variables = _abstract_vars(model, 3, 32)
  with pytest.raises(ValueError, match="num_segments=3 does not divide the batch of 4"):
    model.apply(variables, jnp.zeros((4, 32, 32, 3)))


def test_unknown_model_name():
  with pytest.raises(ValueError, match="unknown model name 'resnet42'"):
    models.build_model("resnet42", 10)
  with pytest.raises(ValueError, match="strides="):
    models.build_model("resnet50", 10, strides=(1, 3, 2, 2))


# The paper's Table 4 (R50 TSN, 16 frames) and Table 2 (TSM-R50, 8 frames).
TABLE4 = {224: 65.9, 144: 28.3, 112: 17.4, 96: 12.1, 72: 8.3, 56: 4.8}
TABLE2 = {224: 32.7, 112: 8.7}


def test_gflops_match_paper_table4():
  model = models.build_model("resnet50", 200)
  variables = _abstract_vars(model, 1, 224)
  rows = flops.gflops_table(model, variables, 16, sorted(TABLE4), with_xla=False)
  for row in rows:
    ref = TABLE4[row["resolution"]]
    assert abs(row["gflops"] - ref) / ref < 0.03, row


def test_gflops_match_paper_table2_tsm():
  model = models.build_model("resnet50", 174, tsm=True, num_segments=8)
  variables = _abstract_vars(model, 8, 224)
  rows = flops.gflops_table(model, variables, 8, sorted(TABLE2), with_xla=False)
  for row in rows:
    ref = TABLE2[row["resolution"]]
    assert abs(row["gflops"] - ref) / ref < 0.03, row


def test_mac_counter_on_a_known_conv():
  # One 3x3 conv, 4 -> 8 channels, stride 1, padding 1, on 10x10: every
  # output position pays 3*3*4 multiply-adds, padding taps included.
  def f(x, w):
    return jax.lax.conv_general_dilated(x, w, (1, 1), [(1, 1), (1, 1)],
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))
  jaxpr = jax.make_jaxpr(f)(jnp.zeros((1, 10, 10, 4)), jnp.zeros((3, 3, 4, 8)))
  assert gflops.count_macs(jaxpr) == 10 * 10 * 8 * 3 * 3 * 4
  jaxpr = jax.make_jaxpr(jnp.dot)(jnp.zeros((5, 6)), jnp.zeros((6, 7)))
  assert gflops.count_macs(jaxpr) == 5 * 6 * 7


def test_gflops_rejects_too_small_resolution():
  model = models.build_model("resnet18", 5, **TINY)
  with pytest.raises(ValueError, match="resolution 16 is smaller than the model's total stride 32"):
    flops.gflops_table(model, _abstract_vars(model, 1, 32), 1, [16])


def test_flops_command_prints_the_paper_table(capsys):
  assert flops.main(["--tsm"]) == 0
  out = capsys.readouterr().out
  assert "32.70" in out and "8.61" in out and "32.7" in out  # ours beside the paper's
  assert flops.main(["--resolutions=16"]) == 2
  assert "16x16 is smaller than the backbone's total stride 32" in capsys.readouterr().err
