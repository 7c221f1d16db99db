"""data_prep on real-world inputs that used to lose or invent data silently (issue 21):
variable frame rate and duration-less videos, 16-bit images and 10-bit video, display
rotation, sources changed after conversion, list-file rules, odd frame folders, disk
full, Ctrl-C, two converters on one split, symbolic link loops, empty class folders,
leaks between splits, and the trainer's start-up check of every split it reads.

Every test makes real files (PyAV encodes, PIL/JPEG/PNG writes) and checks what ends up
in the records, the manifest, the exit status and the message."""

import fractions
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import av
import numpy as np
import pytest
from PIL import Image

from data_helpers import make_frames, put_frames, put_video, read_records
from helpers import can_mount_tmpfs
from data_prep.cli import main as cli_main
from reskd_jax.data import shard_check
from reskd_jax.errors import DataError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_cli(capsys, fmt, *args, short_side=0):
  """(exit status, stdout, stderr) of `python -m data_prep fmt args...` run in-process."""
  capsys.readouterr()
  code = cli_main([fmt, "--workers=1", f"--short-side={short_side}", *map(str, args)])
  out, err = capsys.readouterr()
  return code, out, err


def minik(capsys, tmp_path, lines, src, out="out", *extra, split="train"):
  ann = tmp_path / f"{split}_list.txt"
  ann.write_text("\n".join(lines) + "\n")
  return run_cli(capsys, "minik", f"--annotations={ann}", f"--source={src}",
                 f"--out={tmp_path / out}", f"--split={split}", *extra)


def entry_of(out, split="train"):
  return json.loads((out / "manifest.json").read_text())["splits"][split]


def vfr_video(path, n=30, live=False):
  """A real variable frame rate video (mkv: H.264, webm: VP9), nominal rate 30 fps, frame
  gaps of 20 ms and 100 ms (so duration x nominal rate is 42, not its 30 frames). `live`:
  written as a live stream (no duration in the file). Returns the frames."""
  codec = "libvpx-vp9" if path.endswith(".webm") else "libx264"
  frames = make_frames(3, num=n, h=48, w=64)
  with av.open(path, "w", options={"live": "1"} if live else {}) as c:
    s = c.add_stream(codec, rate=30)
    s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
    s.time_base = fractions.Fraction(1, 1000)
    t = 0
    for i, f in enumerate(frames):
      frame = av.VideoFrame.from_ndarray(f, format="rgb24")
      frame.pts, frame.time_base = t, fractions.Fraction(1, 1000)
      t += 100 if i % 3 == 0 else 20
      for p in s.encode(frame):
        c.mux(p)
    for p in s.encode():
      c.mux(p)
  return frames


# ----------------------------------------------------------------------------- 1
def test_variable_frame_rate_and_duration_less_videos(tmp_path, capsys):
  src = tmp_path / "src"
  src.mkdir()
  want = {"a": vfr_video(str(src / "a.mkv")), "b": vfr_video(str(src / "b.webm"))}
  vfr_video(str(src / "live.webm"), live=True)
  for name in ("a.mkv", "live.webm"):  # cut to 60%: a download that stopped
    data = (src / name).read_bytes()
    (src / f"cut_{name}").write_bytes(data[:len(data) * 6 // 10])
  lines = ["a.mkv 0", "b.webm 0", "live.webm 0", "cut_a.mkv 0", "cut_live.webm 0"]
  code, _, err = minik(capsys, tmp_path, lines, src)
  assert code == 0
  manifest, got = read_records(tmp_path / "out", "train")
  # complete VFR videos keep all 30 frames (they were skipped as "cut short": 30 < 1.4 s x 30)
  assert sorted(got) == ["a", "b"]
  for name, frames in want.items():
    assert got[name][1].shape == frames.shape
    assert np.abs(got[name][1].astype(int) - frames).mean() < 12
  reasons = {s["item"]: s["reason"] for s in manifest["splits"]["train"]["skipped"]}
  assert set(reasons) == {"cut_a", "live", "cut_live"}
  assert "decoding stopped at" in reasons["cut_a"] and "of the 1.40 s" in reasons["cut_a"]
  for vid in ("live", "cut_live"):  # no duration: completeness cannot be known, and it says so
    assert "declares neither a frame count nor a duration" in reasons[vid]
    assert "--allow-partial" in reasons[vid]
  assert "skipped cut_a: partial video" in err
  # --allow-partial keeps them, each listed as partial with that reason
  code, _, _ = minik(capsys, tmp_path, lines, src, "kept", "--allow-partial")
  assert code == 0
  manifest, got = read_records(tmp_path / "kept", "train")
  partial = {p["item"]: p["reason"] for p in manifest["splits"]["train"]["partial"]}
  assert set(partial) == {"cut_a", "live", "cut_live"}
  assert got["live"][1].shape[0] == 30 and 0 < got["cut_live"][1].shape[0] < 30


# ----------------------------------------------------------------------------- 2
def test_16_bit_png_frames_are_scaled_and_10_bit_video_still_works(tmp_path, capsys):
  src = tmp_path / "src"
  folder = src / "gray16"
  folder.mkdir(parents=True)
  wide = [(np.arange(48 * 64).reshape(48, 64) * 20 + 1000 * t).astype(np.uint16)
          for t in range(3)]
  for t, a in enumerate(wide):
    Image.fromarray(a).save(folder / f"img_{t + 1:05d}.png")
    with Image.open(folder / f"img_{t + 1:05d}.png") as img:
      assert img.mode == "I;16"  # a real 16-bit grayscale PNG
  # a 10-bit H.264 video (yuv420p10le)
  with av.open(str(src / "ten.mkv"), "w") as c:
    s = c.add_stream("libx264", rate=8)
    s.width, s.height, s.pix_fmt = 64, 48, "yuv420p10le"
    s.options = {"qp": "0"}
    for level in (40, 120, 200):
      for p in s.encode(av.VideoFrame.from_ndarray(np.full((48, 64, 3), level, np.uint8),
                                                   format="rgb24")):
        c.mux(p)
    for p in s.encode():
      c.mux(p)
  with av.open(str(src / "ten.mkv")) as c:
    assert c.streams.video[0].format.name == "yuv420p10le"
  code, _, _ = minik(capsys, tmp_path, ["gray16 0", "ten.mkv 0"], src,
                     "out", "--filename-tmpl=img_{:05d}.png", "--jpeg-quality=100")
  assert code == 0
  _, got = read_records(tmp_path / "out", "train")
  frames = got["gray16"][1]
  assert frames.shape == (3, 48, 64, 3) and frames.max() < 255  # not all white any more
  for t, a in enumerate(wide):
    expected = np.rint(a / 257.0)
    assert np.abs(frames[t, ..., 0].astype(float) - expected).mean() < 2.5
  ten = got["ten"][1]
  assert ten.shape == (3, 48, 64, 3)
  for t, level in enumerate((40, 120, 200)):
    assert abs(ten[t].mean() - level) < 4


# ----------------------------------------------------------------------------- 3
def rotated_video(path, degrees, hflip=False):
  """A real mp4 whose stream carries display matrix side data (a phone held upright);
  its stored 64x48 frames have a red block at the top-left corner."""
  frame = np.full((48, 64, 3), 90, np.uint8)
  frame[:12, :12] = [255, 0, 0]
  with av.open(path, "w") as c:
    s = c.add_stream("libx264", rate=8)
    s.width, s.height, s.pix_fmt = 64, 48, "yuv444p"
    s.options = {"qp": "0"}
    s.set_display_rotation(degrees, hflip=hflip)
    for _ in range(4):
      for p in s.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
        c.mux(p)
    for p in s.encode():
      c.mux(p)


def test_display_rotation_is_applied_as_players_do(tmp_path, capsys):
  src = tmp_path / "src"
  src.mkdir()
  rotated_video(str(src / "ccw.mp4"), 90)    # shown turned 90 degrees counter-clockwise
  rotated_video(str(src / "cw.mp4"), -90)    # an upright iPhone video: 90 clockwise
  rotated_video(str(src / "mirror.mp4"), 0, hflip=True)  # a front camera's mirror image
  rotated_video(str(src / "ccw_mirror.mp4"), 90, hflip=True)  # turned, then mirrored
  with av.open(str(src / "ccw.mp4")) as c:
    assert next(c.decode(video=0)).rotation == 90  # the side data is really in the file
  code, _, _ = minik(capsys, tmp_path, ["ccw.mp4 0", "cw.mp4 0", "mirror.mp4 0",
                                        "ccw_mirror.mp4 0"], src)
  assert code == 0
  _, got = read_records(tmp_path / "out", "train")
  red = lambda f, y, x: f[y, x, 0] > 200 and f[y, x, 1] < 60  # noqa: E731
  ccw, cw = got["ccw"][1], got["cw"][1]
  assert ccw.shape == cw.shape == (4, 64, 48, 3)  # portrait, as a player shows it
  assert red(ccw[0], 58, 4) and not red(ccw[0], 4, 4)   # top-left went to bottom-left
  assert red(cw[0], 4, 42) and not red(cw[0], 4, 4)     # top-left went to top-right
  mirror, ccw_mirror = got["mirror"][1], got["ccw_mirror"][1]
  assert mirror.shape == (4, 48, 64, 3) and red(mirror[0], 4, 58) and not red(mirror[0], 4, 4)
  assert ccw_mirror.shape == (4, 64, 48, 3) and red(ccw_mirror[0], 58, 42)  # bottom-right
  # --no-autorotate keeps the stored pixels
  code, _, _ = minik(capsys, tmp_path, ["ccw.mp4 0"], src, "raw", "--no-autorotate")
  assert code == 0
  _, got = read_records(tmp_path / "raw", "train")
  assert got["ccw"][1].shape == (4, 48, 64, 3) and red(got["ccw"][1][0], 4, 4)


# ----------------------------------------------------------------------------- 4
def _files(split_dir):
  return {n: (split_dir / n).read_bytes() for n in sorted(os.listdir(split_dir))}


def test_changed_sources_are_converted_again_and_said_so(tmp_path, capsys):
  src = tmp_path / "src"
  for i in range(4):
    put_video(str(src / f"v{i}.mp4"), make_frames(i, num=4))
  put_frames(str(src / "f0"), make_frames(9, num=3))
  lines = [f"v{i}.mp4 0" for i in range(4)] + ["f0 0"]
  args = (capsys, tmp_path, lines, src, "out", "--num-shards=2")
  assert minik(*args)[0] == 0
  first = _files(tmp_path / "out" / "train")
  # an unchanged rerun: verified, byte-identical
  code, out, _ = minik(*args)
  assert code == 0 and out.count("already complete, verified") == 2
  assert _files(tmp_path / "out" / "train") == first
  # a video replaced by another one (other content, same name), a frame replaced in place
  new = put_video(str(src / "v2.mp4"), make_frames(7, num=6))
  Image.fromarray(make_frames(8, num=1)[0]).save(src / "f0" / "img_00002.jpg", quality=95)
  code, out, _ = minik(*args)
  assert code == 0
  assert "changed since it was written: " in out
  changed = [l for l in out.splitlines() if "changed since" in l]
  assert any("v2" in l for l in changed) and any("f0" in l for l in changed)
  _, got = read_records(tmp_path / "out", "train")
  assert got["v2"][1].shape[0] == 6  # the new video's frames, not the old ones
  assert np.abs(got["v2"][1].astype(int) - new).mean() < 6
  assert np.abs(got["f0"][1][1].astype(int) - make_frames(8, num=1)[0]).mean() < 6


# ----------------------------------------------------------------------------- 5
def test_list_file_comment_and_number_label_rules(tmp_path, capsys):
  src = tmp_path / "src"
  put_video(str(src / "#1 take.mp4"), make_frames(1, num=4))  # a video whose name begins with #
  for name in ("a0", "b0", "n0"):
    put_video(str(src / f"{name}.mp4"), make_frames(2, num=4))
  classes = tmp_path / "classes.txt"
  classes.write_text("apple\nbanana\n")
  lines = ["# my list, exported 2024", "#1 take.mp4 apple", "a0.mp4 apple", "b0.mp4 banana",
           "n0.mp4 1", "#b0.mp4 banana"]
  code, _, err = minik(capsys, tmp_path, lines, src, "out", f"--classes={classes}")
  assert code == 0
  manifest, got = read_records(tmp_path / "out", "train")
  assert sorted(got) == ["#1 take", "a0", "b0"]  # the '#' video is converted
  assert got["#1 take"][0] == (0,)
  # the comment lines are reported with their numbers
  assert "2 line(s) starting with '#' read as comments (line 1, 6)" in err
  # a number among class names is not guessed to be an index
  reasons = {s["item"]: s["reason"] for s in manifest["splits"]["train"]["skipped"]}
  assert set(reasons) == {"n0"}
  assert "label '1' is a number, but the other labels" in reasons["n0"]
  assert "skipped n0: label '1' is a number" in err
  # a list of indices only still means indices
  code, _, _ = minik(capsys, tmp_path, ["a0.mp4 0", "n0.mp4 1"], src, "idx", f"--classes={classes}")
  assert code == 0
  _, got = read_records(tmp_path / "idx", "train")
  assert got["a0"][0] == (0,) and got["n0"][0] == (1,)


# ----------------------------------------------------------------------------- 6
def test_frame_folders_with_duplicate_numbers_or_mixed_sizes(tmp_path, capsys):
  src = tmp_path / "src"
  put_frames(str(src / "good"), make_frames(1, num=3))
  put_frames(str(src / "dup"), make_frames(2, num=3))
  Image.fromarray(make_frames(5, num=1)[0]).save(src / "dup" / "img_1.jpg")  # also frame 1
  mixed = src / "mixed"
  put_frames(str(mixed), make_frames(3, num=3))
  Image.fromarray(make_frames(4, num=1, h=48, w=64)[0]).save(mixed / "img_00002.jpg")
  lines = ["good 3 0", "dup 3 0", "mixed 3 0"]
  (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")
  args = ("rawframes", f"--annotations={tmp_path / 'list.txt'}", f"--source={src}")
  code, _, err = run_cli(capsys, *args, f"--out={tmp_path / 'out'}")
  assert code == 0
  manifest, got = read_records(tmp_path / "out", "train")
  assert sorted(got) == ["good"]
  reasons = {s["item"]: s["reason"] for s in manifest["splits"]["train"]["skipped"]}
  assert "frame number(s) given by two or more files (1: img_00001.jpg, img_1.jpg)" in reasons["dup"]
  assert "mixes frame sizes: img_00001.jpg is 40x32, img_00002.jpg is 64x48" in reasons["mixed"]
  assert "--resize-mixed-frames" in reasons["mixed"] and "skipped mixed:" in err
  # told otherwise: mixed sizes are resized to the first frame's size
  code, _, _ = run_cli(capsys, *args, f"--out={tmp_path / 'resized'}", "--resize-mixed-frames")
  assert code == 0
  _, got = read_records(tmp_path / "resized", "train")
  assert sorted(got) == ["good", "mixed"] and got["mixed"][1].shape == (3, 32, 40, 3)


# ----------------------------------------------------------------------------- 7
DISK_FULL_SCRIPT = r"""
set -u
mount -t tmpfs -o size=96k none "$DISK" || exit 99
"$PY" -m data_prep minik --annotations="$ANN" --source="$SRC" --out="$DISK/data" \
    --workers=$WORKERS --short-side=0 --jpeg-quality=100 --num-shards=4 >"$LOG.out1" 2>"$LOG.err1"
echo $? > "$LOG.rc1"
ls -a "$DISK/data/train" > "$LOG.ls1"
[ "$RERUN" = 1 ] || exit 0
mount -o remount,size=8m "$DISK"
"$PY" -m data_prep minik --annotations="$ANN" --source="$SRC" --out="$DISK/data" \
    --workers=$WORKERS --short-side=0 --jpeg-quality=100 >"$LOG.out2" 2>"$LOG.err2"
echo $? > "$LOG.rc2"
cp -r "$DISK/data" "$LOG.data"
"""


@pytest.mark.parametrize("workers,rerun", [(1, True), (2, False)])
def test_disk_full_gives_one_line_and_no_partial_file(tmp_path, capsys, workers, rerun):
  """A real full disk: a 96 KiB tmpfs mounted in a user namespace (unshare -rm). In the
  conversion process or in a worker (the error crosses the pipe); then freed, rerun."""
  if not can_mount_tmpfs(tmp_path):
    pytest.skip("cannot mount a small tmpfs here (unshare -rm not permitted)")
  src = tmp_path / "src"
  rs = np.random.RandomState(0)
  for i in range(8):  # noise compresses badly: about 35 KiB per video
    put_video(str(src / f"v{i}.mp4"), (rs.rand(3, 48, 64, 3) * 255).astype(np.uint8))
  ann = tmp_path / "list.txt"
  ann.write_text("".join(f"v{i}.mp4 0\n" for i in range(8)))
  disk, log = tmp_path / "disk", tmp_path / "log"
  disk.mkdir()
  env = dict(os.environ, DISK=str(disk), PY=sys.executable, ANN=str(ann), SRC=str(src),
             LOG=str(log), WORKERS=str(workers), RERUN=str(int(rerun)))
  subprocess.run(["unshare", "-rm", "sh", "-c", DISK_FULL_SCRIPT], env=env, cwd=REPO,
                 check=True, timeout=300)
  read = lambda suffix: (tmp_path / f"log.{suffix}").read_text()  # noqa: E731
  assert read("rc1").strip() == "2", read("err1")
  err = read("err1").strip()
  assert len(err.splitlines()) == 1 and "Traceback" not in err, err
  assert err.startswith(f"error: disk full while writing {disk}/data/train/train-000")
  assert "free on its file system" in err and "need about" in err and "rerun the same command" in err
  assert not [n for n in read("ls1").split() if ".tmp-" in n]  # no partial file left
  assert [n for n in read("ls1").split() if n.endswith(".tfrecord")]  # finished ones kept
  if not rerun:
    return
  # after freeing space the rerun completes, identical to a conversion that never failed
  assert read("rc2").strip() == "0", read("err2")
  assert cli_main(["minik", f"--annotations={ann}", f"--source={src}", "--workers=1",
                   f"--out={tmp_path / 'ref'}", "--short-side=0", "--jpeg-quality=100",
                   "--num-shards=4"]) == 0
  assert _files(tmp_path / "log.data" / "train") == _files(tmp_path / "ref" / "train")
  _, got = read_records(tmp_path / "log.data", "train")
  assert len(got) == 8


# ----------------------------------------------------------------------------- 8, 9
SLOW_SITE = r"""
import time
import data_prep.shards as _shards
_encode = _shards.encode_frames
def _slow_encode(item, options):
  time.sleep(float(__import__("os").environ.get("SLOW_ENCODE", "0")))
  return _encode(item, options)
_shards.encode_frames = _slow_encode
"""


def _slow_converter(tmp_path, src, ann, out, workers, seconds=1.0):
  """A real CLI conversion whose every video takes `seconds` more (in every worker)."""
  site = tmp_path / "site"
  site.mkdir(exist_ok=True)
  (site / "sitecustomize.py").write_text(SLOW_SITE)
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, str(site)]),
             SLOW_ENCODE=str(seconds))
  return subprocess.Popen(
      [sys.executable, "-m", "data_prep", "minik", f"--annotations={ann}", f"--source={src}",
       f"--out={out}", f"--workers={workers}", "--short-side=32", "--num-shards=4"],
      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
      start_new_session=True,
      # A test run started in the background (`cmd &`) inherits SIGINT ignored, and so
      # would the converter: give it the default disposition a terminal's job has.
      preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _wait_for(proc, words, timeout=120):
  start, seen = time.time(), ""
  while time.time() - start < timeout:
    line = proc.stdout.readline()
    seen += line
    if words in line:
      return seen
    if not line and proc.poll() is not None:
      break
  raise AssertionError(f"never printed {words!r}: {seen}")


def _slow_set(tmp_path, n=8):
  src = tmp_path / "src"
  for i in range(n):
    put_video(str(src / f"v{i}.mp4"), make_frames(i, num=3))
  ann = tmp_path / "list.txt"
  ann.write_text("".join(f"v{i}.mp4 0\n" for i in range(n)))
  return src, ann


def test_ctrl_c_prints_only_the_one_line(tmp_path):
  src, ann = _slow_set(tmp_path)
  proc = _slow_converter(tmp_path, src, ann, tmp_path / "out", workers=2)
  _wait_for(proc, "videos ->")
  time.sleep(3)  # the workers are importing or encoding
  os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the whole foreground process group
  out, err = proc.communicate(timeout=60)
  assert proc.returncode == 130, (out, err)
  assert err.strip() == ("interrupted: finished shards are kept; rerun the same command to "
                         "resume"), err
  # a rerun completes (the interrupted shards' temporary files are cleaned up)
  assert cli_main(["minik", f"--annotations={ann}", f"--source={src}",
                   f"--out={tmp_path / 'out'}", "--workers=1", "--short-side=32"]) == 0
  _, got = read_records(tmp_path / "out", "train")
  assert len(got) == 8
  assert not [n for n in os.listdir(tmp_path / "out" / "train") if ".tmp-" in n]


def test_a_second_converter_on_the_same_split_is_refused(tmp_path, capsys):
  src, ann = _slow_set(tmp_path)
  first = _slow_converter(tmp_path, src, ann, tmp_path / "out", workers=1)
  try:
    _wait_for(first, "videos ->")
    code, _, err = run_cli(capsys, "minik", f"--annotations={ann}", f"--source={src}",
                           f"--out={tmp_path / 'out'}")
    assert code == 2
    assert err.strip() == (
        f"error: another conversion (process {first.pid}) is writing split 'train' into "
        f"{tmp_path / 'out'}: wait for it to finish (or stop it), then rerun this command to "
        f"check and complete its work")
    # ... while another split of the same --out may be converted at the same time
    code, _, err = run_cli(capsys, "minik", f"--annotations={ann}", f"--source={src}",
                           f"--out={tmp_path / 'out'}", "--split=val")
    assert code == 0, err
  finally:
    first.wait(timeout=300)
  assert first.returncode == 0, first.stderr.read()
  _, got = read_records(tmp_path / "out", "train")
  assert len(got) == 8


# ----------------------------------------------------------------------------- 10
def test_symlink_loops_and_broken_links_are_named(tmp_path, capsys):
  src = tmp_path / "src"
  put_video(str(src / "good.mp4"), make_frames(1, num=3))
  os.symlink("loop_b.mp4", src / "loop_a.mp4")
  os.symlink("loop_a.mp4", src / "loop_b.mp4")
  os.symlink("nowhere.mp4", src / "dangling.mp4")
  code, _, err = minik(capsys, tmp_path, ["good.mp4 0", "loop_a.mp4 0", "dangling.mp4 0"], src)
  assert code == 0
  manifest, got = read_records(tmp_path / "out", "train")
  assert sorted(got) == ["good"]
  reasons = {s["item"]: s["reason"] for s in manifest["splits"]["train"]["skipped"]}
  assert reasons["loop_a"].startswith(f"symbolic link loop: {src / 'loop_a.mp4'}")
  assert reasons["dangling"] == (f"broken symbolic link: {src / 'dangling.mp4'} -> nowhere.mp4 "
                                 f"(which does not exist)")
  assert "skipped loop_a: symbolic link loop" in err


# ----------------------------------------------------------------------------- 11
def test_empty_class_folders_are_kept_and_reported(tmp_path, capsys):
  train, val = tmp_path / "train", tmp_path / "val"
  put_video(str(train / "apple" / "a0.mp4"), make_frames(1, num=3))
  (train / "banana").mkdir()  # no videos yet
  put_video(str(train / "cherry" / "c0.mp4"), make_frames(2, num=3))
  put_video(str(val / "banana" / "b0.mp4"), make_frames(3, num=3))
  code, _, err = run_cli(capsys, "folder", f"--source={train}", f"--out={tmp_path / 'out'}")
  assert code == 0
  assert ("1 class folder(s) of " + str(train) + " hold no videos, kept in the class list: "
          "banana") in err
  manifest, got = read_records(tmp_path / "out", "train")
  assert manifest["classes"] == ["apple", "banana", "cherry"]
  assert got["cherry/c0"][0] == (2,)
  # the later split with a banana video works and keeps the indices
  code, _, err = run_cli(capsys, "folder", f"--source={val}", f"--out={tmp_path / 'out'}",
                         "--split=val")
  assert code == 0, err
  _, got = read_records(tmp_path / "out", "val")
  assert got["banana/b0"][0] == (1,)


# ----------------------------------------------------------------------------- 12
def test_the_same_video_in_two_splits_is_reported_with_ids(tmp_path, capsys):
  src = tmp_path / "src"
  for i in range(4):
    put_video(str(src / f"v{i}.mp4"), make_frames(i, num=3))
  shutil.copy(src / "v1.mp4", src / "copy_of_v1.mp4")  # the same video under another name
  code, _, err = minik(capsys, tmp_path, ["v0.mp4 0", "v1.mp4 0", "v2.mp4 0"], src)
  assert code == 0 and "leak" not in err
  code, _, err = minik(capsys, tmp_path, ["v0.mp4 0", "copy_of_v1.mp4 0", "v3.mp4 0"], src,
                       split="val")
  assert code == 0
  assert ("leak: 2 video(s) of split 'val' are also in split 'train': copy_of_v1 (= v1), v0"
          in err)
  entry = entry_of(tmp_path / "out", "val")
  assert entry["leaks"] == {"train": [["copy_of_v1", "v1"], ["v0", "v0"]]}
  assert entry["num_videos"] == 3  # reported, not dropped


# ----------------------------------------------------------------------------- 13
def test_trainer_start_up_check_names_the_shard(tmp_path, capsys):
  src = tmp_path / "src"
  for i in range(4):
    put_video(str(src / f"v{i}.mp4"), make_frames(i, num=3))
  for split in ("train", "val"):
    code, _, _ = minik(capsys, tmp_path, [f"v{i}.mp4 0" for i in range(4)], src,
                       "out", "--num-shards=2", split=split)
    assert code == 0
  out = tmp_path / "out"
  manifest = json.loads((out / "manifest.json").read_text())
  assert len(manifest["splits"]["val"]["shard_sha256"]) == 2
  shard_check.check_run_splits(str(out), ["train", "val"], "now")  # intact: passes
  # a damaged evaluation shard, same size: found before training by its checksum
  bad = out / "val" / manifest["splits"]["val"]["shards"][1]
  data = bytearray(bad.read_bytes())
  data[len(data) // 2] ^= 0xFF
  bad.write_bytes(bytes(data))
  with pytest.raises(DataError, match=f"damaged shard {bad} \\(SHA-256 checksum differs"):
    shard_check.check_run_splits(str(out), ["train", "val"], "now")
  # in the background (the default): the next batch read fails, naming the shard
  logs = []
  thread = shard_check.check_run_splits(str(out), ["train", "val"],
                                        log=lambda *a: logs.append(a[0] % a[1:]))
  assert "verifying the SHA-256 checksums of 4 shards" in logs[0]
  thread.join(timeout=60)
  try:
    with pytest.raises(DataError, match=f"damaged shard {bad}"):
      list(shard_check.name_damaged_shards(iter(range(3))))
  finally:
    shard_check._BACKGROUND_ERRORS.clear()
  bad.write_bytes(bytes(data[:len(data) // 2]) + bytes([data[len(data) // 2] ^ 0xFF])
                  + bytes(data[len(data) // 2 + 1:]))  # repaired
  shard_check.check_run_splits(str(out), ["train", "val"], "now")
  # edited counts: found at once, without reading any shard
  edited = json.loads(json.dumps(manifest))
  edited["splits"]["val"]["num_videos"] = 5
  (out / "manifest.json").write_text(json.dumps(edited))
  with pytest.raises(DataError, match="split 'val' .*num_videos is 5 but its shards hold 4"):
    shard_check.check_run_splits(str(out), ["train", "val"], "off")
  edited["splits"]["val"]["num_videos"] = 6  # edited consistently: data_prep's record differs
  edited["splits"]["val"]["shard_sizes"] = [3, 3]
  (out / "manifest.json").write_text(json.dumps(edited))
  with pytest.raises(DataError, match="shard val-00000-of-00002.tfrecord holds 2 videos"):
    shard_check.check_run_splits(str(out), ["train", "val"], "off")


def test_training_start_up_runs_the_check(tmp_path, capsys, monkeypatch):
  """train_and_evaluate checks every split it reads before building anything."""
  from configs import default
  from reskd_jax import train

  src = tmp_path / "src"
  for i in range(2):
    put_video(str(src / f"v{i}.mp4"), make_frames(i, num=3))
  for split in ("train", "val"):
    assert minik(capsys, tmp_path, ["v0.mp4 0", "v1.mp4 0"], src, split=split)[0] == 0
  out = tmp_path / "out"
  manifest = json.loads((out / "manifest.json").read_text())
  manifest["splits"]["val"]["num_videos"] = 3
  (out / "manifest.json").write_text(json.dumps(manifest))
  config = default.get_config()
  config.mode = "baseline"  # no teacher needed
  config.data.data_dir, config.data.train_split, config.data.eval_split = str(out), "train", "val"
  monkeypatch.setattr(train, "_train", lambda *a: pytest.fail("training started"))
  with pytest.raises(DataError, match="split 'val' .*num_videos is 3 but its shards hold 2"):
    train.train_and_evaluate(config, str(tmp_path / "work"))
  # counts repaired, an evaluation shard damaged in place: "now" names it before training
  manifest["splits"]["val"]["num_videos"] = 2
  (out / "manifest.json").write_text(json.dumps(manifest))
  bad = out / "val" / manifest["splits"]["val"]["shards"][0]
  data = bytearray(bad.read_bytes())
  data[-20] ^= 0xFF
  bad.write_bytes(bytes(data))
  config.data.verify_checksums = "now"
  with pytest.raises(DataError, match=f"damaged shard {bad} \\(SHA-256"):
    train.train_and_evaluate(config, str(tmp_path / "work"))
