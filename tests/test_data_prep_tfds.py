"""data_prep.tfds_builders: a TFDS builder (manual download) on a tiny fixture."""

import os

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


# ------------------------------------------------------------- repack --from-tfds
def _build_minik(root, ids_sorted=True):
  """A built `reskd_minik` (local config) of 6 train and 2 validation videos in
  `root/tfds`; returns the manual directory. Listed in video-id order (the order the
  repack gives) so that the converter, given the same lists, makes the same shards."""
  import tensorflow_datasets as tfds

  import data_prep.tfds_builders  # noqa: F401  registers the builders

  manual = root / "manual"
  classes = ["abseiling", "zumba"]
  manual.mkdir()
  (manual / "classes.txt").write_text("\n".join(classes) + "\n")
  lines = {"train_list.txt": [], "val_list.txt": []}
  for i in range(8):
    rel = f"{classes[i % 2]}/c{i}.mp4"
    put_video(str(manual / "videos" / rel), make_frames(i, num=3 + i % 3, h=24, w=32))
    lines["val_list.txt" if i >= 6 else "train_list.txt"].append(f"{rel} {i % 2}\n")
  for name, rows in lines.items():
    (manual / name).write_text("".join(sorted(rows)))
  builder = tfds.builder("reskd_minik", data_dir=str(root / "tfds"))
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(manual)))
  return manual


def _batches(data_dir, split, train):
  from configs import default
  from reskd_jax.data import pipeline

  cfg = default.get_data_config()
  cfg.update(data_dir=str(data_dir), num_frames=2, clip_len=1, frame_interval=1,
             short_side=32, crop_size=24, shuffle_buffer=8)
  ds = pipeline.create_dataset(cfg, split, train=train, batch_size=2, num_classes=2, seed=3,
                               process_index=0, process_count=1)
  return [{k: np.asarray(v) for k, v in b.items()} for b in ds.take(4).as_numpy_iterator()]


def test_repack_from_tfds_trains_like_the_converter(tmp_path, monkeypatch, capsys):
  """A TFDS build, repacked, is the converter's data set byte for byte (same videos in
  video-id order, same shard count): same manifest values, same training batches."""
  import json
  import tempfile

  from data_prep import convert_format
  from data_prep.cli import main as cli_main

  monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
  manual = _build_minik(tmp_path)
  # Interrupted after its first shard: no manifest, no scratch or temporary file left.
  from data_prep import tfds_repack
  calls = []

  def interrupted(*args):
    if calls:
      raise KeyboardInterrupt
    calls.append(args)
    return write_shard(*args)

  write_shard = tfds_repack.write_shard
  monkeypatch.setattr(tfds_repack, "write_shard", interrupted)
  assert cli_main(["repack", "--from-tfds=reskd_minik", f"--tfds-data-dir={tmp_path / 'tfds'}",
                   f"--out={tmp_path / 'cut'}", "--num-shards=2"]) == 130
  assert sorted(os.listdir(tmp_path / "cut")) == ["train"]
  assert sorted(os.listdir(tmp_path / "cut" / "train")) == [
      "train-00000-of-00002.frames", "train-00000-of-00002.tfrecord"]
  monkeypatch.setattr(tfds_repack, "write_shard", write_shard)
  # A killed run's scratch file (its process gone) is removed by the next run.
  (tmp_path / "repacked" / "train").mkdir(parents=True)
  stale = tmp_path / "repacked" / "train" / ".tfds-frames.tmp-999999999"
  stale.write_bytes(b"x" * 10)
  assert cli_main(["repack", "--from-tfds=reskd_minik", f"--tfds-data-dir={tmp_path / 'tfds'}",
                   f"--out={tmp_path / 'repacked'}", "--num-shards=2"]) == 0
  for split, ann in (("train", "train_list.txt"), ("val", "val_list.txt")):
    convert_format("minik", str(manual / ann), str(manual / "videos"), str(tmp_path / "conv"),
                   split, classes=str(manual / "classes.txt"), num_shards=2, workers=1,
                   log=lambda m: None, warn=lambda m: None)
  got = json.loads((tmp_path / "repacked" / "manifest.json").read_text())
  want = json.loads((tmp_path / "conv" / "manifest.json").read_text())
  assert got["classes"] == want["classes"] == ["abseiling", "zumba"]
  assert sorted(got["splits"]) == sorted(want["splits"]) == ["train", "val"]
  for split in ("train", "val"):
    assert got["splits"][split]["tfds"] == {"name": "reskd_minik/default/1.0.0",
                                           "split": "validation" if split == "val" else split}
    for key in ("num_videos", "layout", "shards", "shard_sizes", "shard_bytes", "frames_bytes",
                "shard_sha256", "options"):
      assert got["splits"][split][key] == want["splits"][split][key], (split, key)
  assert got["splits"]["train"]["num_videos"] == 6
  assert not [f for f in os.listdir(tmp_path / "repacked" / "train") if ".tmp-" in f]
  for split, train in (("val", False), ("train", False), ("train", True)):
    a, b = _batches(tmp_path / "repacked", split, train), _batches(tmp_path / "conv", split, train)
    assert len(a) == len(b) == (4 if train else {"val": 1, "train": 3}[split])
    for x, y in zip(a, b):
      assert x.keys() == y.keys()
      for k in x:
        np.testing.assert_array_equal(x[k], y[k], err_msg=f"{split} train={train} {k}")
  capsys.readouterr()
  # An existing data set is never overwritten.
  assert cli_main(["repack", "--from-tfds=reskd_minik", f"--tfds-data-dir={tmp_path / 'tfds'}",
                   f"--out={tmp_path / 'repacked'}"]) == 2
  assert "already holds a data set" in capsys.readouterr().err


def test_repack_from_tfds_bad_input_is_one_line(tmp_path, capsys):
  from data_prep.cli import main as cli_main

  (tmp_path / "empty").mkdir()
  cases = [
      (["--from-tfds=reskd_nope", f"--tfds-data-dir={tmp_path / 'empty'}"],
       "unknown TFDS data set 'reskd_nope'"),
      (["--from-tfds=reskd_minik/nope", f"--tfds-data-dir={tmp_path / 'empty'}"],
       "TFDS data set 'reskd_minik' has no config 'nope' (its configs: default, beam)"),
      (["--from-tfds=reskd_minik", f"--tfds-data-dir={tmp_path / 'empty'}"],
       f"reskd_minik/default/1.0.0 is not built in '{tmp_path / 'empty'}'"),
      (["--from-tfds=reskd_minik", f"--tfds-data-dir={tmp_path / 'missing'}"],
       f"--tfds-data-dir '{tmp_path / 'missing'}' does not exist"),
      (["--from-tfds=reskd_minik"], "--from-tfds needs --tfds-data-dir"),
      ([f"--data-dir={tmp_path / 'empty'}", "--num-shards=2"],
       "--tfds-data-dir and --num-shards go with --from-tfds"),
  ]
  (tmp_path / "a_file").write_text("")
  cases.append((["--from-tfds=reskd_minik", f"--tfds-data-dir={tmp_path / 'empty'}",
                 f"--out={tmp_path / 'a_file'}"], "is a file, not a directory"))
  for args, message in cases:
    assert cli_main(["repack", f"--out={tmp_path / 'out'}", *args]) == 2, args
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, (args, err)
  assert not (tmp_path / "out").exists()
