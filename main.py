"""reskd-jax entry point.

  python main.py --config=configs/minik_r50_112.py --workdir=runs/minik_r50_112
  python main.py --config=configs/minik_r50_112.py --config.batch_size=16 ...
  python main.py --config=... --workdir=... --mode=eval
  python main.py --config=... --workdir=... --mode=profile
  python main.py --config=... --workdir=... --mode=plan --topology=v5e:2x2,v5e:4x4

Works unchanged on one CPU, several GPUs, and multi-host TPU/GPU (one process
per host, every host runs the same command). JAX joins the cluster by itself
on Cloud TPU, SLURM, Open MPI and Kubernetes; elsewhere pass
--coordinator_address=HOST:PORT --num_processes=N --process_id=I (or set
JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID). See docs/multihost.md.

Exit status: 0 finished, 2 bad input (config, data, checkpoint, cluster),
3 non-finite loss, 143 stopped by SIGTERM/SIGINT after a complete checkpoint
(rerun the same command to resume).
"""

import ast
import contextlib
import logging
import os
import re
import sys
import tempfile

# Quiet by default: TensorFlow's C++ start-up lines only with --verbosity>=1 (read before
# TensorFlow is first imported, in main()).
_VERBOSE = any(a.split("=", 1)[-1].lstrip("-").isdigit() and int(a.split("=", 1)[1]) >= 1
               for a in sys.argv[1:] if a.startswith(("--verbosity=", "-v=")))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0" if _VERBOSE else "2")

from absl import app
from absl import flags
from ml_collections import config_flags

from reskd_jax import errors

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
config_flags.DEFINE_config_file("config", None, "Training configuration (a Python file).",
                                lock_config=True)
flags.DEFINE_string("coordinator_address", None, "Multi-process: HOST:PORT of process 0 "
                    "(default: $JAX_COORDINATOR_ADDRESS, else JAX's cluster detection).")
flags.DEFINE_integer("num_processes", None, "Multi-process: number of processes "
                     "(default: $JAX_NUM_PROCESSES, else JAX's cluster detection).")
flags.DEFINE_integer("process_id", None, "Multi-process: this process, 0..num_processes-1 "
                     "(default: $JAX_PROCESS_ID, else JAX's cluster detection).")
flags.mark_flags_as_required(["config", "workdir"])


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


def _initialize_distributed() -> None:
  """Joins the cluster (explicit flags/env, else JAX's detection); alone when there is none."""
  import jax
  args = _cluster_args()
  tried = (", ".join(f"{k}={v}" for k, v in args.items()) + " (flags / JAX_* variables)"
           if args else "JAX's detection of Cloud TPU, SLURM, Open MPI and Kubernetes")
  try:
    jax.distributed.initialize(**args)
  except (ValueError, TypeError, RuntimeError) as e:
    if not args and "coordinator_address should be defined" in str(e):
      return  # no cluster detected: a single process
    raise errors.ConfigError(
        f"could not join the cluster with {tried}: {str(e).splitlines()[0]} (multi-process "
        f"runs need --coordinator_address, --num_processes and --process_id where JAX "
        f"cannot detect the cluster; see docs/multihost.md)") from None


def _parse_flags(argv):
  """absl's parser, but an unknown `--config.KEY` is a one-line error, not a traceback."""
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


@contextlib.contextmanager
def _native_info_dropped(active: bool):
  """Drops the C++ INFO lines TensorFlow prints on import (TF_CPP_MIN_LOG_LEVEL no longer
  silences them); warnings and errors pass through."""
  if not active:
    yield
    return
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as tmp:
    os.dup2(tmp.fileno(), 2)
    try:
      yield
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      tmp.seek(0)
      dropping = False
      for line in tmp.read().decode(errors="replace").splitlines(keepends=True):
        if line.startswith("WARNING: All log messages before absl::InitializeLog()"):
          continue
        if re.match(r"[IWEF]\d{4} ", line):
          dropping = line[0] == "I"
        if not dropping:
          sys.stderr.write(line)
      sys.stderr.flush()


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  _quiet_logs()
  # Hide accelerators from TensorFlow: tf.data runs on the host CPU and must
  # not reserve GPU memory.
  with _native_info_dropped(FLAGS.verbosity < 1):
    from reskd_jax import input_pipeline
    input_pipeline.hide_gpus_from_tf()
  try:
    if FLAGS.mode == "plan":  # one process compiles for every host of the topology
      from reskd_jax import plan
      plan.run_plan(FLAGS.config, FLAGS.workdir, FLAGS.topology or [],
                    max_batch=FLAGS.max_batch, hbm_gib=FLAGS.hbm_gib,
                    margin=FLAGS.hbm_margin, with_eval=FLAGS.plan_eval,
                    verbose=FLAGS.verbosity >= 1)
      return
    _initialize_distributed()
    import jax
    from reskd_jax import train, train_utils
    logging.info("JAX devices: %d (%s), processes: %d", jax.device_count(),
                 jax.devices()[0].platform, jax.process_count())
    if FLAGS.mode == "train":
      with train_utils.StopSignal():  # a signal during start-up stops the loop early
        result = train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
      if result.get("preempted"):
        sys.exit(errors.EXIT_PREEMPTED)
    elif FLAGS.mode == "eval":
      train.evaluate_workdir(FLAGS.config, FLAGS.workdir)
    else:
      from reskd_jax import profiling
      resolutions = [int(r) for r in FLAGS.resolutions] if FLAGS.resolutions else None
      profiling.run_profile(FLAGS.config, FLAGS.workdir, resolutions=resolutions)
  except (errors.ReskdError, FileNotFoundError, ValueError) as e:
    # Bad input (a config key, a data set, a checkpoint, the cluster), a
    # diverged run: one clear line. RESKD_DEBUG=1 shows the traceback.
    if os.environ.get("RESKD_DEBUG"):
      raise
    print(f"error: {e}", file=sys.stderr)
    sys.exit(getattr(e, "exit_status", errors.EXIT_BAD_INPUT))


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
