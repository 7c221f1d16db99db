"""Small file helpers shared by the trainer, the demo and data_prep.

:func:`pid_alive` tells whether the process that wrote a lock, claim or
temporary file (its pid in the name or content) still runs on this host.

Every file or directory the project writes for a later run, another process or
a user to read back (JSON records, variables, exports, shards, the demo's
videos; not figures) appears through :func:`atomic_path`: it is written under
a temporary name beside its final one (``<path>.tmp-<pid>``) and moved into
place only when complete, so a reader, or a rerun after a kill, sees the old
version or the new one, never half of one. A file replaces its predecessor in
one ``os.replace``; a directory cannot replace a non-empty one that way, so
the old one is first renamed aside (``<path>.old-<pid>``), the new one renamed
in, and the old one deleted: at every instant one complete version exists
under one of those two names. :func:`recover` (run by :func:`atomic_path`
first, and by readers that may meet a crash's leftovers) puts an aside version
back if the writer died before the new one was in place, and removes
temporaries of dead writers. :func:`write_json_atomic` writes JSON that way.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import os
import shutil
from typing import Any, Iterator, List, Optional

TMP_TAG = ".tmp-"  # <path>.tmp-<pid>: the version being written by process <pid>
OLD_TAG = ".old-"  # <path>.old-<pid>: the version process <pid> is replacing


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
  """Yields a temporary path to write ``path``'s new version to (a file or a directory).

  When the block ends normally the temporary is moved into place, replacing
  whatever ``path`` held (a directory through :func:`_swap`); when it raises,
  the temporary is removed and ``path`` is untouched. The block must create
  the temporary: one that wrote nothing is an error rather than a silent no-op.
  """
  path = os.fspath(path)
  recover(path)
  tmp = f"{path}{TMP_TAG}{os.getpid()}"
  try:
    yield tmp
    if not os.path.lexists(tmp):
      raise FileNotFoundError(f"nothing was written to {tmp} (the new version of {path})")
    if os.path.lexists(path) and (_is_dir(path) or _is_dir(tmp)):
      _swap(tmp, path)
    else:
      os.replace(tmp, path)
  except BaseException:
    _remove(tmp)
    raise


def _swap(tmp: str, path: str) -> None:
  """Replaces ``path`` by ``tmp`` in two renames, the old version set aside in between."""
  old = f"{path}{OLD_TAG}{os.getpid()}"
  _remove(old)
  os.rename(path, old)
  try:
    os.rename(tmp, path)
  except BaseException:
    with contextlib.suppress(OSError):  # else recover() puts it back the next time
      os.rename(old, path)
    raise
  _remove(old)


def recover(path: str) -> None:
  """Cleans up after writers of ``path`` that died (crashed, killed) in :func:`atomic_path`.

  A version they had set aside comes back when ``path`` is missing (the
  newest one, if several) and is deleted otherwise; their temporaries are
  deleted. Leftovers of processes that still run (a concurrent writer) are
  left alone; this process's own count as dead, since it is not writing now.
  """
  path = os.fspath(path)
  olds = sorted(_leftovers(path, OLD_TAG), key=os.path.getmtime)
  if olds and not os.path.lexists(path):
    os.rename(olds.pop(), path)
  for stale in olds + _leftovers(path, TMP_TAG):
    _remove(stale)


def _leftovers(path: str, tag: str) -> List[str]:
  """``<path><tag><pid>`` entries whose process is this one or gone."""
  found = []
  for name in glob.glob(glob.escape(path) + tag + "*"):
    pid = name[len(path) + len(tag):]
    if pid.isdigit() and (int(pid) == os.getpid() or not pid_alive(int(pid))):
      found.append(name)
  return found


def _is_dir(path: str) -> bool:
  return os.path.isdir(path) and not os.path.islink(path)


def _remove(path: str) -> None:
  if _is_dir(path):
    shutil.rmtree(path, ignore_errors=True)
  else:
    with contextlib.suppress(FileNotFoundError):
      os.remove(path)


def write_json_atomic(path: str, payload: Any, *, indent: Optional[int] = 2,
                      sort_keys: bool = True) -> str:
  """Writes ``payload`` as JSON to ``path`` through :func:`atomic_path`; returns ``path``."""
  path = os.fspath(path)
  with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
    json.dump(payload, f, indent=indent, sort_keys=sort_keys)
    f.write("\n")
    f.flush()
    os.fsync(f.fileno())
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
