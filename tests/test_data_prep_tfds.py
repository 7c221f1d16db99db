"""data_prep.tfds_builders: a TFDS builder (manual download) on a tiny fixture."""

import numpy as np

from data_helpers import make_frames, put_video


def test_minik_builder_download_and_prepare_then_load(tmp_path, monkeypatch):
  import tempfile

  import tensorflow_datasets as tfds

  # tfds makes an (empty, never removed) temporary folder per builder: keep it in tmp_path
  monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))

  import data_prep.tfds_builders  # noqa: F401  registers the builders

  manual = tmp_path / "manual"
  classes = ["abseiling", "zumba"]
  (manual).mkdir()
  (manual / "classes.txt").write_text("\n".join(classes) + "\n")
  lines = {"train_list.txt": [], "val_list.txt": []}
  for i in range(5):
    rel = f"{classes[i % 2]}/c{i}.mp4"
    put_video(str(manual / "videos" / rel), make_frames(i, num=3, h=24, w=32))
    lines["val_list.txt" if i == 4 else "train_list.txt"].append(f"{rel} {i % 2}\n")
  (manual / "train_list.txt").write_text("".join(lines["train_list.txt"]) + "missing.mp4 0\n")
  (manual / "val_list.txt").write_text("".join(lines["val_list.txt"]))

  builder = tfds.builder("reskd_minik", data_dir=str(tmp_path / "data"))
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(manual)))
  assert builder.info.features["label"].names == classes
  assert builder.info.splits["train"].num_examples == 4  # the missing video skipped
  assert builder.info.splits["validation"].num_examples == 1

  ds = tfds.load("reskd_minik", split="train", data_dir=str(tmp_path / "data"))
  got = {ex["video_id"].numpy().decode(): ex for ex in ds}
  assert sorted(got) == sorted(f"{classes[i % 2]}/c{i}" for i in range(4))
  for i in range(4):
    ex = got[f"{classes[i % 2]}/c{i}"]
    assert int(ex["label"]) == i % 2
    frames = ex["frames"].numpy()
    assert frames.shape == (3, 256, 341, 3)  # short side 256 (24x32 -> 256x341)
    # frame 0 (upscaled) brighter than frame 2 by 2 x 12 levels: the order is kept
    assert frames[2].mean() - frames[0].mean() > 15
