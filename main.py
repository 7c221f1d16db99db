"""reskd-jax entry point.

  python main.py --config=configs/minik_r50_112.py --workdir=runs/minik_r50_112
  python main.py --config=configs/minik_r50_112.py --config.batch_size=16 ...
  python main.py --workdir=runs/minik_r50_112               # resume (the saved config)
  python main.py --workdir=runs/minik_r50_112 --mode=eval   # evaluate its variables/
  python main.py --config=... --workdir=... --mode=profile
  python main.py --config=... --workdir=... --mode=plan --topology=v5e:2x2,v5e:4x4

A workdir knows its run: without --config, the config saved in
<workdir>/config.json is used (``configs/saved.py``), and --config.KEY=VALUE
overrides still apply to it and are checked.

Works unchanged on one CPU, several GPUs, and multi-host TPU/GPU (one process
per host, every host runs the same command). JAX joins the cluster by itself
on Cloud TPU, SLURM, Open MPI and Kubernetes; elsewhere pass
--coordinator_address=HOST:PORT --num_processes=N --process_id=I (or set
JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID). See docs/multihost.md.

Exit status: 0 finished, 2 bad input (config, data, checkpoint, cluster),
3 non-finite loss, 4 another process of a multi-process run was lost, 143
stopped by SIGTERM/SIGINT/SIGHUP after a complete checkpoint (rerun the same
command to resume; for 4 too).
"""

import ast
import contextlib
import logging
import os
import re
import signal
import sys

# Signals from the very start (a scheduler may signal a process that is still importing):
# remembered here, handed to train_utils.StopSignal once it is imported (see main()).
_EARLY_SIGNALS = []
if __name__ == "__main__":  # run as the program (an import, e.g. by a test, changes nothing)
  for _sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(_sig, lambda signum, frame: _EARLY_SIGNALS.append(signum))

# TensorFlow's C++ start-up lines with --verbosity>=1: set before reskd_jax is imported, which
# otherwise silences them (platforms.quiet_tensorflow).
_VERBOSE = any(a.split("=", 1)[-1].lstrip("-").isdigit() and int(a.split("=", 1)[1]) >= 1
               for a in sys.argv[1:] if a.startswith(("--verbosity=", "-v=")))
if _VERBOSE:
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0")

from absl import app
from absl import flags
from ml_collections import config_flags

from reskd_jax import errors, log_filter

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results.")
flags.DEFINE_enum("mode", "train", ["train", "eval", "profile", "plan"], "What to run "
                  "(plan: compile ahead for Cloud TPU topologies, see docs/accelerators.md).")
flags.DEFINE_list("resolutions", None, "Profile mode: resolutions (default: config.profile).")
flags.DEFINE_list("topology", None, "Plan mode: Cloud TPU topologies, e.g. v5e:2x2,v5e:4x4.")
flags.DEFINE_bool("max_batch", False, "Plan mode: also find the largest per-chip train batch "
                  "that fits.")
flags.DEFINE_alias("max-batch", "max_batch")
flags.DEFINE_float("hbm_gib", None, "Plan mode: HBM per chip in GiB (default: the chip's).")
flags.DEFINE_bool("plan_eval", True, "Plan mode: also compile the eval step.")
flags.DEFINE_float("hbm_margin", 0.9, "Plan mode: a step fits when it needs at most this "
                   "fraction of the HBM.")
config_flags.DEFINE_config_file("config", None, "Training configuration (a Python file); "
                                "default: the config saved in --workdir.", lock_config=True)
flags.DEFINE_string("coordinator_address", None, "Multi-process: HOST:PORT of process 0 "
                    "(default: $JAX_COORDINATOR_ADDRESS, else JAX's cluster detection).")
flags.DEFINE_integer("num_processes", None, "Multi-process: number of processes "
                     "(default: $JAX_NUM_PROCESSES, else JAX's cluster detection).")
flags.DEFINE_integer("process_id", None, "Multi-process: this process, 0..num_processes-1 "
                     "(default: $JAX_PROCESS_ID, else JAX's cluster detection).")
flags.DEFINE_integer("join_timeout", 120, "Multi-process: seconds to wait for all processes "
                     "to join before giving up with one line (exit status 2).")
flags.DEFINE_integer("heartbeat_timeout", 60, "Multi-process: seconds without a heartbeat "
                     "after which a process counts as gone and the others stop (exit status 4).")
flags.mark_flags_as_required(["workdir"])

_SAVED_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "saved.py")


def _cluster_args():
  """The launch flags, each falling back to its JAX_* environment variable."""
  args = {}
  for name in ("coordinator_address", "num_processes", "process_id"):
    value = FLAGS[name].value
    env = os.environ.get(f"JAX_{name.upper()}")
    if value is None and env:
      try:
        value = env if name == "coordinator_address" else int(env)
      except ValueError:
        raise errors.ConfigError(f"JAX_{name.upper()}={env!r} is not an integer") from None
    if value is not None:
      args[name] = value
  return args


def _multi_process_launch(args) -> bool:
  """Whether this looks like one process of several (flags/env, or a SLURM/MPI job)."""
  return (args.get("num_processes", 1) > 1 or int(os.environ.get("SLURM_NTASKS", "1")) > 1
          or int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1")) > 1)


def _initialize_distributed() -> None:
  """Joins the cluster (explicit flags/env, else JAX's detection); alone when there is none.

  The wait is bounded (--join_timeout, with a progress line every 20 s), see
  ``reskd_jax.cluster.join``.
  """
  from reskd_jax import cluster
  args = _cluster_args()
  tried = (", ".join(f"{k}={v}" for k, v in args.items()) + " (flags / JAX_* variables)"
           if args else "JAX's detection of Cloud TPU, SLURM, Open MPI and Kubernetes")
  for name in ("join_timeout", "heartbeat_timeout"):
    if FLAGS[name].value < 1:
      raise errors.ConfigError(f"--{name}={FLAGS[name].value}: must be at least 1 (seconds)")
  try:
    cluster.join(args, FLAGS.join_timeout, FLAGS.heartbeat_timeout)
  except (ValueError, TypeError, RuntimeError) as e:
    if not args and "coordinator_address should be defined" in str(e):
      return  # no cluster detected: a single process
    raise errors.ConfigError(
        f"could not join the cluster with {tried}: {str(e).splitlines()[0]} (multi-process "
        f"runs need --coordinator_address, --num_processes and --process_id where JAX "
        f"cannot detect the cluster; see docs/multihost.md)") from None


def _flag_value(argv, name):
  """The value of ``--name=V`` or ``--name V`` in ``argv`` (the last one), else None."""
  value = None
  for i, arg in enumerate(argv[1:], 1):
    if arg.startswith(f"--{name}="):
      value = arg.split("=", 1)[1]
    elif arg == f"--{name}" and i + 1 < len(argv):
      value = argv[i + 1]
  return value


def _resolve_config_arg(argv):
  """``argv`` with ``--config=configs/saved.py:W`` added when only ``--workdir=W`` is given.

  Checked before anything is written: a --workdir that is a file, and a
  workdir without a config.json when no --config names one (one line, exit 2).
  """
  workdir = _flag_value(argv, "workdir")
  if workdir and os.path.exists(workdir) and not os.path.isdir(workdir):
    _fail(f"--workdir={workdir} is a file, not a directory; choose a directory")
  if _flag_value(argv, "config") is not None or not workdir:
    return argv
  if not os.path.isfile(os.path.join(workdir, "config.json")):
    what = "does not exist" if not os.path.exists(workdir) else "holds no config.json"
    _fail(f"no --config given and --workdir={workdir} {what}: start a run with "
          f"--config=configs/<file>.py (see configs/), or point --workdir at a run's workdir")
  return [argv[0], f"--config={_SAVED_CONFIG}:{workdir}"] + list(argv[1:])


def _fail(message: str):
  print(f"error: {message}", file=sys.stderr)
  sys.exit(errors.EXIT_BAD_INPUT)


def _parse_flags(argv):
  """absl's parser, but an unknown `--config.KEY` is a one-line error, not a traceback."""
  argv = _resolve_config_arg(argv)
  try:
    return FLAGS(argv)
  except flags.Error as e:
    # A config file that fails to load carries its whole traceback: keep the
    # first line (which flag) and the last (what went wrong).
    lines = [line for line in str(e).strip().splitlines() if line.strip()]
    text = lines[0] if len(lines) < 2 else f"{lines[0].rstrip(':')}: {lines[-1].strip()}"
    print(f"error: {text}", file=sys.stderr)
    sys.exit(errors.EXIT_BAD_INPUT)
  except (AttributeError, KeyError) as e:
    keys = [a.split("=")[0][len("--config."):] for a in argv[1:] if a.startswith("--config.")]
    if any(part in str(e) for key in keys for part in key.split(".") if part):
      print(f"error: {_unknown_key_message(e, argv)}", file=sys.stderr)
    else:  # not an override: the config file itself failed
      config_arg = next((a for a in argv[1:] if a.startswith("--config=")), "--config")
      print(f"error: {config_arg.split('=', 1)[-1]} could not be loaded: "
            f"{type(e).__name__}: {e}", file=sys.stderr)
    sys.exit(errors.EXIT_BAD_INPUT)


def _unknown_key_message(e: Exception, argv) -> str:
  """``unknown config key 'model.widht' (did you mean 'model.width'?)`` from ml_collections'."""
  text = str(e.args[0]) if e.args else str(e)
  while len(text) > 1 and text[0] == text[-1] and text[0] in "'\"":  # KeyError reprs
    try:
      text = str(ast.literal_eval(text))
    except (ValueError, SyntaxError):
      break
  bad = text.splitlines()[0].strip().strip("'\"")
  hint = re.search(r"Did you mean [\"'](\w+)[\"']", text)
  keys = [a.split("=")[0][len("--config."):] for a in argv[1:] if a.startswith("--config.")]
  full = next((".".join(k.split(".")[:k.split(".").index(bad) + 1])
               for k in keys if bad in k.split(".")), bad)
  message = f"unknown config key {full!r}"
  if hint:
    message += f" (did you mean {'.'.join(full.split('.')[:-1] + [hint.group(1)])!r}?)"
  return message + "; see the config file for the valid keys"


def _quiet_logs() -> None:
  """The progress line and real warnings only, unless --verbosity>=1 (absl/orbax INFO)."""
  if FLAGS.verbosity >= 1:
    return
  from absl import logging as absl_logging
  absl_logging.set_verbosity(absl_logging.WARNING)
  for name in ("absl", "orbax", "jax", "tensorflow"):
    logging.getLogger(name).setLevel(logging.WARNING)
  # orbax's own warnings and errors ("Removing existing directory since it is not
  # finalized", _CHECKPOINT_METADATA, a failed background save with its tracebacks):
  # the trainer reports what matters of them in one line (reskd_jax.checkpoints).
  absl_logging.get_absl_handler().addFilter(
      lambda record: f"{os.sep}orbax{os.sep}" not in record.pathname)


@contextlib.contextmanager
def _native_info_dropped(active: bool):
  """Drops the C++ INFO lines TensorFlow prints on import (TF_CPP_MIN_LOG_LEVEL no longer
  silences them); warnings and errors pass through."""
  if not active:
    yield
    return
  with log_filter.captured_stderr(lambda text, failed: _without_native_info(text)):
    yield


def _without_native_info(text: str) -> str:
  kept, dropping = [], False
  for line in text.splitlines(keepends=True):
    if line.startswith("WARNING: All log messages before absl::InitializeLog()"):
      continue
    if re.match(r"[IWEF]\d{4} ", line):
      dropping = line[0] == "I"
    if not dropping:
      kept.append(line)
  return "".join(kept)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from reskd_jax import cluster
  try:
    if _multi_process_launch(_cluster_args()):
      cluster.filter_output()  # gloo chatter out; JAX's fatal dumps become one line
  except errors.ConfigError:
    pass  # reported below, by _initialize_distributed
  _quiet_logs()
  log_filter.drop_late_write_completions()  # of a failed save: its one line says it all
  # Hide accelerators from TensorFlow: tf.data runs on the host CPU and must
  # not reserve GPU memory.
  with _native_info_dropped(FLAGS.verbosity < 1):
    from reskd_jax import platforms, train_utils
    platforms.hide_gpus_from_tf()
  # Signals stay latched until the process exits: a SIGTERM (SIGINT, SIGHUP) while
  # starting, joining, training or leaving the cluster stops the run cleanly (exit 143),
  # and never kills one process while the others wait for it.
  train_utils.StopSignal().__enter__()  # never left
  for signum in _EARLY_SIGNALS:
    train_utils.latch(signum)
  status = errors.EXIT_OK
  try:
    if FLAGS.mode == "plan":  # one process compiles for every host of the topology
      from reskd_jax.tools import plan
      plan.run_plan(FLAGS.config, FLAGS.workdir, FLAGS.topology or [],
                    max_batch=FLAGS.max_batch, hbm_gib=FLAGS.hbm_gib,
                    margin=FLAGS.hbm_margin, with_eval=FLAGS.plan_eval,
                    verbose=FLAGS.verbosity >= 1)
      return
    _initialize_distributed()
    import jax
    from reskd_jax import train
    logging.info("JAX devices: %d (%s), processes: %d", jax.device_count(),
                 jax.devices()[0].platform, jax.process_count())
    watch = cluster.PeerWatch(FLAGS.heartbeat_timeout)
    if FLAGS.mode != "train":
      _stop_at_once()  # nothing to checkpoint: a signal ends the process
    if FLAGS.mode == "train":
      result = train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
      if result.get("preempted"):
        status = errors.EXIT_PREEMPTED
    elif FLAGS.mode == "eval":
      train.evaluate_workdir(FLAGS.config, FLAGS.workdir)
    else:
      from reskd_jax.tools import profiling
      resolutions = [int(r) for r in FLAGS.resolutions] if FLAGS.resolutions else None
      profiling.run_profile(FLAGS.config, FLAGS.workdir, resolutions=resolutions)
    watch.stop()
    cluster.leave()  # every process, still with the signals latched
  except INPUT_ERRORS as e:
    # Bad input (a config key, a data set, a checkpoint, the cluster), a
    # diverged run: one clear line. RESKD_DEBUG=1 shows the traceback.
    if os.environ.get("RESKD_DEBUG"):
      raise
    print(f"error: {e}", file=sys.stderr)
    status = getattr(e, "exit_status", errors.EXIT_BAD_INPUT)
    if _joined_others() or isinstance(e, errors.CheckpointError):
      # JAX's exit handlers would wait for processes that go on; orbax's threads of a
      # failed save print tracebacks while the interpreter shuts down.
      cluster.exit_now(status)
  sys.exit(status)


def _stop_at_once() -> None:
  """Eval and profile runs (nothing to checkpoint) exit 143 on a signal, at once."""
  from reskd_jax import cluster, train_utils

  def handler(signum, frame):
    del frame
    cluster.exit_now(errors.EXIT_PREEMPTED,
                     f"stopped by {signal.Signals(signum).name} (--mode={FLAGS.mode})")

  for sig in train_utils.STOP_SIGNALS:
    signal.signal(sig, handler)
  if train_utils.StopSignal().received is not None:  # one that came while joining
    handler(train_utils.StopSignal().received, None)


def _joined_others() -> bool:
  try:
    import jax
    from jax._src import distributed
    return distributed.global_state.client is not None and jax.process_count() > 1
  except Exception:  # noqa: BLE001
    return False


# Bad input (a config key, a data set, a checkpoint, the cluster) and a diverged run: one
# line and the exception's exit status. Everything else (a ValueError, TypeError, ... from
# the code itself) is an internal bug and keeps its traceback (exit status 1): expected
# failures are raised as reskd_jax.errors classes, never as bare ValueErrors. A missing file
# or directory named by the user (FileNotFoundError, NotADirectoryError) is input.
INPUT_ERRORS = (errors.ReskdError, FileNotFoundError, NotADirectoryError)


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
