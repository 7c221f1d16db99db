"""data_prep: bad input is skipped and reported, nothing valid -> exit 2, kill + rerun = same bytes."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from data_prep import ConversionError, ConvertOptions, convert_format, pool
from data_prep.cli import main as cli_main
from data_helpers import make_frames, put_frames, put_video, read_records

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OPTIONS = ConvertOptions(short_side=32, jpeg_quality=90)


def good_set(tmp_path, n=4):
  """n good videos and their list lines (`v/good<i>.mp4 <i % 2>`); classes a, b."""
  src = tmp_path / "src"
  lines = []
  for i in range(n):
    put_video(str(src / "v" / f"good{i}.mp4"), make_frames(i, num=4))
    lines.append(f"v/good{i}.mp4 {i % 2}")
  (tmp_path / "classes.txt").write_text("a\nb\n")
  return src, lines


def convert(tmp_path, lines, src, **kw):
  ann = tmp_path / "list.txt"
  ann.write_text("\n".join(lines) + "\n")
  kw.setdefault("workers", 1)
  return convert_format("minik", str(ann), str(src), str(tmp_path / "out"), "train",
                        classes=str(tmp_path / "classes.txt"), options=OPTIONS,
                        log=lambda m: None, warn=lambda m: None, **kw)


def assert_skipped_only(tmp_path, item, *words, n_good=4):
  """`item` is the one skipped entry, its reason has `words`; every good video converted."""
  manifest, got = read_records(tmp_path / "out", "train")
  skipped = manifest["splits"]["train"]["skipped"]
  assert [s["item"] for s in skipped] == [item], skipped
  for w in words:
    assert w in skipped[0]["reason"], skipped[0]["reason"]
  assert sorted(got) == [f"v/good{i}" for i in range(n_good)]
  assert manifest["splits"]["train"]["num_videos"] == n_good
  return skipped[0]["reason"]


def test_unreadable_video(tmp_path):
  src, lines = good_set(tmp_path)
  (src / "v" / "junk.mp4").write_bytes(b"this is not a video" * 100)
  convert(tmp_path, lines + ["v/junk.mp4 0"], src)
  assert_skipped_only(tmp_path, "v/junk", "unreadable video", "junk.mp4")


def test_truncated_video(tmp_path):
  src, lines = good_set(tmp_path)
  put_video(str(tmp_path / "full.mp4"), make_frames(9))
  data = (tmp_path / "full.mp4").read_bytes()
  (src / "v" / "cut.mp4").write_bytes(data[:len(data) // 2])
  convert(tmp_path, lines + ["v/cut.mp4 1"], src)
  assert_skipped_only(tmp_path, "v/cut", "cut.mp4")


def test_corrupt_frame_in_frame_folder(tmp_path):
  src, lines = good_set(tmp_path)
  put_frames(str(src / "v" / "frames"), make_frames(5, num=4))
  bad = src / "v" / "frames" / "img_00003.jpg"
  bad.write_bytes(bad.read_bytes()[:200])  # truncated JPEG
  convert(tmp_path, lines + ["v/frames 1"], src)
  assert_skipped_only(tmp_path, "v/frames", "corrupt frame", "img_00003.jpg")


def test_missing_file_then_fixed_on_rerun(tmp_path):
  src, lines = good_set(tmp_path)
  convert(tmp_path, lines + ["v/absent.mp4 0"], src)
  assert_skipped_only(tmp_path, "v/absent", "missing file", "absent.mp4")
  # the file appears: the rerun converts the shard holding it again, nothing else changes
  put_video(str(src / "v" / "absent.mp4"), make_frames(7, num=4))
  convert(tmp_path, lines + ["v/absent.mp4 0"], src)
  manifest, got = read_records(tmp_path / "out", "train")
  assert manifest["splits"]["train"]["skipped"] == [] and "v/absent" in got


def test_label_not_in_class_list(tmp_path):
  src, lines = good_set(tmp_path)
  put_video(str(src / "v" / "x.mp4"), make_frames(1, num=4))
  put_video(str(src / "v" / "y.mp4"), make_frames(2, num=4))
  convert(tmp_path, lines + ["v/x.mp4 7", "v/y.mp4 c"], src)
  manifest, got = read_records(tmp_path / "out", "train")
  reasons = {s["item"]: s["reason"] for s in manifest["splits"]["train"]["skipped"]}
  assert set(reasons) == {"v/x", "v/y"}
  assert "label index 7 not in the class list" in reasons["v/x"]
  assert "label 'c' not in the class list" in reasons["v/y"]
  assert sorted(got) == [f"v/good{i}" for i in range(4)]


def test_malformed_line_and_duplicate(tmp_path):
  src, lines = good_set(tmp_path)
  convert(tmp_path, lines + ["lonely_token", lines[0]], src)
  manifest, got = read_records(tmp_path / "out", "train")
  reasons = [s["reason"] for s in manifest["splits"]["train"]["skipped"]]
  assert len(reasons) == 2 and "malformed line" in reasons[0] and "duplicate" in reasons[1]
  assert len(got) == 4


def test_short_video_is_written(tmp_path):
  src, lines = good_set(tmp_path)
  put_video(str(src / "v" / "short.mp4"), make_frames(3, num=2))
  convert(tmp_path, lines + ["v/short.mp4 1"], src)
  manifest, got = read_records(tmp_path / "out", "train")
  assert manifest["splits"]["train"]["skipped"] == []
  assert got["v/short"][1].shape == (2, 32, 40, 3) and got["v/short"][0] == (1,)


@pytest.mark.parametrize("content,words", [("", "is empty"), ("  \n\n", "is empty"),
                                           (b"\xff\xfe\x00bad", "cannot read"), (None, "does not exist")])
def test_empty_or_unreadable_annotation_file_fails_cleanly(tmp_path, capsys, content, words):
  ann = tmp_path / "ann.txt"
  if isinstance(content, bytes):
    ann.write_bytes(content)
  elif content is not None:
    ann.write_text(content)
  code = cli_main(["minik", f"--annotations={ann}", f"--source={tmp_path}",
                   f"--out={tmp_path / 'out'}", "--workers=1"])
  err = capsys.readouterr().err
  assert code == 2
  assert words in err and str(ann) in err and "Traceback" not in err
  assert not (tmp_path / "out" / "manifest.json").exists()


def test_bad_json_annotation_fails_cleanly(tmp_path, capsys):
  ann = tmp_path / "anet.json"
  ann.write_text('{"database": {')
  assert cli_main(["activitynet", f"--annotations={ann}", f"--source={tmp_path}",
                   f"--out={tmp_path / 'out'}"]) == 2
  assert "not valid JSON" in capsys.readouterr().err


def test_nothing_valid_fails_cleanly_and_keeps_existing_manifest(tmp_path, capsys):
  src, lines = good_set(tmp_path, n=2)
  convert(tmp_path, lines, src)  # a good split already there
  before = (tmp_path / "out" / "manifest.json").read_bytes()
  ann = tmp_path / "val.txt"
  ann.write_text("v/gone1.mp4 0\nv/gone2.mp4 1\nv/good0.mp4 9\n")
  # (--classes given: a label outside it is a per-video skip, not a stop before any work)
  code = cli_main(["minik", f"--annotations={ann}", f"--source={src}", "--split=val",
                   f"--out={tmp_path / 'out'}", "--workers=1", "--short-side=32",
                   f"--classes={tmp_path / 'classes.txt'}"])
  err = capsys.readouterr().err
  assert code == 2
  assert "error: no video of split 'val' could be converted" in err
  for name in ("v/gone1", "v/gone2", "v/good0"):
    assert f"skipped {name}:" in err
  assert (tmp_path / "out" / "manifest.json").read_bytes() == before
  assert not (tmp_path / "out" / "val").exists()  # no 0-video shard left behind
  with pytest.raises(ConversionError, match="nothing to convert"):
    convert(tmp_path, ["v/good0.mp4 5"], src)  # no item with a valid label at all


def test_cli_exit_status_and_one_line_message_in_a_subprocess(tmp_path):
  empty = tmp_path / "empty.txt"
  empty.write_text("")
  proc = subprocess.run(
      [sys.executable, "-m", "data_prep", "minik", f"--annotations={empty}",
       f"--source={tmp_path}", f"--out={tmp_path / 'out'}"],
      cwd=REPO, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2
  assert proc.stderr.strip() == f"error: annotation file {str(empty)!r} is empty"


KILL_SCRIPT = r"""
import os, signal, sys
import data_prep.shards as shards
calls = [0]
encode = shards.encode_frames
def encode_then_die(item, options):
  calls[0] += 1
  if calls[0] == int(sys.argv[5]):
    os.kill(os.getpid(), signal.SIGKILL)  # a hard kill in the middle of the second shard
  return encode(item, options)
shards.encode_frames = encode_then_die
from data_prep import ConvertOptions, convert_format
convert_format("minik", sys.argv[1], sys.argv[2], sys.argv[3], "train", classes=sys.argv[4],
               options=ConvertOptions(short_side=32, jpeg_quality=90), num_shards=3, workers=1)
"""


def _files(split_dir):
  return {name: (split_dir / name).read_bytes() for name in sorted(os.listdir(split_dir))}


def test_killed_conversion_resumes_to_identical_files(tmp_path):
  src, lines = good_set(tmp_path, n=8)
  lines.append("v/missing.mp4 1")  # a skipped item too: the manifests must agree on it
  ann = tmp_path / "list.txt"
  ann.write_text("\n".join(lines) + "\n")
  classes = str(tmp_path / "classes.txt")
  # killed (SIGKILL) while writing the second shard (shards hold 3 items each) ...
  out = tmp_path / "out"
  proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(ann), str(src), str(out),
                           classes, "5"], cwd=REPO, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=REPO))
  # ... meanwhile the reference: uninterrupted, two worker processes
  ref = tmp_path / "ref"
  convert_format("minik", str(ann), str(src), str(ref), "train", classes=classes,
                 options=OPTIONS, num_shards=3, workers=2, log=lambda m: None,
                 warn=lambda m: None)
  _, stderr = proc.communicate(timeout=120)
  assert proc.returncode == -9, stderr[-2000:]
  left = sorted(os.listdir(out / "train"))
  assert "train-00000-of-00003.tfrecord" in left
  assert not any(n.startswith(("train-00001", "train-00002")) and n.endswith(".tfrecord")
                 for n in left), left  # no incomplete shard under its final name
  assert any(".tmp-" in n for n in left), left  # the partial second shard
  assert not (out / "manifest.json").exists()
  first_mtime = os.stat(out / "train" / "train-00000-of-00003.tfrecord").st_mtime_ns
  # rerun (one process): the finished shard is kept, the rest written, same bytes
  convert_format("minik", str(ann), str(src), str(out), "train", classes=classes,
                 options=OPTIONS, num_shards=3, workers=1, log=lambda m: None,
                 warn=lambda m: None)
  assert os.stat(out / "train" / "train-00000-of-00003.tfrecord").st_mtime_ns == first_mtime
  assert _files(out / "train") == _files(ref / "train")  # tmp files gone too
  assert (out / "manifest.json").read_bytes() == (ref / "manifest.json").read_bytes()
  manifest, got = read_records(out, "train")
  assert len(got) == 8 and [s["item"] for s in manifest["splits"]["train"]["skipped"]] == [
      "v/missing"]
  np.testing.assert_array_equal(got["v/good0"][1].shape, (4, 32, 40, 3))


def test_pool_reports_failures_and_dead_workers():
  with pool.Pool(2) as p:
    assert p.run(divmod, [(7, 2), (9, 4), (1, 1)]) == [(3, 1), (2, 1), (1, 0)]
    with pytest.raises(RuntimeError, match="ValueError"):
      p.run(int, [("12",), ("not a number",)])
    with pytest.raises(pool.WorkerDied, match="exit status 3"):
      p.run(os._exit, [(3,)])  # a worker crashing (as a decoder might)
    assert p.run(divmod, [(5, 5)]) == [(1, 0)]  # the pool is still usable
