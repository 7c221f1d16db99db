"""A run that never lies: divergence, corrupt checkpoints and config mistakes on tiny runs.

Each test reproduces one fault (the `:tiny` config, a 4-class data set of 32
videos) and asserts the message, the exit status and that nothing good was
lost. Runs of main.py happen in this process (helpers.run_main: main.py's flag parsing,
exit statuses and error lines), in a subprocess where a process is killed; the checkpoint,
lock and teacher tests call the modules directly.
"""

import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys

import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
import tensorflow as tf

from configs import minik_r50_112, minik_r152_224
from reskd_jax import checkpoints, config_checks, errors, meta as meta_lib, models, train
from reskd_jax import train_step, workdir as workdir_lib
from helpers import (FRAMES, NUM_CLASSES, ROOT, one_line_error as _one_line_error, popen,
                     run_main as _run, run_subprocess, small_train_state as _state,
                     TINY_CONFIG, kill_at_rename_to, tiny_args)


@pytest.fixture(scope="module")
def env(tiny):
  """The tiny data set; the teacher as a tiny teacher run would save it (full meta.json)."""
  return dict(tiny, teacher=tiny["trained_teacher"])


def _cmd(env, workdir, *extra, config=TINY_CONFIG):
  """main.py's arguments (the number of classes taken from the data set)."""
  return tiny_args(env, workdir, *extra, config=config, num_classes=-1)


def _raw_checkpoint(step_dir):
  with ocp.StandardCheckpointer() as ckptr:
    return ckptr.restore(os.path.join(step_dir, "default"))


def _all_finite(tree):
  return all(np.all(np.isfinite(x)) for x in jax.tree.leaves(tree)
             if np.issubdtype(np.asarray(x).dtype, np.inexact))


@pytest.fixture(scope="module")
def trained(env):
  """A finished 4-step teacher-mode run with checkpoints at steps 2 and 4."""
  workdir = str(env["root"] / "trained")
  proc = _run(_cmd(env, workdir, "--config.mode=teacher", "--config.num_train_steps=4",
                   "--config.checkpoint_every_steps=2"))
  assert proc.returncode == 0, proc.stderr[-3000:]
  return workdir, proc


# 1. Divergence.
def test_divergence_stops_with_exit_3_and_keeps_the_last_good_checkpoint(env):
  workdir = str(env["root"] / "diverge")
  proc = _run(_cmd(env, workdir, "--config.mode=teacher", "--config.num_train_steps=40",
                   "--config.optimizer.base_learning_rate=1e6",
                   "--config.checkpoint_every_steps=2", "--config.eval_every_epochs=0.5"))
  line = _one_line_error(proc, errors.EXIT_NON_FINITE)
  assert "became non-finite" in line and "step " in line and "last good checkpoint" in line
  assert not os.path.exists(os.path.join(workdir, workdir_lib.VARIABLES))
  assert not os.path.exists(os.path.join(workdir, workdir_lib.RESULTS))
  steps = sorted(glob.glob(os.path.join(workdir, workdir_lib.CHECKPOINTS, "[0-9]*")))
  assert steps, "the good checkpoints before the divergence must survive"
  for step_dir in steps:
    assert _all_finite(_raw_checkpoint(step_dir)), step_dir
  best = os.path.join(workdir, workdir_lib.BEST_VARIABLES)
  if os.path.exists(best):  # a best model, if any, is a finite one
    assert _all_finite(checkpoints.load_variables(best))


def test_train_step_keeps_the_state_when_the_update_is_not_finite():
  model = models.build_model("resnet18", NUM_CLASSES, width=4, stage_sizes=(1, 1, 1, 1),
                             stem="small")
  variables = jax.tree.map(np.array, models.init_variables(model, jax.random.key(0), 2, 16))
  variables["params"]["fc"]["kernel"][0, 0] = np.nan  # a diverged weight: the loss is NaN
  tx = optax.sgd(0.1, momentum=0.9)
  mesh = train_step.make_mesh()
  step = train_step.shard_train_step(
      train_step.make_train_step(student=model, tx=tx, mode="baseline"), mesh, donate=False)
  state = train_step.replicate(train_step.create_train_state(variables, tx), mesh)
  n = jax.device_count()
  batch = {"video": np.full((n, 2, 16, 16, 3), 128, np.uint8),
           "label": np.arange(n, dtype=np.int32) % NUM_CLASSES}
  new_state, metrics = step(state, {}, batch, jax.random.key(1))
  flag = int(metrics["non_finite"])
  assert flag & 1 and flag & 2, flag  # the loss and the gradient norm
  same = jax.tree.map(lambda a, b: np.array_equal(np.asarray(a), np.asarray(b), equal_nan=True),
                      new_state, state)
  assert all(jax.tree.leaves(same)), "a non-finite step must leave the state as it was"
  assert int(new_state.step) == 0


# 2./3. Checkpoint integrity.
def _largest_data_file(step_dir):
  files = [f for f in glob.glob(os.path.join(step_dir, "**", "*"), recursive=True)
           if os.path.isfile(f) and not os.path.basename(f).startswith("_")
           and not f.endswith(".json")]
  return max(files, key=os.path.getsize)


def _corrupt(step_dir, how):
  if how == "truncated":
    path = _largest_data_file(step_dir)
    with open(path, "r+b") as f:
      f.truncate(os.path.getsize(path) // 2)
  elif how == "no_metadata":
    for path in glob.glob(os.path.join(step_dir, "**", "_METADATA"), recursive=True):
      os.remove(path)
  elif how == "emptied":
    for name in os.listdir(step_dir):
      shutil.rmtree(os.path.join(step_dir, name), ignore_errors=True)
      if os.path.exists(os.path.join(step_dir, name)):
        os.remove(os.path.join(step_dir, name))
  elif how in ("flipped", "low_bits"):  # 64 bytes inverted, or their lowest bit only
    path = _largest_data_file(step_dir)
    mask = 0xFF if how == "flipped" else 0x01
    with open(path, "r+b") as f:
      f.seek(os.path.getsize(path) // 2)
      chunk = bytearray(f.read(64))
      f.seek(os.path.getsize(path) // 2)
      f.write(bytes(b ^ mask for b in chunk))


@pytest.mark.parametrize("how", ["truncated", "no_metadata", "emptied", "flipped", "low_bits"])
def test_corrupt_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, capsys, how):
  manager = checkpoints.TrainCheckpoints(str(tmp_path), keep=3)
  for k in (1, 2, 3):
    manager.save(k, _state(k))
  manager.wait_until_finished()
  _corrupt(os.path.join(manager.directory, "3"), how)
  state, step = checkpoints.TrainCheckpoints(str(tmp_path), keep=3).restore(_state(0))
  assert step == 2
  np.testing.assert_array_equal(state.params["w"], _state(2).params["w"])
  err = capsys.readouterr().err
  assert "checkpoint step 3" in err and "unusable" in err, err
  # The unusable one is set aside, not deleted, and no longer in the way.
  assert os.listdir(tmp_path / checkpoints.UNUSABLE_DIR)
  assert not os.path.exists(os.path.join(manager.directory, "3"))


def test_silent_corruption_is_caught_by_the_checksum(tmp_path, capsys):
  manager = checkpoints.TrainCheckpoints(str(tmp_path), keep=3)
  for k in (1, 2):
    manager.save(k, _state(k))
  manager.wait_until_finished()
  _corrupt(os.path.join(manager.directory, "2"), "low_bits")
  # The damaged values still load and are finite: only the checksum can tell.
  raw = _raw_checkpoint(os.path.join(manager.directory, "2"))
  assert _all_finite(raw)
  assert not np.array_equal(raw["params"]["w"], _state(2).params["w"])
  _, step = checkpoints.TrainCheckpoints(str(tmp_path), keep=3).restore(_state(0))
  assert step == 1 and "checksum mismatch" in capsys.readouterr().err


def test_no_usable_checkpoint_is_one_line(tmp_path):
  manager = checkpoints.TrainCheckpoints(str(tmp_path), keep=3)
  for k in (1, 2):
    manager.save(k, _state(k))
  manager.wait_until_finished()
  for k in (1, 2):
    _corrupt(os.path.join(manager.directory, str(k)), "flipped")
  with pytest.raises(errors.CheckpointError, match="none of the 2 checkpoints") as e:
    checkpoints.TrainCheckpoints(str(tmp_path), keep=3).restore(_state(0))
  assert "\n" not in str(e.value)


def test_flipped_bytes_in_the_newest_checkpoint_resume_from_the_previous(env, trained):
  workdir = str(env["root"] / "flipped")
  shutil.copytree(trained[0], workdir)
  _corrupt(os.path.join(workdir, workdir_lib.CHECKPOINTS, "4"), "flipped")
  proc = _run(_cmd(env, workdir, "--config.mode=teacher", "--config.num_train_steps=6",
                   "--config.checkpoint_every_steps=2"))
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "checkpoint step 4" in proc.stderr and "unusable" in proc.stderr, proc.stderr
  assert "[train] step 3/6" in proc.stdout  # resumed from step 2
  assert _all_finite(checkpoints.load_variables(workdir))
  assert json.load(open(os.path.join(workdir, workdir_lib.RESULTS)))["step"] == 6


# 4. Atomic best.
def test_best_variables_and_best_json_change_together(tmp_path, monkeypatch):
  best_dir = str(tmp_path / workdir_lib.BEST_VARIABLES)
  v2, v4 = ({"params": {"w": np.full((3,), float(k), np.float32)}, "batch_stats": {}}
            for k in (2, 4))
  checkpoints.save_variables(best_dir, v2, {"arch": "resnet18"},
                             extra_json={workdir_lib.BEST: {"top1": 0.5, "step": 2}})
  real_rename = kill_at_rename_to(monkeypatch, best_dir)  # before the new one is committed
  with pytest.raises(KeyboardInterrupt):
    checkpoints.save_variables(best_dir, v4, {"arch": "resnet18"},
                               extra_json={workdir_lib.BEST: {"top1": 0.75, "step": 4}})
  monkeypatch.setattr(os, "rename", real_rename)
  # Neither moved: the record and the weights still agree on step 2.
  assert train.read_best(str(tmp_path))["step"] == 2
  np.testing.assert_array_equal(checkpoints.load_variables(best_dir)["params"]["w"], 2.0)
  checkpoints.save_variables(best_dir, v4, {"arch": "resnet18"},
                             extra_json={workdir_lib.BEST: {"top1": 0.75, "step": 4}})
  assert train.read_best(str(tmp_path))["step"] == 4
  np.testing.assert_array_equal(checkpoints.load_variables(best_dir)["params"]["w"], 4.0)


# 5.-8., 10. Start-up checks: exit 2 before anything is compiled or written.
@pytest.fixture
def live_lock(env):
  workdir = env["root"] / "locked"
  holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
  os.makedirs(workdir, exist_ok=True)
  with open(workdir / workdir_lib.LOCK, "w") as f:
    json.dump({"pid": holder.pid, "host": socket.gethostname(), "started": "earlier"}, f)
  yield str(workdir)
  holder.kill()
  holder.wait()


@pytest.mark.parametrize("flags,needle", [
    (["--config.keep_checkpoints=0"], "config.keep_checkpoints=0: must be at least 1"),
    (["--config.checkpoint_every_steps=0"], "config.checkpoint_every_steps=0"),
    (["--config.log_every_steps=0"], "config.log_every_steps=0"),
    (["--config.data.eval_split=empty"], "config.data.eval_split='empty' has no videos"),
    (["--config.model.input_size=64"], "config.model.input_size=64 is larger than "
                                      "config.data.crop_size=32"),
    ("LOCKED", "is in use by pid"),
    # Nonsense values: refused before anything is written (issue 22, item 13).
    (["--config.num_train_steps=-5"], "config.num_train_steps=-5: must be at least 1"),
    (["--config.data.num_frames=0"], "config.data.num_frames=0: must be at least 1"),
    (["--config.data.crop_size=64"], "config.data.crop_size=64 is larger than "
                                     "config.data.short_side=36"),
    ("FILE", "is a file, not a directory"),
    # A teacher fed another resolution / trained on another class order (item 8).
    (["--config.data.crop_size=64", "--config.data.short_side=72"],
     "was trained at 32 px (its meta.json) but this run feeds it 64 px"),
    ("CLASS_ORDER", "the same 4 classes in another order (label 0 is 'c1' for the teacher, "
                    "'c0' in the data set)"),
])
def test_startup_checks_fail_before_training(env, request, flags, needle):
  workdir = str(env["root"] / f"startup{request.node.callspec.id}")
  if flags == "LOCKED":
    workdir, flags = request.getfixturevalue("live_lock"), []
  elif flags == "FILE":
    with open(workdir, "w") as f:
      f.write("not a workdir")
    flags = []
  elif flags == "CLASS_ORDER":
    tcfg = minik_r152_224.get_config("tiny")
    meta = meta_lib.for_trained_model(tcfg, tcfg.model, NUM_CLASSES, FRAMES, 32,
                                      class_names=["c1", "c0", "c2", "c3"])
    teacher = checkpoints.save_variables(str(env["root"] / "teacher_order"),
                                         checkpoints.load_variables(env["teacher"]), meta)
    flags = [f"--config.teacher.checkpoint={teacher}"]
  proc = _run(_cmd(env, workdir, "--config.num_train_steps=2", *flags))
  assert needle in _one_line_error(proc, errors.EXIT_BAD_INPUT)
  if request.node.callspec.id.startswith("LOCKED"):
    assert sorted(os.listdir(workdir)) == [workdir_lib.LOCK]  # the holder's lock only
  elif os.path.isfile(workdir):
    assert open(workdir).read() == "not a workdir"
  else:  # nothing written: no half-made workdir
    assert not os.path.exists(workdir), os.listdir(workdir)


def test_teacher_differences_pass_when_the_config_says_they_are_intended(env):
  cfg = minik_r50_112.get_config("tiny")
  meta = {"resolution": 64, "class_names": ["c1", "c0", "c2", "c3"]}
  names = ["c0", "c1", "c2", "c3"]
  with pytest.raises(errors.ConfigError, match="trained at 64 px"):
    config_checks.check_teacher_data(cfg, meta, names, "T")
  cfg.teacher.allow_other_resolution = True
  with pytest.raises(errors.ConfigError, match="another order"):
    config_checks.check_teacher_data(cfg, meta, names, "T")
  cfg.teacher.allow_other_classes = True
  config_checks.check_teacher_data(cfg, meta, names, "T")
  # Converted weights without a recorded resolution or class list: nothing to compare.
  config_checks.check_teacher_data(minik_r50_112.get_config("tiny"), {}, names, "T")


def test_stale_and_live_locks(tmp_path, capsys):
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  fake = {"pid": dead.pid, "host": socket.gethostname(), "started": "x"}
  with open(tmp_path / workdir_lib.LOCK, "w") as f:
    json.dump(fake, f)
  with workdir_lib.WorkdirLock(str(tmp_path)):  # a dead holder's lock is taken over
    assert json.load(open(tmp_path / workdir_lib.LOCK))["pid"] == os.getpid()
  assert "stale lock" in capsys.readouterr().err
  assert not os.path.exists(tmp_path / workdir_lib.LOCK)  # released
  other_host = {"pid": 1, "host": "elsewhere", "started": "x"}  # fresh heartbeat: in use
  with open(tmp_path / workdir_lib.LOCK, "w") as f:
    json.dump(other_host, f)
  with pytest.raises(errors.ConfigError, match="in use by pid 1 on elsewhere"):
    workdir_lib.WorkdirLock(str(tmp_path)).acquire()
  with workdir_lib.WorkdirLock(str(tmp_path), stale_after_s=-1):  # an old heartbeat is stale
    pass


def test_resume_with_other_model_or_batch_settings_names_the_keys(env, trained):
  workdir = str(env["root"] / "changed")
  shutil.copytree(trained[0], workdir)
  proc = _run(_cmd(env, workdir, "--config.mode=teacher", "--config.num_train_steps=6",
                   "--config.model.width=16", "--config.batch_size=16"))
  line = _one_line_error(proc, errors.EXIT_BAD_INPUT)
  assert "model.width: 8 -> 16" in line and "batch_size: 8 -> 16" in line, line
  assert "--config.allow_config_change=True" in line
  assert sorted(os.listdir(os.path.join(workdir, workdir_lib.CHECKPOINTS))) == sorted(
      os.listdir(os.path.join(trained[0], workdir_lib.CHECKPOINTS)))  # nothing touched
  # The override is explicit.
  cfg = minik_r50_112.get_config("tiny")
  saved = config_checks.config_to_json(cfg)
  cfg.batch_size = 16
  with pytest.raises(errors.ConfigError, match="batch_size: 8 -> 16"):
    config_checks.check_resume(cfg, saved, "wd")
  cfg.allow_config_change = True
  config_checks.check_resume(cfg, saved, "wd")


# 9. The teacher block from the teacher's meta.json.
def _teacher_meta(**model):
  tcfg = minik_r152_224.get_config("tiny")
  for k, v in model.items():
    tcfg.model[k] = v
  return meta_lib.for_trained_model(tcfg, tcfg.model, NUM_CLASSES, FRAMES, 32)


def test_teacher_block_is_filled_from_meta_and_checked():
  cfg = minik_r50_112.get_config("tiny")
  assert cfg.teacher.name is None and cfg.teacher.width is None  # unset by default
  config_checks.fill_teacher(cfg, _teacher_meta(), "t")
  assert (cfg.teacher.name, cfg.teacher.width, cfg.teacher.stem) == ("resnet18", 8, "small")
  assert tuple(cfg.teacher.stage_sizes) == (1, 1, 1, 1) and cfg.teacher.tsm is False
  cfg = minik_r50_112.get_config("tiny")
  cfg.teacher.width = 16
  with pytest.raises(errors.ConfigError, match=r"config.teacher.width=16 but the teacher at t "
                                               r"was trained with width=8"):
    config_checks.fill_teacher(cfg, _teacher_meta(), "t")
  # A TSM teacher trained on 8 frames is not silently run as a plain one on 4.
  cfg = minik_r50_112.get_config("tiny")
  tsm_meta = _teacher_meta(tsm=True)
  tsm_meta["num_segments"] = 8
  with pytest.raises(errors.ConfigError, match="num_segments=8 .* config.data.num_frames=4"):
    config_checks.fill_teacher(cfg, tsm_meta, "t")
  cfg = minik_r50_112.get_config("tiny")
  cfg.teacher.tsm = False
  with pytest.raises(errors.ConfigError, match="config.teacher.tsm=False"):
    config_checks.fill_teacher(cfg, tsm_meta, "t")


@pytest.fixture(scope="module")
def reskd(env):
  """A 2-step ResKD run whose config leaves the teacher's architecture unset."""
  workdir = str(env["root"] / "reskd")
  proc = _run(_cmd(env, workdir, "--config.num_train_steps=2"))
  assert proc.returncode == 0, proc.stderr[-3000:]
  return workdir, proc


def test_reskd_takes_the_teacher_architecture_from_meta_json(reskd):
  workdir, _ = reskd
  saved = json.load(open(os.path.join(workdir, workdir_lib.CONFIG)))
  assert saved["teacher"]["name"] == "resnet18" and saved["teacher"]["width"] == 8
  results = json.load(open(os.path.join(workdir, workdir_lib.RESULTS)))
  assert results["run"] == "train" and results["mode"] == "reskd" and results["step"] == 2


# 11. --mode=eval prints its metrics; TensorBoard has no duplicate points after a resume.
def test_eval_prints_the_metrics_table_and_where_the_json_went(env, reskd):
  workdir, _ = reskd
  proc = _run(_cmd(env, workdir, "--mode=eval"))
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = os.path.join(workdir, workdir_lib.EVAL_RESULTS)
  assert f"wrote {out}" in proc.stdout
  evaluated = json.load(open(out))
  assert evaluated["run"] == "eval" and evaluated["mode"] == "reskd"
  for key in ("top1", "top5", "mean_class_accuracy"):
    assert f"{key:<20} {evaluated[key]:.4f}" in proc.stdout


def _tensorboard_steps(workdir, tag="train/loss"):
  steps = []
  for path in sorted(glob.glob(os.path.join(workdir, "events.out.tfevents.*"))):
    for event in tf.compat.v1.train.summary_iterator(path):
      steps += [event.step for v in event.summary.value if v.tag == tag]
  return steps


@pytest.mark.e2e
def test_hard_kill_then_resume_writes_each_step_once_and_takes_over_the_lock(env):
  """kill -9 mid-run, then the same command (a process too): it resumes, takes over the dead
  run's lock, writes each step once, and prints the progress lines and no INFO chatter."""
  workdir = str(env["root"] / "killed")
  cmd = _cmd(env, workdir, "--config.mode=teacher", "--config.num_train_steps=8",
             "--config.checkpoint_every_steps=2")
  child = popen(cmd, stderr=subprocess.DEVNULL)
  for line in child.stdout:
    if "[train] step 5/8" in line:
      child.send_signal(signal.SIGKILL)
      break
  child.wait(timeout=60)
  assert os.path.exists(os.path.join(workdir, workdir_lib.LOCK))  # left by the killed run
  proc = run_subprocess(cmd)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "taking over the stale lock" in proc.stderr
  assert "[train] step 1/8" not in proc.stdout  # it resumed
  steps = _tensorboard_steps(workdir)
  assert len(steps) == len(set(steps)), sorted(steps)
  assert 8 in steps
  # 12. Quiet by default: the progress lines, no INFO chatter of TensorFlow, absl or orbax
  # (a restore included), at most a few lines on stderr (here: the stale lock).
  assert "[train] step 8/8" in proc.stdout
  noise = [l for l in proc.stderr.splitlines() + proc.stdout.splitlines()
           if l[:1] == "I" and l[1:5].isdigit()]
  assert not noise, noise[:5]
  assert "absl::InitializeLog" not in proc.stderr
  assert len(proc.stderr.splitlines()) <= 3, proc.stderr


# 12. The unknown-key message.


def test_library_chatter_is_dropped_and_real_warnings_kept(caplog):
  """orbax's notes about _CHECKPOINT_METADATA and unfinished step directories it removes
  (normal operation) stay out of the terminal and train.log; other warnings pass."""
  import logging
  from reskd_jax import train_utils
  train_utils.drop_library_chatter()
  with caplog.at_level(logging.WARNING):
    logging.getLogger("absl").warning("Metadata file does not exist: ckpt/_CHECKPOINT_METADATA")
    logging.getLogger("absl").warning("Removing existing directory since it is not finalized: x")
    logging.getLogger("absl").warning("a real warning")
  assert [r.getMessage() for r in caplog.records] == ["a real warning"]


def test_train_log_keeps_prints_warnings_and_the_error(tmp_path, capsys):
  import logging
  from reskd_jax import runlog
  with pytest.raises(errors.ConfigError):
    with runlog.RunLog(str(tmp_path), argv=["main.py", "--workdir=W"]):
      print("[run] a start-up block")
      print("warning: ours", file=sys.stderr)
      logging.getLogger("orbax").warning("a library warning")
      logging.getLogger("orbax").info("library chatter")
      raise errors.ConfigError("config.x=1: bad")
  log = open(tmp_path / runlog.FILE).read().splitlines()
  assert log[0].startswith("=== ") and log[0].endswith("start on " + socket.gethostname()
                                                       + f" (pid {os.getpid()}): main.py "
                                                       "--workdir=W")
  assert log[1:5] == ["[run] a start-up block", "warning: ours",
                      "WARNING orbax: a library warning", "error: config.x=1: bad"]
  assert log[5].startswith("=== ") and log[5].endswith(" end") and len(log) == 6
  assert "[run] a start-up block" in capsys.readouterr().out  # the terminal still gets it


def test_unknown_config_key_is_one_clean_line(env):
  proc = _run(_cmd(env, str(env["root"] / "typo"), "--config.model.widht=8"))
  line = _one_line_error(proc, errors.EXIT_BAD_INPUT)
  assert line.startswith("error: unknown config key 'model.widht' (did you mean "
                         "'model.width'?)"), line


def test_config_file_that_fails_to_load_is_one_line(env):
  """An unknown `:variant` (or any error inside get_config) names the file and the error,
  without the config file's traceback and without being mistaken for an unknown key."""
  proc = _run(_cmd(env, str(env["root"] / "variant"),
                   config=f"{ROOT}/configs/minik_r50_112.py:nosuch"))
  line = _one_line_error(proc, errors.EXIT_BAD_INPUT)
  assert "configs/minik_r50_112.py:nosuch" in line, line
  assert "unknown config variant 'nosuch'" in line and "unknown config key" not in line, line
