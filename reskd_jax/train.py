"""Training and evaluation loops (flax `examples/imagenet` layout).

``train_and_evaluate(config, workdir)`` trains the model of ``config.model``
in one of three modes (``teacher`` pre-training, low-resolution
``baseline``, ``reskd`` distillation from ``config.teacher``), resuming from
the workdir, evaluating periodically and writing TensorBoard metrics,
checkpoints, ``results.json`` and the final student variables (the files are
named in ``reskd_jax.workdir``).

A run never lies: the config is checked before anything compiles
(``reskd_jax.config_checks``), one run holds the workdir at a time (a lock),
a non-finite loss, gradient norm or state stops the run with
``NonFiniteError`` (exit status 3) without saving anything, checkpoints are
verified when restored (``reskd_jax.checkpoints``), and the best variables
change together with their ``best.json``.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Dict, List, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from reskd_jax import checkpoints, config_checks, evaluate, flops, input_pipeline, meta as meta_lib
from reskd_jax import models, optim, train_step, train_utils, workdir as workdir_lib
from reskd_jax.config_checks import EVAL_METRICS, check_config, check_splits  # noqa: F401
from reskd_jax.config_checks import check_teacher_alignment  # noqa: F401
from reskd_jax.errors import ConfigError, NonFiniteError  # noqa: F401  (re-exported)
from reskd_jax.fileio import read_json, write_json_atomic

# Older names of the workdir's files (see reskd_jax.workdir).
RESULTS_FILE = workdir_lib.RESULTS
BEST_VARIABLES = workdir_lib.BEST_VARIABLES
BEST_FILE = workdir_lib.BEST
# Bits of the train step's "non_finite" metric.
_NON_FINITE = ((1, "loss"), (2, "gradient norm"), (4, "updated parameters or BatchNorm statistics"))


# The one builder lives in the model registry; kept here for existing callers.
build_from_config = models.build_from_config


def _save_json(path: str, payload: Dict[str, Any]) -> None:
  if jax.process_index() == 0:
    write_json_atomic(path, payload)


def _save_variables(path, variables, config, num_classes, extra_json=None,
                    class_names=()) -> None:
  """The student's variables for deployment / as a teacher (process 0 writes)."""
  variables = _to_host(variables)  # replicated: every host holds a full copy
  if jax.process_index() == 0:
    checkpoints.save_variables(path, variables,
                               _model_metadata(config, num_classes, class_names),
                               extra_json=extra_json)


def _to_host(tree):
  return jax.tree.map(lambda x: np.asarray(jax.device_get(x)), tree)


def student_resolution(config) -> int:
  """The pixels the student sees: its in-model resize, else the (possibly reduced) crop."""
  return config.model.input_size or input_pipeline.output_size(config.data)


def _model_metadata(config, num_classes, class_names=()) -> Dict[str, Any]:
  return meta_lib.for_trained_model(config, config.model, num_classes,
                                    input_pipeline.frames_per_clip(config.data),
                                    student_resolution(config), class_names)


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


def read_best(workdir: str) -> Dict[str, Any]:
  """The best record, read from inside ``best_variables`` (where it changes atomically)."""
  checkpoints.recover_interrupted_swap(os.path.join(workdir, workdir_lib.BEST_VARIABLES))
  inside = os.path.join(workdir, workdir_lib.BEST_VARIABLES, workdir_lib.BEST)
  best = read_json(inside) if os.path.isfile(inside) else None
  if best is None:  # workdirs of older versions kept it at the top level
    best = read_json(os.path.join(workdir, workdir_lib.BEST), default={})
  return best or {}


class _FiniteWatch:
  """Collects the steps' on-device ``non_finite`` flags; checks them at boundaries only."""

  def __init__(self):
    self._pending: List[Tuple[int, Any]] = []

  def add(self, step: int, metrics) -> None:
    self._pending.append((step, metrics))

  def check(self, last_good: Any, where: str) -> None:
    if not self._pending:
      return
    flags = jax.device_get([m["non_finite"] for _, m in self._pending])  # one transfer
    pending, self._pending = self._pending, []
    for (step, metrics), flag in zip(pending, flags):
      flag = int(flag)
      if flag:
        what = ", ".join(name for bit, name in _NON_FINITE if flag & bit)
        values = f"loss={float(metrics['loss']):.4g}, grad_norm={float(metrics['grad_norm']):.4g}"
        kept = (f"the last good checkpoint (step {last_good}) is kept in {where}"
                if last_good is not None else "no checkpoint had been saved yet")
        raise NonFiniteError(
            f"step {step}: the {what} became non-finite ({values}); stopped without saving "
            f"this state, {kept}. Lower config.optimizer.base_learning_rate or check the data")


def _lock(workdir: str):
  return workdir_lib.WorkdirLock(workdir)  # every process follows process 0's decision


def _prepare_teacher(config) -> Dict[str, Any]:
  """Fills/checks ``config.teacher`` from its checkpoint's ``meta.json``; returns the meta."""
  if config.mode != "reskd":
    return {}
  path = config.teacher.checkpoint
  try:
    meta = checkpoints.load_metadata(path)
  except FileNotFoundError as e:
    raise ConfigError(f"config.teacher.checkpoint: {e}") from None
  config_checks.fill_teacher(config, meta, repr(path))
  config_checks.check_resolution(config)
  return meta


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> Dict[str, Any]:
  """Trains, evaluates, writes ``results.json``; returns the final eval metrics."""
  config_checks.check_config(config)
  info = input_pipeline.dataset_info(config.data.data_dir)
  config_checks.check_splits(config, info)
  num_classes = config_checks.num_classes(config, info)
  os.makedirs(workdir, exist_ok=True)
  with _lock(workdir):
    return _train(config, workdir, info, num_classes)


def _train(config, workdir: str, info, num_classes: int) -> Dict[str, Any]:
  teacher_meta = _prepare_teacher(config)
  manager = checkpoints.TrainCheckpoints(workdir, config.keep_checkpoints)
  config_path = os.path.join(workdir, workdir_lib.CONFIG)
  if manager.all_steps():
    config_checks.check_resume(config, read_json(config_path), workdir)
  _save_json(config_path, config_checks.config_to_json(config))

  mesh = train_step.make_mesh()
  dtype = config_checks.compute_dtype(config.dtype)
  bn_axis = train_step.AXIS if config.sync_bn else None
  num_frames = input_pipeline.frames_per_clip(config.data)
  student = build_from_config(config.model, num_classes, dtype=dtype, bn_axis_name=bn_axis)
  rng = jax.random.key(config.seed)
  init_rng, step_rng = jax.random.split(rng)
  variables = models.init_variables(models.with_bn_axis(student, None), init_rng, num_frames,
                                    config.data.crop_size)
  variables = jax.tree.map(np.asarray, variables)
  if config.model.init_from:
    variables = checkpoints.merge_pretrained(variables,
                                             checkpoints.load_variables(config.model.init_from))

  teacher, teacher_vars = None, {}
  if config.mode == "reskd":
    # The teacher's head never runs under dropout: only BN sees train mode.
    teacher = build_from_config(config.teacher, num_classes, dtype=dtype, bn_axis_name=bn_axis,
                                dropout_rate=0.0)
    teacher_vars = checkpoints.load_variables(config.teacher.checkpoint)
    teacher_vars = {k: teacher_vars[k] for k in ("params", "batch_stats") if k in teacher_vars}
    config_checks.check_teacher_alignment(config, student, models.with_bn_axis(teacher, None),
                                          teacher_vars, num_classes, teacher_meta)

  steps_per_epoch, num_train_steps = _steps(config, info)
  # With gradient accumulation the schedule counts optimizer updates, `step` micro-batches.
  accum = optim.grad_accum_steps(config.optimizer)
  schedule = optim.learning_rate_schedule(
      config.optimizer, *optim.schedule_steps(config.optimizer, config.batch_size,
                                              steps_per_epoch, num_train_steps),
      by_epoch=config.optimizer.get("lr_by_epoch", True))
  tx = optim.create_optimizer(config.optimizer, variables["params"], schedule)
  state = train_step.create_train_state(variables, tx)

  restored = manager.restore(jax.tree.map(np.asarray, state))
  last_good = None
  if restored is not None:
    state, last_good = restored
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

  evaluator = evaluate.Evaluator(config, student, mesh, num_classes, info, dtype)
  # TensorBoard points are written when the checkpoint covering them is saved.
  writer = train_utils.CommittedWriter(train_utils.create_metric_writer(workdir))
  if start_step == 0:
    writer.write_hparams({k: v for k, v in _flat_config(config).items()
                          if isinstance(v, (int, float, str, bool))})
  progress = train_utils.Progress(num_train_steps, config.batch_size, first_step=start_step)
  eval_every = max(int(config.eval_every_epochs * steps_per_epoch), 1)
  best_path = os.path.join(workdir, workdir_lib.BEST_VARIABLES)
  best = read_best(workdir)
  final_metrics: Dict[str, Any] = {}
  history = []
  preempted = False
  watch = _FiniteWatch()
  logging.info("training %s (%s) for %d steps (%d per epoch) from step %d", config.model.name,
               config.mode, num_train_steps, steps_per_epoch, start_step)

  def _save(step: int, force: bool = False) -> None:
    nonlocal last_good
    watch.check(last_good, manager.directory)  # never save a non-finite state
    manager.save(step, state, force=force)  # returns once the previous save is on disk
    if last_good is not None:
      writer.commit(upto=last_good)
    last_good = step

  train_utils.sync_processes("reskd-train-loop")  # all compiled and ready: start together
  try:
    with train_utils.StopSignal(mesh) as stop:
      for step in range(start_step + 1, num_train_steps + 1):
        batch = next(batches)
        state, metrics = step_fn(state, teacher_vars, batch, step_rng)
        watch.add(step, metrics)
        history.append(metrics)
        if step % config.log_every_steps == 0 or step == num_train_steps:
          watch.check(last_good, manager.directory)
          summary = {k: float(np.mean([float(m[k]) for m in history]))
                     for k in history[0] if k != "non_finite"}
          summary["learning_rate"] = float(schedule((step - 1) // accum))
          history = []
          writer.write_scalars(step, {f"train/{k}": v for k, v in summary.items()})
          progress.update(step, {k: summary[k] for k in ("loss", "ce_loss", "kd_loss",
                                                         "accuracy")})
        if step % eval_every == 0 or step == num_train_steps:
          watch.check(last_good, manager.directory)  # never evaluate (or keep) a NaN model
          final_metrics = evaluator(state.variables)
          writer.write_scalars(step, {f"eval/{k}": v for k, v in final_metrics.items()
                                      if k in EVAL_METRICS})
          print(f"[eval] step {step}: " + " ".join(
              f"{k}={final_metrics[k]:.4f}" for k in EVAL_METRICS if k in final_metrics),
              flush=True)
          value = final_metrics.get(config.eval_metric)
          if (value is not None and np.isfinite(value)
              and value > best.get(config.eval_metric, -1.0)):
            best = {config.eval_metric: value, "step": step}
            # best.json lives inside best_variables: both change in one rename.
            _save_variables(best_path, state.variables, config, num_classes,
                            extra_json={workdir_lib.BEST: best}, class_names=info.class_names)
        saved = step % config.checkpoint_every_steps == 0 or step == num_train_steps
        if saved:
          _save(step)
        if stop.should_stop():  # the same step on every process
          if not saved:
            _save(step, force=True)
          preempted = True
          break
  except Exception:  # diverged, a data or save error: the good checkpoints in flight land
    manager.settle()
    if last_good is not None:
      writer.commit(upto=last_good)
    writer.discard()
    raise
  manager.wait_until_finished()
  writer.commit()
  if preempted:
    print(f"stopped at step {int(state.step)} after a signal; rerun the same command to "
          f"resume from {workdir}", flush=True)
    return {"preempted": True, "step": int(state.step)}

  if not final_metrics:  # resumed after the last step: nothing ran, evaluate once
    final_metrics = evaluator(state.variables)
  variables = _to_host(state.variables)
  _save_variables(os.path.join(workdir, workdir_lib.VARIABLES), variables, config, num_classes,
                  class_names=info.class_names)
  results = dict(final_metrics)
  results.update({
      "run": "train", "mode": config.mode, "model": config.model.name,
      "resolution": student_resolution(config), "num_frames": num_frames,
      "step": int(state.step), "best": best,
      "gflops_per_video": _gflops(config, student, variables),
  })
  _save_json(os.path.join(workdir, workdir_lib.RESULTS), results)
  return results


def _print_metrics(title: str, metrics: Dict[str, Any]) -> None:
  if jax.process_index() != 0:
    return
  print(title)
  for key in EVAL_METRICS + ("num_videos", "gflops_per_video", "eval_seconds"):
    if key in metrics:
      value = metrics[key]
      print(f"  {key:<20} {value:.4f}" if isinstance(value, float) else f"  {key:<20} {value}")
  print(flush=True)


def evaluate_workdir(config, workdir: str) -> Dict[str, Any]:
  """``--mode=eval``: evaluates ``<workdir>/variables``, prints and writes ``eval_results.json``."""
  config_checks.check_config(config)
  info = input_pipeline.dataset_info(config.data.data_dir)
  config_checks.check_splits(config, info, train=False)
  num_classes = config_checks.num_classes(config, info)
  dtype = config_checks.compute_dtype(config.dtype)
  model = build_from_config(config.model, num_classes, dtype=dtype)
  source = checkpoints.resolve_variables_dir(workdir)
  variables = checkpoints.load_variables(source)
  mesh = train_step.make_mesh()
  metrics = evaluate.Evaluator(config, model, mesh, num_classes, info, dtype)(
      train_step.replicate(variables, mesh))
  metrics.update({"run": "eval", "mode": config.mode, "model": config.model.name,
                  "variables": os.path.abspath(source), "split": config.data.eval_split,
                  "resolution": student_resolution(config),
                  "num_frames": input_pipeline.frames_per_clip(config.data),
                  "gflops_per_video": _gflops(config, model, variables)})
  out = os.path.join(workdir, workdir_lib.EVAL_RESULTS)
  _save_json(out, metrics)
  _print_metrics(f"[eval] {source} on {config.data.data_dir!r} split "
                 f"{config.data.eval_split!r}:", metrics)
  if jax.process_index() == 0:
    print(f"wrote {out}", flush=True)
  return metrics


def _flat_config(config, prefix="") -> Dict[str, Any]:
  out = {}
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      out.update(_flat_config(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out
