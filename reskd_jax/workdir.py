"""The files of a training workdir, named once, and the lock that keeps one run per workdir.

    config.json          the config of the run (checked on resume; written once the
                         start-up checks and the restore have succeeded)
    history.json         the run's segments: where each start began (step), on which
                         devices, and which config keys changed since the last one
    train.log            what process 0 printed, appended across resumes
    checkpoints/         resumable train states (``checkpoints.TrainCheckpoints``)
    variables/           the final student (a variables directory, ``checkpoints.save_variables``)
    best_variables/      the best student so far, with its ``best.json`` (metric, step)
                         inside: both change in one directory rename
    results.json         final metrics of ``--mode=train`` ("run": "train")
    eval_results.json    metrics of ``--mode=eval`` ("run": "eval")
    lock                 pid and host of the run using the workdir
    events.out.tfevents.*   TensorBoard
"""

from __future__ import annotations

import os
import socket
import threading
import time
from typing import Optional

from reskd_jax import fileio, train_utils
from reskd_jax.errors import ConfigError

CONFIG = "config.json"
HISTORY = "history.json"
LOG = "train.log"
CHECKPOINTS = "checkpoints"
VARIABLES = "variables"
BEST_VARIABLES = "best_variables"
BEST = "best.json"
RESULTS = "results.json"
EVAL_RESULTS = "eval_results.json"
LOCK = "lock"

# A lock from another host whose heartbeat is older than this is stale.
STALE_AFTER_S = 15 * 60
_HEARTBEAT_S = 30
# How long processes 1.. wait for process 0's decision about the lock.
_DECISION_TIMEOUT_S = 600


def path(workdir: str, name: str) -> str:
  return os.path.join(workdir, name)


class WorkdirLock:
  """``<workdir>/lock`` with this process's pid and host, refreshed by a heartbeat thread.

  A lock held by a live process (same host), or one refreshed in the last
  ``STALE_AFTER_S`` seconds (another host), is a ``ConfigError``; a stale lock
  (dead pid, or an old heartbeat) is taken over with a warning.

  With several processes, process 0 takes (or is refused) the lock and every
  other process waits for its decision (through the coordination service's
  key-value store) and follows it: all take the workdir, or all stop with
  process 0's one-line message.
  """

  def __init__(self, workdir: str, stale_after_s: float = STALE_AFTER_S):
    self.path = path(workdir, LOCK)
    self._stale_after = stale_after_s
    self._stop = threading.Event()
    self._thread: Optional[threading.Thread] = None

  def _check_existing(self) -> None:
    try:
      held = fileio.read_json(self.path, default=None)
    except ValueError:  # half-written or garbage: nobody can be holding it properly
      held = None
    if not held:
      return
    host, pid = held.get("host"), int(held.get("pid", -1))
    me = (socket.gethostname(), os.getpid())
    if (host, pid) == me:
      return
    age = time.time() - os.path.getmtime(self.path)
    if host == me[0]:
      alive = fileio.pid_alive(pid)
    else:
      alive = age < self._stale_after
    if alive:
      raise ConfigError(
          f"workdir {os.path.dirname(self.path)!r} is in use by pid {pid} on {host} (since "
          f"{held.get('started', '?')}); wait for it, stop it, or use another workdir. If that "
          f"run is dead, delete {self.path}")
    train_utils.warn(f"taking over the stale lock {self.path} of pid {pid} on {host} (last "
                     f"heartbeat {age:.0f} s ago)")

  def acquire(self) -> "WorkdirLock":
    import jax
    if jax.process_count() > 1:
      return self._acquire_together(jax.process_index())
    return self._acquire()

  def _acquire(self) -> "WorkdirLock":
    os.makedirs(os.path.dirname(self.path), exist_ok=True)
    self._check_existing()
    fileio.write_json_atomic(self.path, {"pid": os.getpid(), "host": socket.gethostname(),
                                         "started": time.strftime("%Y-%m-%dT%H:%M:%S")})
    self._thread = threading.Thread(target=self._beat, daemon=True)
    self._thread.start()
    return self

  def _acquire_together(self, index: int) -> "WorkdirLock":
    from jax._src import distributed
    client = distributed.global_state.client
    key = f"reskd/workdir-lock/{os.path.abspath(self.path)}"
    if index == 0:
      try:
        self._acquire()
      except ConfigError as e:
        client.key_value_set(key, f"refused:{e}")
        raise
      client.key_value_set(key, "taken")
      return self
    decision = client.blocking_key_value_get(key, _DECISION_TIMEOUT_S * 1000)
    if decision.startswith("refused:"):
      raise ConfigError(decision[len("refused:"):])
    self._held_elsewhere = True
    return self

  def _beat(self) -> None:
    while not self._stop.wait(_HEARTBEAT_S):
      try:
        os.utime(self.path)
      except OSError:
        return

  def release(self) -> None:
    self._stop.set()
    if getattr(self, "_held_elsewhere", False):
      return
    try:
      held = fileio.read_json(self.path, default={}) or {}
      if held.get("pid") == os.getpid() and held.get("host") == socket.gethostname():
        os.remove(self.path)
    except (OSError, ValueError):
      pass

  def __enter__(self):
    return self.acquire()

  def __exit__(self, *exc):
    self.release()
    return False
