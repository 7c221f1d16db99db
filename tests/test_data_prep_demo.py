"""data_prep.demo_data: a deterministic, local demo data set of real videos, converted."""

import os

import numpy as np

from data_prep import demo_data
from data_prep.demo_data import CLASSES, clip_rng, make_clip, prepare_demo
from data_helpers import read_records


def _tree(root):
  out = {}
  for d, _, files in os.walk(root):
    for f in files:
      path = os.path.join(d, f)
      out[os.path.relpath(path, root)] = open(path, "rb").read()
  return out


def _object_columns(frames, template):
  """Per frame, the column of the best match of the 8x8 template (lit minus unlit mean)."""
  cols = []
  for f in frames.astype(float):
    windows = np.lib.stride_tricks.sliding_window_view(f, (8, 8))
    score = (windows * template).sum((-1, -2)) / template.sum() - (
        windows * ~template).sum((-1, -2)) / (~template).sum()
    cols.append(np.unravel_index(np.argmax(score), score.shape)[1])
  return np.array(cols)


def test_demo_is_deterministic_balanced_and_converted(tmp_path):
  log = lambda m: None
  a = prepare_demo(str(tmp_path / "a"), num_train=16, num_test=8, seed=3, workers=1, log=log)
  assert a == str(tmp_path / "a" / "records")
  b = prepare_demo(str(tmp_path / "b"), num_train=16, num_test=8, seed=3, workers=1, log=log)
  ta, tb = _tree(tmp_path / "a"), _tree(tmp_path / "b")
  sidecar = lambda k: k.endswith(".tfrecord.json")  # hold a hash of the (absolute) paths
  assert {k: v for k, v in ta.items() if not sidecar(k)} == {
      k: v for k, v in tb.items() if not sidecar(k)}  # videos, lists and records: byte for byte
  assert set(ta) == set(tb)
  assert sum(k.endswith(".mp4") for k in ta) == 24
  assert ta["raw/train_list.txt"].decode().splitlines()[:2] == [
      "train/square_left/00000.mp4 0", "train/square_right/00001.mp4 1"]

  manifest, train = read_records(a, "train")
  _, test = read_records(a, "test")
  assert manifest["classes"] == list(CLASSES) and len(CLASSES) == 8
  assert manifest["classes"][:2] == ["square_left", "square_right"]
  assert manifest["dataset"] == "demo" and not manifest["multi_label"]
  assert (len(train), len(test)) == (16, 8)
  assert np.bincount([l[0] for l, _ in train.values()], minlength=8).tolist() == [2] * 8
  for split, records in (("train", train), ("test", test)):
    for vid, (labels, frames) in records.items():
      assert frames.shape == (8, 64, 64, 3)
      assert np.abs(frames[..., 0].astype(int) - frames[..., 2]).max() <= 1  # grey as RGB
      index = int(vid.rsplit("/", 1)[1])
      assert labels == (index % 8,) and vid.split("/")[1] == CLASSES[labels[0]]
      clean = make_clip(labels[0], clip_rng(3, split, index))
      assert np.abs(frames[..., 0].astype(float) - clean).mean() < 3.0  # lossless video + JPEG 95
  # train and test come from different seeds
  assert not np.array_equal(train["train/square_left/00000"][1], test["test/square_left/00000"][1])

  # a rerun returns at once and rewrites nothing
  before = {p: os.stat(os.path.join(tmp_path, "a", p)).st_mtime_ns for p in ta}
  assert prepare_demo(str(tmp_path / "a"), num_train=16, num_test=8, seed=3, log=log) == a
  assert before == {p: os.stat(os.path.join(tmp_path, "a", p)).st_mtime_ns for p in ta}


def test_demo_clips_follow_the_design():
  templates = demo_data.templates()
  assert [templates[s].sum() for s in demo_data.SHAPES] == [28, 28, 28, 32]
  for label in range(8):
    for index in range(3):
      clip = make_clip(label, clip_rng(0, "train", index))
      assert clip.shape == (8, 64, 64) and clip.dtype == np.uint8
      cols = _object_columns(clip, templates[demo_data.SHAPES[label // 2]])
      steps = np.diff(cols)
      assert len(set(steps.tolist())) == 1 and 1 <= abs(steps[0]) <= 3, cols
      assert (steps[0] > 0) == CLASSES[label].endswith("right"), (CLASSES[label], cols)
  # noise: fresh each frame (sigma 0.1 = 25.5 grey levels); two seeds differ
  a, b = make_clip(0, clip_rng(0, "train", 0)), make_clip(0, clip_rng(1, "train", 0))
  assert not np.array_equal(a, b)
  diff = a[1].astype(float) - a[0]  # mostly background: noise of both frames
  assert 20 < np.median(np.abs(diff)) / 0.6745 / np.sqrt(2) < 32
