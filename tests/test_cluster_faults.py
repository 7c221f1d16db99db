"""Launches that go wrong and processes that die: main.py as 2 processes x 2 CPU devices (gloo).

Each test is one launch the way a person or a scheduler gets it wrong, and
checks the exit status, the time it took (generous bounds: a loaded 2-core
machine), the one line each process prints, and what the workdir holds.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from reskd_jax import checkpoints, errors, workdir as workdir_lib
from helpers import (ROOT, TIMEOUT, free_port as _free_port, kill_all as _kill,
                     launch as _launch, make_multihost_setup, tail as _tail, wait_all as _wait,
                     wait_for as _wait_for)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  return make_multihost_setup(tmp_path_factory.mktemp("cluster"))


def _errors(log):
  return [line for line in open(log).read().splitlines() if line.startswith("error: ")]


def _quiet(logs):
  """No traceback, no C++ or fault-handler dump, no gloo chatter in any process's output."""
  text = "\n".join(open(path).read() for path in logs)
  for noise in ("Traceback", "Extension modules", "Check failure stack trace", "[Gloo]",
                "Fatal Python error"):
    assert noise not in text, _tail(logs)


def _settled(logs, procs):
  """The output filter passes a process's last lines on just after it exits."""
  time.sleep(1.0)
  return logs


@pytest.mark.e2e
def test_a_launch_that_cannot_form_stops_in_one_line(setup):
  """Process 0 alone on one port, process 1 alone on another (a wrong port): each waits
  --join_timeout seconds with progress lines, then exits 2 naming what is missing."""
  workdir = str(setup["root"] / "noform")
  start = time.time()
  procs, logs = _launch(setup, workdir, str(setup["root"]), "--join_timeout=25",
                        ports=(_free_port(), _free_port()))
  try:
    codes = _wait(procs, logs, start + 25 + 90)
  finally:
    _kill(procs)
  took = time.time() - start
  _settled(logs, procs)
  assert codes == [errors.EXIT_BAD_INPUT] * 2, _tail(logs)
  assert took < 25 + 90, took
  for log in logs:
    text = open(log).read()
    assert "waiting for the other 1 of 2 processes at localhost:" in text, _tail(logs)
    assert len(_errors(log)) == 1, _tail(logs)
  zero, one = _errors(logs[0])[0], _errors(logs[1])[0]
  assert "process 0 of 2: the cluster at localhost:" in zero and "did not form" in zero
  assert "--join_timeout" in zero and "--process_id" in zero, zero
  assert "process 1 of 2: nothing listens at localhost:" in one, one
  _quiet(logs)
  assert not os.path.exists(os.path.join(workdir, workdir_lib.CHECKPOINTS))


@pytest.mark.e2e
def test_a_process_killed_mid_run_is_named_by_the_survivor(setup):
  """kill -9 of process 1: process 0 names it and exits 4 within --heartbeat_timeout plus
  a margin; the periodic checkpoints are intact and the rerun resumes from the last one."""
  workdir = str(setup["root"] / "killed")
  extra = ("--heartbeat_timeout=15", "--config.checkpoint_every_steps=2",
           "--config.num_train_steps=40")
  procs, logs = _launch(setup, workdir, str(setup["root"]), *extra)
  try:
    _wait_for(logs, procs, "[train] step 5/")
    killed = time.time()
    procs[1].send_signal(signal.SIGKILL)
    codes = _wait(procs[:1], logs, killed + 15 + 90)
    took = time.time() - killed
  finally:
    _kill(procs)
  _settled(logs, procs)
  assert codes == [errors.EXIT_PROCESS_LOST], _tail(logs)
  assert took < 15 + 90, took
  (line,) = _errors(logs[0])
  assert "process 1 of 2 is gone" in line and "Rerun the same command" in line, line
  _quiet(logs[:1])
  ckpt = os.path.join(workdir, workdir_lib.CHECKPOINTS)
  steps = sorted(int(d) for d in os.listdir(ckpt) if d.isdigit())
  assert steps and steps[-1] >= 2, steps
  # Every complete checkpoint has its checksum. The save in flight when process 1 died
  # (all processes write each checkpoint) may have left its checksum and a temporary
  # directory: the rerun ignores both and resumes from the newest complete checkpoint.
  sums = json.load(open(os.path.join(ckpt, checkpoints.CHECKSUMS_FILE)))
  assert set(steps) <= set(map(int, sums)), (steps, sorted(sums))

  # The same command again (the dead run's lock is stale) resumes after the last checkpoint;
  # a SIGTERM to process 1 in its first seconds (before it joined) stops both soon after,
  # with a checkpoint, instead of killing it and leaving process 0 waiting.
  for log in logs:
    os.remove(log)
  procs, logs = _launch(setup, workdir, str(setup["root"]), *extra)
  try:
    time.sleep(3)
    procs[1].send_signal(signal.SIGTERM)
    codes = _wait(procs, logs, time.time() + TIMEOUT)
  finally:
    _kill(procs)
  _settled(logs, procs)
  assert codes == [errors.EXIT_PREEMPTED] * 2, _tail(logs)
  text = open(logs[0]).read()
  assert f"[train] step {steps[-1] + 1}/" in text and "[train] step 1/" not in text, text
  assert "received SIGTERM" in open(logs[1]).read(), _tail(logs)
  stopped = int(text.split("stopped at step ")[1].split()[0])
  assert steps[-1] < stopped < 40 and stopped in _ckpt_steps(workdir), _tail(logs)
  _quiet(logs)


def _ckpt_steps(workdir):
  ckpt = os.path.join(workdir, workdir_lib.CHECKPOINTS)
  return sorted(int(d) for d in os.listdir(ckpt) if d.isdigit())


@pytest.mark.e2e
def test_a_second_launch_into_a_held_workdir_is_refused_by_every_process(setup):
  workdir = setup["root"] / "held"
  os.makedirs(workdir, exist_ok=True)
  holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
  try:
    with open(workdir / workdir_lib.LOCK, "w") as f:
      json.dump({"pid": holder.pid, "host": socket.gethostname(), "started": "earlier"}, f)
    start = time.time()
    procs, logs = _launch(setup, str(workdir), str(setup["root"]))
    try:
      codes = _wait(procs, logs, start + TIMEOUT)
    finally:
      _kill(procs)
  finally:
    holder.kill()
    holder.wait()
  _settled(logs, procs)
  assert codes == [errors.EXIT_BAD_INPUT] * 2, _tail(logs)
  for log in logs:
    (line,) = _errors(log)
    assert f"is in use by pid {holder.pid}" in line, _tail(logs)
  _quiet(logs)
  assert not os.path.exists(workdir / workdir_lib.CHECKPOINTS)
  assert json.load(open(workdir / workdir_lib.LOCK))["pid"] == holder.pid  # untouched


def _output_filter():
  """`python -m reskd_jax.log_filter` reading two pipes: (process, stdout's and stderr's
  write ends)."""
  r_out, w_out = os.pipe()
  r_err, w_err = os.pipe()
  child = subprocess.Popen([sys.executable, "-m", "reskd_jax.log_filter", str(r_out),
                            str(r_err)], cwd=ROOT, pass_fds=(r_out, r_err),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  os.close(r_out)
  os.close(r_err)
  return child, w_out, w_err


def test_the_output_filter_drops_chatter_and_turns_a_fatal_dump_into_one_line():
  """What the filter does with the lines JAX and gloo print when process 0 dies."""
  child, w_out, w_err = _output_filter()
  with os.fdopen(w_out, "w") as out, os.fdopen(w_err, "w") as err:
    out.write("[Gloo] Rank 0 is connected to 1 peer ranks. Expected number of connected peer "
              "ranks is : 1\n[train] step 5/40\n")
    # Two gloo threads' lines interleaved within a line.
    out.write("[Gloo] Rank [Gloo] Rank 0 is connected to 3 peer ranks. Expected number of "
              "connected peer ranks is : 3\n1 is connected to 3 peer ranks. Expected number of "
              "connected peer ranks is : 3\n")
    out.flush()
    err.write(
        "warning: kept\n"
        "E1207 02:51:36.052832   26787 coordination_service_agent.cc:289] Polled an error "
        "from coordination service (this can be an error from this or another task).\n"
        "F1207 02:51:36.052900   26787 client.h:80] Terminating process because the JAX "
        "distributed service detected fatal errors. This most likely indicates that another "
        "task died. absl::Status: UNAVAILABLE: Failed to send RPC to coordination service. "
        "Either the leader task was preempted\n"
        "*** Check failure stack trace: ***\n    @     0x7f8be9c40634  absl::LogMessage\n"
        "Fatal Python error: Aborted\n\nExtension modules: yaml._yaml, numpy\n")
  stdout, stderr = child.communicate(timeout=60)
  assert child.returncode == 0
  assert stdout == "[train] step 5/40\n", stdout
  lines = stderr.splitlines()
  assert lines[0] == "warning: kept" and len(lines) == 2, stderr
  assert lines[1].startswith("error: lost the connection to process 0 (the coordinator)"), stderr
  assert "(UNAVAILABLE: Failed to send RPC to coordination service)" in lines[1], stderr


def test_the_output_filter_keeps_stdout_read_after_the_fatal_dump():
  """The two pipes are read by two threads, so a line the run printed before dying may be
  read after the dump: stdout is never swallowed, only what follows the dump on stderr."""
  child, w_out, w_err = _output_filter()
  with os.fdopen(w_err, "w") as err:
    err.write("F1207 02:51:36.052900   26787 client.h:80] Terminating process because the JAX "
              "distributed service detected fatal errors. absl::Status: UNAVAILABLE: Failed to "
              "send RPC to coordination service\n*** Check failure stack trace: ***\n")
  first = child.stderr.readline()  # the dump has been read and replaced: now the stdout line
  with os.fdopen(w_out, "w") as out:
    out.write("[train] step 5/40\n")
  stdout, stderr = child.communicate(timeout=60)
  assert child.returncode == 0
  assert stdout == "[train] step 5/40\n", stdout
  assert first.startswith("error: lost the connection") and not stderr, (first, stderr)
