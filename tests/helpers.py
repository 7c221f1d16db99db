"""Running main.py in tests: in this process (most tests) or as a subprocess (where the process
boundary is what is tested: exit statuses of a real process, signals, several processes).

In-process runs skip the interpreter start-up and the imports of a new process (several
seconds of CPU each on a 2-core machine) and reuse what this process has compiled.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import socket
import sys
import time
from typing import Callable, Dict, Optional, Sequence, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# One persistent compilation cache for the whole suite: both pytest-xdist workers and every
# process they start. A size limit turns on JAX's file lock around each read and write of
# the cache (without one, JAX writes an entry in place and another process could read it
# half-written), so a program compiled by one test is a cache hit for the others.
# A process started by a test puts every program in, however quickly it compiled: each
# main.py process compiles the same ~180 small ones (orbax's slices of the replicated state
# at the first save, eager ops), about 3 s of CPU, which the next one reads back in a few ms.
CACHE_DIR = os.path.join(ROOT, ".cache", "jax", "tests")
CACHE_MAX_BYTES = 8 << 30
CACHE_ENV = {"JAX_COMPILATION_CACHE_DIR": CACHE_DIR,
             "JAX_COMPILATION_CACHE_MAX_SIZE": str(CACHE_MAX_BYTES),
             "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
             "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def xla_flags(devices: int = 8) -> str:
  """XLA_FLAGS of the tests and of the processes they start: `devices` CPU devices, and the
  CPU backend's quickest compiles, since the tests' tiny programs spend far more time being
  compiled than running: LLVM code generation at optimisation level 0, XLA's loop emitters
  instead of its fusion emitters, one code-generation split (measured in docs/benchmarks.md,
  "The test suite's compiles"). Every comparison in the suite is between programs compiled
  the same way, or against a reference with a tolerance."""
  return (f"--xla_force_host_platform_device_count={devices} "
          "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false "
          "--xla_cpu_parallel_codegen_split_count=1")


def main_env(devices: int = 8, **extra: str) -> Dict[str, str]:
  """The environment of a main.py subprocess: `devices` CPU devices, quiet TensorFlow, this
  checkout first on the import path, the tests' compilation cache."""
  env = dict(os.environ)
  for key in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
    env.pop(key, None)
  env.update({"XLA_FLAGS": xla_flags(devices),
              "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "2",
              "PYTHONPATH": os.pathsep.join([ROOT, env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
              **CACHE_ENV})
  env.update(extra)
  return env


def main_cmd(*args: str) -> list:
  return [sys.executable, "main.py", *args]


def run_subprocess(args: Sequence[str], *, timeout: float = 300, env: Optional[Dict] = None,
                   devices: int = 8) -> subprocess.CompletedProcess:
  """`python main.py ARGS` in a new process (cwd: the repository root)."""
  return subprocess.run(main_cmd(*args), cwd=ROOT, env=env or main_env(devices),
                        capture_output=True, text=True, timeout=timeout)


def popen(args: Sequence[str], *, stderr=subprocess.STDOUT, env: Optional[Dict] = None,
          devices: int = 8) -> subprocess.Popen:
  """`python main.py ARGS` started in a new process, its stdout a text pipe."""
  return subprocess.Popen(main_cmd(*args), cwd=ROOT, env=env or main_env(devices),
                          stdout=subprocess.PIPE, stderr=stderr, text=True)


class _Stream(io.StringIO):
  """Captured output that calls ``action()`` once when ``needle`` has been written."""

  def __init__(self, trigger: Optional[Tuple[str, Callable[[], None]]] = None):
    super().__init__()
    self._trigger = trigger

  def write(self, text):
    n = super().write(text)
    if self._trigger is not None and self._trigger[0] in self.getvalue():
      action, self._trigger = self._trigger[1], None
      action()
    return n


def run_main(args: Sequence[str], *, on_stdout: Optional[Tuple[str, Callable[[], None]]] = None
             ) -> subprocess.CompletedProcess:
  """main.py's flag parsing and ``main()`` in this process; returns what a subprocess would:
  the exit status (0, 2 bad input, 3 non-finite, 143 stopped), stdout and stderr.

  ``on_stdout=(needle, action)`` calls ``action()`` once ``needle`` is printed (e.g. to
  delete a file mid-run). Joining a cluster is skipped (one process), logging levels are
  left as they are, an immediate exit becomes SystemExit instead of ending pytest, and the
  signal handlers and main.py's flags are restored afterwards. An exception that main.py
  does not turn into an exit status (a bug) propagates.
  """
  import main as main_module
  from reskd_jax import cluster, train_utils

  def exit_now(status, message=None):
    if message:
      print(f"error: {message}", file=sys.stderr)
    raise SystemExit(status)

  out, err = _Stream(on_stdout), _Stream()
  handlers = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
  latch = (train_utils._installed, train_utils._received, train_utils._loop_over)
  saved = (main_module._initialize_distributed, main_module._quiet_logs, cluster.exit_now)
  main_module._initialize_distributed = lambda: None
  main_module._quiet_logs = lambda: None
  cluster.exit_now = exit_now
  saved_argv, sys.argv = sys.argv, ["main.py", *args]  # ml_collections reads the overrides here
  status = 0
  try:
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
      try:
        main_module.main(main_module._parse_flags(["main.py", *args]))
      except SystemExit as e:
        status = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
  finally:
    sys.argv = saved_argv
    main_module._initialize_distributed, main_module._quiet_logs, cluster.exit_now = saved
    (train_utils._installed, train_utils._received, train_utils._loop_over) = latch
    main_module.FLAGS.unparse_flags()
    for name in list(main_module.FLAGS):  # ml_collections defines one flag per override
      if name.startswith("config."):
        delattr(main_module.FLAGS, name)
    for sig, handler in handlers.items():
      signal.signal(sig, handler)
  return subprocess.CompletedProcess(["main.py", *args], status, out.getvalue(),
                                     err.getvalue())


def one_line_error(proc, status: int) -> str:
  """The single `error: ...` line of a run that exited with `status`, without a traceback."""
  assert proc.returncode == status, (proc.returncode, proc.stderr[-3000:])
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  lines = [l for l in proc.stderr.splitlines() if l.startswith("error: ")]
  assert len(lines) == 1, proc.stderr[-3000:]
  return lines[0]


# --- The tiny ResNet runs of test_main, test_robust_training, test_training_faults ----------

NUM_CLASSES, FRAMES, SIDE = 4, 4, 40
# configs/minik_r50_112.py with its `:tiny` variant (configs/default.py `tiny`: resnet18 nets
# of width 8, one block per stage, 3x3/2 stem; 32 px crops, a 16 px student, 4 frames,
# batches of 8); the data and the teachers of `make_tiny_setup` are made to fit it.
TINY_CONFIG = os.path.join(ROOT, "configs", "minik_r50_112.py") + ":tiny"


def write_tiny_data(data_dir: str, splits: Dict, rs) -> Dict:
  """A 4-class data set of 40x48 videos for the `:tiny` config (see data_helpers)."""
  from data_helpers import write_tiny_dataset
  return write_tiny_dataset(data_dir, splits, rs, dataset="tiny", num_classes=NUM_CLASSES,
                            height=SIDE, width=SIDE + 8)


def converted_teacher_meta(width: int) -> Dict:
  from reskd_jax import meta as meta_lib
  return meta_lib.for_converted("resnet18", NUM_CLASSES, False, None, "random weights", "test",
                                {"width": width, "stage_sizes": (1, 1, 1, 1), "stem": "small"})


def make_tiny_setup(root) -> Dict:
  """Data (train 32, val 12, an empty split) and teachers with random weights for the `:tiny`
  config: `teacher` a converted file whose meta.json describes it, `trained_teacher` as a
  tiny teacher run saves it (full meta.json), `wide_teacher` twice as wide (a 128-channel map
  the 64-channel student cannot match), `legacy_teacher` the teacher's weights with an older,
  incomplete meta.json (no stem: the default imagenet stem is filled in, and the weights do
  not fit it)."""
  import jax
  import numpy as np
  from configs import minik_r152_224
  from reskd_jax import checkpoints, meta as meta_lib, models

  data = str(root / "data")
  write_tiny_data(data, {"train": 32, "val": 12, "empty": 0}, np.random.RandomState(0))
  teacher = models.build_model("resnet18", NUM_CLASSES, width=8, stage_sizes=(1, 1, 1, 1),
                               stem="small")
  tvars = models.init_variables(teacher, jax.random.key(7), FRAMES, 32)
  wide = models.build_model("resnet18", NUM_CLASSES, width=16, stage_sizes=(1, 1, 1, 1),
                            stem="small")
  tcfg = minik_r152_224.get_config("tiny")
  trained = models.build_from_config(tcfg.model, NUM_CLASSES)
  return {
      "root": root, "data": data,
      "teacher": checkpoints.save_variables(str(root / "teacher"), tvars,
                                            converted_teacher_meta(width=8)),
      "trained_teacher": checkpoints.save_variables(
          str(root / "trained_teacher"),
          models.init_variables(trained, jax.random.key(7), FRAMES, 32),
          meta_lib.for_trained_model(tcfg, tcfg.model, NUM_CLASSES, FRAMES, 32)),
      "wide_teacher": checkpoints.save_variables(
          str(root / "wide_teacher"), models.init_variables(wide, jax.random.key(8), FRAMES, 32),
          converted_teacher_meta(width=16)),
      "legacy_teacher": checkpoints.save_variables(
          str(root / "legacy_teacher"), tvars,
          {"arch": "resnet18", "num_classes": NUM_CLASSES, "width": 8,
           "stage_sizes": [1, 1, 1, 1]})}


def tiny_args(setup: Dict, workdir, *extra: str, teacher: str = "teacher",
              config: str = TINY_CONFIG, num_classes: int = NUM_CLASSES) -> list:
  """main.py's arguments for a `:tiny` run on `setup`'s data with its `teacher`."""
  return [f"--config={config}", f"--workdir={workdir}", f"--config.data.data_dir={setup['data']}",
          f"--config.num_classes={num_classes}",
          f"--config.teacher.checkpoint={setup[teacher]}", *extra]


def small_train_state(k):
  """A train state like the trainer's (optax state included), its values set by ``k``."""
  import jax
  import numpy as np
  import optax
  from reskd_jax import train_step
  variables = {"params": {"w": np.arange(4096, dtype=np.float32) * k},
               "batch_stats": {"m": np.full((64,), 0.5 * k, np.float32)}}
  state = train_step.create_train_state(variables, optax.sgd(0.1, momentum=0.9))
  return jax.tree.map(np.asarray, state.replace(step=np.asarray(k, np.int32)))


# --- main.py as 2 processes x 2 CPU devices (test_multihost, test_cluster_faults) ----------

MULTI_STEPS = 16  # long enough that a signal lands mid-run
TIMEOUT = 480  # seconds a launch may take before it is killed (a loaded 2-core machine)
STOP_LIMIT = 120  # seconds from SIGTERM to both processes' exit (checkpoint written)


def _fail(message: str):
  import pytest
  pytest.fail(message)


def make_multihost_setup(root) -> Dict:
  """A tiny data set and teacher for 2-process runs."""
  import jax
  import numpy as np
  from data_helpers import write_tiny_dataset
  from reskd_jax import checkpoints, models

  data = str(root / "data")
  rs = np.random.RandomState(0)
  # Two train shards (each host reads one), an eval split that does not fill
  # the last batch (padding), on two shards.
  write_tiny_dataset(data, {"train": [16, 16], "val": [6, 5]}, rs, dataset="tiny",
                     num_classes=NUM_CLASSES, height=SIDE, width=SIDE + 8)
  teacher = models.build_model("resnet18", NUM_CLASSES, width=8, stage_sizes=(1, 1, 1, 1),
                               stem="small")
  tvars = models.init_variables(teacher, jax.random.key(7), FRAMES, 32)
  arch = {"name": "resnet18", "width": 8, "stage_sizes": [1, 1, 1, 1], "stem": "small"}
  teacher_dir = checkpoints.save_variables(
      str(root / "teacher"), tvars,
      {"arch": "resnet18", "num_classes": NUM_CLASSES, "tsm": False, "model": arch})
  return {"root": root, "data": data, "teacher": teacher_dir}


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def multihost_env() -> Dict[str, str]:
  """A process of a 2-process run: 2 CPU devices, gloo collectives."""
  return main_env(2, JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo")


def multihost_args(setup, workdir):
  return [f"--config={os.path.join(ROOT, 'configs', 'minik_r50_112.py')}:tiny",
          f"--workdir={workdir}", f"--config.data.data_dir={setup['data']}",
          f"--config.teacher.checkpoint={setup['teacher']}",
          f"--config.num_classes={NUM_CLASSES}", "--config.data.eval_split=val",
          f"--config.num_train_steps={MULTI_STEPS}", "--config.steps_per_epoch=4",
          "--config.eval_every_epochs=100", "--config.log_every_steps=1",
          "--config.data.test_num_clips=2"]


def launch(setup, workdir, logdir, *extra, ids=(0, 1), ports=None):
  """Starts the processes `ids` of 2 (each told the coordinator port in `ports`, default one
  free port for all), as a cluster launcher would; returns (procs, log paths)."""
  port = free_port()
  procs, logs = [], []
  for i, pid in enumerate(ids):
    logs.append(os.path.join(logdir, f"{os.path.basename(workdir)}.{i}.log"))
    cmd = [sys.executable, "main.py", *multihost_args(setup, workdir), *extra,
           f"--coordinator_address=localhost:{ports[i] if ports else port}",
           "--num_processes=2", f"--process_id={pid}"]
    with open(logs[-1], "a") as log:
      procs.append(subprocess.Popen(cmd, cwd=ROOT, env=multihost_env(), stdout=log,
                                    stderr=subprocess.STDOUT, text=True))
  return procs, logs


def wait_all(procs, logs, deadline):
  codes = []
  for proc in procs:
    try:
      codes.append(proc.wait(timeout=max(deadline - time.time(), 1)))
    except subprocess.TimeoutExpired:
      codes.append(None)
  if None in codes:
    _fail(f"timed out: {codes}\n" + tail(logs))
  return codes


def tail(logs, n=3000):
  return "\n".join(f"--- {path}\n{open(path).read()[-n:]}" for path in logs)


def kill_all(procs):
  for proc in procs:
    if proc.poll() is None:
      proc.kill()
      proc.wait()


def wait_for(logs, procs, needle, index=0):
  deadline = time.time() + TIMEOUT
  while needle not in open(logs[index]).read():
    assert time.time() < deadline and all(p.poll() is None for p in procs), tail(logs)
    time.sleep(0.05)


def can_mount_tmpfs(tmp_path) -> bool:
  """Whether this process may mount a tmpfs in a private mount namespace (`unshare -rm`):
  the real full-disk and read-only file systems of the fault tests."""
  import shutil
  if not shutil.which("unshare"):
    return False
  probe = tmp_path / "probe"
  probe.mkdir()
  ok = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=64k none {probe}"],
                      capture_output=True).returncode == 0
  probe.rmdir()
  return ok


def tiny_profile_config():
  """configs/default.py with a 5-class ResNet-18 of width 4, one block per stage: a profile
  (`--mode=profile`) that runs in seconds."""
  from configs import default
  config = default.get_config()
  config.num_classes = 5
  config.model.name = "resnet18"
  config.model.width = 4
  config.model.stage_sizes = (1, 1, 1, 1)
  return config


def kill_at_rename_to(monkeypatch, path: str):
  """`os.rename` onto `path` raises KeyboardInterrupt (a kill at that instant); any other
  rename goes through. Returns the real `os.rename`, to put back before recovering."""
  real_rename = os.rename

  def killed(src, dst):
    if dst == path:
      raise KeyboardInterrupt("killed")
    return real_rename(src, dst)

  monkeypatch.setattr(os, "rename", killed)
  return real_rename
