"""reskd-jax entry point.

  python main.py --config=configs/minik_r50_112.py --workdir=runs/minik_r50_112
  python main.py --config=configs/minik_r50_112.py --config.batch_size=16 ...
  python main.py --config=... --workdir=... --mode=eval
  python main.py --config=... --workdir=... --mode=profile

Works unchanged on one CPU, several GPUs, and multi-host TPU (one process per
host; `jax.distributed.initialize()` runs when a cluster is detected).
"""

import logging
import os
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results.")
flags.DEFINE_enum("mode", "train", ["train", "eval", "profile"], "What to run.")
flags.DEFINE_list("resolutions", None, "Profile mode: resolutions (default: config.profile).")
config_flags.DEFINE_config_file("config", None, "Training configuration (a Python file).",
                                lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])

_CLUSTER_ENV = ("JAX_COORDINATOR_ADDRESS", "TPU_WORKER_HOSTNAMES", "SLURM_JOB_ID",
                "OMPI_COMM_WORLD_SIZE")


def _maybe_initialize_distributed():
  hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
  multi = (os.environ.get("JAX_COORDINATOR_ADDRESS")
           or "," in hosts
           or int(os.environ.get("SLURM_NTASKS", "1")) > 1
           or int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1")) > 1)
  if multi:
    import jax
    jax.distributed.initialize()


def _parse_flags(argv):
  """absl's parser, but an unknown `--config.KEY` is a one-line error, not a traceback."""
  try:
    return FLAGS(argv)
  except flags.Error as e:
    print(f"FATAL Flags parsing error: {e}", file=sys.stderr)
    sys.exit(1)
  except (AttributeError, KeyError) as e:
    overrides = [a.split("=")[0] for a in argv[1:] if a.startswith("--config.")]
    print(f"error: unknown config key {e} (overrides given: {', '.join(overrides)}); "
          f"see the config file for the valid keys", file=sys.stderr)
    sys.exit(1)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  # Hide accelerators from TensorFlow: tf.data runs on the host CPU and must
  # not reserve GPU memory.
  from reskd_jax import input_pipeline
  input_pipeline.hide_gpus_from_tf()
  _maybe_initialize_distributed()
  import jax
  from reskd_jax import train
  logging.info("JAX devices: %d (%s), processes: %d", jax.device_count(),
               jax.devices()[0].platform, jax.process_count())
  try:
    if FLAGS.mode == "train":
      train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    elif FLAGS.mode == "eval":
      train.evaluate_workdir(FLAGS.config, FLAGS.workdir)
    else:
      from reskd_jax import profiling
      resolutions = [int(r) for r in FLAGS.resolutions] if FLAGS.resolutions else None
      profiling.run_profile(FLAGS.config, FLAGS.workdir, resolutions=resolutions)
  except (train.ConfigError, FileNotFoundError, ValueError) as e:
    # Bad input (a config key, a data set, a checkpoint): one clear line.
    # RESKD_DEBUG=1 shows the traceback.
    if os.environ.get("RESKD_DEBUG"):
      raise
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
