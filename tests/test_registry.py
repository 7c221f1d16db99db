"""The model registry: the one list of architecture names, and building from descriptions."""

import inspect
import os
import subprocess
import sys

import pytest

from configs import default
from reskd_jax import errors, models, train
from reskd_jax.tools import convert_weights, flops
from tests.torch_models import resnet as torch_resnet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_names_are_defined_once_and_everyone_agrees():
  assert set(models.names()) == set(models.ARCHS)
  assert "slowonly_r50" in models.names("slowonly")
  # The converter's 2D layouts, its --arch choices and families come from the registry.
  assert set(convert_weights.ARCH_LAYOUT) == set(models.names("resnet"))
  for name, (block, sizes) in convert_weights.ARCH_LAYOUT.items():
    assert models.default_options(name) == {"block": block, "stage_sizes": sizes}
  arch_action = next(a for a in convert_weights._parser()._actions if a.dest == "arch")
  assert tuple(arch_action.choices) == models.names()
  assert set(convert_weights.FAMILY_WEIGHTS) <= set(models.FAMILIES)
  # The trainer builds through the registry (no builder or alias of its own); the PyTorch
  # reference takes its depths from it.
  assert "models.build_from_config(" in inspect.getsource(train)
  assert not hasattr(train, "build_from_config")
  assert {f"resnet{d}" for d in torch_resnet.ARCHS} == set(models.names("resnet"))
  for family in {f for f, _ in models.ARCHS.values()}:
    assert family in models.FAMILIES


def test_unknown_name_is_one_line_listing_the_names():
  with pytest.raises(models.UnknownModelError) as e:
    models.build_model("resnet42", 10)
  msg = str(e.value)
  assert len(msg.splitlines()) == 1 and "unknown model name 'resnet42'" in msg
  assert all(name in msg for name in models.names())
  assert isinstance(e.value, errors.ConfigError)  # main.py: exit status 2
  assert flops.main(["--arch=resnet42"]) == 2


def test_options_of_another_family_are_refused_with_the_list():
  with pytest.raises(ValueError, match=r"model 'slowonly_r50' \(slowonly family\) has no "
                     r"option\(s\) \['tsm'\]; its options are stage_sizes, width"):
    models.build_model("slowonly_r50", 10, tsm=True)


def test_build_from_config_takes_the_family_keys():
  cfg = default.get_model_config("slowonly_r50", input_size=112)
  cfg.width = 8
  cfg.stage_sizes = (1, 1, 1, 1)
  cfg.tsm = True  # a ResNet key: not an option of SlowOnly, so not read
  model = models.build_from_config(cfg, 7, dropout_rate=0.0, num_segments=None)
  assert isinstance(model, models.SlowOnly)
  assert (model.width, model.stage_sizes, model.input_size) == (8, (1, 1, 1, 1), 112)
  assert model.dropout_rate == 0.0 and model.num_classes == 7
  assert models.config_options(cfg) == {"input_size": 112, "dropout_rate": 0.5, "remat": False,
                                        "width": 8, "stage_sizes": (1, 1, 1, 1)}
  # A meta.json-like dict (arch instead of name, lists) builds the same way.
  meta = {"arch": "resnet18", "width": 8, "stage_sizes": [1, 1, 1, 1], "stem": "small",
          "strides": [1, 2, 2, 2], "tsm": False, "num_classes": 3}
  model = models.build_from_config(meta, 3)
  assert model.backbone.stage_sizes == (1, 1, 1, 1) and model.backbone.stem == "small"
  cfg.name = "nope"
  with pytest.raises(errors.ConfigError, match="unknown config model name 'nope'"):
    models.build_from_config(cfg, 7)


def test_runtime_imports_no_torch():
  code = ("import sys; import reskd_jax.models, reskd_jax.tools.convert_weights, reskd_jax.train, "
          "reskd_jax.tools.flops; assert 'torch' not in sys.modules, 'torch imported'")
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]
