"""The one table of architectures: name -> (family, default options), and how to build one.

Every model, whatever its family, is a Flax module with the fields
``num_classes``, ``input_size`` (in-model bilinear resize, antialias off;
``None``: none), ``in_channels`` and ``dtype``, and the call contract
``apply(variables, video (B, T, H, W, C), train, return_features, return_dict)``:
logits ``(B, K)``; with ``return_features`` also the last feature map
``(B, T', h, w, C')`` before pooling; with ``return_dict`` a dict holding
``logits``, ``features``, ``frame_logits`` ``(B, T', K)`` and
``position_logits`` ``(B, T', h, w, K)`` (the classifier at every position).
The classifier is the top-level module ``fc``.

The converter, the trainer, the visualiser, FLOPs and the tests take names,
building and per-family facts from here; a family module knows only itself.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from reskd_jax.errors import ConfigError
from reskd_jax.models import resnet, slowonly, swin


@dataclasses.dataclass(frozen=True)
class Family:
  """What the rest of the project needs to know about one model family.

  Attributes:
    module_type: the top-level Flax module class ``build`` returns.
    build: ``build(num_classes, **options)``; it must accept ``input_size``,
      ``dropout_rate``, ``dtype``, ``bn_axis_name`` (ignored by families
      without BatchNorm), ``in_channels`` and ``remat`` (``nn.remat`` around
      every block).
    config_keys: the keys of a config model block (``configs.default.
      get_model_config``) that are options of this family; a key whose value
      is ``None`` means "the architecture's default".
    feature_channels: ``model -> C'`` of the last feature map.
    feature_shape: ``(model, num_frames, resolution) -> (T', h, w)``.
    min_resolution: ``model -> the smallest input side it takes``.
    with_bn_axis: ``(model, axis_name) -> model`` with BatchNorm synchronised
      over ``axis_name`` (identity for families without BatchNorm).
    temporal_multiple: the input's T must be a multiple of this.
  """
  module_type: type
  build: Callable[..., nn.Module]
  config_keys: Tuple[str, ...]
  feature_channels: Callable[[nn.Module], int]
  feature_shape: Callable[[nn.Module, int, int], Tuple[int, int, int]]
  min_resolution: Callable[[nn.Module], int]
  with_bn_axis: Callable[[nn.Module, Optional[str]], nn.Module]
  temporal_multiple: int = 1


# remat: a memory/compute trade of training, not architecture (no variable changes).
_COMMON_KEYS = ("input_size", "dropout_rate", "remat")

FAMILIES: Dict[str, Family] = {
    "resnet": Family(
        module_type=resnet.VideoClassifier, build=resnet.build,
        config_keys=_COMMON_KEYS + ("tsm", "strides", "width", "stage_sizes", "stem"),
        feature_channels=resnet.feature_channels, feature_shape=resnet.feature_shape,
        min_resolution=resnet.min_resolution, with_bn_axis=resnet.with_bn_axis),
    "slowonly": Family(
        module_type=slowonly.SlowOnly, build=slowonly.build,
        config_keys=_COMMON_KEYS + ("width", "stage_sizes"),
        feature_channels=slowonly.feature_channels, feature_shape=slowonly.feature_shape,
        min_resolution=slowonly.min_resolution, with_bn_axis=slowonly.with_bn_axis),
    "swin": Family(
        module_type=swin.SwinClassifier, build=swin.build,
        config_keys=_COMMON_KEYS + ("embed_dim", "depths", "num_heads", "window_size",
                                    "drop_path_rate"),
        feature_channels=swin.feature_channels, feature_shape=swin.feature_shape,
        min_resolution=swin.min_resolution, with_bn_axis=swin.with_bn_axis,
        temporal_multiple=swin.PATCH_SIZE[0]),
}

# name -> (family, default options). The single list of architecture names.
ARCHS: Dict[str, Tuple[str, Dict[str, Any]]] = {
    "resnet18": ("resnet", {"block": "basic", "stage_sizes": (2, 2, 2, 2)}),
    "resnet34": ("resnet", {"block": "basic", "stage_sizes": (3, 4, 6, 3)}),
    "resnet50": ("resnet", {"block": "bottleneck", "stage_sizes": (3, 4, 6, 3)}),
    "resnet101": ("resnet", {"block": "bottleneck", "stage_sizes": (3, 4, 23, 3)}),
    "resnet152": ("resnet", {"block": "bottleneck", "stage_sizes": (3, 8, 36, 3)}),
    # mmaction2 ResNet3dSlowOnly (8x8), depth 50.
    "slowonly_r50": ("slowonly", {"stage_sizes": (3, 4, 6, 3)}),
    # Video Swin (official SwinTransformer3D, patch (2,4,4), window (8,7,7)) + I3D head.
    "swin_t": ("swin", {"embed_dim": 96, "depths": (2, 2, 6, 2), "num_heads": (3, 6, 12, 24)}),
    "swin_s": ("swin", {"embed_dim": 96, "depths": (2, 2, 18, 2), "num_heads": (3, 6, 12, 24)}),
    "swin_b": ("swin", {"embed_dim": 128, "depths": (2, 2, 18, 2),
                        "num_heads": (4, 8, 16, 32)}),
}


class UnknownModelError(ConfigError):
  """An architecture name that is not in :data:`ARCHS`."""


def names(family: Optional[str] = None) -> Tuple[str, ...]:
  """The architecture names (of one family when given), sorted."""
  return tuple(sorted(n for n, (f, _) in ARCHS.items() if family in (None, f)))


def check_name(name: str, what: str = "model name") -> str:
  """``name`` if it is an architecture; otherwise one clear line listing them."""
  if name not in ARCHS:
    raise UnknownModelError(f"unknown {what} {name!r}; expected one of {', '.join(names())}")
  return name


def family_name(name: str) -> str:
  """The family of architecture ``name`` (``resnet``, ``slowonly``, ...)."""
  return ARCHS[check_name(name)][0]


def default_options(name: str) -> Dict[str, Any]:
  """The options ``name`` stands for (a copy)."""
  return dict(ARCHS[check_name(name)][1])


def _accepted(build) -> Tuple[str, ...]:
  return tuple(p for p in inspect.signature(build).parameters if p != "num_classes")


def build_model(name: str, num_classes: int, **options) -> nn.Module:
  """Architecture ``name`` with a ``num_classes`` classifier.

  ``options`` override the architecture's defaults (e.g. ``width=8,
  stage_sizes=(1, 1, 1, 1)`` for a tiny test net, ``input_size=112`` for a
  student); an option of ``None`` keeps the default. An option the family
  does not have is refused with the list of those it has.
  """
  family_key, defaults = ARCHS[check_name(name)]
  family = FAMILIES[family_key]
  accepted = _accepted(family.build)
  unknown = sorted(k for k in options if k not in accepted)
  if unknown:
    raise ValueError(f"model {name!r} ({family_key} family) has no option(s) {unknown}; "
                     f"its options are {', '.join(accepted)}")
  kwargs = dict(defaults)
  kwargs.update({k: v for k, v in options.items() if v is not None})
  return family.build(num_classes, **kwargs)


def _get(block, key):
  if isinstance(block, Mapping):
    return block.get(key)
  return block.get(key) if hasattr(block, "get") else getattr(block, key, None)


def _description(model_cfg):
  """A ``meta.json`` dict describes its model in its ``model`` block (see reskd_jax.meta)."""
  nested = model_cfg.get("model") if isinstance(model_cfg, Mapping) else None
  if isinstance(nested, Mapping):
    return {**model_cfg, **nested}
  return model_cfg


def config_options(model_cfg) -> Dict[str, Any]:
  """The build options a config model block (or a ``meta.json`` dict) stands for.

  The single place where a description becomes keyword arguments: the
  family's ``config_keys`` that are set (not ``None``), lists made tuples.
  ``model_cfg`` names the architecture in ``name`` (or ``arch`` in meta.json).
  """
  model_cfg = _description(model_cfg)
  name = _get(model_cfg, "name") or _get(model_cfg, "arch")
  family = FAMILIES[family_name(name)]
  options = {}
  for key in family.config_keys:
    value = _get(model_cfg, key)
    if value is None:
      continue
    options[key] = tuple(value) if isinstance(value, list) else value
  return options


def build_from_config(model_cfg, num_classes: int, **overrides) -> nn.Module:
  """A model from a config model block (``configs.default.get_model_config``).

  ``overrides`` (e.g. ``dtype``, ``bn_axis_name``, ``dropout_rate=0.0`` for a
  teacher, ``num_segments``) take precedence; ``None`` ones are ignored. An
  unknown name raises :class:`UnknownModelError` (a ``ConfigError``).
  """
  model_cfg = _description(model_cfg)
  name = _get(model_cfg, "name") or _get(model_cfg, "arch")
  check_name(name, "config model name")
  options = config_options(model_cfg)
  options.update({k: v for k, v in overrides.items() if v is not None})
  return build_model(name, num_classes, **options)


def family_of(model: nn.Module) -> Family:
  """The :class:`Family` of a built model."""
  for family in FAMILIES.values():
    if isinstance(model, family.module_type):
      return family
  raise TypeError(f"{type(model).__name__} is not a model of the registry")


def with_bn_axis(model: nn.Module, axis_name: Optional[str]) -> nn.Module:
  """The same model with BatchNorm synchronised over ``axis_name`` (None: local)."""
  return family_of(model).with_bn_axis(model, axis_name)


def feature_channels(model: nn.Module) -> int:
  """Channels of the last feature map."""
  return family_of(model).feature_channels(model)


def feature_shape(model: nn.Module, num_frames: int, resolution: int) -> Tuple[int, int, int]:
  """``(T', h, w)`` of the last feature map for ``num_frames`` square frames of ``resolution``
  (after the in-model resize, if the model has one)."""
  return family_of(model).feature_shape(model, num_frames, resolution)


def feature_size(model: nn.Module, resolution: int) -> int:
  """Spatial side of the last feature map for a square input of ``resolution``."""
  return feature_shape(model, family_of(model).temporal_multiple, resolution)[1]


def min_resolution(model: nn.Module) -> int:
  """The smallest input side the model takes."""
  return family_of(model).min_resolution(model)


def init_variables(model: nn.Module, rng, num_frames: int, resolution: int):
  """Initialises the variables (``params``, and ``batch_stats`` where the family has
  BatchNorm) with a ``(1, T, r, r, C)`` dummy video."""
  dummy = jnp.zeros((1, num_frames, resolution, resolution, model.in_channels), jnp.float32)
  return jax.jit(functools.partial(model.init, train=False))({"params": rng}, dummy)
