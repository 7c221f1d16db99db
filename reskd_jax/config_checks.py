"""Start-up checks of a run's config: everything that would otherwise fail hours in.

``train.train_and_evaluate`` and ``--mode=eval`` call these before any
compilation. Each failure is a one-line ``ConfigError`` naming the key (exit
status 2, see ``reskd_jax.errors``). Checked: the run kind and method, names
of architectures, dtypes, batch sizes against the devices, the
logging/checkpoint/eval intervals, that both splits exist and hold videos,
the number of classes, that a student does not upsample its crop, that a
resumed workdir was started with the same model, data and batch settings,
and that a teacher checkpoint fits ``config.teacher`` (whose unset
architecture keys are filled from the checkpoint's ``meta.json``).
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np

from reskd_jax import meta as meta_lib, models, train_step, train_utils
from reskd_jax.data import clips, labels
from reskd_jax.errors import CheckpointError, ConfigError

EVAL_METRICS = ("top1", "top5", "mean_class_accuracy", "mAP")
# Settings a resumed run must share with the run that wrote its checkpoints.
RESUME_PREFIXES = ("model.", "teacher.", "data.")
RESUME_KEYS = ("batch_size", "num_classes", "mode", "kd_method", "dtype")
# ... except these, which may change between runs (moved data, moved teacher; remat only
# trades memory for compute, with the same numbers and variables).
RESUME_FREE = ("data.data_dir", "data.cache", "data.parallel_reads", "model.init_from",
               "model.remat", "teacher.checkpoint", "allow_config_change")


def compute_dtype(name: str):
  if name not in ("float32", "bfloat16"):
    raise ConfigError(f"config.dtype={name!r}: expected 'float32' or 'bfloat16'")
  return jnp.float32 if name == "float32" else jnp.bfloat16


def check_config(config) -> None:
  """Start-up checks of the keys a run cannot recover from later."""
  train_step.check_mode(config.mode, config.kd_method)
  if config.mode == "reskd":
    if not config.teacher.checkpoint:
      raise ConfigError("config.teacher.checkpoint is empty: ResKD needs a trained teacher "
                        "(a teacher run's workdir or a directory written by "
                        "`python -m reskd_jax.tools.convert_weights`)")
  if config.eval_metric not in EVAL_METRICS:
    raise ConfigError(f"config.eval_metric={config.eval_metric!r}: expected one of "
                      f"{EVAL_METRICS}")
  blocks = ("model", "teacher") if config.mode == "reskd" else ("model",)
  frames = clips.frames_per_clip(config.data)
  for key in blocks:
    name = config[key].name
    if name is None:  # a teacher's architecture may come from its meta.json
      continue
    models.check_name(name, f"config.{key}.name")
    multiple = models.FAMILIES[models.family_name(name)].temporal_multiple
    if frames % multiple:
      raise ConfigError(f"clips have {frames} frames (config.data), but config.{key}.name="
                        f"{name!r} takes a multiple of {multiple} frames (its temporal "
                        f"patch size)")
  scale = config.data.get("decode_scale", 1)
  if scale != 1 and config.mode != "baseline":
    raise ConfigError(f"config.data.decode_scale={scale} shrinks every frame, so a "
                      f"{config.mode!r} run's {'teacher' if config.mode == 'reskd' else 'model'}"
                      f" would not see full resolution; reduced-scale decoding is for "
                      f"mode='baseline' runs (set config.data.decode_scale=1)")
  compute_dtype(config.dtype)
  check_values(config)
  n = jax.device_count()
  for key in ("batch_size", "eval_batch_size"):
    value = config[key]
    if value < 1 or value % n:
      raise ConfigError(f"config.{key}={value} must be a positive multiple of the "
                        f"{n} devices")
  for key in ("log_every_steps", "checkpoint_every_steps", "keep_checkpoints"):
    if config[key] < 1:
      raise ConfigError(f"config.{key}={config[key]}: must be at least 1")
  if not config.eval_every_epochs > 0:
    raise ConfigError(f"config.eval_every_epochs={config.eval_every_epochs}: must be positive")
  check_resolution(config)


def check_values(config) -> None:
  """Numbers that cannot mean anything (``num_train_steps=-5``, ``num_frames=0``, a crop
  larger than the short side), before anything is written or compiled."""
  for key in ("num_train_steps", "steps_per_epoch", "num_eval_steps"):
    value = config[key]
    if value != -1 and value < 1:
      raise ConfigError(f"config.{key}={value}: must be at least 1, or -1 for "
                        f"{'the data set size' if key != 'num_train_steps' else 'num_epochs'}")
  if config.num_train_steps == -1 and not config.num_epochs > 0:
    raise ConfigError(f"config.num_epochs={config.num_epochs}: must be positive (or set "
                      f"config.num_train_steps)")
  clips.check_data_config(config.data)
  opt = config.optimizer
  if opt.get("name", "sgd") not in ("sgd", "adamw"):
    raise ConfigError(f"config.optimizer.name={opt.name!r}: expected 'sgd' or 'adamw'")
  if opt.get("schedule", "cosine") not in ("cosine", "step"):
    raise ConfigError(f"config.optimizer.schedule={opt.schedule!r}: expected 'cosine' or "
                      f"'step'")
  if int(opt.get("grad_accum_steps", 1) or 1) < 1:
    raise ConfigError(f"config.optimizer.grad_accum_steps={opt.grad_accum_steps}: must be at "
                      f"least 1")
  if not opt.base_batch_size > 0:
    raise ConfigError(f"config.optimizer.base_batch_size={opt.base_batch_size}: must be "
                      f"positive")


def check_resolution(config) -> None:
  """A model must not upsample its crop: that costs FLOPs and adds no information."""
  crop = config.data.crop_size
  blocks = ("model", "teacher") if config.mode == "reskd" else ("model",)
  for key in blocks:
    size = config[key].get("input_size")
    if size is not None and size > crop:
      raise ConfigError(
          f"config.{key}.input_size={size} is larger than config.data.crop_size={crop}: the "
          f"model would upsample its input (more FLOPs, no more detail); lower "
          f"config.{key}.input_size or raise config.data.crop_size")


def check_splits(config, info, train: bool = True) -> None:
  """Both splits must exist and hold videos before hours of training, not at the first eval."""
  keys = ("train_split", "eval_split") if train else ("eval_split",)
  for key in keys:
    split = config.data[key]
    if split not in info.num_videos:
      raise ConfigError(f"config.data.{key}={split!r} is not a split of "
                        f"{config.data.data_dir!r} (it has {sorted(info.num_videos)})")
    if info.num_videos[split] < 1:
      raise ConfigError(f"config.data.{key}={split!r} has no videos in "
                        f"{config.data.data_dir!r}; prepare it again or choose another split")


def num_classes(config, info) -> int:
  """``config.num_classes``, or the data set's when it is -1 (or None)."""
  if config.num_classes in (-1, None):
    return info.num_classes
  if config.num_classes != info.num_classes:
    raise ConfigError(f"config.num_classes={config.num_classes} but the data set at "
                      f"{config.data.data_dir!r} has {info.num_classes} classes (set "
                      f"config.num_classes=-1 to take the data set's)")
  return config.num_classes


# ---------------------------------------------------------------------------
# Resuming a workdir.


def _flat(tree: Mapping[str, Any], prefix: str = "") -> Dict[str, Any]:
  out = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      out.update(_flat(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def config_to_json(config) -> Dict[str, Any]:
  """The config as plain JSON (what ``<workdir>/config.json`` holds)."""
  return json.loads(config.to_json())


def resume_differences(config, saved: Mapping[str, Any]) -> List[str]:
  """``key: saved -> now`` for every model/data/batch setting that changed."""
  now, before = _flat(config_to_json(config)), _flat(saved)
  diffs = []
  for key in sorted(set(now) & set(before)):
    if key in RESUME_FREE or not (key.startswith(RESUME_PREFIXES) or key in RESUME_KEYS):
      continue
    if now[key] != before[key]:
      diffs.append(f"{key}: {before[key]!r} -> {now[key]!r}")
  return diffs


def check_resume(config, saved: Optional[Mapping[str, Any]], workdir: str) -> None:
  """A workdir with checkpoints resumes only with the settings that wrote them."""
  if not saved:
    return
  diffs = resume_differences(config, saved)
  if not diffs:
    return
  if config.get("allow_config_change", False):
    train_utils.warn(f"resuming {workdir} with changed settings ({'; '.join(diffs)}) because "
                     f"config.allow_config_change=True")
    return
  raise ConfigError(
      f"{workdir} was started with other settings: {'; '.join(diffs)}. Resume with the saved "
      f"settings (config.json there), use a new workdir, or pass "
      f"--config.allow_config_change=True")


# Keys an evaluation may choose freely (the test transform and its batching).
EVAL_FREE = ("data.test_num_clips", "data.test_num_crops", "data.eval_split", "eval_batch_size",
             "num_eval_steps")


def check_eval(config, saved: Optional[Mapping[str, Any]], workdir: str) -> None:
  """``--mode=eval`` with a --config file that builds another model or reads other data than
  the one the workdir trained is refused (the variables would not fit, or mean something
  else)."""
  if not saved or config.get("allow_config_change", False):
    return
  diffs = [d for d in resume_differences(config, saved) if d.split(":")[0] not in EVAL_FREE
           and d.startswith(("model.", "data.", "num_classes:"))]
  if diffs:
    raise ConfigError(
        f"{workdir} was trained with other settings than this config: {'; '.join(diffs)}. "
        f"Evaluate it with its own config (`python main.py --workdir={workdir} --mode=eval`), "
        f"or pass --config.allow_config_change=True")


def all_differences(before: Mapping[str, Any], now: Mapping[str, Any]) -> List[str]:
  """``key: before -> now`` for every key of two config.json payloads that differs."""
  a, b = _flat(before), _flat(now)
  return [f"{k}: {a.get(k, '(unset)')!r} -> {b.get(k, '(unset)')!r}"
          for k in sorted(set(a) | set(b)) if a.get(k, "(unset)") != b.get(k, "(unset)")]


# ---------------------------------------------------------------------------
# Teachers.


def _norm(value):
  if isinstance(value, (list, tuple)):
    return [_norm(v) for v in value]
  return value


# Teacher keys that are choices of this run, not of the teacher's training: the
# resolution the teacher is fed (e.g. the paper's model-distillation ablation).
TEACHER_FREE = ("input_size",)


def fill_teacher(config, meta: Mapping[str, Any], where: str) -> None:
  """Fills unset ``config.teacher`` architecture keys from ``meta`` and checks the set ones.

  Generic over the keys of the teacher block: every key that ``meta`` pins
  down (see ``meta.model_fields``) is filled when unset (None) and must agree
  when set, except ``TEACHER_FREE`` (``input_size``: unset feeds the teacher
  the crop). A TSM teacher must see the frame count it was trained with.
  """
  teacher = config.teacher
  known = meta_lib.model_fields(meta)
  for key in teacher.keys():
    if key in meta_lib.RUN_KEYS or key in TEACHER_FREE or key not in known:
      continue
    want, have = known[key], teacher[key]
    if have is None:
      if want is not None:
        teacher[key] = tuple(want) if isinstance(want, list) else want
    elif _norm(have) != _norm(want):
      raise ConfigError(
          f"config.teacher.{key}={have!r} but the teacher at {where} was trained with "
          f"{key}={want!r} (its meta.json); leave config.teacher.{key} unset to take it from "
          f"there")
  if teacher.name is None:
    raise ConfigError(f"config.teacher.name is unset and the meta.json of {where} does not "
                      f"name the architecture; set config.teacher.name")
  frames, num_frames = meta.get("num_segments"), clips.frames_per_clip(config.data)
  if frames and frames != num_frames:
    if teacher.tsm:
      raise ConfigError(
          f"the TSM teacher at {where} was trained on num_segments={frames} frames per clip "
          f"but config.data.{clips.frames_key(config.data)}={num_frames}; temporal shifts "
          f"need the same count")
    train_utils.warn(f"the teacher at {where} was trained on {frames} frames per clip; this "
                     f"run gives it {num_frames}")


def _key_name(key) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def first_mismatch(expected, got) -> Optional[str]:
  """``'params/fc/kernel': checkpoint (64, 4), model (8, 4)`` for the first leaf of ``got``
  (a variables tree) that is missing, extra or of another shape than ``expected`` (a tree
  of arrays or ShapeDtypeStructs); None when they fit."""
  def shapes(tree):
    return {"/".join(_key_name(k) for k in path): tuple(getattr(leaf, "shape", np.shape(leaf)))
            for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}
  want, have = shapes(expected), shapes(got)
  for key in sorted(set(want) | set(have)):
    if want.get(key) != have.get(key):
      a = have.get(key, "missing")
      b = want.get(key, "absent")
      return f"{key!r}: checkpoint {a}, model {b}"
  return None


def check_variables_fit(model, variables, num_frames: int, size: int, where: str,
                        what: str) -> None:
  """Variables that do not fit ``model`` (the model the config builds) are one line naming
  the first differing parameter and both shapes, not a flax ScopeParamShapeError."""
  expected = jax.eval_shape(lambda: models.init_variables(model, jax.random.key(0), num_frames,
                                                          size))
  expected = {k: v for k, v in expected.items() if k in ("params", "batch_stats")}
  got = {k: v for k, v in variables.items() if k in ("params", "batch_stats")}
  mismatch = first_mismatch(expected, got)
  if mismatch:
    raise CheckpointError(f"{where} does not fit the model of {what}: first difference "
                          f"{mismatch}")


def check_teacher_data(config, meta: Mapping[str, Any], class_names, where: str) -> None:
  """The teacher must see the resolution and the class order it was trained with.

  Its ``meta.json`` records both (``resolution``, ``class_names``; converted
  weights record class names when the converter was given ``--classes``).
  A difference is an error unless the config says it is intended:
  ``config.teacher.allow_other_resolution`` (e.g. a teacher fine-tuned at
  another resolution) or ``config.teacher.allow_other_classes``.
  """
  teacher = config.teacher
  trained = meta.get("resolution")
  fed = teacher.get("input_size") or clips.output_size(config.data)
  if trained and int(trained) != int(fed) and not teacher.get("allow_other_resolution", False):
    raise ConfigError(
        f"the teacher at {where} was trained at {trained} px (its meta.json) but this run feeds "
        f"it {fed} px (config.data.crop_size / config.teacher.input_size); set "
        f"config.teacher.allow_other_resolution=True if that is intended")
  what = labels.difference(meta.get("class_names"), class_names)
  if what and not teacher.get("allow_other_classes", False):
    raise ConfigError(
        f"the teacher at {where} was trained on {what}, not on those of config.data.data_dir="
        f"{config.data.data_dir!r} (its meta.json class_names vs the data set's manifest); "
        f"its logits would mean other classes. Convert it with the data set's class list, or "
        f"set config.teacher.allow_other_classes=True if that is intended")


def check_teacher_alignment(config, student, teacher, teacher_vars, classes: int,
                            meta: Optional[Mapping[str, Any]] = None) -> None:
  """The teacher must fit its config, and its outputs must align with the student's.

  Only the class count is compared here; the class names and their order are
  (``check_teacher_data``, by ``labels.difference``) when its meta.json records them.
  """
  if meta and meta.get("num_classes") not in (None, classes):
    raise ConfigError(f"the teacher at {config.teacher.checkpoint!r} has "
                      f"num_classes={meta['num_classes']} (its meta.json) but this run has "
                      f"{classes} classes")
  expected = jax.eval_shape(lambda: models.init_variables(
      teacher, jax.random.key(0), clips.frames_per_clip(config.data), config.data.crop_size))
  got = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), jnp.float32), teacher_vars)
  exp_shapes = {jax.tree_util.keystr(k): v.shape
                for k, v in jax.tree_util.tree_leaves_with_path(expected)}
  got_shapes = {jax.tree_util.keystr(k): v.shape
                for k, v in jax.tree_util.tree_leaves_with_path(got)}
  if exp_shapes != got_shapes:
    missing = sorted(set(exp_shapes) - set(got_shapes))[:5]
    extra = sorted(set(got_shapes) - set(exp_shapes))[:5]
    wrong = sorted(k for k in set(exp_shapes) & set(got_shapes)
                   if exp_shapes[k] != got_shapes[k])[:5]
    raise ConfigError(
        f"config.teacher.checkpoint={config.teacher.checkpoint!r} does not fit "
        f"config.teacher (name={config.teacher.name!r}, {classes} classes): "
        f"missing {missing}, unexpected {extra}, shape mismatch {wrong}")
  if config.kd_method == "pixel_feature":
    cs, ct = models.feature_channels(student), models.feature_channels(teacher)
    if cs != ct:
      raise ConfigError(
          f"config.kd_method='pixel_feature' cannot align the student's {cs}-channel map "
          f"({config.model.name}) with the teacher's {ct}-channel map ({config.teacher.name}); "
          f"use kd_method='pixel_logit' (per-position logits) for such pairs")
