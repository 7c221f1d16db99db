"""``<workdir>/train.log``: what process 0 prints (stdout and stderr: progress, evaluations,
warnings, errors) and the WARNING records of Python/absl logging, appended across resumes,
with a line per start.

A person reading the log after the fact sees the same lines as the one who
watched the terminal, plus ``=== <time> start ...`` where each segment of the
run began. Only process 0 writes it (the others print nothing of their own).
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
from typing import Optional, TextIO

import jax

FILE = "train.log"


class _Tee:
  """A text stream that writes to ``stream`` and to ``log``."""

  def __init__(self, stream: TextIO, log: TextIO):
    self._stream, self._log = stream, log

  def write(self, text: str) -> int:
    self._stream.write(text)
    try:
      self._log.write(text)
    except (OSError, ValueError):  # a full disk or a closed log never stops the run
      pass
    return len(text)

  def flush(self) -> None:
    self._stream.flush()
    try:
      self._log.flush()
    except (OSError, ValueError):
      pass

  def __getattr__(self, name):
    return getattr(self._stream, name)


class RunLog:
  """Context: ``sys.stdout``/``sys.stderr`` also go to ``<workdir>/train.log`` (process 0)."""

  def __init__(self, workdir: str, argv=None):
    self.path = os.path.join(workdir, FILE)
    self._argv = list(sys.argv if argv is None else argv)
    self._file: Optional[TextIO] = None
    self._saved = None

  def __enter__(self) -> "RunLog":
    if jax.process_index() != 0:
      return self
    self._file = open(self.path, "a", encoding="utf-8")
    self._file.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} start on {socket.gethostname()} "
                     f"(pid {os.getpid()}): {' '.join(self._argv)}\n")
    self._file.flush()
    self._saved = (sys.stdout, sys.stderr)
    sys.stdout, sys.stderr = _Tee(sys.stdout, self._file), _Tee(sys.stderr, self._file)
    # Library warnings (Python logging, absl) go to a stream their handler fixed at start-up,
    # not through sys.stderr: the log gets them from a handler of its own.
    self._handler = logging.StreamHandler(self._file)
    self._handler.setLevel(logging.WARNING)
    self._handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(self._handler)
    return self

  def __exit__(self, exc_type, exc, tb):
    if self._file is None:
      return False
    sys.stdout.flush()
    sys.stderr.flush()
    sys.stdout, sys.stderr = self._saved
    logging.getLogger().removeHandler(self._handler)
    if exc is not None and not isinstance(exc, (SystemExit, KeyboardInterrupt)):
      # main.py prints the one-line error after this context: keep it in the log too.
      self._file.write(f"error: {exc}\n")
    self._file.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} end\n")
    self._file.close()
    self._file = None
    return False
