"""A small process pool: tasks run in `python -m data_prep._worker` child processes.

Unlike multiprocessing's fork/forkserver/spawn pools, the children never copy
the caller's memory (safe when the caller has started JAX or TensorFlow
threads) and never re-import the caller's main module (safe for scripts
without an `if __name__ == "__main__"` guard). A child that dies (e.g. a
crash inside a video decoder) is reported as WorkerDied instead of hanging,
and a child whose parent dies (even by kill -9) exits at once (see
`data_prep._worker`). On Linux that is the kernel's parent-death signal,
which follows the thread that started the child: children are only ever
started by the thread calling `run`.
"""

from __future__ import annotations

import os
import pickle
import queue
import struct
import subprocess
import sys
import threading
from typing import Any, Callable, List, Optional, Sequence

_HEADER = struct.Struct("<Q")


class WorkerDied(RuntimeError):
  pass


def send(stream, obj):
  data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
  stream.write(_HEADER.pack(len(data)))
  stream.write(data)
  stream.flush()


def recv(stream):
  head = stream.read(_HEADER.size)
  if len(head) < _HEADER.size:
    raise EOFError
  (size,) = _HEADER.unpack(head)
  data = stream.read(size)
  if len(data) < size:
    raise EOFError
  return pickle.loads(data)


def _child_env():
  env = dict(os.environ)
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # holds data_prep/, reskd_jax/
  env["PYTHONPATH"] = os.pathsep.join([root] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
  return env


class Pool:
  """`workers` child processes, kept for several `run` calls (modules they import stay
  imported: TensorFlow is loaded once per child). Use as a context manager."""

  def __init__(self, workers: int):
    self.workers = max(1, int(workers))
    self._procs: List[subprocess.Popen] = []

  def __enter__(self):
    return self

  def __exit__(self, exc_type, *exc):
    if exc_type is not None and not issubclass(exc_type, Exception):
      self.kill()  # Ctrl-C (KeyboardInterrupt), SystemExit: do not wait for the tasks
    self.close()

  def kill(self):
    """Ends every child at once (their tasks' temporary files are removed by a rerun)."""
    for proc in self._procs:
      if proc.poll() is None:
        proc.kill()
    for proc in self._procs:
      proc.wait()

  def _spawn(self):
    return subprocess.Popen([sys.executable, "-m", "data_prep._worker", str(os.getpid())],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=_child_env())

  def close(self):
    for proc in self._procs:
      try:
        proc.stdin.close()
      except OSError:
        pass
    for proc in self._procs:
      try:
        proc.wait(timeout=30)
      except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    self._procs = []

  def run(self, fn: Callable, tasks: Sequence[tuple],
          on_result: Optional[Callable[[int, Any], None]] = None) -> List[Any]:
    """[fn(*task) for task in tasks], computed by the child processes.

    `fn` must be a module-level function. `on_result(index, result)` is called
    (in this process, one call at a time) as results arrive. An exception in
    `fn` is raised again here as RuntimeError with the child's traceback; a
    child that died raises WorkerDied.
    """
    spec = (fn.__module__, fn.__qualname__)
    todo: "queue.Queue" = queue.Queue()
    for i, task in enumerate(tasks):
      todo.put((i, task))
    results: List[Any] = [None] * len(tasks)
    errors: List[BaseException] = []
    lock = threading.Lock()
    while len(self._procs) < min(self.workers, len(tasks)):
      self._procs.append(self._spawn())

    def drive(slot):
      proc, index = self._procs[slot], None
      try:
        while not errors:
          try:
            index, task = todo.get_nowait()
          except queue.Empty:
            break
          send(proc.stdin, (spec, task))
          status, value = recv(proc.stdout)
          if status == "raise":  # a DataError (bad input): raised again here as it is
            errors.append(value)
            break
          if status != "ok":
            errors.append(RuntimeError(f"task {index} failed in a worker process:\n{value}"))
            break
          with lock:
            results[index] = value
            if on_result is not None:
              on_result(index, value)
          index = None
      except (EOFError, BrokenPipeError, OSError):
        proc.wait()
        errors.append(WorkerDied(f"a worker process died (exit status {proc.returncode}) "
                                 f"while on task {index}"))
      except BaseException as e:  # noqa: BLE001  e.g. an on_result failure: stop everything
        errors.append(e)

    threads = [threading.Thread(target=drive, args=(k,), daemon=True)
               for k in range(min(len(self._procs), len(tasks)))]
    for t in threads:
      t.start()
    for t in threads:
      t.join()
    for slot, proc in enumerate(self._procs):
      if proc.poll() is not None:
        self._procs[slot] = self._spawn()  # the pool stays usable
    if errors:
      raise errors[0]
    return results


def run(fn: Callable, tasks: Sequence[tuple], workers: int,
        on_result: Optional[Callable[[int, Any], None]] = None) -> List[Any]:
  """`Pool(workers).run(fn, tasks, on_result)` with a pool of its own."""
  with Pool(workers) as pool:
    return pool.run(fn, tasks, on_result)
