"""One rule per concept, used by every caller: the frames per clip and the short-side size.

Each test changes what only the one rule gets right (a dense run's `clip_len`
overridden alone, portrait and odd frame sizes) and checks the callers that once
had a rule of their own.
"""

import jax
import pytest

from configs import default as default_config, minik_r50_112, minik_r152_224
from reskd_jax import config_checks, errors, gflops, meta as meta_lib, models, train
from reskd_jax.data import clips
from reskd_jax.tools import profiling

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
  model = train.build_from_config(cfg.model, NUM_CLASSES)
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
  config = default_config.get_config()
  config.num_classes = 5
  config.model.name = "resnet18"
  config.model.width = 4
  config.model.stage_sizes = (1, 1, 1, 1)
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
