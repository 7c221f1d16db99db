"""One rule per concept, used by every caller: the frames per clip and the short-side size.

Each test changes what only the one rule gets right (a dense run's `clip_len`
overridden alone, portrait and odd frame sizes) and checks the callers that once
had a rule of their own.
"""

import io
import json

import jax
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from configs import minik_r50_112, minik_r152_224
from reskd_jax import checkpoints, config_checks, errors, gflops, meta as meta_lib, models, train
from reskd_jax.data import clips, resize, video_io
from reskd_jax.tools import inference, predict, profiling

from data_prep import encode
from data_prep.items import Item
from data_helpers import make_frames, put_video
from helpers import tiny_profile_config

NUM_CLASSES = 4


# ----------------------------------------------------------------------------
# Frames per clip: num_frames for TSN sampling, clip_len for dense sampling.


def _dense_config(clip_len: int, num_frames: int = 4):
  cfg = minik_r50_112.get_config("tiny")
  cfg.data.sampling = "dense"
  cfg.data.num_frames = num_frames
  cfg.data.clip_len = clip_len
  return cfg


def test_trainer_gflops_count_a_dense_runs_clip_len():
  """results.json's gflops_per_video of a dense run whose clip_len alone was overridden."""
  cfg = _dense_config(clip_len=2, num_frames=4)
  model = models.build_from_config(cfg.model, NUM_CLASSES)
  size = train.student_resolution(cfg)
  variables = jax.eval_shape(lambda: models.init_variables(
      models.with_bn_axis(model, None), jax.random.key(0), 2, size))

  def count(frames):
    return gflops.video_gflops(model, variables, frames, size, with_xla=False)["gflops"]

  got = train._gflops(cfg, model, variables)
  assert clips.frames_per_clip(cfg.data) == 2
  assert got == pytest.approx(count(2))
  assert got != pytest.approx(count(4))  # what data.num_frames would give
  cfg.data.sampling = "tsn"
  assert train._gflops(cfg, model, variables) == pytest.approx(count(4))


def test_profile_runs_the_frames_per_clip(tmp_path):
  config = tiny_profile_config()
  config.data.sampling = "dense"
  config.data.num_frames = 8
  config.data.clip_len = 2
  config.profile.resolutions = (32,)
  config.profile.batch_size = 1
  config.profile.timed_runs = 1
  rows = profiling.run_profile(config, str(tmp_path))
  assert rows[0]["num_frames"] == 2


def _tsm_teacher_meta(frames: int):
  tcfg = minik_r152_224.get_config("tiny")
  tcfg.model.tsm = True
  meta = meta_lib.for_trained_model(tcfg, tcfg.model, NUM_CLASSES, frames, 32)
  assert meta["num_segments"] == frames
  return meta


def test_tsm_teacher_frames_are_checked_against_the_frames_per_clip():
  # A dense run feeding 8-frame clips fits a TSM teacher of 8 segments, whatever
  # data.num_frames (unused by dense sampling) says.
  cfg = _dense_config(clip_len=8, num_frames=4)
  config_checks.fill_teacher(cfg, _tsm_teacher_meta(8), "t")
  assert cfg.teacher.tsm is True
  # ... and one feeding 4-frame clips does not; the message names the key that counts.
  cfg = _dense_config(clip_len=4, num_frames=8)
  with pytest.raises(errors.ConfigError, match=r"num_segments=8 .* config.data.clip_len=4"):
    config_checks.fill_teacher(cfg, _tsm_teacher_meta(8), "t")


def test_predict_num_frames_sets_a_dense_models_clip_len(tmp_path, capsys):
  meta = {"arch": "resnet18", "num_classes": 2, "strides": [1, 2, 2, 2], "width": 4,
          "stage_sizes": [1, 1, 1, 1], "stem": "small",
          "data": {"sampling": "dense", "num_frames": 8, "clip_len": 8, "frame_interval": 1,
                   "short_side": 32, "crop_size": 32}}
  variables = models.init_variables(inference.build_model(meta, 2), jax.random.key(0), 2, 32)
  weights = checkpoints.save_variables(str(tmp_path / "dense"), variables, meta)
  video = str(tmp_path / "v.mp4")
  put_video(video, make_frames(0, num=6, h=32, w=40))
  assert predict.main([f"--workdir={weights}", "--num-frames=3", "--json", video]) == 0
  transform = json.loads(capsys.readouterr().out)["transform"]
  assert (transform["clip_len"], transform["num_frames"]) == (3, 8)


# ----------------------------------------------------------------------------
# The short-side size: one rule for the tf.data graph, the converter and the predictor.


def _old_pipeline_rule(h, w, short):
  """The input pipeline's former `sampling.short_side_size` (TF ops) -> (new_h, new_w)."""
  scale = float(short) / tf.cast(tf.minimum(tf.cast(h, tf.int32), tf.cast(w, tf.int32)),
                                 tf.float64)
  return (int(tf.cast(tf.cast(h, tf.float64) * scale + 0.5, tf.int32)),
          int(tf.cast(tf.cast(w, tf.float64) * scale + 0.5, tf.int32)))


def _old_reader_rule(w, h, short):
  """The frame reader's former `video_io.short_side_size(w, h, short)` -> (new_w, new_h)."""
  scale = short / min(w, h)
  new_w, new_h = int(w * scale + 0.5), int(h * scale + 0.5)
  if w <= h:
    new_w = short
  else:
    new_h = short
  return new_w, new_h


def _triples():
  rng = np.random.default_rng(0)
  fixed = [(240, 320, 256), (320, 240, 256), (256, 256, 256), (1080, 1920, 256),
           (1920, 1080, 256), (257, 455, 256), (455, 257, 128), (101, 333, 64), (333, 101, 64),
           (1, 1, 1), (1, 7, 3), (7, 1, 3), (3, 1000, 224), (999, 1001, 225), (35, 37, 36)]
  drawn = [(int(h), int(w), int(s)) for h, w, s in zip(rng.integers(1, 4000, 300),
                                                        rng.integers(1, 4000, 300),
                                                        rng.integers(1, 600, 300))]
  return fixed + drawn


def test_short_side_size_is_the_former_rules_for_ints_and_tensors():
  triples = _triples()
  hs, ws, ss = (np.array(v) for v in zip(*triples))
  # Tensors, as the tf.data graph gives them (one vectorised call: 315 sizes at once).
  got_h, got_w = resize.short_side_size(tf.constant(hs), tf.constant(ws), tf.constant(ss))
  assert got_h.dtype == tf.int32 and got_w.dtype == tf.int32
  for (h, w, s), th, tw in zip(triples, got_h.numpy(), got_w.numpy()):
    want = _old_pipeline_rule(h, w, s)
    old_w, old_h = _old_reader_rule(w, h, s)
    assert want == (old_h, old_w), (h, w, s)  # the two former rules agreed
    ints = resize.short_side_size(h, w, s)
    assert ints == want and type(ints[0]) is int and type(ints[1]) is int, (h, w, s)
    assert (int(th), int(tw)) == want, (h, w, s)
    assert min(ints) == s  # the short side exact, portrait or landscape
  # NumPy integers (a frame array's shape) take the integer path.
  assert resize.short_side_size(np.int64(240), np.int32(320), 256) == (256, 341)


def test_scalar_tensors_in_a_graph_take_the_tensor_path():
  @tf.function(input_signature=[tf.TensorSpec([], tf.int32)] * 2)
  def size(h, w):
    return resize.short_side_size(h, w, 256)
  assert [int(v) for v in size(tf.constant(101), tf.constant(333))] == [256, 844]
  assert [int(v) for v in size(tf.constant(333), tf.constant(101))] == [844, 256]


def _frames(sizes):
  return [Image.new("RGB", wh, (i * 40, 0, 0)) for i, wh in enumerate(sizes)]


def test_resize_frames_gives_every_frame_the_first_frames_size():
  frames = _frames([(101, 333), (101, 333), (200, 100)])  # PIL sizes are (w, h): portrait
  out = list(resize.resize_frames(iter(frames), 64))
  assert [f.size for f in out] == [(64, 211)] * 3  # (w, h) of resize.short_side_size(333, 101)
  assert resize.short_side_size(333, 101, 64) == (211, 64)
  # 0 keeps the first frame's size; frames already at that size are passed through.
  out = list(resize.resize_frames(iter(frames), 0))
  assert [f.size for f in out] == [(101, 333)] * 3
  assert out[0] is frames[0] and out[1] is frames[1] and out[2] is not frames[2]
  assert list(resize.resize_frames(iter([]), 64)) == []


def test_converter_and_predictor_resize_alike(tmp_path):
  """The converter's JPEGs and the predictor's frames have the same size, for one source."""
  folder = tmp_path / "portrait"
  folder.mkdir()
  for i, img in enumerate(_frames([(45, 81)] * 3), 1):
    img.save(folder / f"img_{i:05d}.jpg")
  frames = video_io.read_video(str(folder), 32)
  assert frames.shape == (3, 58, 32, 3)
  jpegs, height, width, partial = encode.encode_frames(
      Item("portrait", str(folder), (0,), ("a",)), encode.ConvertOptions(short_side=32))
  assert (height, width, partial, len(jpegs)) == (58, 32, None, 3)
  assert Image.open(io.BytesIO(jpegs[0])).size == (32, 58)
