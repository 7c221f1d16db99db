"""data_prep: every annotation format, frame folders and video files, read back as records."""

import csv
import json
import os

import numpy as np
import pytest
from PIL import Image

from data_prep import ConvertOptions, convert_format
from data_prep.cli import main as cli_main
from data_prep.encode import kept_frames
from data_prep.items import ConversionError
from data_prep.repack import repack
from reskd_jax.data import records
from reskd_jax.data.records import (LAYOUT_FRAMES, LAYOUT_SEQUENCE, frames_path, iter_videos,
                               split_layout)
from data_prep.labels import load_classes
from data_helpers import make_frames, put_frames, put_video, read_records

T, H, W = 8, 32, 40
CLASSES = ["abseiling", "air drumming", "zumba"]
SAME_SIZE = ConvertOptions(short_side=H, jpeg_quality=90)  # 32 is the short side: no resize


# ----------------------------------------------------------------------------- fixtures
def write_text(path, text):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    f.write(text)
  return str(path)


def assert_close(frames, reference, tol=4.0):
  """Each frame within JPEG tolerance of its source frame, and in the right order."""
  assert frames.shape == reference.shape, (frames.shape, reference.shape)
  for t in range(len(reference)):
    err = np.abs(frames[t].astype(float) - reference[t]).mean()
    assert err < tol, f"frame {t}: mean abs error {err:.2f}"
    if len(reference) > 1:  # the assertion can fail: another frame is far off
      other = reference[(t + 1) % len(reference)]
      assert np.abs(frames[t].astype(float) - other).mean() > err + 5


def check(out, split, expected, classes=None, multi_label=False):
  """`expected`: video_id -> (labels, reference frames)."""
  manifest, got = read_records(out, split)
  assert sorted(got) == sorted(expected)
  for vid, (labels, ref) in expected.items():
    assert got[vid][0] == tuple(labels), vid
    assert_close(got[vid][1], ref)
  if classes is not None:
    assert manifest["classes"] == classes
  assert manifest["multi_label"] == multi_label
  assert manifest["splits"][split]["skipped"] == []
  return manifest


def run(fmt, annotations, source, out, split="train", **kw):
  kw.setdefault("options", SAME_SIZE)
  kw.setdefault("workers", 1)
  return convert_format(fmt, annotations and str(annotations), str(source), str(out), split,
                        log=lambda m: None, warn=lambda m: None, **kw)


# ----------------------------------------------------------------------------- formats
def test_kinetics_csv(tmp_path):
  src, expected, rows = tmp_path / "clips", {}, []
  for i in range(6):
    label, yid = CLASSES[i % 3], f"yt-{i}_x"
    name = f"{yid}_{10 * i:06d}_{10 * i + 10:06d}"
    if i == 5:  # a frame folder of the clip's name
      ref = put_frames(str(src / name), make_frames(i))
    elif i % 2:  # flat
      ref = put_video(str(src / f"{name}.mp4"), make_frames(i))
    else:  # in a folder per class, the label as written (with its space)
      ref = put_video(str(src / label / f"{name}.mp4"), make_frames(i))
    rows.append([label, yid, 10 * i, 10 * i + 10, "train"])
    expected[name] = ((i % 3,), ref)
  rows.append(["zumba", "other", 0, 10, "val"])  # another split: filtered out, not reported
  with open(tmp_path / "train.csv", "w", newline="") as f:
    csv.writer(f).writerows([["label", "youtube_id", "time_start", "time_end", "split"]] + rows)
  entry = run("kinetics", tmp_path / "train.csv", src, tmp_path / "out")
  assert entry["num_videos"] == 6
  manifest = check(tmp_path / "out", "train", expected, classes=sorted(CLASSES))
  assert manifest["dataset"] == "kinetics400"


def test_minik_list_videos_and_classes_file(tmp_path):
  src, expected, lines = tmp_path / "videos", {}, []
  for i in range(6):
    rel = f"{CLASSES[i % 3]}/c{i}.mp4"  # "air drumming/..." : a path with a space
    expected[rel[:-4]] = ((i % 3,), put_video(str(src / rel), make_frames(i)))
    lines.append(f"{rel} {i % 3}\n")
  ann = write_text(tmp_path / "train_list.txt", "".join(lines))
  classes = write_text(tmp_path / "classes.txt", "\n".join(CLASSES) + "\n")
  run("minik", ann, src, tmp_path / "out", classes=classes)
  check(tmp_path / "out", "train", expected, classes=CLASSES)


def test_activitynet_json_multilabel(tmp_path):
  src, db, expected = tmp_path / "videos", {}, {}
  for i in range(6):
    vid = f"Ab{i}cD"
    labels = [CLASSES[i % 3]] + ([CLASSES[1]] if i == 0 else [])
    db[vid] = {"subset": "training" if i < 5 else "validation", "duration": 12.5,
               "url": "", "annotations": [{"label": l, "segment": [0.5, 3.0]} for l in labels]}
    # v_<id>.mp4 (the usual download name) or <id>.mkv
    path = src / (f"v_{vid}.mp4" if i % 2 == 0 else f"{vid}.mkv")
    ref = put_video(str(path), make_frames(i))
    if i < 5:
      expected[vid] = (sorted({CLASSES.index(l) for l in labels}), ref)
  ann = write_text(tmp_path / "anet.json", json.dumps({"version": "VERSION 1.3", "database": db}))
  run("activitynet", ann, src, tmp_path / "out", split="train")
  check(tmp_path / "out", "train", expected, classes=sorted(CLASSES), multi_label=True)
  assert expected["Ab0cD"][0] == [0, 1]
  # the val split of the same file: the other video, same class list
  run("activitynet", ann, src, tmp_path / "out", split="val")
  manifest, got = read_records(tmp_path / "out", "val")
  assert list(got) == ["Ab5cD"] and got["Ab5cD"][0] == (2,)
  assert set(manifest["splits"]) == {"train", "val"}


def test_fcvid_list_multilabel(tmp_path):
  src, expected, lines = tmp_path / "videos", {}, []
  for i in range(5):
    labels = [i % 3] if i != 2 else [2, 0]
    expected[f"v/c{i}"] = (sorted(labels), put_video(str(src / f"v/c{i}.mp4"), make_frames(i)))
    lines.append(f"v/c{i}.mp4 {' '.join(map(str, labels))}\n")
  ann = write_text(tmp_path / "fcvid_train.txt", "".join(lines))
  classes = write_text(tmp_path / "classes.txt", "\n".join(CLASSES) + "\n")
  run("fcvid", ann, src, tmp_path / "out", classes=classes)
  check(tmp_path / "out", "train", expected, classes=CLASSES, multi_label=True)


def test_sthv2_webm_templates(tmp_path):
  templates = ["Pushing something from left to right", "Putting something on a surface",
               "Moving something up"]
  labels_json = write_text(tmp_path / "ann" / "something-something-v2-labels.json",
                           json.dumps({t: str(i) for i, t in enumerate(templates)}))
  assert load_classes(labels_json) == templates
  src, records, expected = tmp_path / "videos", [], {}
  bracketed = ["Pushing [something] from left to right", "Putting [something] on a surface",
               "Moving [something] up"]
  for i in range(4):
    vid = str(1000 + i)
    records.append({"id": vid, "label": "pushing a pen from left to right",
                    "template": bracketed[i % 3], "placeholders": ["a pen"]})
    expected[vid] = ((i % 3,), put_video(str(src / f"{vid}.webm"), make_frames(i)))
  ann = write_text(tmp_path / "ann" / "something-something-v2-train.json", json.dumps(records))
  run("sthv2", ann, src, tmp_path / "out")  # labels JSON found beside the annotations
  check(tmp_path / "out", "train", expected, classes=templates)


def test_folder_layout_videos_and_frame_folders(tmp_path):
  root, expected = tmp_path / "root", {}
  for i in range(5):
    cls = CLASSES[i % 3]
    if i == 4:
      expected[f"{cls}/c{i}"] = ((i % 3,), put_frames(str(root / cls / f"c{i}"), make_frames(i)))
    else:
      expected[f"{cls}/c{i}"] = ((i % 3,), put_video(str(root / cls / f"c{i}.mp4"), make_frames(i)))
  write_text(root / "zumba" / "notes.txt", "not a video")  # ignored
  run("folder", None, root, tmp_path / "out")
  check(tmp_path / "out", "train", expected, classes=sorted(CLASSES))


def test_rawframes_list(tmp_path):
  src, expected, lines = tmp_path / "rawframes", {}, []
  for i in range(4):
    labels = [i % 3] if i else [0, 2]
    expected[f"f/c{i}"] = (labels, put_frames(str(src / f"f/c{i}"), make_frames(i)))
    lines.append(f"f/c{i} {T} {' '.join(map(str, labels))}\n")
  ann = write_text(tmp_path / "train_rawframes.txt", "".join(lines))
  run("rawframes", ann, src, tmp_path / "out", classes=write_text(tmp_path / "c.txt",
                                                                  "\n".join(CLASSES)))
  check(tmp_path / "out", "train", expected, classes=CLASSES, multi_label=True)


# ----------------------------------------------------------------------------- frame options
def test_resize_stride_and_fps(tmp_path):
  src = tmp_path / "v"
  ref = put_video(str(src / "a.mp4"), make_frames(0))
  ann = write_text(tmp_path / "l.txt", "a.mp4 0\n")
  classes = write_text(tmp_path / "c.txt", "only\n")
  # short side 16 (40x32 -> 20x16), bilinear
  run("minik", ann, src, tmp_path / "o1", classes=classes,
      options=ConvertOptions(short_side=16, jpeg_quality=95))
  small = np.stack([np.asarray(Image.fromarray(f).resize((20, 16), Image.BILINEAR)) for f in ref])
  assert_close(read_records(tmp_path / "o1", "train")[1]["a"][1], small, tol=6.0)
  # upscaling to exactly the short side too (as mmaction2)
  run("minik", ann, src, tmp_path / "o2", classes=classes,
      options=ConvertOptions(short_side=48, frame_stride=3))
  frames = read_records(tmp_path / "o2", "train")[1]["a"][1]
  assert frames.shape == (3, 48, 60, 3)  # frames 0, 3, 6
  big = np.stack([np.asarray(Image.fromarray(f).resize((60, 48), Image.BILINEAR)) for f in ref])
  assert_close(frames, big[::3])
  # --fps 4 on an 8 fps video: every other frame
  run("minik", ann, src, tmp_path / "o3", classes=classes,
      options=ConvertOptions(short_side=0, fps=4.0))
  assert_close(read_records(tmp_path / "o3", "train")[1]["a"][1], ref[::2])
  # --max-frames 3 of 8: the centre frames of 3 equal segments, int((i + 0.5) * 8 / 3)
  assert kept_frames(8, 3) == [1, 4, 6] and kept_frames(8, 0) == kept_frames(8, 8) == list(
      range(8))
  run("minik", ann, src, tmp_path / "o4", classes=classes,
      options=ConvertOptions(short_side=0, max_frames=3))
  assert_close(read_records(tmp_path / "o4", "train")[1]["a"][1], ref[[1, 4, 6]])


def test_layouts_and_repack(tmp_path, capsys):
  """Both layouts hold the same JPEGs; `repack` turns the old one into the new, byte for byte."""
  src = tmp_path / "v"
  lines = []
  for i in range(5):
    put_video(str(src / f"{i}.mp4"), make_frames(i, num=3 + i))
    lines.append(f"{i}.mp4 {i % 3}\n")
  ann = write_text(tmp_path / "l.txt", "".join(lines))
  classes = write_text(tmp_path / "c.txt", "\n".join(CLASSES) + "\n")
  for layout in (LAYOUT_SEQUENCE, LAYOUT_FRAMES):
    run("minik", ann, src, tmp_path / layout, classes=classes, num_shards=2,
        options=ConvertOptions(short_side=H, layout=layout))
  old = json.loads((tmp_path / LAYOUT_SEQUENCE / "manifest.json").read_text())
  new = json.loads((tmp_path / LAYOUT_FRAMES / "manifest.json").read_text())
  assert old["splits"]["train"]["layout"] == LAYOUT_SEQUENCE
  assert new["splits"]["train"]["layout"] == LAYOUT_FRAMES
  assert len(new["splits"]["train"]["frames_bytes"]) == 2
  assert sorted(os.listdir(tmp_path / LAYOUT_SEQUENCE / "train")) == sorted(
      f"{dot}train-0000{k}-of-00002.tfrecord{json_}" for k in range(2)
      for dot, json_ in (("", ""), (".", ".json")))

  def videos(data_dir):
    manifest = json.loads((data_dir / "manifest.json").read_text())
    entry = manifest["splits"]["train"]
    return [v for shard in entry["shards"] for v in iter_videos(
        str(data_dir / "train" / shard), split_layout(entry))]

  want = videos(tmp_path / LAYOUT_SEQUENCE)
  assert [len(v["frames"]) for v in sorted(want, key=lambda v: v["video_id"])] == [3, 4, 5, 6, 7]
  assert videos(tmp_path / LAYOUT_FRAMES) == want
  # Repacked: the same videos, shards and order; the manifest of the new layout.
  assert cli_main(["repack", f"--data-dir={tmp_path / LAYOUT_SEQUENCE}",
                   f"--out={tmp_path / 'repacked'}"]) == 0
  assert videos(tmp_path / "repacked") == want
  repacked = json.loads((tmp_path / "repacked" / "manifest.json").read_text())
  for key in ("layout", "shards", "shard_sizes", "shard_bytes", "frames_bytes", "num_videos",
              "shard_sha256"):
    assert repacked["splits"]["train"][key] == new["splits"]["train"][key], key
  for name in new["splits"]["train"]["shards"]:
    for path in (name, frames_path(name)):
      assert ((tmp_path / "repacked" / "train" / path).read_bytes()
              == (tmp_path / LAYOUT_FRAMES / "train" / path).read_bytes())
  capsys.readouterr()
  assert cli_main(["repack", f"--data-dir={tmp_path / LAYOUT_SEQUENCE}",
                   f"--out={tmp_path / 'repacked'}"]) == 2
  assert "already holds a data set" in capsys.readouterr().err


def test_repack_stopped_by_a_damaged_video_leaves_no_temporary(tmp_path, monkeypatch):
  src = tmp_path / "v"
  for i in range(2):
    put_video(str(src / f"{i}.mp4"), make_frames(i, num=3))
  ann = write_text(tmp_path / "l.txt", "0.mp4 0\n1.mp4 1\n")
  classes = write_text(tmp_path / "c.txt", "\n".join(CLASSES) + "\n")
  run("minik", ann, src, tmp_path / "old", classes=classes, num_shards=1,
      options=ConvertOptions(short_side=H, layout=LAYOUT_SEQUENCE))
  real = records.iter_videos

  def second_damaged(path, layout):
    for i, video in enumerate(real(path, layout)):
      yield dict(video, num_frames=99) if i == 1 else video

  monkeypatch.setattr(records, "iter_videos", second_damaged)
  with pytest.raises(ConversionError, match="its record says 99"):
    repack(str(tmp_path / "old"), str(tmp_path / "new"))
  assert os.listdir(tmp_path / "new" / "train") == []  # neither shard nor .frames, not even half


NAMES = ["zumba", "air_drumming", "abseiling"]


def test_cli_two_splits_share_classes_and_reruns_resume(tmp_path, capsys):
  src = tmp_path / "v"
  for split, n in (("train", 4), ("val", 2)):
    lines = []
    for i in range(n):
      put_video(str(src / f"{split}{i}.mp4"), make_frames(i, num=3))
      lines.append(f"{split}{i}.mp4 {NAMES[(i + 1) % 3]}\n")  # class names as labels
    write_text(tmp_path / f"{split}.txt", "".join(lines))
  out = tmp_path / "out"
  common = [f"--source={src}", f"--out={out}", "--short-side=32", "--workers=1"]
  assert cli_main(["minik", f"--annotations={tmp_path / 'train.txt'}", "--num-shards=2"] + common) == 0
  first = json.loads((out / "manifest.json").read_text())
  # val only has two classes: it must reuse train's class list (indices agree)
  assert cli_main(["minik", f"--annotations={tmp_path / 'val.txt'}", "--split=val"] + common) == 0
  manifest, val = read_records(out, "val")
  assert manifest["classes"] == first["classes"] == sorted(NAMES)
  assert manifest["splits"]["train"] == first["splits"]["train"]  # train kept
  assert first["splits"]["train"]["num_videos"] == 4
  assert val["val0"][0] == (sorted(NAMES).index(NAMES[1]),)
  assert manifest["splits"]["train"]["shards"] == ["train-00000-of-00002.tfrecord",
                                                   "train-00001-of-00002.tfrecord"]
  # a rerun rewrites nothing
  stat = {p: os.stat(out / "train" / p).st_mtime_ns for p in first["splits"]["train"]["shards"]}
  capsys.readouterr()
  assert cli_main(["minik", f"--annotations={tmp_path / 'train.txt'}", "--num-shards=2"] + common) == 0
  assert "already complete" in capsys.readouterr().out
  assert stat == {p: os.stat(out / "train" / p).st_mtime_ns for p in stat}
  # another shard count replaces the old shards
  assert cli_main(["minik", f"--annotations={tmp_path / 'train.txt'}", "--num-shards=1"] + common) == 0
  assert sorted(os.listdir(out / "train")) == [".train-00000-of-00001.tfrecord.json",
                                               "train-00000-of-00001.frames",
                                               "train-00000-of-00001.tfrecord"]
  # a different class list for the same --out is refused, the manifest untouched
  before = (out / "manifest.json").read_bytes()
  other = write_text(tmp_path / "other.txt", "a\nb\n")
  assert cli_main(["minik", f"--annotations={tmp_path / 'val.txt'}", "--split=val",
                   f"--classes={other}"] + common) == 2
  assert "another class list" in capsys.readouterr().err
  assert (out / "manifest.json").read_bytes() == before


def test_cli_help_lists_every_format(capsys):
  with pytest.raises(SystemExit) as e:
    cli_main(["--help"])
  assert e.value.code == 0
  text = capsys.readouterr().out
  for fmt in ("kinetics", "minik", "activitynet", "fcvid", "sthv2", "folder", "rawframes", "demo",
              "repack"):
    assert fmt in text
