"""Joining a multi-process run, watching its processes, and leaving it: bounded waits, one line.

JAX's own failure modes are a silent wait and then a C++ abort: a launch that
cannot form waits ``initialization_timeout`` (300 s) and aborts; a process
that dies mid-run leaves the others blocked in a collective until the
coordination service misses its heartbeats (100 s), and then aborts them all
with a stack dump. Here:

* :func:`join` prints a progress line every ``PROGRESS_EVERY_S`` while the
  processes gather (``waiting for the other 1 of 2 processes at HOST:PORT,
  20 s``) and, after ``--join_timeout`` seconds, stops with one line naming
  what is missing (nothing listens at the coordinator's address; or it
  answers but not every ``--process_id`` joined) and exit status 2.
* :class:`PeerWatch` has every process write a heartbeat counter into the
  coordination service's key-value store every ``BEAT_S`` seconds and read
  the others'; a process whose counter has not moved for
  ``--heartbeat_timeout`` seconds is named in one line, and the survivors
  exit with ``errors.EXIT_PROCESS_LOST`` (the last periodic checkpoint is
  intact; a rerun resumes from it). JAX's own timeouts are set above ours, so
  ours fire first.
* :func:`filter_output` runs the process's stdout and stderr through
  ``reskd_jax.log_filter`` (gloo's connection chatter dropped; the fatal dump
  JAX still gives when process 0 itself dies becomes one line).
* :func:`leave` says what the process waits for while the processes shut
  down together.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from typing import Any, Dict, Optional

from reskd_jax import errors

PROGRESS_EVERY_S = 20
BEAT_S = 2.0
DEFAULT_JOIN_TIMEOUT_S = 120
DEFAULT_HEARTBEAT_TIMEOUT_S = 60
# JAX's own limits, above ours: our watchdogs give the one line first.
_JAX_MARGIN_S = 60

_filter: Optional[subprocess.Popen] = None


def say(message: str) -> None:
  print(message, file=sys.stderr, flush=True)


def exit_now(status: int, message: Optional[str] = None) -> None:
  """Prints ``error: message`` and ends the process at once (no atexit handlers: JAX's would
  wait on, or abort at, the cluster this process is leaving)."""
  if message:
    say(f"error: {message}")
  for stream in (sys.stdout, sys.stderr):
    try:
      stream.flush()
    except (OSError, ValueError):
      pass
  if _filter is not None:  # let the filter pass the last lines on
    for fd in (1, 2):
      try:
        os.close(fd)
      except OSError:
        pass
    try:
      _filter.wait(timeout=5)
    except subprocess.TimeoutExpired:
      pass
  os._exit(status)


def filter_output() -> None:
  """Routes this process's stdout and stderr through ``reskd_jax.log_filter``."""
  global _filter
  if _filter is not None:
    return
  r_out, w_out = os.pipe()
  r_err, w_err = os.pipe()
  sys.stdout.flush()
  sys.stderr.flush()
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(
      [os.path.dirname(os.path.dirname(os.path.abspath(__file__))), env.get("PYTHONPATH", "")])
  _filter = subprocess.Popen([sys.executable, "-m", "reskd_jax.log_filter", str(r_out),
                              str(r_err)], pass_fds=(r_out, r_err), stdin=subprocess.DEVNULL,
                             env=env)
  os.dup2(w_out, 1)
  os.dup2(w_err, 2)
  for fd in (r_out, r_err, w_out, w_err):
    os.close(fd)


def _listening(address: str) -> bool:
  host, _, port = address.rpartition(":")
  try:
    with socket.create_connection((host.strip("[]"), int(port)), timeout=3):
      return True
  except (OSError, ValueError):
    return False


def _join_failure(args: Dict[str, Any], timeout_s: float) -> str:
  address = args.get("coordinator_address", "the coordinator")
  num, me = args.get("num_processes", "?"), args.get("process_id", "?")
  every = (f"start every process with --coordinator_address={address} --num_processes={num} "
           f"and its own --process_id (0..{num - 1 if isinstance(num, int) else '?'}, each "
           f"once)")
  if me != 0 and "coordinator_address" in args and not _listening(address):
    return (f"process {me} of {num}: nothing listens at {address} (process 0, the "
            f"coordinator) after {timeout_s:.0f} s (--join_timeout): is process 0 running, "
            f"with this --coordinator_address? {every}")
  return (f"process {me} of {num}: the cluster at {address} did not form within "
          f"{timeout_s:.0f} s (--join_timeout): not every process joined (not started, "
          f"another coordinator port, or a --process_id given twice); {every}")


def join(args: Dict[str, Any], timeout_s: float = DEFAULT_JOIN_TIMEOUT_S,
         heartbeat_timeout_s: float = DEFAULT_HEARTBEAT_TIMEOUT_S) -> None:
  """``jax.distributed.initialize(**args)`` with progress lines and a bounded wait.

  Exits with status 2 and one line when the cluster has not formed after
  ``timeout_s`` seconds. Raises what ``initialize`` raises for bad arguments.
  """
  import jax
  # JAX's preemption service would take over SIGTERM (see train_utils.StopSignal, which
  # agrees on the stop itself); orbax treats it as off when disabled.
  jax.config.update("jax_enable_preemption_service", False)
  done = threading.Event()
  address = args.get("coordinator_address", "the coordinator")
  num, me = args.get("num_processes"), args.get("process_id")

  def watch():
    start = time.monotonic()
    while True:
      left = timeout_s - (time.monotonic() - start)
      if done.wait(min(PROGRESS_EVERY_S, max(left, 0))):
        return
      waited = time.monotonic() - start
      if waited >= timeout_s:
        exit_now(errors.EXIT_BAD_INPUT, _join_failure(args, timeout_s))
      others = f"the other {num - 1} of {num} processes" if isinstance(num, int) else (
          "the other processes")
      say(f"process {me if me is not None else '?'}: waiting for {others} at {address}, "
          f"{waited:.0f} s (gives up after {timeout_s:.0f} s: --join_timeout)")

  thread = threading.Thread(target=watch, name="reskd-join-watch", daemon=True)
  thread.start()
  try:
    jax.distributed.initialize(
        **args, initialization_timeout=int(timeout_s + _JAX_MARGIN_S),
        heartbeat_timeout_seconds=int(heartbeat_timeout_s + _JAX_MARGIN_S))
  finally:
    done.set()


def _client():
  from jax._src import distributed
  return distributed.global_state.client


class PeerWatch:
  """Heartbeats through the coordination service's key-value store; names a process gone.

  Every process bumps ``reskd/alive/<id>`` every ``BEAT_S`` seconds and reads
  the others' counters; one that has not moved for ``timeout_s`` seconds (by
  this process's clock) is reported in one line and this process exits with
  ``errors.EXIT_PROCESS_LOST``. A no-op with one process. :meth:`stop` before
  leaving the cluster (the others stop beating then too).
  """

  def __init__(self, timeout_s: float = DEFAULT_HEARTBEAT_TIMEOUT_S):
    import jax
    self._timeout = timeout_s
    self._stop = threading.Event()
    self._me, self._num = jax.process_index(), jax.process_count()
    self._thread = None
    if self._num > 1 and _client() is not None:
      self._thread = threading.Thread(target=self._run, name="reskd-peer-watch", daemon=True)
      self._thread.start()

  def _lost(self, message: str) -> None:
    if not self._stop.is_set():
      exit_now(errors.EXIT_PROCESS_LOST, message)

  def _run(self) -> None:
    client = _client()
    seen: Dict[int, Any] = {}
    beat = 0
    while not self._stop.wait(BEAT_S):
      beat += 1
      try:
        client.key_value_set(f"reskd/alive/{self._me}", str(beat), allow_overwrite=True)
      except Exception as e:  # noqa: BLE001 (the coordination service is gone)
        self._lost(f"process {self._me} of {self._num}: lost the coordinator (process 0): "
                   f"{str(e).splitlines()[0][:160]}; the run stopped. Rerun the same command "
                   f"on every host to resume from the last checkpoint")
        return
      now = time.monotonic()
      for peer in range(self._num):
        if peer == self._me:
          continue
        try:
          value = client.key_value_try_get(f"reskd/alive/{peer}")
        except Exception:  # noqa: BLE001 (not written yet)
          value = None
        if peer not in seen or seen[peer][0] != value:
          seen[peer] = (value, now)
        elif now - seen[peer][1] > self._timeout:
          self._lost(f"process {peer} of {self._num} is gone (no heartbeat for "
                     f"{now - seen[peer][1]:.0f} s, --heartbeat_timeout={self._timeout:.0f}): "
                     f"it died, was killed or hangs; the run stopped. Rerun the same command "
                     f"on every host to resume from the last checkpoint")
          return

  def stop(self) -> None:
    self._stop.set()


def leave() -> None:
  """``jax.distributed.shutdown()`` (waits for every process), saying so when it takes a while."""
  import jax
  if jax.process_count() <= 1:
    return
  done = threading.Event()

  def note():
    if not done.wait(5):
      say(f"process {jax.process_index()}: finished; waiting for the other processes to "
          f"finish too")

  threading.Thread(target=note, daemon=True).start()
  try:
    jax.distributed.shutdown()
  finally:
    done.set()
