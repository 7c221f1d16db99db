"""Child process of `data_prep.pool`: reads (function, args) messages on stdin, answers on stdout."""

import importlib
import os
import sys
import traceback

from data_prep.pool import recv, send


def main():
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
    except Exception:  # noqa: BLE001  reported to the parent, which raises it
      answer = ("error", traceback.format_exc())
    send(out, answer)


if __name__ == "__main__":
  main()
