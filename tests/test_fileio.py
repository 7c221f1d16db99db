"""reskd_jax.fileio: JSON reads and atomic writes, the one rule for replacing a file or a
directory (atomic_path) and the recovery of what a writer that died left behind."""

import json
import os
import subprocess
import sys

import pytest

from helpers import kill_at_rename_to
from reskd_jax import fileio


def _dead_pid() -> int:
  """The pid of a process that has exited (and been reaped)."""
  proc = subprocess.Popen([sys.executable, "-c", "pass"])
  proc.wait()
  return proc.pid


def _listing(directory) -> list:
  return sorted(os.listdir(directory))


def _write_dir(path, text: str):
  os.makedirs(path)
  with open(os.path.join(path, "a.txt"), "w") as f:
    f.write(text)


def _write_file(path, text: str):
  with open(path, "w") as f:
    f.write(text)


def _read_file(path) -> str:
  with open(path) as f:
    return f.read()


def _read_dir(path) -> str:
  with open(os.path.join(path, "a.txt")) as f:
    return f.read()


# read_json, write_json_atomic, pid_alive
def test_write_then_read_json(tmp_path):
  path = str(tmp_path / "x.json")
  assert fileio.write_json_atomic(path, {"b": 1, "a": [1.5, "z"]}) == path
  assert fileio.read_json(path) == {"a": [1.5, "z"], "b": 1}
  text = _read_file(path)
  assert text.endswith("\n") and text.index('"a"') < text.index('"b"')  # sorted keys
  fileio.write_json_atomic(path, {"c": None}, indent=None)
  assert _read_file(path) == '{"c": null}\n'
  assert _listing(tmp_path) == ["x.json"]  # no temporary left


def test_read_json_default_and_bom(tmp_path):
  assert fileio.read_json(str(tmp_path / "missing.json")) is None
  assert fileio.read_json(str(tmp_path / "missing.json"), default={}) == {}
  (tmp_path / "bom.json").write_bytes(b"\xef\xbb\xbf" + json.dumps({"k": 2}).encode())
  assert fileio.read_json(str(tmp_path / "bom.json")) == {"k": 2}
  (tmp_path / "bad.json").write_text("{not json")
  with pytest.raises(ValueError):
    fileio.read_json(str(tmp_path / "bad.json"))


def test_write_json_atomic_failure_keeps_the_old_file(tmp_path):
  path = str(tmp_path / "x.json")
  fileio.write_json_atomic(path, {"v": 1})
  with pytest.raises(TypeError):
    fileio.write_json_atomic(path, {"v": object()})  # not serialisable, half written
  assert fileio.read_json(path) == {"v": 1}
  assert _listing(tmp_path) == ["x.json"]


def test_pid_alive():
  assert fileio.pid_alive(os.getpid())
  assert not fileio.pid_alive(_dead_pid())


# atomic_path
def test_atomic_path_writes_a_new_file_and_replaces_an_old_one(tmp_path):
  path = str(tmp_path / "f.bin")
  for payload in (b"first", b"second"):
    with fileio.atomic_path(path) as tmp:
      assert tmp != path and os.path.dirname(tmp) == str(tmp_path)
      assert not os.path.exists(tmp)
      with open(tmp, "wb") as f:
        f.write(payload)
      assert not os.path.exists(path) or _read_file(path) == "first"  # not yet
    assert _read_file(path) == payload.decode()
  assert _listing(tmp_path) == ["f.bin"]


@pytest.mark.parametrize("kind", ["file", "dir"])
def test_atomic_path_exception_leaves_the_old_version_and_no_temporary(tmp_path, kind):
  path = str(tmp_path / "out")
  with fileio.atomic_path(path) as tmp:
    (_write_dir if kind == "dir" else _write_file)(tmp, "old")
  with pytest.raises(RuntimeError, match="boom"):
    with fileio.atomic_path(path) as tmp:
      (_write_dir if kind == "dir" else _write_file)(tmp, "new")
      raise RuntimeError("boom")
  assert (_read_dir if kind == "dir" else _read_file)(path) == "old"
  assert _listing(tmp_path) == ["out"]


def test_atomic_path_that_wrote_nothing_is_an_error(tmp_path):
  path = tmp_path / "f"
  path.write_text("old")
  with pytest.raises(FileNotFoundError, match="nothing was written"):
    with fileio.atomic_path(str(path)):
      pass
  assert path.read_text() == "old"


def test_atomic_path_replaces_a_directory(tmp_path):
  path = str(tmp_path / "d")
  with fileio.atomic_path(path) as tmp:
    _write_dir(tmp, "v1")
    with open(os.path.join(tmp, "only_in_v1"), "w") as f:
      f.write("x")
  with fileio.atomic_path(path) as tmp:
    _write_dir(tmp, "v2")
    assert _read_dir(path) == "v1"  # the old one stays in place while the new one is written
  assert _read_dir(path) == "v2"
  assert _listing(path) == ["a.txt"]  # replaced, not merged
  assert _listing(tmp_path) == ["d"]  # the old one set aside is gone too


def test_atomic_path_replaces_a_file_by_a_directory_and_back(tmp_path):
  path = str(tmp_path / "x")
  _write_file(path, "file")
  with fileio.atomic_path(path) as tmp:
    _write_dir(tmp, "dir")
  assert _read_dir(path) == "dir"
  with fileio.atomic_path(path) as tmp:
    _write_file(tmp, "file again")
  assert _read_file(path) == "file again"
  assert _listing(tmp_path) == ["x"]


def test_crash_between_the_two_renames_then_recovery(tmp_path, monkeypatch):
  """Killed after the old directory was set aside, before the new one came in: the old one
  exists under a recognisable name, and the next writer or reader puts it back."""
  path = str(tmp_path / "d")
  with fileio.atomic_path(path) as tmp:
    _write_dir(tmp, "old")
  real_rename = kill_at_rename_to(monkeypatch, path)  # the second rename: the new one in
  with pytest.raises(KeyboardInterrupt):
    with fileio.atomic_path(path) as tmp:
      _write_dir(tmp, "new")
  monkeypatch.setattr(os, "rename", real_rename)
  aside = f"{path}{fileio.OLD_TAG}{os.getpid()}"
  assert not os.path.exists(path) and _read_dir(aside) == "old"  # at no instant neither
  fileio.recover(path)
  assert _read_dir(path) == "old"
  assert _listing(tmp_path) == ["d"]


def test_failed_second_rename_puts_the_old_directory_back(tmp_path, monkeypatch):
  """An error (not a kill) at the second rename: the old directory is back at once."""
  path = str(tmp_path / "d")
  with fileio.atomic_path(path) as tmp:
    _write_dir(tmp, "old")
  real_rename = os.rename

  def fails_into_place(src, dst):
    if dst == path and fileio.TMP_TAG in src:
      raise OSError("no")
    return real_rename(src, dst)

  monkeypatch.setattr(os, "rename", fails_into_place)
  with pytest.raises(OSError, match="no"):
    with fileio.atomic_path(path) as tmp:
      _write_dir(tmp, "new")
  assert _read_dir(path) == "old"
  assert _listing(tmp_path) == ["d"]


def test_failed_file_replace_keeps_the_old_file(tmp_path, monkeypatch):
  path = str(tmp_path / "f.json")
  fileio.write_json_atomic(path, {"v": 1})

  def no_replace(src, dst):
    raise OSError("read-only")

  monkeypatch.setattr(os, "replace", no_replace)
  with pytest.raises(OSError, match="read-only"):
    fileio.write_json_atomic(path, {"v": 2})
  monkeypatch.undo()
  assert fileio.read_json(path) == {"v": 1}
  assert _listing(tmp_path) == ["f.json"]


def test_crash_after_the_swap_leaves_an_old_copy_that_recovery_removes(tmp_path, monkeypatch):
  path = str(tmp_path / "d")
  with fileio.atomic_path(path) as tmp:
    _write_dir(tmp, "old")
  monkeypatch.setattr(fileio, "_remove", lambda p: None)  # killed before the old one went
  with fileio.atomic_path(path) as tmp:
    _write_dir(tmp, "new")
  monkeypatch.undo()
  assert _listing(tmp_path) == ["d", f"d{fileio.OLD_TAG}{os.getpid()}"]
  with fileio.atomic_path(path) as tmp:  # the next writer cleans up first
    _write_dir(tmp, "newer")
  assert _read_dir(path) == "newer"
  assert _listing(tmp_path) == ["d"]


def test_recover_keeps_a_live_writers_files_and_removes_a_dead_ones(tmp_path):
  path = tmp_path / "d"
  dead, live = _dead_pid(), os.getppid()
  for pid in (dead, live):
    _write_dir(f"{path}{fileio.TMP_TAG}{pid}", f"half written by {pid}")
  _write_dir(f"{path}{fileio.OLD_TAG}{live}", "being replaced by a live writer")
  (tmp_path / f"d{fileio.TMP_TAG}notapid").write_text("someone else's")
  fileio.recover(str(path))
  assert not path.exists()  # a live writer's swap is its own to finish
  assert _listing(tmp_path) == sorted([f"d{fileio.OLD_TAG}{live}", f"d{fileio.TMP_TAG}{live}",
                                       f"d{fileio.TMP_TAG}notapid"])


def test_recover_puts_back_the_newest_of_a_dead_writers_old_versions(tmp_path):
  path = str(tmp_path / "d")
  older, newer = _dead_pid(), _dead_pid()
  _write_dir(f"{path}{fileio.OLD_TAG}{older}", "older")
  _write_dir(f"{path}{fileio.OLD_TAG}{newer}", "newer")
  os.utime(f"{path}{fileio.OLD_TAG}{older}", (1, 1))
  fileio.recover(path)
  assert _read_dir(path) == "newer"
  assert _listing(tmp_path) == ["d"]
  fileio.recover(path)  # nothing left to do
  assert _read_dir(path) == "newer"
