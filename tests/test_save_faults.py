"""Checkpoint saves that fail on a real file system: a full disk (ENOSPC) and a read-only
one (EROFS), each on a tiny one-process run of main.py (the `:tiny` config, teacher mode,
one CPU device).

The file systems are real: a small tmpfs, or a read-only bind mount, mounted on the
workdir's `checkpoints/` in a private mount namespace (`unshare -rm`), so nothing outside
the test sees them and they vanish with it. Where mounting is not permitted (no user
namespaces, e.g. some CI containers) the tests are skipped with that reason.

Each test checks what a person and a rerun see: one line on stderr naming the directory
and the cause, exit status 2, the checkpoints before the failed one and their checksums
intact and consistent, no half-written `*-tmp` directory, and the rerun resumes.
"""

import asyncio
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from reskd_jax import checkpoints, errors, log_filter, workdir as workdir_lib
from data_helpers import write_tiny_dataset  # noqa: E402
from helpers import ROOT, TINY_CONFIG as CONFIG, can_mount_tmpfs, main_env
# A checkpoint of the :tiny teacher takes about 750 KiB on a tmpfs: this holds one, not two.
SMALL_DISK = "1200k"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  root = tmp_path_factory.mktemp("save_faults")
  write_tiny_dataset(str(root / "data"), {"train": 16, "val": 4}, np.random.RandomState(0),
                     dataset="tiny", num_classes=4, height=40, width=48)
  return str(root / "data")


def _env():
  return main_env(devices=1)


def _cmd(data, workdir, steps):
  return [sys.executable, os.path.join(ROOT, "main.py"), f"--config={CONFIG}",
          f"--workdir={workdir}", f"--config.data.data_dir={data}", "--config.num_classes=-1",
          "--config.mode=teacher", "--config.checkpoint_every_steps=2",
          f"--config.num_train_steps={steps}"]


def _in_namespace(tmp_path, script, **env):
  """Runs `script` (sh) in a private mount namespace; returns what it wrote to $LOG.*."""
  if not can_mount_tmpfs(tmp_path):
    pytest.skip("cannot mount a file system here (unshare -rm not permitted)")
  log = tmp_path / "log"
  subprocess.run(["unshare", "-rm", "sh", "-c", "set -u\n" + script], check=True, timeout=300,
                 cwd=ROOT, env=dict(_env(), LOG=str(log), **env))
  return lambda suffix: (tmp_path / f"log.{suffix}").read_text()


def _one_line(stderr, status, rc):
  assert int(rc) == status, stderr[-3000:]
  assert "Traceback" not in stderr and "Event loop is closed" not in stderr, stderr[-3000:]
  lines = stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), stderr[-3000:]
  return lines[0]


def _checksummed(ckpt_dir):
  return sorted(int(k) for k in json.load(open(os.path.join(ckpt_dir, checkpoints.CHECKSUMS_FILE))))


def _steps(listing):
  return sorted(int(name) for name in listing.split() if name.isdigit())


def _leftovers(listing):
  return [name for name in listing.split() if "tmp" in name]


# The run's `checkpoints/` on a small tmpfs: checkpoint 2 fits, 4 does not. Then the tmpfs
# is made larger (space freed) and the same command runs again.
DISK_FULL = r"""
mkdir -p "$W/checkpoints"
mount -t tmpfs -o size=$SIZE none "$W/checkpoints"
"$PY" main.py --config="$CONFIG" --workdir="$W" --config.data.data_dir="$DATA" \
    --config.num_classes=-1 --config.mode=teacher --config.checkpoint_every_steps=2 \
    --config.num_train_steps=4 >"$LOG.out1" 2>"$LOG.err1"
echo $? > "$LOG.rc1"
ls -a "$W/checkpoints" > "$LOG.ls1"
ls -a "$W" > "$LOG.lsw1"
cp "$W/checkpoints/checksums.json" "$LOG.sums1"
mount -o remount,size=16m "$W/checkpoints"
"$PY" main.py --config="$CONFIG" --workdir="$W" --config.data.data_dir="$DATA" \
    --config.num_classes=-1 --config.mode=teacher --config.checkpoint_every_steps=2 \
    --config.num_train_steps=4 >"$LOG.out2" 2>"$LOG.err2"
echo $? > "$LOG.rc2"
ls -a "$W/checkpoints" > "$LOG.ls2"
cp "$W/checkpoints/checksums.json" "$LOG.sums2"
"""


@pytest.mark.e2e
def test_a_full_disk_is_one_line_and_the_rerun_resumes(data, tmp_path):
  workdir = str(tmp_path / "run")
  read = _in_namespace(tmp_path, DISK_FULL, W=workdir, SIZE=SMALL_DISK, PY=sys.executable,
                       CONFIG=CONFIG, DATA=data)
  line = _one_line(read("err1"), errors.EXIT_BAD_INPUT, read("rc1"))
  ckpt = os.path.join(workdir, workdir_lib.CHECKPOINTS)
  assert line.startswith(f"error: could not save checkpoint step 4 in {ckpt}: "), line
  assert "No space left on device" in line and "steps 2)" in line, line
  assert _steps(read("ls1")) == [2], (read("ls1"), read("out1")[-2000:])
  assert sorted(map(int, json.loads(read("sums1")))) == [2]
  assert not _leftovers(read("ls1")), read("ls1")
  assert workdir_lib.RESULTS not in read("lsw1").split()

  assert read("rc2").strip() == "0", read("err2")[-3000:]
  out = read("out2")
  assert "[train] step 3/4" in out and "[train] step 2/4" not in out, out
  assert _steps(read("ls2")) == [2, 4] or _steps(read("ls2")) == [4], read("ls2")
  assert sorted(map(int, json.loads(read("sums2")))) == _steps(read("ls2"))
  assert not _leftovers(read("ls2")), read("ls2")
  assert json.load(open(os.path.join(workdir, workdir_lib.RESULTS)))["step"] == 4


# The finished run's `checkpoints/` bind-mounted read-only onto itself: the longer run that
# resumes from it cannot save.
READ_ONLY = r"""
mount --bind "$W/checkpoints" "$W/checkpoints"
mount -o remount,bind,ro "$W/checkpoints"
"$PY" main.py --config="$CONFIG" --workdir="$W" --config.data.data_dir="$DATA" \
    --config.num_classes=-1 --config.mode=teacher --config.checkpoint_every_steps=2 \
    --config.num_train_steps=4 >"$LOG.out1" 2>"$LOG.err1"
echo $? > "$LOG.rc1"
"""


@pytest.mark.e2e
def test_a_read_only_checkpoint_directory_is_one_line_and_the_rerun_resumes(data, tmp_path):
  workdir = str(tmp_path / "run")
  if not can_mount_tmpfs(tmp_path):
    pytest.skip("cannot mount a file system here (unshare -rm not permitted)")
  proc = subprocess.run(_cmd(data, workdir, 2), cwd=ROOT, env=_env(), capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  ckpt = os.path.join(workdir, workdir_lib.CHECKPOINTS)
  before = {name: os.path.getmtime(os.path.join(ckpt, name)) for name in os.listdir(ckpt)}
  assert _steps(" ".join(before)) == [2] == _checksummed(ckpt)

  read = _in_namespace(tmp_path, READ_ONLY, W=workdir, PY=sys.executable, CONFIG=CONFIG,
                       DATA=data)
  line = _one_line(read("err1"), errors.EXIT_BAD_INPUT, read("rc1"))
  assert line.startswith(f"error: could not save checkpoint step 4 in {ckpt}: "), line
  assert "Read-only file system" in line and "steps 2)" in line, line
  after = {name: os.path.getmtime(os.path.join(ckpt, name)) for name in os.listdir(ckpt)}
  assert after == before  # nothing written, nothing removed
  assert not os.path.exists(os.path.join(workdir, workdir_lib.RESULTS)) or json.load(
      open(os.path.join(workdir, workdir_lib.RESULTS)))["step"] == 2

  # Writable again (the namespace, and its read-only mount, are gone): the rerun resumes.
  proc = subprocess.run(_cmd(data, workdir, 4), cwd=ROOT, env=_env(), capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "[train] step 3/4" in proc.stdout and "[train] step 2/4" not in proc.stdout
  assert 4 in _checksummed(ckpt) and _checksummed(ckpt) == _steps(" ".join(os.listdir(ckpt)))
  assert not _leftovers(" ".join(os.listdir(ckpt)))
  assert json.load(open(os.path.join(workdir, workdir_lib.RESULTS)))["step"] == 4


def test_late_write_completions_of_a_failed_save_are_dropped():
  """A callback handed to a closed event loop (what tensorstore's threads do for each write
  of a save that failed, printing a traceback each) is dropped; an open loop runs its
  callbacks as before."""
  try:
    log_filter.drop_late_write_completions()
    loop = asyncio.new_event_loop()
    ran = []
    assert loop.call_soon_threadsafe(ran.append, 1) is not None
    loop.call_soon_threadsafe(loop.stop)
    loop.run_forever()
    assert ran == [1]
    loop.close()
    assert loop.call_soon_threadsafe(ran.append, 2) is None  # no RuntimeError
    assert ran == [1]
  finally:
    asyncio.set_event_loop_policy(None)  # the default policy again
  loop = asyncio.new_event_loop()
  loop.close()
  with pytest.raises(RuntimeError, match="Event loop is closed"):
    loop.call_soon_threadsafe(print)


def test_checksums_list_exactly_the_checkpoints_on_disk_after_the_last_save(tmp_path):
  """With keep=1, the save of step 2 removes checkpoint 1: once it is complete,
  checksums.json no longer lists step 1 (it used to until a next save, so the last save
  of a run, or the one at a signal, left an entry for a checkpoint that is gone)."""
  state = lambda k: {"step": np.asarray(k, np.int32),  # noqa: E731
                     "params": {"w": np.arange(512, dtype=np.float32) * k}}
  manager = checkpoints.TrainCheckpoints(str(tmp_path), keep=1)
  for k in (1, 2):
    manager.save(k, state(k))
  manager.wait_until_finished()
  manager.close()
  ckpt = os.path.join(str(tmp_path), workdir_lib.CHECKPOINTS)
  assert _steps(" ".join(os.listdir(ckpt))) == [2] == _checksummed(ckpt)
