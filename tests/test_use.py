"""Using a trained student: predict on video files, export and reload, figures from videos.

The toy model is a tiny ResNet whose classifier is solved in closed form so
that a red, a green and a blue video are obviously separable: no training.
"""

import json
import os
import re
import shutil
import subprocess
import sys

import av
import chex
import jax
import matplotlib.image as mpimg
import numpy as np
import pytest
from PIL import Image

from reskd_jax import augment, checkpoints, meta as meta_lib, models, workdir as workdir_lib
from reskd_jax.tools import erf, export, exported, inference, predict, visualize
from helpers import ROOT, main_env

CLASSES = ("red", "green", "blue")
COLOURS = ((200, 30, 30), (30, 200, 30), (30, 30, 200))
FRAMES, SIZE, CROP = 4, 40, 32
META = {"arch": "resnet18", "num_classes": 3, "tsm": True, "num_segments": FRAMES,
        "strides": [1, 2, 2, 2], "width": 8, "stage_sizes": [1, 1, 1, 1], "stem": "small",
        "input_size": 16, "class_names": list(CLASSES),
        "data": {"sampling": "tsn", "num_frames": FRAMES, "clip_len": 8, "frame_interval": 8,
                 "short_side": CROP, "crop_size": CROP, "test_num_clips": 1,
                 "test_num_crops": 1, "mean": [123.675, 116.28, 103.53],
                 "std": [58.395, 57.12, 57.375]}}


def _clip(colour, n=6, seed=0):
  """n frames of a colour with mild noise, 40x48 (not square: the crop matters)."""
  rng = np.random.default_rng(seed)
  base = np.broadcast_to(np.asarray(colour, np.float32), (n, SIZE, SIZE + 8, 3))
  return np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8)


def _write_video(path, frames):
  with av.open(str(path), "w", format="mp4") as container:
    stream = container.add_stream("libx264", rate=8)
    stream.width, stream.height = frames.shape[2], frames.shape[1]
    stream.pix_fmt = "yuv420p"
    stream.options = {"qp": "0", "preset": "ultrafast", "threads": "1"}
    for f in frames:
      for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  """A variables directory whose classifier separates the three colours."""
  root = tmp_path_factory.mktemp("toy")
  model = inference.build_model(META, 3)
  variables = models.init_variables(model, jax.random.key(0), FRAMES, CROP)
  views = np.stack([_clip(c, FRAMES)[:, :CROP, :CROP] for c in COLOURS])
  out = model.apply(variables, augment.normalize(views), return_dict=True)
  pooled = np.asarray(out["features"]).mean(axis=(1, 2, 3))  # (3, C)
  pooled = np.concatenate([pooled, np.ones((3, 1), np.float32)], axis=1)
  solution = np.linalg.lstsq(pooled, 10.0 * np.eye(3), rcond=None)[0]
  params = jax.tree.map(np.asarray, dict(variables["params"]))
  params["fc"] = {"kernel": solution[:-1].astype(np.float32),
                  "bias": solution[-1].astype(np.float32)}
  path = str(root / "run" / workdir_lib.VARIABLES)
  checkpoints.save_variables(path, {"params": params, "batch_stats": variables["batch_stats"]},
                            META)
  return str(root / "run")


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
  root = tmp_path_factory.mktemp("videos")
  paths = {}
  for name, colour in zip(CLASSES[:2], COLOURS[:2]):
    paths[name] = str(root / f"{name}.mp4")
    _write_video(paths[name], _clip(colour, seed=1))
  folder = root / "blue_frames"  # a frame folder, the rawframes layout
  folder.mkdir()
  for i, frame in enumerate(_clip(COLOURS[2], seed=2), start=1):
    Image.fromarray(frame).save(folder / f"img_{i:05d}.jpg", quality=95)
  paths["blue"] = str(folder)
  paths["bad"] = str(root / "broken.mp4")
  with open(paths["bad"], "wb") as f:
    f.write(b"not a video at all")
  return paths


def test_predict_video_files_json(run_dir, videos, capsys):
  argv = [f"--workdir={run_dir}", "--json", videos["red"], videos["bad"], videos["green"],
          videos["blue"]]
  assert predict.main(argv) == 0
  captured = capsys.readouterr()
  out = json.loads(captured.out)
  assert set(out) >= {"workdir", "device", "transform", "results", "errors", "timing"}
  assert [r["video"] for r in out["results"]] == [videos[c] for c in ("red", "green", "blue")]
  for result, name in zip(out["results"], ("red", "green", "blue")):
    assert set(result) == {"video", "top", "num_frames", "decode_s", "model_s"}
    top = result["top"]
    assert len(top) == 3  # top-5 of a 3-class model
    assert top[0]["class"] == name and top[0]["probability"] > 0.9
    assert [t["class"] for t in top] == [CLASSES[t["index"]] for t in top]
    assert sorted(t["index"] for t in top) == [0, 1, 2]  # every class once
    probabilities = [t["probability"] for t in top]
    assert probabilities == sorted(probabilities, reverse=True)  # best first
    assert sum(probabilities) == pytest.approx(1.0, abs=1e-5)
    assert result["num_frames"] == 6
    assert result["decode_s"] > 0 and result["model_s"] > 0  # each video read and run
  assert len(out["errors"]) == 1 and out["errors"][0]["video"] == videos["bad"]
  assert "broken.mp4" in out["errors"][0]["error"]
  assert "broken.mp4" in captured.err
  assert set(out["timing"]) == {"decode_s", "model_s", "compile_s"}
  # The totals are the per-video times added up (the unreadable video and the compilation
  # apart); compilation is timed, not left at 0.
  for key in ("decode_s", "model_s"):
    assert out["timing"][key] == pytest.approx(sum(r[key] for r in out["results"]), rel=1e-9)
  assert out["timing"]["compile_s"] > 0
  assert out["transform"]["crop_size"] == CROP


def test_predict_text_and_failures(run_dir, videos, tmp_path, capsys):
  assert predict.main([f"--workdir={run_dir}", videos["green"]]) == 0
  text = capsys.readouterr().out
  assert "1. green" in text and "predicted 1 of 1 videos" in text
  # Nothing readable: exit status 2, every video named.
  missing = str(tmp_path / "missing.mp4")
  assert predict.main([f"--workdir={run_dir}", videos["bad"], missing]) == 2
  err = capsys.readouterr().err
  assert "broken.mp4" in err and "missing.mp4" in err
  assert predict.main([f"--workdir={tmp_path}", videos["red"]]) == 2
  assert "holds no saved variables" in capsys.readouterr().err


def test_predict_partial_frame_folder(run_dir, videos, tmp_path, capsys):
  """A frame folder with a gap is an error naming the gap, unless --allow-partial."""
  folder = tmp_path / "gappy"
  shutil.copytree(videos["blue"], folder)
  os.remove(folder / "img_00003.jpg")
  assert predict.main([f"--workdir={run_dir}", "--json", str(folder)]) == 2
  captured = capsys.readouterr()
  assert "lacks 1 frame(s): number(s) 3" in captured.err and "--allow-partial" in captured.err
  assert predict.main([f"--workdir={run_dir}", "--json", "--allow-partial", str(folder)]) == 0
  out = json.loads(capsys.readouterr().out)
  assert out["errors"] == [] and out["results"][0]["num_frames"] == 5
  assert out["results"][0]["top"][0]["class"] == "blue"


def test_default_transform_is_the_default_config_s():
  """The transform of weights without a recorded one: configs/default.py's test keys."""
  from configs import default

  data = default.get_data_config()
  assert sorted(inference.DEFAULT_TRANSFORM) == sorted(meta_lib.TEST_TRANSFORM_KEYS)
  assert inference.DEFAULT_TRANSFORM == {k: data[k] for k in meta_lib.TEST_TRANSFORM_KEYS}


@pytest.mark.parametrize("override,needle", [
    ({"sampling": "uniform"}, "test transform.sampling='uniform': expected 'tsn' or 'dense'"),
    ({"test_num_crops": 2}, "test transform.test_num_crops=2: expected 1"),
    ({"num_frames": 0}, "test transform.num_frames=0: must be at least 1"),
    ({"crop_size": 300}, "test transform.crop_size=300 is larger than test transform.short_side"),
])
def test_test_transform_is_checked_like_config_data(override, needle):
  """The same checks (data.clips.check_clip_config) as config.data at start-up."""
  assert inference.transform_config(META)["crop_size"] == CROP
  with pytest.raises(ValueError) as e:
    inference.transform_config(META, override)
  assert needle in str(e.value)


def test_export_then_load_matches_the_model(run_dir, videos, tmp_path):
  out_dir = str(tmp_path / "exported")
  assert export.main([f"--workdir={run_dir}", f"--output={out_dir}", "--no-saved-model"]) == 0
  info = json.load(open(os.path.join(out_dir, exported.INFO_FILE)))
  assert info["class_names"] == list(CLASSES)
  assert info["input"]["shape"] == ["batch", FRAMES, CROP, CROP, 3]
  assert info["input"]["dtype"] == "uint8"
  fn = exported.load(out_dir)
  model = inference.load(run_dir)
  rng = np.random.default_rng(0)
  for batch in (1, 3):
    video = rng.integers(0, 256, (batch, FRAMES, CROP, CROP, 3), dtype=np.uint8)
    expected = model.probabilities(video[:, None])
    got = fn(video)
    chex.assert_shape(got, (batch, 3))
    chex.assert_trees_all_close(np.asarray(got), np.asarray(expected), atol=1e-5)
  # predict_file applies the export's recorded transform: the same probabilities as
  # reskd_jax.tools.predict on a real encoded video.
  out = predict.predict_videos(model, [videos["red"]], top_k=3)["results"][0]
  want = np.zeros(3)
  for t in out["top"]:
    want[t["index"]] = t["probability"]
  got = fn.predict_file(videos["red"])
  chex.assert_shape(got, (3,))
  np.testing.assert_allclose(got, want, atol=1e-5)
  assert int(np.argmax(got)) == CLASSES.index("red")


def test_export_loader_needs_no_tensorflow_or_model_code(run_dir, tmp_path):
  """A fresh interpreter loads and calls an export with jax, numpy and json only."""
  out_dir = str(tmp_path / "exported")
  assert export.main([f"--workdir={run_dir}", f"--output={out_dir}", "--no-saved-model",
                      "--platforms=cpu"]) == 0
  code = ("import sys, json, numpy as np\n"
          "from reskd_jax.tools import exported\n"
          f"m = exported.load({out_dir!r})\n"
          f"p = np.asarray(m(np.zeros((2, {FRAMES}, {CROP}, {CROP}, 3), np.uint8)))\n"
          "heavy = sorted(k for k in sys.modules if k.split('.')[0] in ('tensorflow', 'flax', "
          "'optax', 'orbax') or k.startswith(('reskd_jax.models', 'reskd_jax.data.pipeline', "
          "'reskd_jax.tools.inference')))\n"
          "print(json.dumps({'shape': list(p.shape), 'heavy': heavy}))\n")
  proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                        text=True, timeout=300, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert proc.returncode == 0, proc.stderr[-2000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  assert out == {"shape": [2, 3], "heavy": []}


def test_export_replacing_a_saved_model_never_leaves_none(run_dir, tmp_path, monkeypatch):
  """Killed while the new SavedModel takes the old one's place: the old one is still there,
  set aside, and comes back (fileio.recover, also run by the next export). The TF save is
  replaced by a stand-in writing one file: the replacement is what is tested."""
  import tensorflow as tf

  from reskd_jax import fileio

  model = inference.load(run_dir)
  out_dir = str(tmp_path / "exported")
  target = os.path.join(out_dir, export.SAVED_MODEL_DIR)

  def fake_save(version):
    def save(module, path, signatures=None):
      os.makedirs(path)
      with open(os.path.join(path, "version"), "w") as f:
        f.write(version)
    return save

  def version():
    with open(os.path.join(target, "version")) as f:
      return f.read()

  monkeypatch.setattr(tf.saved_model, "save", fake_save("old"))
  export.export_directory(model, out_dir, platforms=["cpu"], log=lambda m: None)
  assert version() == "old"

  def killed_into(real):
    def move(src, dst):
      if dst == target:
        raise KeyboardInterrupt("killed")
      return real(src, dst)
    return move

  monkeypatch.setattr(tf.saved_model, "save", fake_save("new"))
  monkeypatch.setattr(os, "rename", killed_into(os.rename))
  monkeypatch.setattr(os, "replace", killed_into(os.replace))
  with pytest.raises(KeyboardInterrupt):
    export.export_directory(model, out_dir, platforms=["cpu"], log=lambda m: None)
  monkeypatch.undo()
  fileio.recover(target)
  assert version() == "old"
  assert not [n for n in os.listdir(out_dir) if ".tmp-" in n or ".old-" in n]


def test_predict_hints_classes_and_best_variables(run_dir, videos, tmp_path, capsys):
  """Converted weights without class names: a hint about --classes; a workdir with only
  best_variables/ (an unfinished run): the error names it."""
  loaded = checkpoints.load_variables(run_dir)
  meta = {k: v for k, v in META.items() if k != "class_names"}
  bare = checkpoints.save_variables(str(tmp_path / "converted"), loaded, meta)
  assert predict.main([f"--workdir={bare}", videos["red"]]) == 0
  captured = capsys.readouterr()
  assert "class_0" in captured.out and "--classes" in captured.err
  unfinished = tmp_path / "unfinished"
  checkpoints.save_variables(str(unfinished / "best_variables"), loaded, META)
  assert predict.main([f"--workdir={unfinished}", videos["red"]]) == 2
  assert "best_variables" in capsys.readouterr().err


def test_visualize_from_video_files(run_dir, videos, tmp_path, capsys):
  out = tmp_path / "figs"
  clips = ",".join([videos["red"], videos["blue"]])
  assert visualize.main([f"--baseline={run_dir}", f"--reskd={run_dir}", f"--videos={clips}",
                         "--resolution=0", f"--out={out}"]) == 0
  for name in ("erf.png", "attention.png"):
    img = mpimg.imread(str(out / name))
    assert img[..., :3].std() > 0.01, name
  printed = capsys.readouterr().out
  summary = json.load(open(out / "erf.json"))
  assert set(summary) == {"Baseline", "ResKD"}
  # Both names hold the same variables: the same radius from the same two clips.
  assert summary["Baseline"] == summary["ResKD"]
  reskd = summary["ResKD"]
  assert reskd["num_clips"] == 2 and reskd["input_size"] == [CROP, CROP]
  assert 0 < reskd["radius_mean"] <= CROP * 2**0.5  # inside the frame
  assert reskd["radius_frac"] == pytest.approx(reskd["radius_mean"] / CROP)
  assert f"ResKD {reskd['radius_mean']:.2f} px" in printed  # the figure says what the file says


def test_half_mass_radius():
  ys, xs = np.mgrid[:41, :41]
  dist = np.hypot(ys - 20, xs - 20)
  maps = np.stack([(dist <= 8).astype(float), (dist <= 16).astype(float), np.exp(-dist)])
  radii = erf.half_mass_radius(maps)  # around each map's centre of mass: (20, 20)
  # A uniform disc of radius R holds half its mass within R / sqrt(2).
  np.testing.assert_allclose(radii[:2], [8 / 2**0.5, 16 / 2**0.5], atol=0.6)
  assert radii[2] < radii[0]  # a peaked map is more concentrated
  np.testing.assert_allclose(erf.half_mass_radius(maps, (20.0, 20.0)), radii)
  shifted = np.roll(maps[:1], 7, axis=2)  # moving the disc moves the centre of mass along
  np.testing.assert_allclose(erf.half_mass_radius(shifted), radii[:1])
  assert erf.half_mass_radius(maps[:1], (20.0, 28.0))[0] > radii[0]


def test_ablation_configs_table_and_chart(tmp_path):
  from configs import demo as demo_config
  from reskd_jax.tools import ablation_table
  cfgs = {run: demo_config.get_config(run) for run in demo_config.ABLATIONS}
  assert [cfgs[r].kd_method for r in ("clip", "frame", "pixel_logit")] == [
      "clip", "frame", "pixel_logit"]
  # Table 6: the deeper teacher keeps the student's channels (pixel-feature KD applies).
  assert cfgs["both"].teacher.stage_sizes == (2, 2, 2, 2)
  assert cfgs["model"].teacher.input_size == 32 and cfgs["both"].teacher.input_size is None
  assert cfgs["teacher_large_low"].model.input_size == 32
  assert cfgs["model"].teacher.checkpoint.endswith("teacher_large_low")
  results = {run: {"top1": 0.5 + 0.05 * k} for k, run in enumerate(
      ("baseline", "clip", "frame", "reskd", "pixel_logit", "model", "both"))}
  rows = ablation_table.table(results)
  assert [r["paper_map"] for r in rows if r["table"] == "Table 6"] == [71.8, 73.3, 76.2, 78.5]
  assert rows[1]["setting"] == "Clip-level KD" and rows[1]["demo_top1"] == 55.0
  assert "Resolution distillation" in ablation_table.format_table(rows)
  png = ablation_table.plot(rows, str(tmp_path / "ablations.png"))
  assert mpimg.imread(png)[..., :3].std() > 0.01


def test_runtime_package_does_not_import_data_prep():
  """data_prep imports reskd_jax (records, video_io); never the other way round."""
  import ast
  import pathlib
  import reskd_jax
  offenders = []
  for path in pathlib.Path(reskd_jax.__file__).parent.rglob("*.py"):
    for node in ast.walk(ast.parse(path.read_text())):
      names = ([a.name for a in node.names] if isinstance(node, ast.Import)
               else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
      offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] == "data_prep"]
  assert not offenders


def _readme_recipe():
  """The commands of the README's "Your own videos" block, continuation lines joined."""
  text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
  block = text.split("<!-- own-videos recipe")[1].split("<!-- end own-videos recipe")[0]
  block = block.split("```bash")[1].split("```")[0].replace("\\\n", " ")
  return ROOT, [" ".join(line.split()) for line in block.splitlines()
                if line.strip() and not line.strip().startswith("#")]


def test_readme_own_videos_recipe_runs_on_generated_videos(tmp_path):
  """The README's recipe, command by command, on 3 classes of generated H.264 videos, with
  the `:tiny` variant of its configs (6 steps) and small frames added; nothing else."""
  from data_helpers import make_frames, put_video
  root, commands = _readme_recipe()
  assert [c.split()[1] for c in commands] == ["-m", "-m", "main.py", "main.py", "main.py", "-m"]
  for split, count in (("train", 4), ("val", 2)):
    for k, name in enumerate(("archery", "bowling", "cycling")):
      for i in range(count):
        put_video(str(tmp_path / "my_videos" / split / name / f"{name}{i}.mp4"),
                  make_frames(seed=3 * k + 1, num=6, h=40, w=48))
  script = ["set -e"]
  for command in commands:
    command = command.replace("python main.py", f"{sys.executable} {root}/main.py")
    command = command.replace("python -m", f"{sys.executable} -m")
    command = re.sub(r"--config=(configs/\S+\.py)", rf"--config={root}/\1:tiny", command)
    if " data_prep " in command:
      command += " --short-side=40 --workers=1"
    script.append(command)
  env = main_env()  # 8 CPU devices, this checkout on the import path, the tests' cache
  proc = subprocess.run(["bash", "-c", "\n".join(script)], cwd=tmp_path, env=env,
                        capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
  teacher = json.load(open(tmp_path / "runs/my_teacher/results.json"))
  student = json.load(open(tmp_path / "runs/my_student/results.json"))
  assert teacher["mode"] == "teacher" and student["mode"] == "reskd"
  assert student["num_videos"] == 6 and student["step"] == 6
  evaluated = json.load(open(tmp_path / "runs/my_student/eval_results.json"))
  assert evaluated["top1"] == pytest.approx(student["top1"])
  meta = json.load(open(tmp_path / "runs/my_student/variables/meta.json"))
  assert meta["class_names"] == ["archery", "bowling", "cycling"]
  assert "predicted 6 of 6 videos" in proc.stdout, proc.stdout[-2000:]
