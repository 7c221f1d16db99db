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
  the cause, and nothing after it.

It ignores SIGINT, SIGTERM and SIGHUP (a terminal's Ctrl-C or a scheduler
reaches the whole process group: the run's last lines must still come
through) and exits when both pipes are closed, i.e. when the run has exited.
"""

from __future__ import annotations

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


def is_closed_loop_callback(exc_type, exc, tb) -> bool:
  """Whether an error printed through ``sys.excepthook`` is a late write completion of a
  failed asynchronous checkpoint save.

  When one of orbax's tensorstore writes fails (disk full, file-size limit, read-only
  file system), orbax's asyncio loop ends with the error while tensorstore's C++ threads
  still complete the save's other writes: each completion calls the closed loop's
  ``call_soon_threadsafe`` directly from C++ and prints the ``RuntimeError: Event loop is
  closed`` through ``sys.excepthook``, dozens of tracebacks before the save's own one-line
  error. Only that shape matches: the error raised by asyncio's closed check and caught
  by native code right there (caught by Python code, its traceback would hold the
  catching frame too).
  """
  if exc_type is not RuntimeError or str(exc) != "Event loop is closed" or tb is None:
    return False
  frames = []
  while tb is not None:
    frames.append(tb.tb_frame)
    tb = tb.tb_next
  return (frames[0].f_code.co_name == "call_soon_threadsafe"
          and all(os.path.basename(f.f_code.co_filename) == "base_events.py" for f in frames))


def drop_closed_loop_callbacks() -> None:
  """Installs a ``sys.excepthook`` that drops :func:`is_closed_loop_callback` errors (the
  failed save is reported once, in one line, by ``reskd_jax.checkpoints``) and passes
  every other error to the hook it replaces."""
  previous = sys.excepthook

  def hook(exc_type, exc, tb):
    if not is_closed_loop_callback(exc_type, exc, tb):
      previous(exc_type, exc, tb)

  sys.excepthook = hook


_DROP = re.compile(r"^\[Gloo\] Rank \d+ is connected to \d+ peer ranks"
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
  if _swallow.is_set() or _DROP.match(line):
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
