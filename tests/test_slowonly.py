"""SlowOnly-R50: shapes, parameter count, and equality with the PyTorch transcription of
mmaction2's ResNet3dSlowOnly through the converter (random weights, random BN statistics)."""

import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from reskd_jax import checkpoints, models
from reskd_jax.errors import WeightsError
from reskd_jax.tools import convert_weights, flops
from tests.torch_models import resnet as torch_resnet
from tests.torch_models import slowonly as torch_slowonly

NUM_CLASSES = 400
RTOL = 1e-4  # relative to the largest magnitude of the reference output
TINY = dict(width=8, stage_sizes=(1, 1, 1, 1))


def _abstract_vars(model, frames, res):
  return jax.eval_shape(lambda: models.init_variables(model, jax.random.key(0), frames, res))


def test_parameter_count_and_feature_maps():
  model = models.build_model("slowonly_r50", NUM_CLASSES)
  variables = _abstract_vars(model, 8, 224)
  assert sum(x.size for x in jax.tree.leaves(variables["params"])) == 32_454_096
  assert models.feature_channels(model) == 2048
  student = models.build_model("slowonly_r50", NUM_CLASSES, input_size=112)
  for m, shape in ((model, (8, 7, 7)), (student, (8, 4, 4))):
    out = jax.eval_shape(lambda v, x: m.apply(v, x, return_dict=True), variables,
                         jax.ShapeDtypeStruct((2, 8, 224, 224, 3), jnp.float32))
    chex.assert_shape(out["features"], (2, *shape, 2048))
    chex.assert_shape(out["position_logits"], (2, *shape, NUM_CLASSES))
    chex.assert_shape(out["frame_logits"], (2, 8, NUM_CLASSES))
    chex.assert_shape(out["logits"], (2, NUM_CLASSES))
    assert models.feature_shape(m, 8, 224) == shape


def test_inflated_stages_have_temporal_kernels():
  variables = _abstract_vars(models.build_model("slowonly_r50", 5, **TINY), 4, 32)
  params = variables["params"]
  # inflate (0, 0, 1, 1): conv1 of res4/res5 is (3, 1, 1), of res2/res3 1x1x1; conv2 (1, 3, 3).
  assert params["layer1_0"]["conv1"]["kernel"].shape[:3] == (1, 1, 1)
  assert params["layer2_0"]["conv1"]["kernel"].shape[:3] == (1, 1, 1)
  assert params["layer3_0"]["conv1"]["kernel"].shape[:3] == (3, 1, 1)
  assert params["layer4_0"]["conv1"]["kernel"].shape[:3] == (3, 1, 1)
  assert params["layer4_0"]["conv2"]["kernel"].shape[:3] == (1, 3, 3)
  assert params["conv1"]["kernel"].shape == (1, 7, 7, 3, 8)


def test_tiny_slowonly_runs():
  model = models.build_model("slowonly_r50", 5, **TINY)
  variables = models.init_variables(model, jax.random.key(0), 4, 32)
  # zero_init_residual: the last BN of every block starts at 0, as in mmaction2.
  assert not np.any(np.asarray(variables["params"]["layer1_0"]["bn3"]["scale"]))
  video = jax.random.normal(jax.random.key(1), (2, 4, 32, 32, 3))
  out = jax.jit(lambda v, x: model.apply(v, x, return_dict=True))(variables, video)
  chex.assert_shape(out["features"], (2, 4, 1, 1, 256))
  chex.assert_tree_all_finite(out)
  with pytest.raises(ValueError, match="expected \\(B, T, H, W, 3\\)"):
    model.apply(variables, jnp.zeros((8, 32, 32, 3)))


@pytest.fixture(scope="module")
def reference():
  """A randomised full SlowOnly-R50 (PyTorch) and its converted variables."""
  torch.manual_seed(0)
  tmodel = torch_slowonly.SlowOnly(NUM_CLASSES)
  calib = torch.randn(2, 3, 8, 64, 64)
  torch_slowonly.randomize_(tmodel, seed=0, calibrate_with=calib)
  state = torch_slowonly.mmaction_state_dict(tmodel)
  variables, info = convert_weights.convert_state_dict({"state_dict": state}, "slowonly_r50",
                                               fmt="mmaction")
  assert info["num_classes"] == NUM_CLASSES
  return tmodel, state, variables


def _assert_close(ours, ref, what):
  assert ours.shape == ref.shape, (what, ours.shape, ref.shape)
  scale = max(1.0, float(np.abs(ref).max()))
  err = float(np.abs(ours - ref).max())
  assert err <= RTOL * scale, f"{what}: max |diff| {err:.3g} > {RTOL} x {scale:.3g}"


@pytest.mark.parametrize("resolution", [224, 112])
def test_matches_mmaction2_transcription(reference, resolution):
  tmodel, _, variables = reference
  stats = variables["batch_stats"]["layer3_0"]["bn1"]
  assert np.abs(stats["mean"]).max() > 0.01 and np.abs(stats["var"] - 1).max() > 0.01
  torch.manual_seed(1)
  video = torch.randn(1, 3, 8, 224, 224)  # mmaction2 layout (B, C, T, H, W)
  torch_in = video
  if resolution != 224:  # the student: bilinear, align_corners=False, no antialias
    frames = video.permute(0, 2, 1, 3, 4).reshape(8, 3, 224, 224)
    frames = F.interpolate(frames, size=(resolution, resolution), mode="bilinear",
                           align_corners=False)
    torch_in = frames.reshape(1, 8, 3, resolution, resolution).permute(0, 2, 1, 3, 4)
  with torch.no_grad():
    t_logits, t_feats = tmodel(torch_in, return_features=True)
  fmodel = models.build_model("slowonly_r50", NUM_CLASSES,
                              input_size=resolution if resolution != 224 else None)
  x = jnp.asarray(video.numpy().transpose(0, 2, 3, 4, 1))  # -> (B, T, H, W, C)
  out = jax.jit(lambda v, x: fmodel.apply(v, x, return_dict=True))(variables, x)
  side = 7 if resolution == 224 else 4
  chex.assert_shape(out["features"], (1, 8, side, side, 2048))
  _assert_close(np.asarray(out["logits"]), t_logits.numpy(), "logits")
  _assert_close(np.asarray(out["features"]).transpose(0, 4, 1, 2, 3), t_feats.numpy(),
                "features")


def test_mmaction_checkpoint_file_round_trip(reference, tmp_path, capsys):
  _, state, variables = reference
  path = tmp_path / "slowonly_r50_8x8x1_k400.pth"
  torch.save({"meta": {"epoch": 256, "note": "mmaction2"}, "state_dict": state}, path)
  out = tmp_path / "slowonly"
  assert convert_weights.main(["--format=mmaction", "--arch=slowonly_r50", f"--input={path}",
                       f"--output={out}"]) == 0
  assert "slowonly_r50, 400 classes" in capsys.readouterr().out
  loaded = checkpoints.load_variables(str(out))
  assert checkpoints.load_metadata(str(out))["arch"] == "slowonly_r50"
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b), variables, loaded)
  # The same file for a 2D ResNet: one line naming what it is.
  assert convert_weights.main(["--format=mmaction", "--arch=resnet50", f"--input={path}",
                       f"--output={tmp_path / 'o'}"]) == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1
  assert "checkpoint is a 3D ResNet (SlowOnly)" in err and "not a 2D ResNet like resnet50" in err
  assert "slowonly_r50" in err
  assert not os.path.exists(tmp_path / "o")


def test_missing_and_unexpected_keys_are_listed(reference):
  _, state, _ = reference
  sd = dict(state)
  del sd["backbone.layer3.0.conv1.bn.running_var"]
  sd["backbone.layer3.0.extra.weight"] = torch.zeros(3)
  with pytest.raises(WeightsError) as e:
    convert_weights.convert_state_dict({"state_dict": sd}, "slowonly_r50", fmt="mmaction")
  msg = str(e.value)
  assert "missing keys (1): backbone.layer3.0.conv1.bn.running_var" in msg
  assert "unexpected keys (1): backbone.layer3.0.extra.weight" in msg
  with pytest.raises(WeightsError, match=r"cls_head.fc_cls.weight: checkpoint "
                     r"\(400, 2048\), expected \(7, 2048\)"):
    convert_weights.convert_state_dict({"state_dict": state}, "slowonly_r50", fmt="mmaction",
                               num_classes=7)


def test_other_families_and_depths_are_refused_in_one_line():
  tiny2d = torch_resnet.resnet(50, 5, width=8).state_dict()  # torchvision names
  swin = {"backbone.patch_embed.proj.weight": torch.zeros(96, 3, 2, 4, 4),
          "cls_head.fc_cls.weight": torch.zeros(400, 768)}
  shallow = torch_slowonly.SlowOnly(5, width=8, stage_sizes=(1, 1, 1, 1)).state_dict()
  cases = [
      ({"state_dict": {f"backbone.{k}": v for k, v in tiny2d.items()}},
       "checkpoint is a 2D ResNet (backbone.conv1.weight has shape (8, 3, 7, 7)), not a 3D "
       "ResNet (SlowOnly) like slowonly_r50; pass --arch=one of resnet101"),
      ({"state_dict": swin}, "checkpoint is a Video Swin transformer"),
      ({"state_dict": shallow}, "checkpoint has 1 blocks in layer1, 1 blocks in layer2, "
       "1 blocks in layer3, 1 blocks in layer4: it is not a slowonly_r50"),
  ]
  for sd, needle in cases:
    with pytest.raises(WeightsError) as e:
      convert_weights.convert_state_dict(sd, "slowonly_r50", fmt="mmaction")
    assert needle in str(e.value)
    assert len(str(e.value).splitlines()) == 1
  with pytest.raises(WeightsError, match=r"a 2D ResNet inflated into slowonly_r50 "
                     r"must be a bottleneck ResNet with blocks \(3, 4, 6, 3\); the checkpoint "
                     r"is resnet18"):
    convert_weights.convert_state_dict(torch_resnet.resnet(18, 5, width=8).state_dict(), "slowonly_r50",
                               fmt="torchvision")


def test_torchvision_resnet50_is_inflated_as_mmaction2():
  # mmaction2 inflate_weights: 2D kernel repeated over t and divided by t; BN copied.
  torch.manual_seed(0)
  state = torch_resnet.resnet(50, 1000).state_dict()
  variables, info = convert_weights.convert_state_dict(state, "slowonly_r50", fmt="torchvision")
  assert info["num_classes"] == 1000
  params, stats = variables["params"], variables["batch_stats"]
  w2d = state["layer3.0.conv1.weight"].numpy()  # (O, I, 1, 1) -> (3, 1, 1, I, O) / 3
  kernel = params["layer3_0"]["conv1"]["kernel"]
  assert kernel.shape == (3, 1, 1, 512, 256)
  for t in range(3):
    np.testing.assert_allclose(kernel[t, 0, 0], w2d[:, :, 0, 0].T / 3, rtol=1e-6)
  np.testing.assert_array_equal(params["layer1_0"]["conv2"]["kernel"][0],
                                state["layer1.0.conv2.weight"].numpy().transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(params["conv1"]["kernel"][0],
                                state["conv1.weight"].numpy().transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(stats["layer4_2"]["bn3"]["var"],
                                state["layer4.2.bn3.running_var"].numpy())
  np.testing.assert_array_equal(params["layer2_0"]["downsample_conv"]["kernel"][0],
                                state["layer2.0.downsample.0.weight"].numpy().transpose(2, 3, 1, 0))


def test_gflops_match_table3(capsys):
  # Table 3: 1260 (224) and 332 (112) GFLOPs per video over 10 clips x 3 crops.
  model = models.build_model("slowonly_r50", NUM_CLASSES)
  variables = _abstract_vars(model, 8, 224)
  rows = flops.gflops_table(model, variables, 8, [224, 112], with_xla=False)
  per_view = {row["resolution"]: row["gflops"] for row in rows}
  assert abs(per_view[224] - 41.74) < 0.01 and abs(per_view[112] - 10.99) < 0.01, per_view
  for res, ref in ((224, 1260.0), (112, 332.0)):
    assert abs(30 * per_view[res] - ref) / ref < 0.03, (res, 30 * per_view[res])
  assert flops.main(["--arch=slowonly_r50"]) == 0
  out = capsys.readouterr().out
  assert "30 views" in out and "1252.22" in out and "1260.0" in out and "329.83" in out
