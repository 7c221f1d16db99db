"""Faults of a one-process run: a closed terminal, a checkpoint that cannot be written, a
training shard that disappears (the `:tiny` config). main.py in a subprocess where the fault
needs a process (a signal, a file-size limit), else in this process (helpers.run_main); each
test checks the exit status, the one line, and that nothing good in the workdir was lost."""

import glob
import json
import os
import signal
import subprocess
import sys

import pytest

from helpers import (ROOT, main_env, one_line_error as _one_line_error, popen, run_main as _run,
                     small_train_state as _state, tiny_args)
from reskd_jax import checkpoints, errors, workdir as workdir_lib


@pytest.fixture(scope="module")
def env(tiny):
  return dict(tiny, teacher=tiny["trained_teacher"])


def _cmd(env, workdir, *extra):
  return tiny_args(env, workdir, *extra, num_classes=-1)


def _steps(workdir):
  ckpt = os.path.join(workdir, workdir_lib.CHECKPOINTS)
  return sorted(int(d) for d in os.listdir(ckpt) if d.isdigit())


def _checksummed(workdir):
  path = os.path.join(workdir, workdir_lib.CHECKPOINTS, checkpoints.CHECKSUMS_FILE)
  return sorted(int(k) for k in json.load(open(path)))


def _run_until(cmd, needle, action):
  """Starts `cmd`, calls `action(child)` once `needle` is on its stdout; returns
  (status, stdout, stderr)."""
  child = popen(cmd, stderr=subprocess.PIPE)
  out = []
  for line in child.stdout:
    out.append(line)
    if needle in line:
      action(child)
      break
  rest, err = child.communicate(timeout=300)
  return child.returncode, "".join(out) + rest, err


@pytest.mark.e2e
def test_sighup_saves_and_stops_like_sigterm(env):
  """A closed ssh terminal (SIGHUP to a real process): checkpoint at the step reached, exit
  143, the rerun (in this process) resumes."""
  workdir = str(env["root"] / "hangup")
  cmd = _cmd(env, workdir, "--config.mode=teacher", "--config.num_train_steps=30")
  status, out, err = _run_until(cmd, "[train] step 2/30",
                                lambda child: child.send_signal(signal.SIGHUP))
  assert status == errors.EXIT_PREEMPTED, err[-3000:]
  assert "received SIGHUP" in out and "stopped at step " in out, out
  stopped = int(out.split("stopped at step ")[1].split()[0])
  assert _steps(workdir) == [stopped] == _checksummed(workdir)
  proc = _run(_cmd(env, workdir, "--config.mode=teacher",
                   f"--config.num_train_steps={stopped + 1}"))
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert f"[train] step {stopped + 1}/" in proc.stdout and "[train] step 1/" not in proc.stdout


def _with_file_size_limit(limit, cmd):
  """`cmd` (a python command) under `ulimit -f`: a file-size limit of `limit` bytes."""
  set_and_exec = ("import os, resource, sys; n = int(sys.argv[1]); "
                  "resource.setrlimit(resource.RLIMIT_FSIZE, (n, n)); "
                  "os.execv(sys.executable, [sys.executable] + sys.argv[2:])")
  return [cmd[0], "-c", set_and_exec, str(limit), *cmd[1:]]


@pytest.mark.e2e
def test_a_checkpoint_that_cannot_be_written_is_one_line_and_loses_nothing(env):
  """`ulimit -f` (file-size limit) below the size of a checkpoint's data file: the first save
  of the resumed run fails; the earlier checkpoints and checksums.json stay as they were,
  nothing half-written is left, and the rerun without the limit resumes."""
  workdir = str(env["root"] / "nospace")
  args = ("--config.mode=teacher", "--config.checkpoint_every_steps=2")
  proc = _run(_cmd(env, workdir, *args, "--config.num_train_steps=4"))
  assert proc.returncode == 0, proc.stderr[-3000:]
  before = _steps(workdir)
  assert before == [2, 4] == _checksummed(workdir)
  data_file = max((f for f in glob.glob(os.path.join(workdir, "checkpoints", "4", "**", "*"),
                                        recursive=True) if os.path.isfile(f)),
                  key=os.path.getsize)
  limit = os.path.getsize(data_file) // 2
  assert limit > 4096, limit

  env_ = main_env(JAX_COMPILATION_CACHE_DIR="")  # its entries would hit the limit too
  proc = subprocess.run(
      _with_file_size_limit(limit, [sys.executable, "main.py",
                                    *_cmd(env, workdir, *args, "--config.num_train_steps=8")]),
      cwd=ROOT, env=env_, capture_output=True, text=True, timeout=300)
  # tensorstore's write callbacks of the failed save reach orbax's closed event loop; they
  # are dropped (log_filter.drop_late_write_completions), not printed as tracebacks.
  assert "Event loop is closed" not in proc.stderr, proc.stderr[-3000:]
  line = _one_line_error(proc, errors.EXIT_BAD_INPUT)
  assert "could not save checkpoint step 6" in line and "File too large" in line, line
  assert os.path.join(workdir, "checkpoints") in line and "steps 2, 4" in line, line
  assert len(proc.stderr.splitlines()) <= 3, proc.stderr[-3000:]
  assert _steps(workdir) == before == _checksummed(workdir)
  assert not glob.glob(os.path.join(workdir, "checkpoints", "*tmp*"))

  proc = _run(_cmd(env, workdir, *args, "--config.num_train_steps=6"))
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "[train] step 5/6" in proc.stdout and "[train] step 4/6" not in proc.stdout
  assert json.load(open(os.path.join(workdir, workdir_lib.RESULTS)))["step"] == 6


def test_a_training_shard_deleted_mid_run_is_named(env):
  """The shard disappears while the run reads it: one line naming the file, exit 2, the
  checkpoints written before are intact."""
  workdir = str(env["root"] / "shard_gone")
  shard = sorted(glob.glob(os.path.join(env["data"], "train", "*")))[0]
  saved = open(shard, "rb").read()
  try:
    proc = _run(_cmd(env, workdir, "--config.mode=teacher", "--config.num_train_steps=40",
                     "--config.checkpoint_every_steps=2"),
                on_stdout=("[train] step 2/40", lambda: os.remove(shard)))
  finally:
    with open(shard, "wb") as f:
      f.write(saved)
  line = _one_line_error(proc, errors.EXIT_BAD_INPUT)
  assert f"unreadable shard {shard} (missing)" in line and "rerun the data_prep" in line, line
  assert _steps(workdir) and _steps(workdir) == _checksummed(workdir)


def test_an_old_checkpoint_that_cannot_be_removed_does_not_stop_the_run(tmp_path, capsys,
                                                                       monkeypatch):
  """orbax's clean-up of checkpoints beyond keep_checkpoints fails (a read-only directory):
  the new checkpoint is complete, so a warning, not an error; the next save goes on."""
  from orbax.checkpoint._src.path import deleter

  def read_only(self, step, target):
    raise PermissionError(13, "Permission denied", str(target))

  monkeypatch.setattr(deleter.StandardCheckpointDeleter, "_delete_step_permanently", read_only)
  manager = checkpoints.TrainCheckpoints(str(tmp_path), keep=1)
  for k in (1, 2, 3):
    manager.save(k, _state(k))
  manager.wait_until_finished()
  assert 3 in _steps(str(tmp_path)), _steps(str(tmp_path))
  err = capsys.readouterr().err
  assert "could not be removed" in err and "Permission denied" in err, err
