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

import os
import shutil
import time
from typing import Any, Dict, List, Optional, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging as absl_logging
from clu import metrics as clu_metrics
from clu import periodic_actions

from reskd_jax import checkpoints, config_checks, evaluate, gflops, meta as meta_lib, models, optim
from reskd_jax import runlog, train_step, train_utils, workdir as workdir_lib
from reskd_jax.config_checks import EVAL_METRICS
from reskd_jax.data import clips, pipeline, shard_check, transfer
from reskd_jax.errors import CheckpointError, ConfigError, DataError, NonFiniteError
from reskd_jax.fileio import read_json, recover, write_json_atomic

# Bits of the train step's "non_finite" metric.
_NON_FINITE = ((1, "loss"), (2, "gradient norm"), (4, "updated parameters or BatchNorm statistics"))


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
  return config.model.input_size or clips.output_size(config.data)


def _model_metadata(config, num_classes, class_names=()) -> Dict[str, Any]:
  return meta_lib.for_trained_model(config, config.model, num_classes,
                                    clips.frames_per_clip(config.data),
                                    student_resolution(config), class_names)


def _gflops(config, model, variables) -> float:
  return gflops.video_gflops(model, variables, clips.frames_per_clip(config.data),
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
  recover(os.path.join(workdir, workdir_lib.BEST_VARIABLES))
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


def _prepare_teacher(config, info=None) -> Dict[str, Any]:
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
  if info is not None:
    config_checks.check_teacher_data(config, meta, info.class_names, repr(path))
  return meta


# data_prep's converter for each data set of configs/ (the missing-data message names it).
CONVERTERS = {"minik": "minik", "k400": "kinetics", "kinetics": "kinetics",
              "activitynet": "activitynet", "fcvid": "fcvid", "ssv2": "sthv2", "demo": "demo"}


def dataset_info(config):
  """The data set's manifest summary; a missing one names the converter of this config."""
  data_dir = config.data.data_dir
  try:
    return pipeline.dataset_info(data_dir)
  except FileNotFoundError:
    if os.path.isfile(os.path.join(data_dir, "manifest.json")):
      raise
    fmt = CONVERTERS.get(config.data.name, "folder")
    example = (f"python -m data_prep demo --out={data_dir}" if fmt == "demo" else
               f"python -m data_prep {fmt} --source=... --out={data_dir} --split="
               f"{config.data.train_split}" + ("" if fmt == "folder" else " --annotations=..."))
    raise DataError(
        f"no converted data set at config.data.data_dir={data_dir!r} (manifest.json missing). "
        f"Prepare it with `{example}` (data_prep/README.md; a folder of class sub-folders: "
        f"`python -m data_prep folder`), or point config.data.data_dir at a converted "
        f"directory") from None


def _checkpoint_steps(workdir: str) -> List[int]:
  """Steps of the train checkpoints on disk (no manager: nothing is created)."""
  directory = os.path.join(workdir, workdir_lib.CHECKPOINTS)
  if not os.path.isdir(directory):
    return []
  return sorted(int(n) for n in os.listdir(directory) if n.isdigit())


def _finished(config, workdir: str, num_train_steps: int) -> Optional[Dict[str, Any]]:
  """The results of a workdir that already trained ``num_train_steps`` (None: work to do).

  Refuses a ``num_train_steps`` below the step the workdir has already reached:
  training cannot go back, and config.json would no longer match results.json.
  """
  steps = _checkpoint_steps(workdir)
  if not steps:
    return None
  if steps[-1] > num_train_steps:
    raise ConfigError(
        f"{workdir} has trained to step {steps[-1]} already, beyond config.num_train_steps="
        f"{num_train_steps}; evaluate it (`python main.py --workdir={workdir} --mode=eval`), "
        f"raise config.num_train_steps to train on, or use a new workdir")
  results = read_json(os.path.join(workdir, workdir_lib.RESULTS), default=None)
  if steps[-1] == num_train_steps and results and results.get("step") == num_train_steps:
    return results
  return None


def _print(*lines: str) -> None:
  if jax.process_index() == 0:
    print("\n".join(lines), flush=True)


def _teacher_line(config, meta) -> str:
  if config.mode != "reskd":
    return f"none (mode {config.mode!r})"
  path = config.teacher.checkpoint
  recorded = ""
  for where in (path, os.path.dirname(os.path.abspath(path))):
    results = read_json(os.path.join(where, workdir_lib.RESULTS), default=None)
    if results:
      metric = config.eval_metric
      value = (results.get("best") or {}).get(metric, results.get(metric))
      if value is not None:
        recorded = f", recorded {metric} {value:.4g}"
        break
  about = ", ".join(x for x in (f"{meta['resolution']} px" if meta.get("resolution") else "",
                                 str(meta.get("source") or ""), recorded.lstrip(", ")) if x)
  return f"{config.teacher.name} from {path}" + (f" ({about})" if about else "")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> Dict[str, Any]:
  """Trains, evaluates, writes ``results.json``; returns the final eval metrics.

  Every start-up check (config values, data set, teacher, a finished or
  overrun workdir) runs before anything is written; a start-up that fails in
  a workdir it created leaves no workdir behind.
  """
  if absl_logging.get_verbosity() < absl_logging.INFO:  # quiet (main.py's default)
    train_utils.drop_library_chatter()
  config_checks.check_config(config)
  info = dataset_info(config)
  config_checks.check_splits(config, info)
  shard_check.check_training_data(config.data)  # every split read: counts, sizes, checksums
  num_classes = config_checks.num_classes(config, info)
  teacher_meta = _prepare_teacher(config, info)
  steps_per_epoch, num_train_steps = _steps(config, info)
  if os.path.isdir(workdir):
    results = _finished(config, workdir, num_train_steps)
    if results is not None:
      best = results.get("best") or {}
      _print(f"{workdir} is finished: it trained all {num_train_steps} steps "
             f"({config.eval_metric}={results.get(config.eval_metric, float('nan')):.4g}, best "
             f"{best.get(config.eval_metric, float('nan')):.4g} at step {best.get('step', '?')}). "
             f"Results: {os.path.join(workdir, workdir_lib.RESULTS)}, variables: "
             f"{os.path.join(workdir, workdir_lib.VARIABLES)}. Nothing to do (raise "
             f"config.num_train_steps to train on; --mode=eval to evaluate)")
      return dict(results, finished=True)
  created = not os.path.exists(workdir)
  started = []  # set once the training loop runs: from then on the workdir is kept
  try:
    if jax.process_index() == 0:
      os.makedirs(workdir, exist_ok=True)
    train_utils.sync_processes("reskd-workdir-made")
    with _lock(workdir), runlog.RunLog(workdir):
      return _train(config, workdir, info, num_classes, teacher_meta, steps_per_epoch,
                    num_train_steps, started)
  except BaseException:
    if created and not started and jax.process_index() == 0:
      shutil.rmtree(workdir, ignore_errors=True)  # nothing of value: no half-made workdir
    raise


def _segment(config, workdir: str, start_step: int, saved_config) -> Dict[str, Any]:
  """This start's entry of ``history.json``; prints what differs from the last segment."""
  history = read_json(os.path.join(workdir, workdir_lib.HISTORY), default=None) or []
  now = config_checks.config_to_json(config)
  segment = {"start_step": start_step, "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
             "platform": jax.devices()[0].platform, "devices": jax.device_count(),
             "processes": jax.process_count(),
             "changes": config_checks.all_differences(saved_config, now) if saved_config else []}
  if history and start_step > 0:
    last = history[-1]
    if (last.get("devices"), last.get("processes")) != (segment["devices"],
                                                        segment["processes"]):
      segment["device_change"] = (f"{last.get('devices')} devices / {last.get('processes')} "
                                  f"processes -> {segment['devices']} / "
                                  f"{segment['processes']}")
  return {"history": history, "segment": segment}


def build_networks(config, num_classes: int, dtype) -> Tuple[Any, Optional[Any]]:
  """(student, teacher) of a run as training builds them (teacher None unless ResKD):
  BatchNorm statistics averaged over the mesh's data axis when ``config.sync_bn``; the
  teacher's head never runs under dropout (only its BatchNorm may see train mode)."""
  bn_axis = train_step.AXIS if config.sync_bn else None
  student = models.build_from_config(config.model, num_classes, dtype=dtype,
                                     bn_axis_name=bn_axis)
  teacher = None
  if config.mode == "reskd":
    teacher = models.build_from_config(config.teacher, num_classes, dtype=dtype,
                                       bn_axis_name=bn_axis, dropout_rate=0.0)
  return student, teacher


def create_optimizer(config, params, steps_per_epoch: int, num_train_steps: int):
  """(optax transformation, learning-rate schedule) of ``config.optimizer``; with gradient
  accumulation the schedule counts optimizer updates, the train step micro-batches."""
  schedule = optim.learning_rate_schedule(
      config.optimizer, *optim.schedule_steps(config.optimizer, config.batch_size,
                                              steps_per_epoch, num_train_steps),
      by_epoch=config.optimizer.get("lr_by_epoch", True))
  return optim.create_optimizer(config.optimizer, params, schedule), schedule


def sharded_train_step(config, student, teacher, tx, dtype, mesh):
  """The train step of ``config`` (mode, KD loss, normalisation, flip), run over ``mesh``."""
  return train_step.shard_train_step(train_step.make_train_step(
      student=student, teacher=teacher, tx=tx, mode=config.mode, kd_method=config.kd_method,
      kd_weight=config.kd_weight, kd_temperature=config.kd_temperature,
      teacher_train_mode_bn=config.teacher.train_mode_bn,
      label_smoothing=config.label_smoothing, mean=config.data.mean, std=config.data.std,
      flip=config.data.flip, dtype=dtype), mesh)


def _train(config, workdir: str, info, num_classes: int, teacher_meta, steps_per_epoch: int,
           num_train_steps: int, started: list) -> Dict[str, Any]:
  manager = checkpoints.TrainCheckpoints(workdir, config.keep_checkpoints)
  config_path = os.path.join(workdir, workdir_lib.CONFIG)
  saved_config = read_json(config_path, default=None)
  if manager.all_steps():
    config_checks.check_resume(config, saved_config, workdir)

  mesh = train_step.make_mesh()
  dtype = config_checks.compute_dtype(config.dtype)
  num_frames = clips.frames_per_clip(config.data)
  student, teacher = build_networks(config, num_classes, dtype)
  rng = jax.random.key(config.seed)
  init_rng, step_rng = jax.random.split(rng)
  variables = models.init_variables(models.with_bn_axis(student, None), init_rng, num_frames,
                                    config.data.crop_size)
  variables = jax.tree.map(np.asarray, variables)
  if config.model.init_from:
    variables = checkpoints.merge_pretrained(variables,
                                             checkpoints.load_variables(config.model.init_from))

  teacher_vars = {}
  if teacher is not None:
    teacher_vars = checkpoints.load_variables(config.teacher.checkpoint)
    teacher_vars = {k: teacher_vars[k] for k in ("params", "batch_stats") if k in teacher_vars}
    config_checks.check_teacher_alignment(config, student, models.with_bn_axis(teacher, None),
                                          teacher_vars, num_classes, teacher_meta)

  # With gradient accumulation the schedule counts optimizer updates, `step` micro-batches.
  accum = optim.grad_accum_steps(config.optimizer)
  tx, schedule = create_optimizer(config, variables["params"], steps_per_epoch, num_train_steps)
  state = train_step.create_train_state(variables, tx)

  _check_checkpoint_fits(workdir, state)
  restored = manager.restore(jax.tree.map(np.asarray, state))
  last_good = None
  if restored is not None:
    state, last_good = restored
  start_step = int(state.step)
  # Only now, with every check passed and the checkpoint restored, does config.json
  # describe this run; history.json keeps what each segment changed.
  run = _segment(config, workdir, start_step, saved_config)
  _save_json(config_path, config_checks.config_to_json(config))
  _save_json(os.path.join(workdir, workdir_lib.HISTORY), run["history"] + [run["segment"]])
  _startup_block(config, workdir, info, num_classes, steps_per_epoch, num_train_steps,
                 start_step, teacher_meta, run["segment"])

  state = train_step.replicate(state, mesh)
  teacher_vars = train_step.replicate(teacher_vars, mesh)

  step_fn = sharded_train_step(config, student, teacher, tx, dtype, mesh)

  per_host = config.batch_size // jax.process_count()
  train_ds = pipeline.create_dataset(
      config.data, config.data.train_split, train=True, batch_size=per_host,
      num_classes=num_classes, seed=config.seed, start_step=start_step)
  batches = transfer.prefetch_to_mesh(train_ds, mesh)

  evaluator = evaluate.Evaluator(config, student, mesh, num_classes, info, dtype)
  # TensorBoard points are written when the checkpoint covering them is saved.
  writer = train_utils.CommittedWriter(train_utils.create_metric_writer(workdir))
  if start_step == 0:
    writer.write_hparams({k: v for k, v in _flat_config(config).items()
                          if isinstance(v, (int, float, str, bool))})
  eval_every = max(int(config.eval_every_epochs * steps_per_epoch), 1)
  progress = train_utils.Progress(num_train_steps, config.batch_size, writer=writer,
                                  every_steps=config.log_every_steps)
  best_path = os.path.join(workdir, workdir_lib.BEST_VARIABLES)
  best = read_best(workdir)
  final_metrics: Dict[str, Any] = {}
  averages_cls, averages = None, None  # clu.metrics averages of the current log interval
  preempted = False
  # The steps' non-finite flags are computed on device and fetched only at log, eval and
  # checkpoint boundaries (one transfer, no per-step host sync); clu has no such guard.
  watch = _FiniteWatch()

  def _save(step: int, force: bool = False) -> None:
    nonlocal last_good
    watch.check(last_good, manager.directory)  # never save a non-finite state
    manager.save(step, state, force=force)  # returns once the previous save is on disk
    if last_good is not None:
      writer.commit(upto=last_good)
    last_good = step

  def _log(step: int, t: float) -> None:
    nonlocal averages
    del t
    watch.check(last_good, manager.directory)
    summary = {k: float(v) for k, v in averages.compute().items()}
    summary["learning_rate"] = float(schedule((step - 1) // accum))
    averages = None
    writer.write_scalars(step, {f"train/{k}": v for k, v in summary.items()})
    progress.metrics = {k: summary[k] for k in ("loss", "ce_loss", "kd_loss", "accuracy")
                        if k in summary}

  def _evaluate(step: int, t: float) -> None:
    nonlocal final_metrics, best
    del t
    watch.check(last_good, manager.directory)  # never evaluate (or keep) a NaN model
    final_metrics = evaluator(state.variables)
    writer.write_scalars(step, {f"eval/{k}": v for k, v in final_metrics.items()
                                if k in EVAL_METRICS + ("loss",)})
    _print(f"[eval] step {step}: " + " ".join(
        f"{k}={final_metrics[k]:.4f}" for k in EVAL_METRICS + ("loss",) if k in final_metrics))
    value = final_metrics.get(config.eval_metric)
    if value is not None and np.isfinite(value) and value > best.get(config.eval_metric, -1.0):
      best = {config.eval_metric: value, "step": step}
      # best.json lives inside best_variables: both change in one rename.
      _save_variables(best_path, state.variables, config, num_classes,
                      extra_json={workdir_lib.BEST: best}, class_names=info.class_names)

  # clu's periodic actions give the cadence (every N steps, and at the last step).
  last = [num_train_steps]
  log_action = periodic_actions.PeriodicCallback(
      every_steps=config.log_every_steps, on_steps=last, callback_fn=_log)
  eval_action = periodic_actions.PeriodicCallback(
      every_steps=eval_every, on_steps=last, callback_fn=_evaluate)
  save_action = periodic_actions.PeriodicCallback(
      every_steps=config.checkpoint_every_steps, on_steps=last,
      callback_fn=lambda step, t: _save(step))

  train_utils.sync_processes("reskd-train-loop")  # all compiled and ready: start together
  started.append(True)
  try:
    # The stop flag is ours, not clu's: with several processes every one must stop after
    # the same step (an all-reduce of the flags), which no clu/orbax hook provides.
    with train_utils.StopSignal(mesh) as stop:
      for step in range(start_step + 1, num_train_steps + 1):
        batch = next(batches)
        if step == 1:
          _write_views(writer, config, batch)
        state, metrics = step_fn(state, teacher_vars, batch, step_rng)
        watch.add(step, metrics)
        values = {k: v for k, v in metrics.items() if k != "non_finite"}
        if averages_cls is None:
          averages_cls = _average_collection(values)
        update = averages_cls.single_from_model_output(**values)
        averages = update if averages is None else averages.merge(update)
        if step == start_step + 1:
          jax.block_until_ready(metrics)  # compiled and run: the progress clock starts here
        log_action(step)
        progress(step)
        eval_action(step)
        saved = save_action(step)
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
    # Every process says it (each has its own log, and the signal may have reached any).
    print(f"stopped at step {int(state.step)} after a signal; rerun `python main.py "
          f"--workdir={workdir}` to resume", flush=True)
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
  # Everything that would otherwise run at exit (the asynchronous TensorBoard writer, the
  # checkpoint manager's threads) finishes before the last line, not silently after it.
  writer.close()
  manager.close()
  metric = config.eval_metric
  _print(f"[done] step {int(state.step)}: {metric}={results.get(metric, float('nan')):.4f}, "
         f"best {best.get(metric, float('nan')):.4f} at step {best.get('step', '?')}",
         f"  results    {os.path.join(workdir, workdir_lib.RESULTS)}",
         f"  variables  {os.path.join(workdir, workdir_lib.VARIABLES)} (best: {best_path})")
  return results


def _check_checkpoint_fits(workdir: str, state) -> None:
  """The newest checkpoint must hold the parameters of the model this config builds.

  Read from the checkpoint's metadata before any restore, so that a model change
  (e.g. under ``allow_config_change``) is one line naming the first differing
  parameter and both shapes, and no checkpoint is set aside as "unusable".
  """
  steps = _checkpoint_steps(workdir)
  if not steps:
    return
  directory = os.path.join(workdir, workdir_lib.CHECKPOINTS, str(steps[-1]), "default")
  try:
    level = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.ERROR)
    try:
      with ocp.StandardCheckpointer() as reader:
        saved = reader.metadata(directory)
    finally:
      absl_logging.set_verbosity(level)
    saved = getattr(saved, "item_metadata", saved)
    saved = {k: saved[k] for k in ("params", "batch_stats") if k in saved}
  except Exception:  # noqa: BLE001  unreadable metadata: the restore names the problem
    return
  model = {"params": state.params, "batch_stats": state.batch_stats}
  mismatch = config_checks.first_mismatch(model, saved)
  if mismatch:
    raise CheckpointError(
        f"the checkpoint {os.path.dirname(directory)} does not fit the model this config "
        f"builds (config.model): first difference {mismatch}. "
        f"Resume with the config that wrote it, or use a new workdir")


def _average_collection(values):
  """A clu.metrics Collection averaging each of the step's metrics over a log interval."""
  return clu_metrics.Collection.create(
      **{k: clu_metrics.Average.from_output(k) for k in sorted(values)})


def _startup_block(config, workdir, info, num_classes, steps_per_epoch, num_train_steps,
                   start_step, teacher_meta, segment) -> None:
  """One block saying what this run is: where, on what, with what data, for how long."""
  n = jax.device_count()
  splits = ", ".join(f"{s} {info.num_videos.get(s, 0)}" for s in
                     (config.data.train_split, config.data.eval_split))
  eval_every = max(int(config.eval_every_epochs * steps_per_epoch), 1)
  head = (f"resumed from step {start_step}" if start_step else "starting")
  lines = [
      f"[run] {config.mode} run of {config.model.name}, {head} in {workdir}",
      f"  platform    {jax.devices()[0].platform}, {n} devices, {jax.process_count()} "
      f"process(es)",
      f"  data        {config.data.name} at {config.data.data_dir}: {splits} videos, "
      f"{num_classes} classes",
      f"  batch       {config.batch_size} global, {config.batch_size // n} per device"
      + (f", x{optim.grad_accum_steps(config.optimizer)} accumulated"
         if optim.grad_accum_steps(config.optimizer) > 1 else ""),
      f"  schedule    {num_train_steps} steps = {num_train_steps / steps_per_epoch:.3g} epochs "
      f"of {steps_per_epoch} steps",
      f"  cadence     eval {_every(eval_every, num_train_steps)} on "
      f"{config.data.eval_split!r}, checkpoint {_every(config.checkpoint_every_steps, num_train_steps)}"
      f" (keep {config.keep_checkpoints}) and on a signal, log "
      f"{_every(config.log_every_steps, num_train_steps)}",
      f"  teacher     {_teacher_line(config, teacher_meta)}",
  ]
  if segment.get("changes"):
    lines.append(f"  changed     since the last segment: {'; '.join(segment['changes'])} "
                 f"(recorded in {workdir_lib.HISTORY})")
  if segment.get("device_change"):
    lines.append(f"  devices     changed on resume: {segment['device_change']}; the global "
                 f"batch and the schedule are kept, per-device BatchNorm statistics and, with "
                 f"another process count, the data order differ (see docs/workdir.md)")
  _print(*lines)


def _every(interval: int, total: int) -> str:
  if interval == 1:
    return "every step"
  return (f"every {interval} steps and at the last" if interval < total else
          "at the last step")


def _write_views(writer, config, batch) -> None:
  """Once per run: the first training clip as the teacher (or the model) sees it and as the
  student sees it (in-model resize), frames side by side: a check of sampling, crop, resize."""
  if jax.process_index() != 0:
    return
  clip = np.asarray(batch["video"].addressable_shards[0].data[0])  # (T, S, S, 3) uint8
  images = {}
  big = config.teacher.get("input_size") if config.mode == "reskd" else None
  teacher = clip if not big else _resize(clip, big)
  student = _resize(clip, config.model.input_size) if config.model.input_size else clip
  if config.mode == "reskd":
    images["train/teacher_view"] = _strip(teacher)
  images["train/student_view" if config.mode != "teacher" else "train/model_view"] = \
      _strip(student)
  writer.write_images(1, images)


def _resize(clip, size: int):
  out = jax.image.resize(jnp.asarray(clip, jnp.float32), (clip.shape[0], size, size, 3),
                         "bilinear", antialias=False)
  return np.asarray(jnp.clip(jnp.round(out), 0, 255)).astype(np.uint8)


def _strip(clip) -> np.ndarray:
  """(T, H, W, 3) -> (1, H, T*W, 3): the frames left to right."""
  return np.concatenate(list(clip), axis=1)[None]


def _print_metrics(title: str, metrics: Dict[str, Any]) -> None:
  if jax.process_index() != 0:
    return
  print(title)
  for key in EVAL_METRICS + ("loss", "num_videos", "gflops_per_video", "eval_seconds"):
    if key in metrics:
      value = metrics[key]
      print(f"  {key:<20} {value:.4f}" if isinstance(value, float) else f"  {key:<20} {value}")
  print(flush=True)


def evaluate_workdir(config, workdir: str) -> Dict[str, Any]:
  """``--mode=eval``: evaluates ``<workdir>/variables``, prints and writes ``eval_results.json``."""
  config_checks.check_config(config)
  config_checks.check_eval(config, read_json(os.path.join(workdir, workdir_lib.CONFIG),
                                             default=None), workdir)
  info = dataset_info(config)
  config_checks.check_splits(config, info, train=False)
  num_classes = config_checks.num_classes(config, info)
  dtype = config_checks.compute_dtype(config.dtype)
  model = models.build_from_config(config.model, num_classes, dtype=dtype)
  source = checkpoints.resolve_variables_dir(workdir)
  variables = checkpoints.load_variables(source)
  config_checks.check_variables_fit(model, variables, clips.frames_per_clip(config.data),
                                    config.data.crop_size, source,
                                    f"config.model ({config.model.name}, {num_classes} classes)")
  mesh = train_step.make_mesh()
  metrics = evaluate.Evaluator(config, model, mesh, num_classes, info, dtype)(
      train_step.replicate(variables, mesh))
  metrics.update({"run": "eval", "mode": config.mode, "model": config.model.name,
                  "variables": os.path.abspath(source), "split": config.data.eval_split,
                  "resolution": student_resolution(config),
                  "num_frames": clips.frames_per_clip(config.data),
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
