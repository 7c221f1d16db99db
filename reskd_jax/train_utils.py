"""Generic training utilities, apart from the method (scenic style).

Progress line with rate and ETA, TensorBoard metric writer, orbax
checkpoint manager for the train state, and a SIGTERM/SIGINT latch for
preemptible machines.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from typing import Any, Dict, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from clu import metric_writers


def create_metric_writer(workdir: str):
  """TensorBoard event files in ``workdir`` (and the log), on process 0 only."""
  return metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0,
                                              asynchronous=True)


def _fmt_seconds(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


class Progress:
  """Prints ``step i/N | x steps/s, y videos/s | metrics | ETA`` lines."""

  def __init__(self, total_steps: int, batch_size: int, first_step: int = 0, stream=None,
               name: str = "train"):
    self.total = total_steps
    self.batch_size = batch_size
    self.name = name
    self.stream = stream or sys.stdout
    self._t0 = time.time()
    self._s0 = first_step
    self._last_t = self._t0
    self._last_s = first_step

  def update(self, step: int, metrics: Optional[Dict[str, float]] = None) -> str:
    now = time.time()
    rate = (step - self._last_s) / max(now - self._last_t, 1e-9)
    overall = (step - self._s0) / max(now - self._t0, 1e-9)
    eta = (self.total - step) / overall if overall > 0 else float("inf")
    parts = [f"[{self.name}] step {step}/{self.total} ({100.0 * step / max(self.total, 1):.1f}%)",
             f"{rate:.2f} steps/s, {rate * self.batch_size:.1f} videos/s"]
    if metrics:
      parts.append(" ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items())))
    parts.append(f"ETA {_fmt_seconds(eta) if np.isfinite(eta) else '?'}")
    line = " | ".join(parts)
    if jax.process_index() == 0:
      print(line, file=self.stream, flush=True)
    self._last_t, self._last_s = now, step
    return line


def create_checkpoint_manager(workdir: str, keep: int) -> ocp.CheckpointManager:
  """Asynchronous orbax manager keeping the last ``keep`` train states."""
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                         enable_async_checkpointing=True)
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), "checkpoints"),
                               options=options)


def save_state(manager: ocp.CheckpointManager, step: int, state, force: bool = False) -> None:
  manager.save(step, args=ocp.args.StandardSave(state), force=force)


def restore_latest(manager: ocp.CheckpointManager, abstract_state) -> Any:
  """The latest saved state, or None when the workdir has none."""
  step = manager.latest_step()
  if step is None:
    return None
  logging.info("resuming from %s step %d", manager.directory, step)
  return manager.restore(step, args=ocp.args.StandardRestore(abstract_state))


class StopSignal:
  """Latches SIGTERM/SIGINT so the loop can checkpoint and stop cleanly."""

  def __init__(self):
    self.received: Optional[int] = None
    self._previous = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      try:
        self._previous[sig] = signal.signal(sig, self._handle)
      except ValueError:  # not the main thread
        pass
    return self

  def _handle(self, signum, frame):
    del frame
    self.received = signum
    print(f"received signal {signum}: saving a checkpoint and stopping", flush=True)

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    return False
