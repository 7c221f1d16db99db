"""Video Swin: equality with a PyTorch reference of the release, sizes, conversion, bad input."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from reskd_jax import checkpoints, gflops
from reskd_jax.errors import WeightsError
from reskd_jax.models import build_model, feature_shape, swin
from reskd_jax.tools import convert_weights
from tests.torch_models import resnet as torch_resnet
from tests.torch_models import swin as torch_swin

TINY = {"embed_dim": 8, "depths": (2, 2, 2, 2), "num_heads": (1, 2, 2, 4),
        "window_size": (4, 3, 3)}
SWIN_S = {"embed_dim": 96, "depths": (2, 2, 18, 2), "num_heads": (3, 6, 12, 24)}


def _torch_ref(num_classes, seed=0, **options):
  torch.manual_seed(seed)
  return torch_swin.randomize_(torch_swin.Recognizer3D(num_classes, **options), seed).eval()


def _torch_forward(ref, video):
  with torch.no_grad():
    logits, feats = ref(torch.from_numpy(video).permute(0, 4, 1, 2, 3))
  return logits.numpy(), feats.permute(0, 2, 3, 4, 1).numpy()


def _assert_rel_close(got, want, rtol=1e-4):
  got, want = np.asarray(got), np.asarray(want)
  assert got.shape == want.shape
  err = np.abs(got - want).max() / np.abs(want).max()
  assert err < rtol, f"relative error {err:.2e}"


def _video(t, size, seed=1):
  return np.random.RandomState(seed).randn(1, t, size, size, 3).astype(np.float32)


@pytest.mark.parametrize("name, count", [("swin_t", 28_158_070), ("swin_s", 49_816_678),
                                         ("swin_b", 88_048_984)])
def test_parameter_counts_with_400_classes(name, count):
  model = build_model(name, 400)
  shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x),
                          jax.ShapeDtypeStruct((1, 2, 32, 32, 3), jnp.float32))
  assert sum(math.prod(x.shape) for x in jax.tree.leaves(shapes)) == count
  assert shapes["params"]["backbone"]["layers_0"]["blocks_0"]["attn"][
      "relative_position_bias_table"].shape[0] == 2535


@pytest.fixture(scope="module")
def swin_s_pair():
  ref = _torch_ref(400, **SWIN_S)
  variables, info = convert_weights.convert_state_dict({"state_dict": ref.state_dict()}, "swin_s",
                                             fmt="videoswin")
  assert info["num_classes"] == 400
  assert any(k.endswith("relative_position_index") for k in info["ignored"])
  return ref, build_model("swin_s", 400), variables


@pytest.mark.parametrize("resolution", [224, 112])
def test_swin_s_matches_torch_reference(swin_s_pair, resolution):
  # 8 frames: the temporal window shrinks to 4 (shift 0). At 112 stage 4 is 4x4 (7 padded
  # and merged), the window shrinks to (4, 4, 4) and the bias comes from the top-left
  # [:64, :64] of the full 8x7x7 index, as in the release.
  ref, model, variables = swin_s_pair
  video = _video(8, resolution)
  want_logits, want_feats = _torch_forward(ref, video)
  logits, feats = jax.jit(lambda v, x: model.apply(v, x, return_features=True))(variables,
                                                                                 video)
  side = 7 if resolution == 224 else 4
  chex.assert_shape(feats, (1, 4, side, side, 768))
  assert feature_shape(model, 8, resolution) == (4, side, side)
  _assert_rel_close(logits, want_logits)
  _assert_rel_close(feats, want_feats)


def test_tiny_matches_torch_with_shrunk_windows_odd_maps_and_resize():
  # 6 frames of 38 px: the patch embedding pads 38 -> 40; maps 10, 5 (PatchMerging pads),
  # 3, 2; D=3 < Wd=4 everywhere (temporal shift 0), stage 3 window = map (no shift at all),
  # stage 4 window (3, 2, 2): N=12 tokens index the (4, 3, 3) table with its [:12, :12].
  ref = _torch_ref(5, **TINY)
  variables, _ = convert_weights.convert_state_dict(ref.state_dict(), "swin_t", fmt="videoswin", **TINY)
  video = _video(6, 38)
  want_logits, want_feats = _torch_forward(ref, video)
  model = build_model("swin_t", 5, **TINY)
  logits, feats = jax.jit(lambda v, x: model.apply(v, x, return_features=True))(variables,
                                                                                 video)
  chex.assert_shape(feats, (1, 3, 2, 2, 64))
  _assert_rel_close(logits, want_logits)
  _assert_rel_close(feats, want_feats)
  # In-model resize: bilinear, half-pixel centres, no antialiasing (PyTorch interpolate).
  small = build_model("swin_t", 5, input_size=24, **TINY)
  frames = torch.from_numpy(video[0]).permute(0, 3, 1, 2)
  resized = torch.nn.functional.interpolate(frames, size=(24, 24), mode="bilinear",
                                            align_corners=False)
  want_small, _ = _torch_forward(ref, resized.permute(0, 2, 3, 1).numpy()[None])
  _assert_rel_close(jax.jit(small.apply)(variables, video), want_small)


def test_return_dict_contract_and_stochastic_depth():
  model = build_model("swin_t", 5, drop_path_rate=0.5, **TINY)
  video = jnp.asarray(_video(4, 32))
  variables, _ = convert_weights.convert_state_dict(_torch_ref(5, **TINY).state_dict(), "swin_t",
                                            fmt="videoswin", **TINY)
  assert set(variables) == {"params"}  # no BatchNorm
  out = jax.jit(lambda v, x: model.apply(v, x, return_dict=True))(variables, video)
  chex.assert_shape(out["features"], (1, 2, 1, 1, 64))
  chex.assert_shape(out["position_logits"], (1, 2, 1, 1, 5))
  chex.assert_shape(out["frame_logits"], (1, 2, 5))
  # The classifier is linear: pooling its per-position outputs gives the clip logits.
  chex.assert_trees_all_close(out["position_logits"].mean(axis=(1, 2, 3)), out["logits"],
                              atol=1e-5)
  train = jax.jit(lambda v, x, r: model.apply(v, x, train=True, rngs={"dropout": r}))
  logits = [train(variables, video, jax.random.key(i)) for i in range(3)]
  assert not all(np.allclose(logits[0], t) for t in logits[1:])
  # bfloat16 compute (float32 parameters, softmax in float32) stays close to float32.
  half = build_model("swin_t", 5, dtype=jnp.bfloat16, **TINY)
  logits16 = jax.jit(half.apply)(variables, video)
  assert logits16.dtype == jnp.bfloat16
  chex.assert_trees_all_close(logits16.astype(jnp.float32), out["logits"], atol=0.1, rtol=0.1)


def test_window_helpers_follow_the_release():
  assert swin.get_window_size((16, 4, 4), (8, 7, 7), (4, 3, 3)) == ((8, 4, 4), (4, 0, 0))
  assert swin.get_window_size((4, 56, 56), (8, 7, 7), (4, 3, 3)) == ((4, 7, 7), (0, 3, 3))
  index = swin.relative_position_index((8, 7, 7))
  assert index.shape == (392, 392) and index.max() == 2534
  # d-major rows: (dd + 7) * 169 + (dh + 6) * 13 + (dw + 6).
  assert index[0, 391] == (0 - 7 + 7) * 169 + (0 - 6 + 6) * 13 + (0 - 6 + 6)
  assert index[391, 0] == 14 * 169 + 12 * 13 + 12
  mask = swin.compute_mask(16, 56, 56, (8, 7, 7), (4, 3, 3))
  assert mask.shape == (2 * 8 * 8, 392, 392)
  assert set(np.unique(mask)) == {0.0, -100.0}
  assert not mask[0].any()  # an interior window holds one region
  # A zero shift makes slice(-0, None) cover the axis: only the temporal split remains.
  mask = swin.compute_mask(16, 7, 7, (8, 7, 7), (4, 0, 0))
  torch_mask = torch_swin.compute_mask(16, 7, 7, (8, 7, 7), (4, 0, 0), "cpu").numpy()
  np.testing.assert_array_equal(mask, torch_mask)


def test_odd_frame_count_is_one_clear_line():
  model = build_model("swin_t", 5, **TINY)
  with pytest.raises(ValueError) as err:
    jax.eval_shape(lambda x: model.init(jax.random.key(0), x),
                   jax.ShapeDtypeStruct((1, 3, 32, 32, 3), jnp.float32))
  message = str(err.value)
  assert "\n" not in message and "multiple of 2" in message and "T=3" in message


# ---------------------------------------------------------------------------
# Checkpoint files and the converter's refusals


def _save(path, obj):
  torch.save(obj, path)
  return str(path)


@pytest.mark.parametrize("layout", ["official", "mmaction2_1x"])
def test_checkpoint_file_round_trip(tmp_path, layout):
  ref = _torch_ref(7, seed=3, **TINY)
  sd = ref.state_dict()
  if layout == "mmaction2_1x":
    sd = {(k.replace("backbone.norm.", "backbone.norm3.")): v for k, v in sd.items()}
    assert "backbone.norm3.weight" in sd
  else:
    assert "backbone.norm.weight" in sd
  path = _save(tmp_path / "swin.pth", {"meta": {"epoch": 30}, "state_dict": sd})
  meta = convert_weights.convert_file(path, str(tmp_path / "out"), "swin_t", fmt="videoswin",
                              **TINY)
  assert meta["num_classes"] == 7 and meta["model"]["embed_dim"] == 8
  variables = checkpoints.load_variables(str(tmp_path / "out"))
  model = build_model("swin_t", 7, **TINY)
  video = _video(4, 32, seed=4)
  want_logits, _ = _torch_forward(ref, video)
  _assert_rel_close(model.apply({"params": variables["params"]}, video), want_logits)


def test_missing_keys_and_other_sizes_are_listed():
  sd = _torch_ref(5, **TINY).state_dict()
  del sd["backbone.layers.1.blocks.0.attn.qkv.bias"]
  with pytest.raises(WeightsError, match=r"missing keys \(1\): "
                     r"backbone\.layers\.1\.blocks\.0\.attn\.qkv\.bias"):
    convert_weights.convert_state_dict(sd, "swin_t", fmt="videoswin", **TINY)
  with pytest.raises(WeightsError, match=r"depths \(2, 2, 2, 2\) \(expected \(2, 2, 4, 2\)\)"):
    convert_weights.convert_state_dict(sd, "swin_t", fmt="videoswin",
                               **{**TINY, "depths": (2, 2, 4, 2)})
  # A real Swin-T layout given as swin_s is named (only shapes are read).
  torch.manual_seed(0)
  swin_t = torch_swin.Recognizer3D(400, embed_dim=96, depths=(2, 2, 6, 2),
                                   num_heads=(3, 6, 12, 24)).state_dict()
  with pytest.raises(WeightsError, match="it is a swin_t, not a swin_s"):
    convert_weights.convert_state_dict(swin_t, "swin_s", fmt="videoswin")


def test_other_family_and_2d_checkpoints_are_one_clear_line():
  resnet_sd = torch_resnet.resnet(18, 5, width=8).state_dict()
  with pytest.raises(WeightsError) as err:
    convert_weights.convert_state_dict(resnet_sd, "swin_s", fmt="videoswin")
  assert "\n" not in str(err.value) and "2D ResNet" in str(err.value)
  sd2d = {"patch_embed.proj.weight": torch.zeros(8, 3, 4, 4)}
  with pytest.raises(WeightsError, match="--format=swin2d"):
    convert_weights.convert_state_dict({"model": sd2d}, "swin_t", fmt="videoswin", **TINY)


def _swin2d_state_dict(window=3, seed=0):
  """A tiny ImageNet-layout 2D Swin state dict (the keys of microsoft/Swin-Transformer)."""
  gen = torch.Generator().manual_seed(seed)
  three_d = _torch_ref(10, **TINY).state_dict()
  sd = {}
  for key, value in three_d.items():
    key = key.replace("backbone.", "").replace("cls_head.fc_cls.", "head.")
    if key.endswith("relative_position_index"):
      continue
    if key == "patch_embed.proj.weight":
      value = torch.randn(8, 3, 4, 4, generator=gen)
    elif key.endswith("relative_position_bias_table"):
      value = torch.randn((2 * window - 1)**2, value.shape[1], generator=gen)
    sd[key] = value
  sd["layers.0.blocks.1.attn_mask"] = torch.zeros(4, 9, 9)
  sd["layers.0.blocks.0.attn.relative_position_index"] = torch.zeros(9, 9, dtype=torch.long)
  return sd


def test_inflate_2d_imagenet_swin():
  sd = _swin2d_state_dict()
  variables, info = convert_weights.convert_state_dict({"model": sd}, "swin_t", fmt="swin2d", **TINY)
  assert info["num_classes"] == 10
  assert "backbone.layers.0.blocks.1.attn_mask" in info["ignored"]
  params = variables["params"]["backbone"]
  kernel = params["patch_embed"]["proj"]["kernel"]  # (2, 4, 4, 3, 8)
  chex.assert_shape(kernel, (2, 4, 4, 3, 8))
  want = sd["patch_embed.proj.weight"].numpy().transpose(2, 3, 1, 0) / 2
  np.testing.assert_allclose(kernel[0], want, rtol=1e-6)
  np.testing.assert_allclose(kernel[1], want, rtol=1e-6)
  table = params["layers_1"]["blocks_0"]["attn"]["relative_position_bias_table"]
  chex.assert_shape(table, (7 * 5 * 5, 2))  # tiled over the 2*4-1 temporal offsets
  table_2d = sd["layers.1.blocks.0.attn.relative_position_bias_table"].numpy()
  for k in range(7):
    np.testing.assert_array_equal(table[k * 25:(k + 1) * 25], table_2d)
  # As `model.init_from` of a student with a new label set: backbone loaded, fresh classifier.
  student = build_model("swin_t", 7, **TINY)
  init = jax.eval_shape(lambda x: student.init(jax.random.key(0), x),
                        jax.ShapeDtypeStruct((1, 2, 32, 32, 3), jnp.float32))
  merged = checkpoints.merge_pretrained(init, variables, skip_head=True)
  assert merged["params"]["fc"]["kernel"].shape == (64, 7)
  np.testing.assert_array_equal(merged["params"]["backbone"]["patch_embed"]["proj"]["kernel"],
                                kernel)
  # A 2D window other than the video window's: bicubic resize first, as the release.
  big = _swin2d_state_dict(window=5)
  variables, _ = convert_weights.convert_state_dict(big, "swin_t", fmt="swin2d", **TINY)
  chex.assert_shape(variables["params"]["backbone"]["layers_0"]["blocks_0"]["attn"][
      "relative_position_bias_table"], (175, 1))
  with pytest.raises(WeightsError, match="--format=videoswin"):
    convert_weights.convert_state_dict(_torch_ref(5, **TINY).state_dict(), "swin_t",
                               fmt="swin2d", **TINY)


def test_gflops_match_table3_and_attention_is_separate():
  # Table 3's Swin figures (4 clips x 3 crops of 32 frames) are conv + linear multiply-adds.
  model = build_model("swin_s", 400)
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x),
                             jax.ShapeDtypeStruct((1, 2, 32, 32, 3), jnp.float32))
  backbone = model.backbone
  assert (backbone.embed_dim, backbone.depths, backbone.window_size, backbone.patch_size) == (
      96, (2, 2, 18, 2), (8, 7, 7), (2, 4, 4))

  def attention_gmacs(resolution):
    """q k^T and (attention) v: 2 L n C multiply-adds per block for L tokens in windows of n
    (a window no larger than the map); PatchMerging halves H and W (rounding up)."""
    d, side, macs = 32 // 2, resolution // 4, 0
    for stage, depth in enumerate(backbone.depths):
      n = min(8, d) * min(7, side) ** 2
      macs += depth * 2 * (d * side * side) * n * (96 * 2**stage)
      side = (side + 1) // 2
    return macs / 1e9

  for resolution, paper in ((224, 1639.0), (112, 421.0)):
    row = gflops.video_gflops(model, variables, 32, resolution, with_xla=False)
    assert abs(12 * row["gflops"] - paper) / paper < 0.01
    # Counted apart (not in "gflops") and exactly: at 112 px the last stage's 4x4 map gets a
    # 4x4 window (n = 128, not 392).
    assert row["attention_gflops"] == pytest.approx(attention_gmacs(resolution), rel=1e-9)


def test_cli_converts_a_swin_t_file_and_refuses_a_resnet_file(tmp_path, capsys):
  torch.manual_seed(0)
  ref = torch_swin.Recognizer3D(400, embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24))
  sd = {k.replace("backbone.norm.", "backbone.norm3."): v for k, v in ref.state_dict().items()}
  path = _save(tmp_path / "swin_t.pth", {"state_dict": sd})
  out = tmp_path / "swin_t"
  assert convert_weights.main(["--format=videoswin", "--arch=swin_t", f"--input={path}",
                       f"--output={out}"]) == 0
  params = checkpoints.load_variables(str(out))["params"]
  np.testing.assert_array_equal(params["backbone"]["norm"]["scale"],
                                sd["backbone.norm3.weight"].numpy())
  np.testing.assert_array_equal(params["fc"]["kernel"], sd["cls_head.fc_cls.weight"].numpy().T)
  capsys.readouterr()
  resnet = _save(tmp_path / "r18.pth", torch_resnet.resnet(18, 5, width=8).state_dict())
  assert convert_weights.main(["--format=videoswin", "--arch=swin_s", f"--input={resnet}",
                       f"--output={tmp_path / 'bad'}"]) == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith("error: ") and "\n" not in err and "2D ResNet" in err
