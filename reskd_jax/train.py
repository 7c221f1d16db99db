"""Training and evaluation loops (flax `examples/imagenet` layout).

``train_and_evaluate(config, workdir)`` trains the model of ``config.model``
in one of three modes (``teacher`` pre-training, low-resolution
``baseline``, ``reskd`` distillation from ``config.teacher``), resuming from
the workdir, evaluating periodically and writing TensorBoard metrics,
checkpoints, ``results.json`` and the final student variables
(``<workdir>/variables``, loadable as a teacher or for evaluation).
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any, Dict, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from reskd_jax import checkpoint as var_io
from reskd_jax import evaluate, flops, input_pipeline, losses, models, optim, train_step
from reskd_jax import train_utils
from reskd_jax.errors import ConfigError  # noqa: F401  (re-exported)

RESULTS_FILE = "results.json"
BEST_VARIABLES = "best_variables"
BEST_FILE = "best.json"
EVAL_METRICS = ("top1", "top5", "mean_class_accuracy", "mAP")




def _dtype(name: str):
  if name not in ("float32", "bfloat16"):
    raise ConfigError(f"config.dtype={name!r}: expected 'float32' or 'bfloat16'")
  return jnp.float32 if name == "float32" else jnp.bfloat16


def build_from_config(model_cfg, num_classes: int, *, dtype=jnp.float32, bn_axis_name=None,
                      dropout_rate=None, num_segments=None) -> models.VideoClassifier:
  """A model from a `configs.default.get_model_config()` block."""
  if model_cfg.name not in models.ARCHS:
    raise ConfigError(f"config model name {model_cfg.name!r} is unknown; expected one of "
                      f"{sorted(models.ARCHS)}")
  return models.build_model(
      model_cfg.name, num_classes, tsm=model_cfg.tsm, num_segments=num_segments,
      strides=tuple(model_cfg.strides), width=model_cfg.width,
      stage_sizes=tuple(model_cfg.stage_sizes) if model_cfg.stage_sizes else None,
      stem=model_cfg.stem, input_size=model_cfg.input_size,
      dropout_rate=model_cfg.dropout_rate if dropout_rate is None else dropout_rate,
      dtype=dtype, bn_axis_name=bn_axis_name)


def check_config(config) -> None:
  """Start-up checks of the keys a run cannot recover from later."""
  if config.mode not in train_step.MODES:
    raise ConfigError(f"config.mode={config.mode!r}: expected one of {train_step.MODES}")
  if config.mode == "reskd":
    if config.kd_method not in losses.KD_METHODS:
      raise ConfigError(f"config.kd_method={config.kd_method!r}: expected one of "
                        f"{losses.KD_METHODS}")
    if not config.teacher.checkpoint:
      raise ConfigError("config.teacher.checkpoint is empty: ResKD needs a trained teacher "
                        "(a teacher run's workdir or a directory written by "
                        "`python -m reskd_jax.convert`)")
  if config.eval_metric not in EVAL_METRICS:
    raise ConfigError(f"config.eval_metric={config.eval_metric!r}: expected one of "
                      f"{EVAL_METRICS}")
  for key in ("model", "teacher"):
    name = config[key].name
    if name not in models.ARCHS:
      raise ConfigError(f"config.{key}.name={name!r} is unknown; expected one of "
                        f"{sorted(models.ARCHS)}")
  _dtype(config.dtype)
  n = jax.device_count()
  for key in ("batch_size", "eval_batch_size"):
    value = config[key]
    if value < 1 or value % n:
      raise ConfigError(f"config.{key}={value} must be a positive multiple of the "
                        f"{n} devices")


def check_splits(config, info, train: bool = True) -> None:
  """Both splits must exist before hours of training, not at the first eval."""
  keys = ("train_split", "eval_split") if train else ("eval_split",)
  for key in keys:
    split = config.data[key]
    if split not in info.num_videos:
      raise ConfigError(f"config.data.{key}={split!r} is not a split of "
                        f"{config.data.data_dir!r} (it has {sorted(info.num_videos)})")


def _num_classes(config, info) -> int:
  if config.num_classes in (-1, None):
    return info.num_classes
  if config.num_classes != info.num_classes:
    raise ConfigError(f"config.num_classes={config.num_classes} but the data set at "
                      f"{config.data.data_dir!r} has {info.num_classes} classes")
  return config.num_classes


def check_teacher_alignment(config, student, teacher, teacher_vars, num_classes) -> None:
  """The teacher must fit its config, and its outputs must align with the student's."""
  expected = jax.eval_shape(lambda: models.init_variables(
      teacher, jax.random.key(0), config.data.num_frames, config.data.crop_size))
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
        f"config.teacher (name={config.teacher.name!r}, {num_classes} classes): "
        f"missing {missing}, unexpected {extra}, shape mismatch {wrong}")
  method = config.kd_method
  if method == "pixel_feature":
    cs, ct = models.feature_channels(student), models.feature_channels(teacher)
    if cs != ct:
      raise ConfigError(
          f"config.kd_method='pixel_feature' cannot align the student's {cs}-channel map "
          f"({config.model.name}) with the teacher's {ct}-channel map ({config.teacher.name}); "
          f"use kd_method='pixel_logit' (per-position logits) for such pairs")


def _save_json(path: str, payload: Dict[str, Any]) -> None:
  if jax.process_index() != 0:
    return
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(payload, f, indent=2, sort_keys=True)
  os.replace(tmp, path)


def _save_variables(path, variables, config, num_classes, class_names=()) -> None:
  """The student's variables for deployment / as a teacher (process 0 writes)."""
  variables = _to_host(variables)  # replicated: every host holds a full copy
  if jax.process_index() == 0:
    var_io.save_variables(path, variables,
                          _model_metadata(config, config.model, num_classes, class_names))


def _to_host(tree):
  return jax.tree.map(lambda x: np.asarray(jax.device_get(x)), tree)


def student_resolution(config) -> int:
  return config.model.input_size or config.data.crop_size


# The test transform, recorded in meta.json so that predict/export need no config file.
_TEST_TRANSFORM_KEYS = ("sampling", "num_frames", "clip_len", "frame_interval", "short_side",
                        "crop_size", "test_num_clips", "test_num_crops", "mean", "std")


def _model_metadata(config, model_cfg, num_classes, class_names=()) -> Dict[str, Any]:
  return {"class_names": list(class_names),
          "data": {k: config.data[k] for k in _TEST_TRANSFORM_KEYS},
          "dataset": config.data.name,
          "arch": model_cfg.name, "num_classes": num_classes, "tsm": bool(model_cfg.tsm),
          "num_segments": config.data.num_frames, "strides": list(model_cfg.strides),
          "width": model_cfg.width,
          "stage_sizes": list(model_cfg.stage_sizes) if model_cfg.stage_sizes else None,
          "stem": model_cfg.stem, "input_size": model_cfg.input_size,
          "resolution": model_cfg.input_size or config.data.crop_size,
          "source": "reskd_jax.train", "mode": config.mode}


class Evaluator:
  """Multi-view evaluation on the eval split; the step and data set are built once.

  Calling it with the (replicated) variables returns the metrics; periodic
  evaluations reuse the compiled step and the tf.data pipeline.
  """

  def __init__(self, config, model, mesh, num_classes: int, multi_label: bool):
    step = train_step.make_eval_step(model=models.with_bn_axis(model, None),
                                     mean=config.data.mean, std=config.data.std,
                                     dtype=_dtype(config.dtype))
    self._fn = train_step.shard_eval_step(step, mesh)
    self._dataset = input_pipeline.create_dataset(
        config.data, config.data.eval_split, train=False,
        batch_size=config.eval_batch_size // jax.process_count(), num_classes=num_classes)
    self._spec = jax.sharding.PartitionSpec(train_step.AXIS)
    self._mesh = mesh
    self._multi_label = multi_label
    self._max_batches = config.num_eval_steps

  def _put(self, batch):
    return input_pipeline.make_global_batch(batch, self._mesh, self._spec)

  def __call__(self, variables) -> Dict[str, float]:
    return evaluate.evaluate(self._fn, variables, self._dataset.as_numpy_iterator(), self._put,
                             self._multi_label, max_batches=self._max_batches)


def _gflops(config, model, variables) -> float:
  return flops.video_gflops(model, variables, config.data.num_frames,
                            student_resolution(config), with_xla=False)["gflops"]


def _steps(config, info) -> Tuple[int, int]:
  num_train = info.num_videos.get(config.data.train_split, 0)
  if num_train < 1:
    raise ConfigError(f"config.data.train_split={config.data.train_split!r} has no videos in "
                      f"{config.data.data_dir!r}")
  steps_per_epoch = (config.steps_per_epoch if config.steps_per_epoch > 0
                     else max(num_train // config.batch_size, 1))
  total = (config.num_train_steps if config.num_train_steps > 0
           else max(int(config.num_epochs * steps_per_epoch), 1))
  return steps_per_epoch, total


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> Dict[str, Any]:
  """Trains, evaluates, writes ``results.json``; returns the final eval metrics."""
  check_config(config)
  info = input_pipeline.dataset_info(config.data.data_dir)
  check_splits(config, info)
  num_classes = _num_classes(config, info)
  os.makedirs(workdir, exist_ok=True)
  mesh = train_step.make_mesh()
  dtype = _dtype(config.dtype)
  bn_axis = train_step.AXIS if config.sync_bn else None
  num_frames = input_pipeline.frames_per_clip(config.data)
  student = build_from_config(config.model, num_classes, dtype=dtype, bn_axis_name=bn_axis)
  rng = jax.random.key(config.seed)
  init_rng, step_rng = jax.random.split(rng)
  variables = models.init_variables(models.with_bn_axis(student, None), init_rng, num_frames,
                                    config.data.crop_size)
  variables = jax.tree.map(np.asarray, variables)
  if config.model.init_from:
    variables = var_io.merge_pretrained(variables, var_io.load_variables(config.model.init_from))

  teacher, teacher_vars = None, {}
  if config.mode == "reskd":
    # The teacher's head never runs under dropout: only BN sees train mode.
    teacher = build_from_config(config.teacher, num_classes, dtype=dtype, bn_axis_name=bn_axis,
                                dropout_rate=0.0)
    teacher_vars = var_io.load_variables(config.teacher.checkpoint)
    teacher_vars = {k: teacher_vars[k] for k in ("params", "batch_stats") if k in teacher_vars}
    check_teacher_alignment(config, student, models.with_bn_axis(teacher, None), teacher_vars,
                            num_classes)

  steps_per_epoch, num_train_steps = _steps(config, info)
  schedule = optim.learning_rate_schedule(config.optimizer, config.batch_size, steps_per_epoch,
                                          num_train_steps,
                                          by_epoch=config.optimizer.get("lr_by_epoch", True))
  tx = optim.create_optimizer(config.optimizer, variables["params"], schedule)
  state = train_step.create_train_state(variables, tx)

  manager = train_utils.create_checkpoint_manager(workdir, config.keep_checkpoints)
  restored = train_utils.restore_latest(manager, jax.tree.map(np.asarray, state))
  if restored is not None:
    state = restored
  start_step = int(state.step)
  state = train_step.replicate(state, mesh)
  teacher_vars = train_step.replicate(teacher_vars, mesh)

  step_fn = train_step.shard_train_step(train_step.make_train_step(
      student=student, teacher=teacher, tx=tx, mode=config.mode, kd_method=config.kd_method,
      kd_weight=config.kd_weight, kd_temperature=config.kd_temperature,
      teacher_train_mode_bn=config.teacher.train_mode_bn,
      label_smoothing=config.label_smoothing, mean=config.data.mean, std=config.data.std,
      flip=config.data.flip, dtype=dtype), mesh)

  per_host = config.batch_size // jax.process_count()
  train_ds = input_pipeline.create_dataset(
      config.data, config.data.train_split, train=True, batch_size=per_host,
      num_classes=num_classes, seed=config.seed, start_step=start_step)
  batches = input_pipeline.prefetch_to_mesh(train_ds, mesh)

  evaluator = Evaluator(config, student, mesh, num_classes, info.multi_label)
  writer = train_utils.create_metric_writer(workdir)
  if start_step == 0:
    writer.write_hparams({k: v for k, v in _flat_config(config).items()
                          if isinstance(v, (int, float, str, bool))})
  progress = train_utils.Progress(num_train_steps, config.batch_size, first_step=start_step)
  eval_every = max(int(config.eval_every_epochs * steps_per_epoch), 1)
  best_path = os.path.join(workdir, BEST_VARIABLES)
  best = _read_json(os.path.join(workdir, BEST_FILE))
  final_metrics: Dict[str, Any] = {}
  history = []
  preempted = False
  logging.info("training %s (%s) for %d steps (%d per epoch) from step %d", config.model.name,
               config.mode, num_train_steps, steps_per_epoch, start_step)

  with train_utils.StopSignal() as stop:
    for step in range(start_step + 1, num_train_steps + 1):
      batch = next(batches)
      state, metrics = step_fn(state, teacher_vars, batch, step_rng)
      history.append(metrics)
      if step % config.log_every_steps == 0 or step == num_train_steps:
        summary = {k: float(np.mean([float(m[k]) for m in history])) for k in history[0]}
        summary["learning_rate"] = float(schedule(step - 1))
        history = []
        writer.write_scalars(step, {f"train/{k}": v for k, v in summary.items()})
        progress.update(step, {k: summary[k] for k in ("loss", "ce_loss", "kd_loss",
                                                       "accuracy")})
      if step % eval_every == 0 or step == num_train_steps:
        final_metrics = evaluator(state.variables)
        writer.write_scalars(step, {f"eval/{k}": v for k, v in final_metrics.items()
                                    if k in EVAL_METRICS})
        print(f"[eval] step {step}: " + " ".join(
            f"{k}={final_metrics[k]:.4f}" for k in EVAL_METRICS if k in final_metrics),
            flush=True)
        value = final_metrics.get(config.eval_metric)
        if value is not None and value > best.get(config.eval_metric, -1.0):
          best = {config.eval_metric: value, "step": step}
          _save_json(os.path.join(workdir, BEST_FILE), best)
          _save_variables(best_path, state.variables, config, num_classes, info.class_names)
      saved = step % config.checkpoint_every_steps == 0 or step == num_train_steps
      if saved:
        train_utils.save_state(manager, step, state)
      if stop.received is not None:
        if not saved:
          train_utils.save_state(manager, step, state, force=True)
        preempted = True
        break
  manager.wait_until_finished()
  writer.flush()
  if preempted:
    print(f"stopped at step {int(state.step)} after a signal; rerun the same command to "
          f"resume from {workdir}", flush=True)
    return {"preempted": True, "step": int(state.step)}

  if not final_metrics:  # resumed after the last step: nothing ran, evaluate once
    final_metrics = evaluator(state.variables)
  variables = _to_host(state.variables)
  _save_variables(os.path.join(workdir, var_io.VARIABLES_SUBDIR), variables, config,
                  num_classes, info.class_names)
  results = dict(final_metrics)
  results.update({
      "mode": config.mode, "model": config.model.name, "resolution": student_resolution(config),
      "num_frames": num_frames, "step": int(state.step), "best": best,
      "gflops_per_video": _gflops(config, student, variables),
  })
  _save_json(os.path.join(workdir, RESULTS_FILE), results)
  return results


def evaluate_workdir(config, workdir: str) -> Dict[str, Any]:
  """``--mode=eval``: evaluates ``<workdir>/variables`` (or ``best_variables``)."""
  check_config(config)
  info = input_pipeline.dataset_info(config.data.data_dir)
  check_splits(config, info, train=False)
  num_classes = _num_classes(config, info)
  model = build_from_config(config.model, num_classes, dtype=_dtype(config.dtype))
  variables = var_io.load_variables(workdir)
  mesh = train_step.make_mesh()
  metrics = Evaluator(config, model, mesh, num_classes, info.multi_label)(
      train_step.replicate(variables, mesh))
  metrics.update({"mode": "eval", "model": config.model.name,
                  "resolution": student_resolution(config),
                  "num_frames": input_pipeline.frames_per_clip(config.data),
                  "gflops_per_video": _gflops(config, model, variables)})
  _save_json(os.path.join(workdir, "eval_results.json"), metrics)
  return metrics


def _read_json(path: str) -> Dict[str, Any]:
  if os.path.isfile(path):
    with open(path) as f:
      return json.load(f)
  return {}


def _flat_config(config, prefix="") -> Dict[str, Any]:
  out = {}
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      out.update(_flat_config(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out
