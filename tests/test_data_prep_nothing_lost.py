"""data_prep loses nothing silently: BOMs, class lists, damaged shards, partial videos,
paths outside --source, hidden folders, unusable --out/--source, orphaned workers, and
shard counts that leave workers idle. Each test also checks that every valid video is
still converted."""

import csv
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from data_helpers import make_frames, put_frames, put_video, read_records
from data_prep import manifest as manifest_lib
from data_prep.cli import main as cli_main
from configs import default
from reskd_jax.data import pipeline, shard_check
from reskd_jax.errors import DataError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BOM = "\ufeff"


def videos(src, names, num=4):
  """Writes `<src>/<name>.mp4` for each name; returns the names."""
  for i, name in enumerate(names):
    put_video(str(src / f"{name}.mp4"), make_frames(i, num=num))
  return sorted(names)


def run_cli(capsys, fmt, *args):
  """(exit status, stdout, stderr) of `python -m data_prep fmt args...` run in-process."""
  capsys.readouterr()
  code = cli_main([fmt, "--workers=1", "--short-side=32", *map(str, args)])
  out, err = capsys.readouterr()
  return code, out, err


def converted(out, split="train"):
  manifest, got = read_records(out, split)
  return manifest, sorted(got), manifest["splits"][split]


# ----------------------------------------------------------------------------- 1
def test_byte_order_marks_are_ignored_in_every_text_input(tmp_path, capsys):
  src = tmp_path / "src"
  names = videos(src, ["a/v0", "b/v1", "a/v2"])
  classes = tmp_path / "classes.txt"
  classes.write_text(BOM + "a\nb\n", encoding="utf-8")
  listing = tmp_path / "list.txt"
  listing.write_text(BOM + "".join(f"{n}.mp4 {n[0]}\n" for n in names), encoding="utf-8")
  code, _, err = run_cli(capsys, "minik", f"--annotations={listing}", f"--classes={classes}",
                         f"--source={src}", f"--out={tmp_path / 'minik'}")
  assert code == 0, err
  manifest, got, entry = converted(tmp_path / "minik")
  assert manifest["classes"] == ["a", "b"] and got == sorted(names) and entry["skipped"] == []
  # a Kinetics CSV and an ActivityNet JSON with a BOM
  kin = tmp_path / "k"
  for i, label in enumerate(["a", "b"]):
    put_video(str(kin / f"yt{i}_{0:06d}_{10:06d}.mp4"), make_frames(i, num=4))
  csv_path = tmp_path / "train.csv"
  with open(csv_path, "w", newline="", encoding="utf-8-sig") as f:  # writes the BOM
    csv.writer(f).writerows([["label", "youtube_id", "time_start", "time_end", "split"],
                             ["a", "yt0", 0, 10, "train"], ["b", "yt1", 0, 10, "train"]])
  assert csv_path.read_bytes().startswith(BOM.encode())
  code, _, err = run_cli(capsys, "kinetics", f"--annotations={csv_path}", f"--source={kin}",
                         f"--out={tmp_path / 'kin'}")
  assert code == 0, err
  manifest, got, _ = converted(tmp_path / "kin")
  assert manifest["classes"] == ["a", "b"] and got == ["yt0_000000_000010", "yt1_000000_000010"]
  anet = tmp_path / "anet.json"
  anet.write_text(BOM + json.dumps({"database": {
      "v0": {"subset": "training", "annotations": [{"label": "a"}]}}}), encoding="utf-8")
  put_video(str(tmp_path / "an" / "v_v0.mp4"), make_frames(0, num=4))
  code, _, err = run_cli(capsys, "activitynet", f"--annotations={anet}",
                         f"--source={tmp_path / 'an'}", f"--out={tmp_path / 'anet'}")
  assert code == 0, err
  assert converted(tmp_path / "anet")[1] == ["v0"]


# ----------------------------------------------------------------------------- 2
def test_later_split_with_unknown_labels_stops_before_any_work(tmp_path, capsys):
  src, out = tmp_path / "src", tmp_path / "out"
  val = videos(src, ["val/a0", "val/b0"])
  train = videos(src, ["train/a1", "train/b1", "train/c1", "train/c2"])
  (tmp_path / "val.txt").write_text("".join(f"{n}.mp4 {n[4]}\n" for n in val))
  (tmp_path / "train.txt").write_text("".join(f"{n}.mp4 {n[6]}\n" for n in train))
  common = [f"--source={src}", f"--out={out}"]
  assert run_cli(capsys, "minik", f"--annotations={tmp_path / 'val.txt'}", "--split=val",
                 *common)[0] == 0
  before = (out / "manifest.json").read_bytes()
  code, _, err = run_cli(capsys, "minik", f"--annotations={tmp_path / 'train.txt'}", *common)
  assert code == 2
  assert err.count("\n") == 1 and err.startswith("error: split 'train' has labels"), err
  assert "'c' (2 videos)" in err and "--classes" in err and "fresh --out" in err
  assert not (out / "train").exists()  # nothing converted
  assert (out / "manifest.json").read_bytes() == before
  # the fix the message gives: every video of train converted, none skipped
  classes = tmp_path / "classes.txt"
  classes.write_text("a\nb\nc\n")
  code, _, err = run_cli(capsys, "minik", f"--annotations={tmp_path / 'train.txt'}",
                         f"--classes={classes}", f"--source={src}", f"--out={tmp_path / 'new'}")
  assert code == 0, err
  _, got, entry = converted(tmp_path / "new")
  assert got == train and entry["skipped"] == []


def test_concurrent_conversions_check_classes_before_converting(tmp_path, capsys):
  src, out = tmp_path / "src", tmp_path / "out"
  good = videos(src, ["a0", "b0"])
  os.mkfifo(src / "slow.mp4")  # holds the first conversion until the test writes to it
  (tmp_path / "two.txt").write_text("a0.mp4 a\nb0.mp4 b\nslow.mp4 a\n")
  (tmp_path / "three.txt").write_text("a0.mp4 a\nb0.mp4 b\n")
  (tmp_path / "abc.txt").write_text("a\nb\nc\n")
  first = subprocess.Popen(
      [sys.executable, "-m", "data_prep", "minik", f"--annotations={tmp_path / 'two.txt'}",
       f"--source={src}", f"--out={out}", "--workers=1", "--short-side=32"],
      cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    claims = out / manifest_lib.CLAIMS
    deadline = time.time() + 60
    while not (claims.exists() and str(first.pid) in claims.read_text()):
      assert time.time() < deadline and first.poll() is None, "first conversion did not start"
      time.sleep(0.1)
    code, _, err = run_cli(capsys, "minik", f"--annotations={tmp_path / 'three.txt'}",
                           f"--classes={tmp_path / 'abc.txt'}", "--split=val",
                           f"--source={src}", f"--out={out}")
    assert code == 2
    assert err.startswith("error: another conversion into") and err.count("\n") == 1, err
    assert "'train'" in err and "another class list" in err
    assert not (out / "val").exists()  # refused before converting
    with open(src / "slow.mp4", "wb") as fifo:  # let the first one go on (not a video)
      fifo.write(b"not a video")
    _, stderr = first.communicate(timeout=120)
  finally:
    if first.poll() is None:
      first.kill()
  assert first.returncode == 0, stderr
  manifest, got, entry = converted(out)
  assert got == good and [s["item"] for s in entry["skipped"]] == ["slow"]
  assert not (out / manifest_lib.CLAIMS).exists()


# ----------------------------------------------------------------------------- 3
def _record_ends(path):
  """Byte offsets where the TFRecord file's records end."""
  data, ends, pos = path.read_bytes(), [], 0
  while pos < len(data):
    pos += 8 + 4 + int(np.frombuffer(data[pos:pos + 8], "<u8")[0]) + 4
    ends.append(pos)
  return ends


def test_damaged_shards_are_detected_and_rewritten_by_a_rerun(tmp_path, capsys):
  src, out = tmp_path / "src", tmp_path / "out"
  good = videos(src, [f"v{i}" for i in range(6)])
  (tmp_path / "list.txt").write_text("".join(f"{n}.mp4 {i % 2}\n" for i, n in enumerate(good)))
  args = ["minik", f"--annotations={tmp_path / 'list.txt'}", f"--source={src}", f"--out={out}",
          "--num-shards=3"]
  assert run_cli(capsys, *args)[0] == 0
  shards = sorted((out / "train").glob("*.tfrecord"))
  original = {p.name: p.read_bytes() for p in shards}
  cut_inside, cut_at_boundary, flipped = shards
  cut_inside.write_bytes(original[cut_inside.name][:-7])  # a truncated last record
  cut_at_boundary.write_bytes(original[cut_at_boundary.name][:_record_ends(cut_at_boundary)[0]])
  data = bytearray(original[flipped.name])
  data[len(data) // 2] ^= 0x10  # same size, one bit changed
  flipped.write_bytes(bytes(data))
  code, log, err = run_cli(capsys, *args)
  assert code == 0, err
  assert log.count("found damaged:") == 3, log
  assert f"{cut_at_boundary.name}: 1 videos" not in log
  assert {p.name: p.read_bytes() for p in shards} == original  # rewritten, byte for byte
  _, got, entry = converted(out)
  assert got == good and entry["num_videos"] == 6
  # a rerun of intact shards rewrites nothing
  code, log, _ = run_cli(capsys, *args)
  assert code == 0 and log.count("already complete, verified") == 3
  # the shards' .frames files (the "frames" layout): one bit changed, one missing
  frames = sorted((out / "train").glob("*.frames"))
  assert len(frames) == 3
  frames_original = {p.name: p.read_bytes() for p in frames}
  data = bytearray(frames_original[frames[0].name])
  data[len(data) // 3] ^= 0x01
  frames[0].write_bytes(bytes(data))
  frames[2].unlink()
  code, log, err = run_cli(capsys, *args)
  assert code == 0, err
  assert log.count("found damaged:") == 2 and "is missing" in log, log
  assert {p.name: p.read_bytes() for p in frames} == frames_original


def test_reader_names_the_damaged_shard(tmp_path, capsys):
  src, out = tmp_path / "src", tmp_path / "out"
  good = videos(src, ["v0", "v1", "v2", "v3"])
  (tmp_path / "list.txt").write_text("".join(f"{n}.mp4 0\n" for n in good))
  assert run_cli(capsys, "minik", f"--annotations={tmp_path / 'list.txt'}", f"--source={src}",
                 f"--out={out}", "--num-shards=2")[0] == 0
  manifest = json.loads((out / "manifest.json").read_text())
  files = [str(out / "train" / s) for s in manifest["splits"]["train"]["shards"]]
  shard_check.check_sizes(files, manifest["splits"]["train"]["shard_bytes"])  # intact: passes
  cut = out / "train" / manifest["splits"]["train"]["shards"][1]
  cut.write_bytes(cut.read_bytes()[:_record_ends(cut)[0]])  # one whole record lost
  with pytest.raises(DataError, match=f"damaged shard {cut}.*rerun the data_prep command"):
    shard_check.check_sizes(files, manifest["splits"]["train"]["shard_bytes"])
  cfg = default.get_data_config()
  cfg.update(data_dir=str(out), num_frames=2, short_side=32, crop_size=16)
  for train in (True, False):  # the input pipeline checks before reading
    with pytest.raises(DataError, match=f"damaged shard {cut} .*data_prep wrote"):
      pipeline.create_dataset(cfg, "train", train=train, batch_size=2, num_classes=1,
                                    process_index=0, process_count=1)
  # while reading: tf.data's DataLossError becomes one line naming the shard
  cut.write_bytes(cut.read_bytes()[:-5])
  ds = tf.data.TFRecordDataset(files)
  with pytest.raises(DataError) as e:
    list(shard_check.name_damaged_shards(ds.as_numpy_iterator(), files))
  message = str(e.value)
  assert "\n" not in message and str(cut) in message and "truncated record" in message
  assert files[0] not in message and "rerun the data_prep command" in message


# ----------------------------------------------------------------------------- 4
def test_partial_videos_are_skipped_or_kept_as_partial(tmp_path, capsys):
  src = tmp_path / "src"
  good = videos(src, ["v/good0", "v/good1"])
  put_video(str(tmp_path / "full.webm"), make_frames(5, num=24))
  data = (tmp_path / "full.webm").read_bytes()
  (src / "v" / "cut.webm").write_bytes(data[:int(len(data) * 0.3)])  # decodes a few frames
  put_frames(str(src / "v" / "gap"), make_frames(6, num=5))
  os.remove(src / "v" / "gap" / "img_00003.jpg")
  (tmp_path / "list.txt").write_text(
      "".join(f"{n}.mp4 0\n" for n in good) + "v/cut.webm 1\nv/gap 1\n")
  args = ["minik", f"--annotations={tmp_path / 'list.txt'}", f"--source={src}"]
  code, _, err = run_cli(capsys, *args, f"--out={tmp_path / 'out'}")
  assert code == 0
  _, got, entry = converted(tmp_path / "out")
  assert got == good
  reasons = {s["item"]: s["reason"] for s in entry["skipped"]}
  assert set(reasons) == {"v/cut", "v/gap"}
  # a webm declares its length as a duration (3 s: 24 frames at 8 fps), not a frame count
  assert "partial video" in reasons["v/cut"] and "of the 3.00 s its container" in reasons["v/cut"]
  assert "lacks 1 frame(s): number(s) 3 of 1..5" in reasons["v/gap"]
  assert all("--allow-partial" in r for r in reasons.values())
  assert "skipped v/cut: partial video" in err
  # --allow-partial keeps them, listed as partial
  code, _, err = run_cli(capsys, *args, f"--out={tmp_path / 'kept'}", "--allow-partial")
  assert code == 0
  _, got, entry = converted(tmp_path / "kept")
  assert got == sorted(good + ["v/cut", "v/gap"]) and entry["skipped"] == []
  assert sorted(p["item"] for p in entry["partial"]) == ["v/cut", "v/gap"]
  assert "partial v/gap (kept: --allow-partial)" in err
  _, records = read_records(tmp_path / "kept", "train")
  assert records["v/gap"][1].shape[0] == 4 and 0 < records["v/cut"][1].shape[0] < 24
  # the missing frame restored: a rerun converts the video again, now whole
  put_frames(str(src / "v" / "gap"), make_frames(6, num=5))
  assert run_cli(capsys, *args, f"--out={tmp_path / 'kept'}", "--allow-partial")[0] == 0
  _, records = read_records(tmp_path / "kept", "train")
  assert records["v/gap"][1].shape[0] == 5
  assert [p["item"] for p in converted(tmp_path / "kept")[2]["partial"]] == ["v/cut"]


def test_rawframes_num_frames_must_match_the_folder(tmp_path, capsys):
  src = tmp_path / "raw"
  for i in range(3):
    put_frames(str(src / f"f{i}"), make_frames(i, num=4))
  (tmp_path / "list.txt").write_text("f0 4 0\nf1 4 1\nf2 6 0\n")  # f2 holds 4 frames, not 6
  code, _, err = run_cli(capsys, "rawframes", f"--annotations={tmp_path / 'list.txt'}",
                         f"--source={src}", f"--out={tmp_path / 'out'}")
  assert code == 0
  _, got, entry = converted(tmp_path / "out")
  assert got == ["f0", "f1"]
  assert [s["item"] for s in entry["skipped"]] == ["f2"]
  assert "holds 4 frames, the annotations say 6" in entry["skipped"][0]["reason"]
  assert "skipped f2: frame folder" in err


# ----------------------------------------------------------------------------- 5
def test_paths_must_stay_inside_the_source(tmp_path, capsys):
  src = tmp_path / "data" / "src"
  good = videos(src, ["v/good0", "v/good1"])
  put_video(str(tmp_path / "data" / "outside.mp4"), make_frames(3, num=4))
  put_video(str(src / "v" / "abs.mp4"), make_frames(4, num=4))
  lines = [f"{n}.mp4 0" for n in good] + [
      "../outside.mp4 0",  # exists, but outside the source
      "../../../../../../../../etc/passwd 0",
      f"{tmp_path / 'data' / 'outside.mp4'} 1",  # absolute, outside
      f"{src / 'v' / 'abs.mp4'} 1",  # absolute, inside: id relative to the source
      "v/./sub/../good0.mp4 1",  # the same video as v/good0 once normalised
  ]
  (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")
  code, _, err = run_cli(capsys, "minik", f"--annotations={tmp_path / 'list.txt'}",
                         f"--source={src}", f"--out={tmp_path / 'out'}")
  assert code == 0
  _, got, entry = converted(tmp_path / "out")
  assert got == sorted(good + ["v/abs"])
  reasons = {s["item"]: s["reason"] for s in entry["skipped"]}
  outside = ["../outside.mp4", "../../../../../../../../etc/passwd",
             str(tmp_path / "data" / "outside.mp4")]
  for path in outside:
    assert reasons[path] == f"path {path!r} leads outside --source {str(src)!r}"
    assert f"skipped {path}: path" in err
  assert "duplicate video id" in reasons["v/good0"]


# ----------------------------------------------------------------------------- 6
def test_folder_layout_ignores_hidden_entries(tmp_path, capsys):
  root = tmp_path / "root"
  good = videos(root, ["jump/c0", "jump/c1", "run/c2"])
  put_video(str(root / ".ipynb_checkpoints" / "c3.mp4"), make_frames(3, num=4))
  (root / ".git" / "objects").mkdir(parents=True)
  put_frames(str(root / "jump" / ".ipynb_checkpoints"), make_frames(4, num=4))
  put_video(str(root / "run" / ".c4.mp4"), make_frames(5, num=4))
  code, _, err = run_cli(capsys, "folder", f"--source={root}", f"--out={tmp_path / 'out'}")
  assert code == 0, err
  manifest, got, entry = converted(tmp_path / "out")
  assert manifest["classes"] == ["jump", "run"]
  assert got == good and entry["skipped"] == []


# ----------------------------------------------------------------------------- 7
def test_unusable_out_or_missing_source_fail_in_one_line(tmp_path, capsys):
  src = tmp_path / "src"
  good = videos(src, ["v0", "v1"])
  (tmp_path / "list.txt").write_text("v0.mp4 0\nv1.mp4 1\n")
  ann = f"--annotations={tmp_path / 'list.txt'}"
  a_file = tmp_path / "a_file"
  a_file.write_text("keep me")
  read_only = tmp_path / "read_only"
  read_only.mkdir()
  read_only.chmod(0o555)
  unwritable, unwritable_words = read_only / "out", "is not writable"
  if os.access(read_only, os.W_OK):  # root: permissions do not bind, a kernel file system does
    unwritable, unwritable_words = pathlib.Path("/sys/reskd-data-prep-test-out"), "cannot write"
  cases = [(a_file, "is a file, not a directory"), (a_file / "sub", "is a file, not a directory"),
           (unwritable, unwritable_words)]
  for out, words in cases:
    code, _, err = run_cli(capsys, "minik", ann, f"--source={src}", f"--out={out}")
    assert code == 2, (out, err)
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert f"--out {str(out)!r}" in err and words in err, err
  assert a_file.read_text() == "keep me" and not unwritable.exists()
  assert os.listdir(read_only) == []
  read_only.chmod(0o755)
  # a misspelt --source: one line, no output directory, no 0-byte shard
  code, out_text, err = run_cli(capsys, "minik", ann, f"--source={tmp_path / 'scr'}",
                                f"--out={tmp_path / 'out'}")
  assert code == 2
  assert err == f"error: --source {str(tmp_path / 'scr')!r} does not exist\n"
  assert "missing file" not in out_text + err and not (tmp_path / "out").exists()
  # the right command converts every video
  assert run_cli(capsys, "minik", ann, f"--source={src}", f"--out={tmp_path / 'out'}")[0] == 0
  assert converted(tmp_path / "out")[1] == good


# ----------------------------------------------------------------------------- 8
def _children(pid):
  kids = []
  for entry in os.listdir("/proc"):
    if entry.isdigit():
      try:
        with open(f"/proc/{entry}/stat") as f:
          fields = f.read().rsplit(")", 1)[1].split()
      except OSError:
        continue
      if int(fields[1]) == pid:
        kids.append(int(entry))
  return kids


def _running(pid):
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
  except OSError:
    return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_workers_exit_when_the_parent_is_killed(tmp_path, capsys):
  src, out = tmp_path / "src", tmp_path / "out"
  good = videos(src, [f"v{i}" for i in range(4)])
  os.mkfifo(src / "stuck.mp4")  # a decoder blocked for good (as on a hung network mount)
  (tmp_path / "list.txt").write_text("".join(f"{n}.mp4 0\n" for n in good) + "stuck.mp4 0\n")
  args = ["minik", f"--annotations={tmp_path / 'list.txt'}", f"--source={src}", f"--out={out}",
          "--short-side=32", "--num-shards=2", "--workers=2"]
  parent = subprocess.Popen([sys.executable, "-m", "data_prep", *args], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  workers = []
  try:
    deadline = time.time() + 90
    while len(workers) < 2 or not list((out / "train").glob("*.tfrecord")):
      assert time.time() < deadline and parent.poll() is None, "the conversion did not start"
      workers = _children(parent.pid)
      time.sleep(0.2)
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.time() + 10
    while any(map(_running, workers)) and time.time() < deadline:
      time.sleep(0.1)
    assert not any(map(_running, workers)), "worker processes outlived their parent"
  finally:
    for pid in [parent.pid] + workers:
      if _running(pid):
        os.kill(pid, signal.SIGKILL)
  os.remove(src / "stuck.mp4")
  capsys.readouterr()
  assert cli_main(args[:-1] + ["--workers=1"]) == 0  # the rerun resumes: every video converted
  _, got, entry = converted(out)
  assert got == good and [s["item"] for s in entry["skipped"]] == ["stuck"]
  assert "missing file" in entry["skipped"][0]["reason"]


# ----------------------------------------------------------------------------- 9
def test_default_shard_count_gives_every_worker_a_shard(tmp_path, capsys):
  src, out = tmp_path / "src", tmp_path / "out"
  good = videos(src, [f"v{i}" for i in range(3)])
  (tmp_path / "list.txt").write_text("".join(f"{n}.mp4 0\n" for n in good))
  args = ["minik", f"--annotations={tmp_path / 'list.txt'}", f"--source={src}", f"--out={out}",
          "--short-side=32"]
  capsys.readouterr()
  assert cli_main(args + ["--workers=2"]) == 0
  assert "3 videos -> 2 shards" in capsys.readouterr().out
  _, got, entry = converted(out)
  assert got == good and len(entry["shards"]) == 2 and min(entry["shard_sizes"]) >= 1
  # a rerun with another worker count keeps the shards (and resumes, were it interrupted)
  assert cli_main(args + ["--workers=1"]) == 0
  assert capsys.readouterr().out.count("already complete, verified") == 2
  readme = open(os.path.join(REPO, "data_prep", "README.md")).read()
  assert "## Storage cost" in readme and "## Shards and workers" in readme
