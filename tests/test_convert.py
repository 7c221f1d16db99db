"""Weight conversion: PyTorch reference ResNet / TSM -> our Flax model, and checkpoint I/O."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from reskd_jax import checkpoints
from reskd_jax.errors import WeightsError
from reskd_jax.tools import convert_weights
from tests.torch_models import resnet as torch_resnet
from reskd_jax.models import build_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_CLASSES = 5
# float32 vs float32 with different summation orders: PyTorch fp32 itself is
# ~5e-5 (relative to the largest activation) away from fp64 on ResNet-50.
RTOL = 1e-4


def _torch_model(depth, tsm=False, num_segments=8, seed=0, calib_frames=2):
  torch.manual_seed(seed)
  model = torch_resnet.resnet(depth, NUM_CLASSES, tsm=tsm, num_segments=num_segments)
  calib = torch.randn(2, num_segments if tsm else calib_frames, 3, 64, 64)
  return torch_resnet.randomize_(model, seed=seed, calibrate_with=calib).eval()


def _run_both(tmodel, variables, depth, video, tsm=False, num_segments=None):
  with torch.no_grad():
    t_logits, t_feats = tmodel(video, return_features=True)
  fmodel = build_model(f"resnet{depth}", NUM_CLASSES, tsm=tsm, num_segments=num_segments)
  x = jnp.asarray(video.numpy().transpose(0, 1, 3, 4, 2))  # (B,T,C,H,W) -> (B,T,H,W,C)
  out = jax.jit(lambda v, x: fmodel.apply(v, x, train=False, return_dict=True))(variables, x)
  f_feats = np.asarray(out["features"]).transpose(0, 1, 4, 2, 3)
  return (t_logits.numpy(), t_feats.numpy()), (np.asarray(out["logits"]), f_feats)


def _assert_close(ours, ref, what):
  assert ours.shape == ref.shape, (what, ours.shape, ref.shape)
  scale = max(1.0, float(np.abs(ref).max()))
  err = float(np.abs(ours - ref).max())
  assert err <= RTOL * scale, f"{what}: max |diff| {err:.3g} > {RTOL} x {scale:.3g}"


@pytest.mark.parametrize("depth,resolution", [(18, 112), (18, 224), (50, 112), (50, 224)])
def test_torchvision_resnet_matches_torch(depth, resolution):
  tmodel = _torch_model(depth)
  variables, info = convert_weights.convert_state_dict(tmodel.state_dict(), f"resnet{depth}")
  assert info["num_classes"] == NUM_CLASSES
  assert info["ignored"] and all(k.endswith("num_batches_tracked") for k in info["ignored"])
  # BN statistics really are random (not the 0/1 defaults), so a mix-up would show.
  stats = variables["batch_stats"]["backbone"]["layer1_0"]["bn1"]
  assert np.abs(stats["mean"]).max() > 0.01 and np.abs(stats["var"] - 1).max() > 0.01
  torch.manual_seed(1)
  video = torch.randn(1, 2, 3, resolution, resolution)
  (t_logits, t_feats), (f_logits, f_feats) = _run_both(tmodel, variables, depth, video)
  side = -(-resolution // 32)
  assert f_feats.shape == (1, 2, tmodel.fc.in_features, side, side)
  _assert_close(f_logits, t_logits, "logits")
  _assert_close(f_feats, t_feats, "features")


def _mmaction_state_dict(tv_state, tsm):
  """torchvision names -> mmaction2 TSN/TSM recogniser names (TSM wraps conv1 in `.net`)."""
  out = {}
  for key, value in tv_state.items():
    parts = key.split(".")
    if parts[0] == "fc":
      new = f"cls_head.fc_cls.{parts[1]}"
    elif parts[0] == "conv1":
      new = f"backbone.conv1.conv.{parts[1]}"
    elif parts[0] == "bn1":
      new = f"backbone.conv1.bn.{parts[1]}"
    else:
      layer, block, mod, *rest = parts
      field = ".".join(rest)
      if mod == "downsample":
        sub, field = rest[0], ".".join(rest[1:])
        new = f"backbone.{layer}.{block}.downsample.{'conv' if sub == '0' else 'bn'}.{field}"
      else:
        idx, kind = mod[-1], ("conv" if mod.startswith("conv") else "bn")
        net = ".net" if (tsm and idx == "1") else ""
        new = f"backbone.{layer}.{block}.conv{idx}{net}.{kind}.{field}"
    out[new] = value
  return out


def test_mmaction_tsm_resnet50_matches_torch(tmp_path):
  tmodel = _torch_model(50, tsm=True, num_segments=8)
  mm = {"meta": {"epoch": 50}, "state_dict": _mmaction_state_dict(tmodel.state_dict(), tsm=True)}
  assert "backbone.layer1.0.conv1.net.conv.weight" in mm["state_dict"]
  path = tmp_path / "tsm_r50.pth"
  torch.save(mm, path)
  out = tmp_path / "tsm_r50"
  meta = convert_weights.convert_file(str(path), str(out), "resnet50", fmt="mmaction", tsm=True,
                              num_segments=8)
  assert meta["num_classes"] == NUM_CLASSES and meta["tsm"] is True
  variables = checkpoints.load_variables(str(out))
  torch.manual_seed(2)
  video = torch.randn(1, 8, 3, 112, 112)
  (t_logits, t_feats), (f_logits, f_feats) = _run_both(tmodel, variables, 50, video, tsm=True,
                                                       num_segments=8)
  _assert_close(f_logits, t_logits, "TSM logits")
  _assert_close(f_feats, t_feats, "TSM features")
  # The shift matters: the same weights without TSM give different outputs.
  for block in tmodel.modules():
    if isinstance(block, (torch_resnet.BasicBlock, torch_resnet.Bottleneck)):
      block.num_segments = None
  with torch.no_grad():
    no_shift = tmodel(video).numpy()
  assert np.abs(no_shift - f_logits).max() > 1e-3


def test_mmaction_tsn_without_net_wrapper_and_conversion_is_exact():
  tmodel = _torch_model(18)
  sd = tmodel.state_dict()
  mm = {"state_dict": _mmaction_state_dict(sd, tsm=False)}
  v_mm, _ = convert_weights.convert_state_dict(mm, "resnet18", fmt="mmaction")
  v_tv, _ = convert_weights.convert_state_dict(sd, "resnet18", fmt="torchvision")
  jax.tree_util.tree_map(np.testing.assert_array_equal, v_mm, v_tv)
  p = v_tv["params"]
  np.testing.assert_array_equal(p["backbone"]["conv1"]["kernel"],
                                sd["conv1.weight"].numpy().transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(p["backbone"]["layer2_0"]["downsample_conv"]["kernel"],
                                sd["layer2.0.downsample.0.weight"].numpy().transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(p["fc"]["kernel"], sd["fc.weight"].numpy().T)
  np.testing.assert_array_equal(p["backbone"]["layer1_0"]["bn2"]["scale"],
                                sd["layer1.0.bn2.weight"].numpy())
  np.testing.assert_array_equal(v_tv["batch_stats"]["backbone"]["bn1"]["var"],
                                sd["bn1.running_var"].numpy())


def _fake_variables(model, seed=0):
  """Random variables of the right shapes without compiling model.init (slow on CPU)."""
  shapes = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x),
                          jax.ShapeDtypeStruct((1, 1, 32, 32, 3), jnp.float32))
  rng = np.random.RandomState(seed)
  return jax.tree_util.tree_map(
      lambda s: (0.1 * rng.standard_normal(s.shape) + 1.0).astype(np.float32), shapes)


def _tiny_state(depth):
  return torch_resnet.resnet(depth, NUM_CLASSES, width=8).state_dict()


def test_missing_and_unexpected_keys_are_listed():
  sd = dict(_tiny_state(18))
  del sd["layer1.0.bn1.running_var"]
  sd["layer1.0.extra.weight"] = torch.zeros(3)
  with pytest.raises(WeightsError) as e:
    convert_weights.convert_state_dict(sd, "resnet18")
  msg = str(e.value)
  assert "missing keys (1): layer1.0.bn1.running_var" in msg
  assert "unexpected keys (1): layer1.0.extra.weight" in msg


def test_shape_mismatch_is_listed():
  sd = _tiny_state(18)  # width 8: every conv is the wrong size for a real resnet18
  with pytest.raises(WeightsError) as e:
    convert_weights.convert_state_dict(sd, "resnet18")
  assert "shape mismatch" in str(e.value)
  assert "conv1.weight: checkpoint (8, 3, 7, 7), expected (64, 3, 7, 7)" in str(e.value)
  tmodel = _torch_model(18)
  with pytest.raises(WeightsError, match=r"fc.weight: checkpoint \(5, 512\), "
                     r"expected \(7, 512\)"):
    convert_weights.convert_state_dict(tmodel.state_dict(), "resnet18", num_classes=7)


@pytest.mark.parametrize("have,want,needle", [
    (152, 50, "36 blocks in layer3: it is a resnet152, not a resnet50"),
    (101, 152, "23 blocks in layer3: it is a resnet101, not a resnet152"),
    (50, 34, "it is a resnet50, not a resnet34"),
    (18, 50, "it is a resnet18, not a resnet50"),
])
def test_wrong_depth_is_refused_by_name(have, want, needle):
  with pytest.raises(WeightsError) as e:
    convert_weights.convert_state_dict(_tiny_state(have), f"resnet{want}")
  assert needle in str(e.value)


def test_save_load_round_trip_and_workdir(tmp_path):
  model = build_model("resnet18", NUM_CLASSES, width=8, stage_sizes=(1, 1, 1, 1))
  variables = _fake_variables(model, 0)
  meta = {"arch": "resnet18", "num_classes": NUM_CLASSES, "tsm": False, "source": "test",
          "strides": (1, 2, 2, 2)}
  workdir = tmp_path / "run"
  checkpoints.save_variables(str(workdir / "variables"), variables, meta)
  checkpoints.save_variables(str(workdir / "variables"), variables, meta)  # overwrite is fine
  for path in (workdir, workdir / "variables"):
    loaded = checkpoints.load_variables(str(path))
    assert set(loaded) == {"params", "batch_stats"}
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b),
                           variables, loaded)
    got = checkpoints.load_metadata(str(path))
    assert got["arch"] == "resnet18" and got["strides"] == [1, 2, 2, 2]
  assert not [p for p in os.listdir(workdir) if ".tmp-" in p or ".old-" in p]
  with pytest.raises(FileNotFoundError, match="nope"):
    checkpoints.load_variables(str(tmp_path / "nope"))
  with pytest.raises(FileNotFoundError, match="holds no saved variables"):
    checkpoints.load_variables(str(tmp_path))


def test_merge_pretrained_skips_head():
  model = build_model("resnet18", NUM_CLASSES, width=8, stage_sizes=(1, 1, 1, 1))
  init = _fake_variables(model, 0)
  other = build_model("resnet18", 1000, width=8, stage_sizes=(1, 1, 1, 1))
  pre = _fake_variables(other, 1)
  merged = checkpoints.merge_pretrained(init, pre, skip_head=True)
  np.testing.assert_array_equal(merged["params"]["fc"]["kernel"], init["params"]["fc"]["kernel"])
  np.testing.assert_array_equal(merged["params"]["backbone"]["conv1"]["kernel"],
                                pre["params"]["backbone"]["conv1"]["kernel"])
  np.testing.assert_array_equal(merged["batch_stats"]["backbone"]["bn1"]["var"],
                                pre["batch_stats"]["backbone"]["bn1"]["var"])
  jax.jit(model.apply)(merged, jnp.zeros((1, 1, 32, 32, 3)))  # usable as is
  with pytest.raises(ValueError, match=r"shape mismatch \(2\): params/fc/bias"):
    checkpoints.merge_pretrained(init, pre, skip_head=False)
  # A different architecture: missing / unexpected entries are listed.
  deeper = build_model("resnet18", NUM_CLASSES, width=8, stage_sizes=(2, 1, 1, 1))
  deep_vars = _fake_variables(deeper, 2)
  with pytest.raises(ValueError) as e:
    checkpoints.merge_pretrained(init, deep_vars)
  assert "unexpected in checkpoint" in str(e.value)
  assert "params/backbone/layer1_1/conv1/kernel" in str(e.value)
  with pytest.raises(ValueError, match="missing in checkpoint"):
    checkpoints.merge_pretrained(deep_vars, init)


def test_cli_bad_file_exits_cleanly(tmp_path, capsys):
  bad = tmp_path / "bad.pth"
  bad.write_bytes(b"this is not a checkpoint")
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.run(
      [sys.executable, "-m", "reskd_jax.tools.convert_weights", "--format=torchvision", "--arch=resnet50",
       f"--input={bad}", f"--output={tmp_path / 'out'}"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2, proc.stderr
  assert "Traceback" not in proc.stderr
  assert "could not read" in proc.stderr and "bad.pth" in proc.stderr
  # In-process: a missing file, and a wrong depth through a real file.
  assert convert_weights.main(["--format=torchvision", "--arch=resnet50",
                       f"--input={tmp_path / 'missing.pth'}", f"--output={tmp_path / 'o'}"]) == 2
  assert "missing.pth" in capsys.readouterr().err
  path = tmp_path / "r18.pth"
  torch.save(_tiny_state(18), path)
  assert convert_weights.main(["--format=torchvision", "--arch=resnet50", f"--input={path}",
                       f"--output={tmp_path / 'o'}"]) == 2
  assert "it is a resnet18, not a resnet50" in capsys.readouterr().err
  assert not os.path.exists(tmp_path / "o")


def test_cli_converts_torchvision_file(tmp_path, capsys):
  tmodel = _torch_model(18)
  path = tmp_path / "r18.pth"
  state = dict(tmodel.state_dict())
  state["teacher.conv.weight"] = torch.zeros(2, 3, 1, 1)  # an extra module saved beside it
  torch.save({"state_dict": state}, path)
  out = tmp_path / "r18"
  assert convert_weights.main(["--format=torchvision", "--arch=resnet18", f"--input={path}",
                       f"--output={out}"]) == 2
  assert "unexpected keys (1): teacher.conv.weight" in capsys.readouterr().err
  assert convert_weights.main(["--format=torchvision", "--arch=resnet18", f"--input={path}",
                       f"--output={out}", "--ignore=teacher."]) == 0
  meta = json.loads((out / "meta.json").read_text())
  assert meta["arch"] == "resnet18" and meta["num_classes"] == NUM_CLASSES
  assert meta["source_format"] == "torchvision"
  loaded = checkpoints.load_variables(str(out))
  np.testing.assert_array_equal(loaded["params"]["fc"]["bias"], tmodel.fc.bias.detach().numpy())
  # --classes stores the release's class order in meta.json (checked by ResKD runs); a list
  # of another length than the classifier's is refused.
  names = tmp_path / "classes.txt"
  names.write_text("".join(f"class {chr(97 + k)}\n" for k in range(NUM_CLASSES)))
  assert convert_weights.main(["--format=torchvision", "--arch=resnet18", f"--input={path}",
                       f"--output={out}", "--ignore=teacher.", f"--classes={names}"]) == 0
  meta = json.loads((out / "meta.json").read_text())
  assert meta["class_names"] == [f"class {chr(97 + k)}" for k in range(NUM_CLASSES)]
  names.write_text("only one\n")
  capsys.readouterr()
  assert convert_weights.main(["--format=torchvision", "--arch=resnet18", f"--input={path}",
                       f"--output={tmp_path / 'r18b'}", "--ignore=teacher.",
                       f"--classes={names}"]) == 2
  assert f"1 class names for a checkpoint with {NUM_CLASSES} classes" in capsys.readouterr().err
