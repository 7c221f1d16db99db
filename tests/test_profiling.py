"""Tests of reskd_jax.tools.profiling's platform defaults and table formatting."""

import json

import pytest

from helpers import tiny_profile_config
from reskd_jax.tools import profiling


def test_format_gflops_keeps_significant_digits():
  assert profiling.format_gflops(65.391) == "65.39"
  assert profiling.format_gflops(1.0) == "1.00"
  assert profiling.format_gflops(0.004123) == "0.00412"
  assert profiling.format_gflops(0.0456) == "0.0456"
  assert profiling.format_gflops(None) == "-"
  assert profiling.format_gflops(float("nan")) == "-"


def test_format_profile_small_model_has_no_zero_gflops():
  rows = [{"resolution": 32, "gflops": 0.00312, "xla_gflops": 0.00705,
           "videos_per_s_float32": 812.5, "xla_memory_mb_float32": 1.2}]
  table = profiling.format_profile(rows, ["float32"])
  line = table.splitlines()[1].split()
  assert line[:3] == ["32", "0.00312", "0.00705"]
  assert "0.00 " not in table


def test_platform_defaults_keep_the_paper_batch_on_accelerators():
  for platform in ("gpu", "tpu"):
    d = profiling.platform_defaults(platform)
    assert d["batch_size"] == profiling.PAPER_BATCH_SIZE == 64
    assert d["dtypes"] == ("float32", "bfloat16")
  cpu = profiling.platform_defaults("cpu")
  assert cpu["batch_size"] == 1 and cpu["dtypes"] == ("float32",)


def test_unset_batch_is_chosen_for_the_platform_and_said(tmp_path, capsys):
  config = tiny_profile_config()
  assert config.profile.batch_size == 0  # the default: fit the platform
  config.data.num_frames = 2
  config.profile.resolutions = (32,)
  rows = profiling.run_profile(config, str(tmp_path))
  out = capsys.readouterr().out
  assert rows[0]["batch_size"] == 1 and "videos_per_s_bfloat16" not in rows[0]
  assert "batch 1 chosen for cpu" in out and "profile [1/1] 32 px float32" in out
  report = json.loads((tmp_path / "profile.json").read_text())
  assert report["batch_size"] == 1 and report["dtypes"] == ["float32"]
  assert "0.00 " not in (tmp_path / "profile.txt").read_text()


def test_explicit_batch_is_kept(tmp_path):
  config = tiny_profile_config()
  config.data.num_frames = 2
  config.profile.resolutions = (32,)
  config.profile.batch_size = 3
  config.profile.timed_runs = 1
  rows = profiling.run_profile(config, str(tmp_path))
  assert rows[0]["batch_size"] == 3
  with pytest.raises(ValueError, match="unknown dtype"):
    profiling.run_profile(config, str(tmp_path), dtypes=["float16"])
