"""The ``meta.json`` of a variables directory: one schema for every writer and reader.

The trainer (final and best student, ``<workdir>/variables``) and
``python -m reskd_jax.tools.convert_weights`` write it; the trainer reads it back to fill
and check a teacher's architecture. Fields::

    arch            model name (a key of ``models.ARCHS``)
    num_classes     classifier size
    tsm             temporal shift module
    num_segments    frames per clip the model was trained on (None: unknown)
    model           the architecture keys of the model's config block
                    (``name``, ``width``, ``stem``, ... whatever the block has,
                    without run settings such as ``init_from``); the converter
                    writes ``name``, ``tsm`` and any non-default build options
    resolution      the pixels the model sees (trainer only)
    mode            ``config.mode`` of the run that trained it (trainer only)
    class_names     the data set's class names, in label order (trainer only)
    dataset, data   the data set's name and the test transform's ``config.data``
                    keys (``TEST_TRANSFORM_KEYS``), for predict/export (trainer only)
    source          ``reskd_jax.train`` or the converted file
    saved_at, num_parameters   written by ``checkpoints.save_variables``
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

FILE = "meta.json"
# Keys of a model config block that are run settings, not architecture.
RUN_KEYS = ("init_from", "checkpoint", "train_mode_bn", "dropout_rate", "allow_other_resolution",
            "allow_other_classes", "remat")
# Architecture keys older trainer versions wrote at the top level.
_LEGACY_KEYS = ("strides", "width", "stage_sizes", "stem", "input_size")


def _plain(value):
  if isinstance(value, tuple):
    return [_plain(v) for v in value]
  return value


def architecture(model_cfg: Mapping[str, Any]) -> Dict[str, Any]:
  """The architecture keys of a model config block, JSON-ready."""
  return {k: _plain(v) for k, v in model_cfg.items() if k not in RUN_KEYS}


# The test transform, recorded so that predict and export need no config file.
TEST_TRANSFORM_KEYS = ("sampling", "num_frames", "clip_len", "frame_interval", "short_side",
                       "crop_size", "test_num_clips", "test_num_crops", "mean", "std")


def for_trained_model(config, model_cfg, num_classes: int, num_frames: int,
                      resolution: int, class_names=()) -> Dict[str, Any]:
  """What the trainer records beside a model it trained."""
  return {"arch": model_cfg.name, "num_classes": int(num_classes), "tsm": bool(model_cfg.tsm),
          "num_segments": int(num_frames), "model": architecture(model_cfg),
          "resolution": int(resolution), "source": "reskd_jax.train", "mode": config.mode,
          "class_names": list(class_names), "dataset": config.data.name,
          "data": {k: _plain(config.data[k]) for k in TEST_TRANSFORM_KEYS}}


def for_converted(arch: str, num_classes: int, tsm: bool, num_segments: Optional[int],
                  source: str, source_format: str,
                  model_options: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
  """What ``reskd_jax.tools.convert_weights`` records beside converted PyTorch weights.

  ``model_options`` (build options that differ from the architecture's
  defaults, e.g. a small test model's widths) go into the ``model`` block.
  """
  model = {"name": arch, "tsm": bool(tsm)}
  model.update({k: _plain(v) for k, v in (model_options or {}).items()})
  return {"arch": arch, "num_classes": int(num_classes), "tsm": bool(tsm),
          "num_segments": num_segments if tsm else None, "model": model, "source": source,
          "source_format": source_format, "converter": "reskd_jax.tools.convert_weights"}


def model_fields(meta: Mapping[str, Any]) -> Dict[str, Any]:
  """The model-config keys ``meta`` pins down (for filling/checking a teacher block)."""
  known = dict(meta.get("model") or {k: meta[k] for k in _LEGACY_KEYS if k in meta})
  if meta.get("arch"):
    known.setdefault("name", meta["arch"])
  if "tsm" in meta:
    known.setdefault("tsm", bool(meta["tsm"]))
  return {k: v for k, v in known.items() if k not in RUN_KEYS}
