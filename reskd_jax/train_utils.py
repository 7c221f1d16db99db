"""Generic training utilities, apart from the method (scenic style).

Progress line with rate and ETA (clu's ReportProgress), one-line warnings, a TensorBoard metric
writer that holds points back until the checkpoint covering them is saved
(so a resumed run never writes a step twice), and a SIGTERM/SIGINT latch for
preemptible machines. Train checkpoints live in ``reskd_jax.checkpoints``.
"""

from __future__ import annotations

import signal
import sys
import time
from typing import Any, Dict, List, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from clu import metric_writers
from clu import periodic_actions


def warn(message: str) -> None:
  """``warning: message`` on stderr (process 0 only)."""
  if jax.process_index() == 0:
    print(f"warning: {message}", file=sys.stderr, flush=True)


# Library warnings that describe normal operation, not a problem of the run: orbax's note
# that a checkpoint written by another orbax version has no _CHECKPOINT_METADATA file, and
# its removal of a step directory a killed run left unfinished (the resume then uses the
# previous, complete checkpoint, which the run names itself).
_CHATTER = ("_CHECKPOINT_METADATA", "Removing existing directory since it is not finalized")


class _DropChatter:
  def filter(self, record) -> bool:
    message = record.getMessage()
    return not any(text in message for text in _CHATTER)


def drop_library_chatter() -> None:
  """Keeps the warnings of ``_CHATTER`` out of the terminal and ``train.log``."""
  import logging
  for name in ("absl", "orbax"):
    logger = logging.getLogger(name)
    if not any(isinstance(f, _DropChatter) for f in logger.filters):
      logger.addFilter(_DropChatter())
  from absl import logging as absl_logging
  handler = absl_logging.get_absl_handler()
  if not any(isinstance(f, _DropChatter) for f in handler.filters):
    handler.addFilter(_DropChatter())


def create_metric_writer(workdir: str):
  """TensorBoard event files in ``workdir`` (and the log), on process 0 only."""
  return metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0,
                                              asynchronous=True)


class CommittedWriter:
  """Holds scalars (and hparams) back until the checkpoint covering their step is on disk.

  A run resumed from a checkpoint replays the steps after it; their points
  were never written, so TensorBoard sees every step at most once. Points
  still pending when a run dies are dropped with it (a resume recomputes
  them; after a hard kill the steps between the last two checkpoints may be
  missing instead).
  """

  def __init__(self, writer):
    self._writer = writer
    self._pending: List[Tuple[str, Any, Any]] = []

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    self._pending.append(("scalars", int(step), dict(scalars)))

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    self._pending.append(("hparams", -1, dict(hparams)))

  def write_images(self, step: int, images: Mapping[str, Any]) -> None:
    self._pending.append(("images", int(step), dict(images)))

  def commit(self, upto: Optional[int] = None) -> None:
    """Writes the pending points of steps ``<= upto`` (all when None)."""
    if upto is None:
      now, self._pending = self._pending, []
    else:
      now = [p for p in self._pending if p[1] <= upto]
      self._pending = [p for p in self._pending if p[1] > upto]
    for kind, step, payload in now:
      if kind == "scalars":
        self._writer.write_scalars(step, payload)
      elif kind == "images":
        self._writer.write_images(step, payload)
      else:
        self._writer.write_hparams(payload)
    if now:
      self._writer.flush()

  def discard(self) -> None:
    self._pending = []

  def flush(self) -> None:
    self._writer.flush()

  def close(self) -> None:
    self._writer.close()


def _fmt_seconds(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


class Progress(periodic_actions.ReportProgress):
  """clu's ``ReportProgress`` that also prints the progress line a person watches.

  ``step i/N (p%) | x steps/s, y videos/s | metrics | ETA`` on process 0, and
  ``steps_per_sec``/``videos_per_sec`` to the metric writer. What clu's class
  lacks (and this adds): a printed line (clu only sets the work-unit notes,
  which locally is an INFO log line), the metrics of the interval and the
  videos/s. Its first call (made once the first step has finished) only sets
  the clock, so neither the rate nor the ETA includes compilation.
  """

  def __init__(self, num_train_steps: int, batch_size: int, writer=None, every_steps: int = 1,
               stream=None, name: str = "train"):
    super().__init__(num_train_steps=num_train_steps, writer=writer, every_steps=every_steps,
                     every_secs=None)
    self.batch_size = batch_size
    self.name = name
    self.stream = stream
    self.metrics: Dict[str, float] = {}
    self.line = ""

  def __call__(self, step: int, t: Optional[float] = None) -> bool:
    first = self._previous_step is None
    t = time.monotonic() if t is None else t
    triggered = super().__call__(step, t)
    if first:  # the clock starts now; say what the start (compilation included) took
      self.line = " | ".join(
          [f"[{self.name}] step {step}/{self._num_train_steps} "
           f"({100.0 * step / max(self._num_train_steps or 1, 1):.1f}%)",
           f"first step (compilation included) after {t - self._t0:.1f} s"]
          + ([" ".join(f"{k}={v:.4g}" for k, v in sorted(self.metrics.items()))]
             if self.metrics else [])
          + ["ETA from the next report"])
      if jax.process_index() == 0:
        print(self.line, file=self.stream or sys.stdout, flush=True)
    return triggered

  def _apply(self, step: int, t: float):
    rate = (step - self._previous_step) / max(t - self._previous_time, 1e-9)
    eta = (self._num_train_steps - step) / rate if self._num_train_steps else float("nan")
    parts = [f"[{self.name}] step {step}/{self._num_train_steps} "
             f"({100.0 * step / max(self._num_train_steps or 1, 1):.1f}%)",
             f"{rate:.2f} steps/s, {rate * self.batch_size:.1f} videos/s"]
    if self.metrics:
      parts.append(" ".join(f"{k}={v:.4g}" for k, v in sorted(self.metrics.items())))
    parts.append(f"ETA {_fmt_seconds(eta) if np.isfinite(eta) else '?'}")
    self.line = " | ".join(parts)
    if jax.process_index() == 0:
      print(self.line, file=self.stream or sys.stdout, flush=True)
    if self._writer is not None:
      self._writer.write_scalars(step, {"train/steps_per_sec": rate,
                                        "train/videos_per_sec": rate * self.batch_size})


def sync_processes(name: str, timeout_s: int = 1800) -> None:
  """Waits until every process reaches ``name`` (a coordination-service barrier).

  Not a device collective: processes that start their first collective far
  apart (one still compiling) would otherwise hit the CPU collectives' fixed
  30 s rendezvous timeout (gloo). A no-op with one process.
  """
  if jax.process_count() > 1:
    ocp.multihost.sync_global_processes(name, timeout=timeout_s,
                                        processes=set(range(jax.process_count())))


_received: Optional[int] = None  # the signal latched by `StopSignal`, process-wide
_installed = 0  # nesting depth of active `StopSignal` contexts


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


_loop_over = False  # the loop's own StopSignal has exited: nothing is left to stop


def _handle_signal(signum, frame):
  del frame
  global _received
  if _received is None:
    what = ("the run is already finishing" if _loop_over
            else "saving a checkpoint and stopping")
    print(f"received {signal.Signals(signum).name}: {what}", flush=True)
  _received = signum


def latch(signum: int) -> None:
  """Records ``signum`` as if it had arrived now (a signal caught before the latch existed)."""
  _handle_signal(signum, None)


class StopSignal:
  """Latches SIGTERM/SIGINT/SIGHUP so the loop can checkpoint and stop cleanly.

  SIGHUP (a closed terminal or ssh session) is a stop like the others: the
  run saves and exits with status 143 instead of dying with nothing saved.

  The latch is process-wide (an outer context, e.g. in ``main.py``, catches a
  signal during start-up for the loop's inner one). :meth:`should_stop` is
  the decision every process agrees on: with several processes each call
  all-reduces (max) the processes' flags over ``mesh``. Call ``k`` dispatches
  the reduction of the flags as they are now and returns the result of call
  ``k - 1`` (the host waits on it only once the next step is queued); as every
  process calls it once per step, all of them stop after the same step,
  whichever got the signal.
  """

  def __init__(self, mesh: Optional[jax.sharding.Mesh] = None):
    self._previous = {}
    self._pending = None
    self._reduce = None
    if mesh is not None and jax.process_count() > 1:
      self._flags = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(mesh.axis_names))
      self._reduce = jax.jit(jnp.max, out_shardings=jax.sharding.NamedSharding(
          mesh, jax.sharding.PartitionSpec()))

  @property
  def received(self) -> Optional[int]:
    return _received

  def should_stop(self) -> bool:
    """True on every process at the same call once any process has been signalled."""
    local = _received is not None
    if self._reduce is None:
      return local
    flags = jax.make_array_from_process_local_data(
        self._flags, np.full(jax.local_device_count(), local, np.int32))
    pending, self._pending = self._pending, self._reduce(flags)
    return pending is not None and bool(pending)

  def __enter__(self):
    global _installed, _received, _loop_over
    if _installed == 0:
      _received = None
    _loop_over = False
    _installed += 1
    for sig in STOP_SIGNALS:
      try:
        self._previous[sig] = signal.signal(sig, _handle_signal)
      except ValueError:  # not the main thread
        pass
    return self

  def __exit__(self, *exc):
    global _installed, _loop_over
    _installed -= 1
    if self._reduce is not None or _installed > 0:
      _loop_over = True
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    return False
