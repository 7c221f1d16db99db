"""Small file helpers shared by the trainer, the demo and data_prep.

:func:`pid_alive` tells whether the process that wrote a lock, claim or
temporary file (its pid in the name or content) still runs on this host.

Every JSON file the project writes goes through :func:`write_json_atomic`:
the payload lands in a temporary file beside the target and replaces it in
one ``os.replace``, so a reader (or a rerun after a kill) sees the old file
or the new one, never half of one.
"""

from __future__ import annotations

import errno
import json
import os
from typing import Any, Optional


def write_json_atomic(path: str, payload: Any, *, indent: Optional[int] = 2,
                      sort_keys: bool = True) -> str:
  """Writes ``payload`` as JSON to ``path`` atomically; returns ``path``."""
  path = os.fspath(path)
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(payload, f, indent=indent, sort_keys=sort_keys)
    f.write("\n")
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)
  return path


def read_json(path: str, default: Any = None) -> Any:
  """The JSON in ``path``, or ``default`` when the file does not exist."""
  if not os.path.isfile(path):
    return default
  with open(path, encoding="utf-8-sig") as f:
    return json.load(f)


def pid_alive(pid: int) -> bool:
  """Whether process ``pid`` runs on this host (signal 0; EPERM: it runs, as another user)."""
  try:
    os.kill(pid, 0)
  except OSError as e:
    return e.errno == errno.EPERM
  return True
