"""The output filter of a multi-process run: what a person watching should see, and no more.

``python -m reskd_jax.log_filter OUT_FD ERR_FD`` copies the lines of two pipes
(the run's stdout and stderr, see ``reskd_jax.cluster.filter_output``) to its
own stdout and stderr, except for:

* gloo's ``[Gloo] Rank N is connected to M peer ranks`` lines (four per process
  at start-up), and the ``E... Polled an error from coordination service`` line
  that announces the fatal error below, dropped;
* the coordination service's fatal error (``F... Terminating process because
  the JAX distributed service detected fatal errors ...``), which JAX follows
  with a C++ stack trace and Python's fault handler with every thread's stack
  and a list of every extension module: one ``error:`` line instead, naming
  the cause, and nothing after it on stderr (where the dump goes). stdout is
  still copied: its lines were printed before the dump, even when this filter
  reads them after it (the two pipes are read by two threads).

It ignores SIGINT, SIGTERM and SIGHUP (a terminal's Ctrl-C or a scheduler
reaches the whole process group: the run's last lines must still come
through) and exits when both pipes are closed, i.e. when the run has exited.

In the run's own process, :func:`drop_late_write_completions` keeps a failed
checkpoint save to its one line (tensorstore would print a traceback for each of
the save's writes that completes after orbax gave up on it), and
:func:`captured_stderr` holds back what native libraries print while starting.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
import tempfile
import threading
from typing import Callable

@contextlib.contextmanager
def captured_stderr(release: Callable[[str, bool], str]):
  """Runs the block with file descriptor 2 (C++ libraries' stderr too) going to a temporary
  file, then writes ``release(text, failed)`` to stderr (``failed``: the block raised)."""
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as tmp:
    os.dup2(tmp.fileno(), 2)
    failed = True
    try:
      yield
      failed = False
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      tmp.seek(0)
      text = release(tmp.read().decode(errors="replace"), failed)
      if text:
        sys.stderr.write(text)
        sys.stderr.flush()


class _QuietLoop(asyncio.DefaultEventLoopPolicy._loop_factory):  # the platform's default loop
  """The default event loop, except that a callback handed to it after it was closed is
  dropped instead of raising ``RuntimeError: Event loop is closed``."""

  def call_soon_threadsafe(self, callback, *args, context=None):
    if self.is_closed():
      return None
    return super().call_soon_threadsafe(callback, *args, context=context)


class _QuietLoopPolicy(asyncio.DefaultEventLoopPolicy):
  _loop_factory = _QuietLoop


def drop_late_write_completions() -> None:
  """New event loops drop callbacks that arrive after they were closed.

  orbax runs each asynchronous checkpoint save in a fresh event loop and closes it as
  soon as the save fails (disk full, file-size limit, read-only file system), while
  tensorstore's C++ threads still complete the save's other writes: each completion hands
  its result to the closed loop (``call_soon_threadsafe``) and tensorstore prints the
  ``RuntimeError: Event loop is closed`` traceback itself, past ``sys.excepthook``, often
  dozens of them before the save's own one-line error. Nothing waits for those results
  any more (the loop is gone), so they are dropped. For the program (``main.py``): it sets
  the process's asyncio event loop policy.
  """
  asyncio.set_event_loop_policy(_QuietLoopPolicy())


# gloo's lines come from one thread per peer and may interleave within a line ("[Gloo] Rank
# [Gloo] Rank 0 is connected ...", then "1 is connected ..."): each piece is dropped.
_DROP = re.compile(r"^\[Gloo\] Rank |^\d+ is connected to \d+ peer ranks"
                   r"|^E\d{4} .*coordination_service_agent\.cc:\d+\] Polled an error from "
                   r"coordination service")
_FATAL = re.compile(r"^F\d{4} .*Terminating process because the JAX distributed service "
                    r"detected fatal errors.*?absl::Status: (.*)$")
_swallow = threading.Event()
_lock = threading.Lock()


def fatal_line(status: str) -> str:
  """The one line that replaces the coordination service's fatal dump."""
  status = status.strip().rstrip(":").strip().split(". ")[0] or "unknown error"
  if "heartbeat" in status or "unhealthy" in status:
    what = "another process of this run stopped sending heartbeats (it died, was killed or hangs)"
  elif "UNAVAILABLE" in status or "Socket closed" in status or "Connection reset" in status:
    what = "lost the connection to process 0 (the coordinator): it died or was killed"
  elif "DEADLINE_EXCEEDED" in status and "RegisterTask" in status:
    what = "could not register with the coordinator in time"
  else:
    what = "the cluster failed"
  return (f"error: {what} ({status[:200]}); the run stopped. Rerun the same command on every "
          f"host to resume from the last checkpoint")


def _pump(fd_in: int, out) -> None:
  with os.fdopen(fd_in, "rb", buffering=0) as stream:
    pending = b""
    while True:
      chunk = stream.read(65536)
      if not chunk:
        break
      pending += chunk
      *lines, pending = pending.split(b"\n")
      for raw in lines:
        _emit(raw.decode(errors="replace"), out, stream)
    if pending:
      _emit(pending.decode(errors="replace"), out, stream, newline=False)


def _emit(line: str, out, stream, newline: bool = True) -> None:
  if (_swallow.is_set() and out is sys.stderr) or _DROP.match(line):
    return
  fatal = _FATAL.match(line)
  with _lock:
    if fatal:
      _swallow.set()
      sys.stderr.write(fatal_line(fatal.group(1)) + "\n")
      sys.stderr.flush()
      return
    out.write(line + ("\n" if newline else ""))
    out.flush()


def main(argv) -> int:
  for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
    signal.signal(sig, signal.SIG_IGN)
  threads = [threading.Thread(target=_pump, args=(int(argv[1]), sys.stdout)),
             threading.Thread(target=_pump, args=(int(argv[2]), sys.stderr))]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
