"""Child process of `data_prep.pool`: reads (function, args) messages on stdin, answers on stdout.

`python -m data_prep._worker <parent pid>`. The child exits when its parent dies,
even in the middle of a task (a parent killed with kill -9 leaves no worker
behind): on Linux by the kernel's parent-death signal, elsewhere by a thread
watching the parent's pid.
"""

import ctypes
import ctypes.util
import importlib
import os
import signal
import sys
import threading
import time
import traceback

from data_prep.pool import recv, send
from reskd_jax.errors import DataError

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
WATCH_SECONDS = 0.5


def _watch_parent(parent: int):
  while os.getppid() == parent:
    time.sleep(WATCH_SECONDS)
  os._exit(1)


def exit_with_parent(parent: int):
  """Makes this process end when `parent` (its parent process) does."""
  libc_name = ctypes.util.find_library("c") if sys.platform.startswith("linux") else None
  if libc_name:
    libc = ctypes.CDLL(libc_name, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0:
      if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)
      return
  threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()


def main():
  if len(sys.argv) > 1:
    exit_with_parent(int(sys.argv[1]))
  # Ctrl-C reaches the whole process group: the parent alone handles it (one line, then it
  # ends the workers); a worker must not print a KeyboardInterrupt traceback of its own.
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  out = os.fdopen(os.dup(1), "wb")  # the answers' channel
  os.dup2(2, 1)  # anything printed goes to stderr, not into the answers
  inp = sys.stdin.buffer
  while True:
    try:
      (module, name), args = recv(inp)
    except EOFError:
      return
    try:
      fn = getattr(importlib.import_module(module), name)
      answer = ("ok", fn(*args))
    except DataError as e:  # bad input, not a bug: the parent raises this very error
      answer = ("raise", e)
    except Exception:  # noqa: BLE001  reported to the parent, which raises it
      answer = ("error", traceback.format_exc())
    send(out, answer)


if __name__ == "__main__":
  main()
