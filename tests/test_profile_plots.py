"""Efficiency report and figures on a tiny model (fast on CPU)."""

import json
import os

import jax
import jax.numpy as jnp
import matplotlib.image as mpimg
import numpy as np
import pytest

from configs import default as default_config
from reskd_jax.models import build_model
from reskd_jax.tools import erf, plots, profiling, tradeoff_figure, visualize

TINY = dict(width=8, stage_sizes=(1, 1, 1, 1))


def _tiny_model(strides=(1, 1, 1, 2)):
  # Total stride 8: a 4x4 last map at 32 px, like ResNet-50 at 112 px.
  return build_model("resnet18", 5, strides=strides, **TINY)


def _variables(model, seed):
  return profiling.random_variables(model, num_frames=2, seed=seed)


def _videos(n=2, t=2, size=32, seed=0):
  return np.random.default_rng(seed).standard_normal((n, t, size, size, 3)).astype(np.float32)


def _check_png(path, width, height):
  assert os.path.exists(path), path
  img = mpimg.imread(path)
  assert img.shape[:2] == (height, width), img.shape
  rgb = img[..., :3]
  assert rgb.std() > 0.01, "blank image"
  background = np.all(rgb > 0.98, axis=-1)  # white
  assert background.mean() < 0.98, "nothing drawn"
  return rgb


def _tiny_config(resolutions):
  """The `:tiny` preset (resnet18, width 8, one block per stage, 3x3/2 stem), 2 frames."""
  config = default_config.tiny(default_config.get_config())
  config.num_classes = 5
  config.data.num_frames = 2
  config.profile.resolutions = resolutions
  config.profile.timed_runs = 2
  config.profile.dtypes = ("float32", "bfloat16")  # a CPU profiles float32 only by default
  return config


def test_run_profile_writes_rows(tmp_path, capsys):
  config = _tiny_config((224, 112))
  rows = profiling.run_profile(config, str(tmp_path))
  assert [r["resolution"] for r in rows] == [224, 112]
  for r in rows:
    assert r["gflops"] > 0 and r["num_frames"] == 2 and r["batch_size"] == 2
    for dt in ("float32", "bfloat16"):
      # Throughput is the batch over the median time of a batch.
      assert r[f"videos_per_s_{dt}"] == pytest.approx(2 / (r[f"ms_per_batch_{dt}"] / 1e3))
      assert r[f"peak_memory_mb_{dt}"] is None  # CPU: no device statistics
  # GFLOPs scale with the number of pixels (4x from 112 to 224).
  assert rows[0]["gflops"] / rows[1]["gflops"] == pytest.approx(4.0, rel=0.05)
  report = json.loads((tmp_path / "profile.json").read_text())
  assert report["rows"] == rows  # the file holds what was returned
  assert report["paper_ratio_112_224"] == 3.3
  ratios = report["throughput_ratio_112_224"]
  assert set(ratios) == {"float32", "bfloat16", "gflops"}
  for dt in ("float32", "bfloat16"):  # 112 px over 224 px, of the rows above
    low, high = rows[1][f"videos_per_s_{dt}"], rows[0][f"videos_per_s_{dt}"]
    assert ratios[dt] == pytest.approx(low / high)
  assert ratios["gflops"] == pytest.approx(rows[0]["gflops"] / rows[1]["gflops"])
  text = (tmp_path / "profile.txt").read_text()
  assert "throughput 112 vs 224" in text and "3.3x" in text
  assert "GFLOPs/video" in capsys.readouterr().out


def test_run_profile_refuses_impossible_resolution(tmp_path):
  config = _tiny_config((32, 8))
  with pytest.raises(ValueError, match=r"\[8\] smaller than the total stride 16"):
    profiling.run_profile(config, str(tmp_path))
  assert not (tmp_path / "profile.json").exists()


def test_tradeoff_plot_and_sweep(tmp_path, capsys):
  points = [{"gflops_per_video": g, "top1": a, "resolution": r}
            for g, a, r in [(4.1, 0.62, 56), (16.5, 0.71, 112), (8.0, 0.67, 80)]]
  baseline = [{"gflops_per_video": g, "top1": a, "resolution": r}
              for g, a, r in [(4.1, 0.52, 56), (16.5, 0.66, 112)]]
  teacher = {"gflops_per_video": 185.0, "top1": 0.79, "resolution": 224, "label": "R152 224px"}
  out = plots.plot_tradeoff(points, str(tmp_path / "t.png"), teacher=teacher, baseline=baseline)
  _check_png(out, 640, 480)
  with pytest.raises(ValueError, match="nothing to plot"):
    plots.plot_tradeoff([], str(tmp_path / "empty.png"))

  def run(name, mode, g, metric):
    d = tmp_path / name
    d.mkdir()
    (d / "results.json").write_text(json.dumps(
        {"top1": 0.5, "top5": 0.8, "mean_class_accuracy": 0.5, "mAP": metric,
         "gflops_per_video": g, "resolution": int(g), "num_frames": 16, "mode": mode}))
    return str(d)

  dirs = [run("a", "reskd", 10.0, 0.70), run("b", "reskd", 20.0, 0.75),
          run("c", "baseline", 10.0, 0.60)]
  teacher_dir = run("t", "teacher", 80.0, 0.85)
  out_png = tmp_path / "sweep" / "trade_off.png"
  assert tradeoff_figure.main([f"--workdirs={','.join(dirs)}", f"--out={out_png}",
                     f"--teacher={teacher_dir}"]) == 0
  _check_png(str(out_png), 640, 480)
  summary = json.loads((tmp_path / "sweep" / "trade_off.json").read_text())
  assert len(summary["reskd"]) == 2 and len(summary["baseline"]) == 1
  assert plots.choose_metric(summary["reskd"]) == "mAP"
  assert tradeoff_figure.main([f"--workdirs={tmp_path / 'missing'}", f"--out={out_png}"]) == 2
  # Significant digits, not fixed decimals: a tiny model's GFLOPs and a 1/6 accuracy.
  capsys.readouterr()
  tiny = run("tiny", "reskd", 0.00123, 1 / 6)
  assert tradeoff_figure.main([f"--workdirs={tiny}", f"--out={tmp_path / 'tiny.png'}"]) == 0
  printed = capsys.readouterr().out
  assert "0.00123 GFLOPs mAP=0.1667" in printed, printed


def test_erf_and_attention_figures(tmp_path):
  model = _tiny_model()
  base_vars, kd_vars = _variables(model, 0), _variables(model, 1)
  videos = _videos()
  field, pos = erf.effective_receptive_field(model, base_vars, videos)
  assert pos == (2, 2)  # 4x4 map: no centre, the pixel below-right of it
  assert field.shape == (32, 32) and field.max() == pytest.approx(1.0) and field.min() >= 0
  # The unit at (2, 2) of stride 8 sees pixels around (20, 20) most.
  ys, xs = np.mgrid[:32, :32]
  cy, cx = (field * ys).sum() / field.sum(), (field * xs).sum() / field.sum()
  assert cy > 15.5 and cx > 15.5
  with pytest.raises(ValueError, match="outside the 4x4 feature map"):
    erf.effective_receptive_field(model, base_vars, videos, position=(4, 0))

  att = erf.activation_attention(model, base_vars, videos)
  assert att.shape == (2, 2, 32, 32)
  # Each frame's map is min-max normalised on its own: it spans exactly [0, 1].
  np.testing.assert_allclose(att.min(axis=(2, 3)), 0.0, atol=1e-6)
  np.testing.assert_allclose(att.max(axis=(2, 3)), 1.0, rtol=1e-6)

  paths = visualize.figure4({"Baseline": (model, base_vars), "ResKD": (model, kd_vars)},
                            videos, str(tmp_path / "fig4"))
  _check_png(paths["erf"], 600, 340)
  _check_png(paths["attention"], 600, 440)


def test_visualize_cli_from_saved_variables(tmp_path):
  from reskd_jax import checkpoints
  model = _tiny_model()
  meta = {"arch": "resnet18", "num_classes": 5, "strides": (1, 1, 1, 2), **TINY}
  for name, seed in (("base", 0), ("kd", 1)):
    checkpoints.save_variables(str(tmp_path / name / "variables"), _variables(model, seed), meta)
  clips = np.random.default_rng(0).integers(0, 255, (1, 2, 48, 48, 3)).astype(np.uint8)
  np.save(tmp_path / "clips.npy", clips)
  out = tmp_path / "figs"
  assert visualize.main([f"--baseline={tmp_path / 'base'}", f"--reskd={tmp_path / 'kd'}",
                         f"--videos={tmp_path / 'clips.npy'}", "--resolution=32",
                         f"--out={out}"]) == 0
  _check_png(str(out / "erf.png"), 600, 340)
  _check_png(str(out / "attention.png"), 600, 240)
  assert visualize.main([f"--baseline={tmp_path / 'nope'}", f"--reskd={tmp_path / 'kd'}",
                         f"--videos={tmp_path / 'clips.npy'}", f"--out={out}"]) == 2


def test_profile_dtype_hint_names_a_key_every_config_has(tmp_path, capsys):
  from configs import minik_r50_112
  assert minik_r50_112.get_config().profile.dtypes == ()  # empty: the platform's choice
  config = _tiny_config((32,))
  config.profile.dtypes = ()
  rows = profiling.run_profile(config, str(tmp_path))
  assert "videos_per_s_float32" in rows[0] and "videos_per_s_bfloat16" not in rows[0]
  out = capsys.readouterr().out
  assert "--config.profile.dtypes=\"('float32', 'bfloat16')\"" in out, out
