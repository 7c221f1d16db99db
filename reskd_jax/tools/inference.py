"""A trained model ready for inference: network, variables, class names, test transform.

:func:`load` reads a training workdir (its ``variables/``) or any variables
directory (``python -m reskd_jax.tools.convert_weights`` output) and its ``meta.json``:
the architecture, the class names the trainer recorded from the data set
manifest, and the test transform of the run's config (frames, short side,
crop, views, mean/std). What ``meta.json`` lacks (converted weights carry no
data config) comes from keyword overrides or the defaults below (the
paper's test transform: 8 TSN frames, short side 256, one centre 224 crop).

:meth:`TrainedModel.probabilities` is the evaluator's multi-view step
(``train_step.make_eval_step``): uint8 views in, class probabilities out, so
prediction, export and evaluation agree by construction.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from reskd_jax import augment, checkpoints, meta as meta_lib, models, train_step
from reskd_jax.data import clips, labels
from reskd_jax.errors import CheckpointError, ConfigError
from reskd_jax.tools import exported

# Test transform of a run whose meta.json does not say (e.g. converted weights): the keys
# the trainer records (meta.TEST_TRANSFORM_KEYS) at configs/default.py's values.
DEFAULT_TRANSFORM = {
    "sampling": "tsn", "num_frames": 8, "clip_len": 8, "frame_interval": 8,
    "short_side": 256, "crop_size": 224, "test_num_clips": 1, "test_num_crops": 1,
    "mean": augment.IMAGENET_MEAN, "std": augment.IMAGENET_STD,
}


@dataclasses.dataclass
class TrainedModel:
  """A classifier, its variables, its class names and its test transform (``data``)."""
  model: nn.Module  # any family's classifier (models.build_model)
  variables: Dict[str, Any]
  class_names: tuple
  data: ml_collections.ConfigDict
  meta: Dict[str, Any]
  path: str
  _jitted: Optional[Callable] = dataclasses.field(default=None, init=False, repr=False)

  @property
  def num_classes(self) -> int:
    return self.model.num_classes

  @property
  def resolution(self) -> int:
    """The side the network runs at (the in-model resize target, else the crop)."""
    return self.model.input_size or self.data.crop_size

  def probabilities_fn(self) -> Callable:
    """``(variables, uint8 (b, V, T, S, S, 3)) -> float32 (b, K)``: views' softmax averaged."""
    step = train_step.make_eval_step(model=self.model, mean=tuple(self.data.mean),
                                     std=tuple(self.data.std))
    return lambda variables, video: step(variables, {"video": video})

  def probabilities(self, views) -> jax.Array:
    """Class probabilities ``(b, K)`` of uint8 views ``(b, V, T, S, S, 3)`` (jitted)."""
    if self._jitted is None:
      self._jitted = jax.jit(self.probabilities_fn())
    return self._jitted(self.variables, jnp.asarray(views))

  def views(self, frames: np.ndarray) -> np.ndarray:
    """A decoded video ``(N, H, W, 3)`` uint8 -> its test views ``(V, T, S, S, 3)`` uint8.

    The evaluator's transform (``decode.eval_indices``/``eval_views``):
    frame sampling, short-side resize, centre or three crops.
    """
    return exported.test_views(frames, self.data)

  def class_name(self, k: int) -> str:
    return self.class_names[k] if k < len(self.class_names) else f"class_{k}"


def build_model(meta: Mapping[str, Any], num_classes: int):
  """The inference network described by a ``meta.json`` (dropout off), via the registry."""
  tsm = bool(meta.get("tsm", False))
  return models.build_from_config(meta, int(num_classes), dropout_rate=0.0,
                                  num_segments=meta.get("num_segments") if tsm else None)


def transform_config(meta: Mapping[str, Any],
                     overrides: Optional[Mapping[str, Any]] = None) -> ml_collections.ConfigDict:
  """The test transform: ``DEFAULT_TRANSFORM`` < meta.json's ``data`` < ``overrides``."""
  data = dict(DEFAULT_TRANSFORM)
  if meta.get("num_segments"):
    data["num_frames"] = int(meta["num_segments"])
  data.update(meta.get("data") or {})
  data.update({k: v for k, v in (overrides or {}).items() if v is not None})
  unknown = sorted(set(data) - set(meta_lib.TEST_TRANSFORM_KEYS))
  if unknown:
    raise ConfigError(f"unknown test transform key(s) {unknown}; expected "
                      f"{sorted(meta_lib.TEST_TRANSFORM_KEYS)}")
  data["mean"], data["std"] = tuple(data["mean"]), tuple(data["std"])
  data = ml_collections.ConfigDict(data)
  clips.check_clip_config(data, "test transform")
  return data


def load(path: str, *, classes: Optional[str] = None,
         transform: Optional[Mapping[str, Any]] = None,
         meta_overrides: Optional[Mapping[str, Any]] = None) -> TrainedModel:
  """The model of a workdir / variables directory at ``path``.

  Args:
    classes: where to read the class names when meta.json has none: a class list
      file or a converted data set directory (``reskd_jax.data.labels.read_class_names``).
    transform: test transform overrides (keys of ``DEFAULT_TRANSFORM``; None
      values are ignored).
    meta_overrides: meta.json entries to replace (e.g. ``{"arch": ...}``; None
      values are ignored).
  """
  try:
    meta = dict(checkpoints.load_metadata(path))
    meta.update({k: v for k, v in (meta_overrides or {}).items() if v is not None})
    variables = checkpoints.load_variables(path)
  except FileNotFoundError as e:
    raise CheckpointError(str(e)) from None
  if "arch" not in meta:
    raise CheckpointError(f"{path}: meta.json has no 'arch' (is this a variables directory "
                          f"written by the trainer or reskd_jax.tools.convert_weights?)")
  variables = {"params": variables["params"], "batch_stats": variables["batch_stats"]}
  head = variables["params"][models.HEAD_NAME]
  num_classes = int(meta.get("num_classes") or head["bias"].shape[0])
  names: Sequence[str] = meta.get("class_names") or ()
  if classes:
    names = labels.read_class_names(classes)
  if names and len(names) != num_classes:
    raise ConfigError(f"{len(names)} class names for a {num_classes}-class model at {path!r}")
  data = transform_config(meta, transform)
  return TrainedModel(model=build_model(meta, num_classes), variables=variables,
                      class_names=tuple(names), data=data, meta=meta, path=path)
