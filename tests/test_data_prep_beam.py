"""The TFDS builders' Beam path (DirectRunner) gives the same data set as the local paths."""

import tempfile

# apache_beam comes with the `beam` extra, which `make test` installs: no skipping.
import apache_beam as beam
import numpy as np
import tensorflow_datasets as tfds

import data_prep.tfds_builders  # noqa: F401  registers the builders
from data_prep import ConvertOptions, convert_format
from data_prep.cli import main as cli_main
from data_helpers import make_frames, put_video, read_records

CLASSES = ["abseiling", "zumba"]


def _manual_dir(root):
  """A Mini-Kinetics layout: 4 train videos, 2 val videos, one listed video missing."""
  manual = root / "manual"
  manual.mkdir()
  (manual / "classes.txt").write_text("\n".join(CLASSES) + "\n")
  lines = {"train_list.txt": [], "val_list.txt": []}
  for i in range(6):
    rel = f"{CLASSES[i % 2]}/c{i}.mp4"
    put_video(str(manual / "videos" / rel), make_frames(i, num=3, h=24, w=32))
    lines["val_list.txt" if i >= 4 else "train_list.txt"].append(f"{rel} {i % 2}\n")
  (manual / "train_list.txt").write_text("".join(lines["train_list.txt"]) + "missing.mp4 0\n")
  (manual / "val_list.txt").write_text("".join(lines["val_list.txt"]))
  return manual


def _load(data_dir, config, split):
  """video_id -> (label, frames) of a built split."""
  ds = tfds.load(f"reskd_minik/{config}", split=split, data_dir=str(data_dir))
  return {ex["video_id"].numpy().decode(): (int(ex["label"]), ex["frames"].numpy())
          for ex in ds}


def test_beam_direct_runner_equals_local_builder_and_converter(tmp_path, monkeypatch):
  # tfds makes an (empty, never removed) temporary folder per builder: keep it in tmp_path
  monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
  manual = _manual_dir(tmp_path)
  options = beam.options.pipeline_options.PipelineOptions(
      ["--runner=DirectRunner", "--direct_num_workers=1"])
  for config, extra in (("beam", {"beam_options": options}), ("default", {})):
    builder = tfds.builder(f"reskd_minik/{config}", data_dir=str(tmp_path / config))
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(manual), **extra))
    assert builder.info.features["label"].names == CLASSES
    assert builder.info.splits["train"].num_examples == 4  # the missing video skipped
    assert builder.info.splits["validation"].num_examples == 2

  for split, converter_split in (("train", "train"), ("validation", "val")):
    from_beam = _load(tmp_path / "beam", "beam", split)
    local = _load(tmp_path / "default", "default", split)
    assert sorted(from_beam) == sorted(local)
    for vid, (label, frames) in local.items():
      assert from_beam[vid][0] == label, vid
      np.testing.assert_array_equal(from_beam[vid][1], frames, err_msg=vid)

    # `python -m data_prep` with the builder's options writes the same frames.
    annotations = manual / ("train_list.txt" if split == "train" else "val_list.txt")
    convert_format("minik", str(annotations), str(manual / "videos"), str(tmp_path / "records"),
                   converter_split, classes=str(manual / "classes.txt"),
                   options=ConvertOptions(short_side=256, jpeg_quality=90), workers=1,
                   log=lambda m: None, warn=lambda m: None)
    _, records = read_records(str(tmp_path / "records"), converter_split)
    assert sorted(records) == sorted(from_beam)
    for vid, (labels, frames) in records.items():
      assert labels == (from_beam[vid][0],), vid
      np.testing.assert_array_equal(frames, from_beam[vid][1], err_msg=vid)

  # `repack --from-tfds` turns the Beam build into the layout training reads: the same
  # videos, labels and frames as the converter's (split validation written as val).
  assert cli_main(["repack", "--from-tfds=reskd_minik/beam", f"--tfds-data-dir={tmp_path / 'beam'}",
                   f"--out={tmp_path / 'from_beam'}"]) == 0
  for split in ("train", "val"):
    _, want = read_records(str(tmp_path / "records"), split)
    manifest, got = read_records(str(tmp_path / "from_beam"), split)
    assert manifest["classes"] == CLASSES
    assert sorted(got) == sorted(want)
    for vid, (labels, frames) in want.items():
      assert got[vid][0] == labels, vid
      np.testing.assert_array_equal(got[vid][1], frames, err_msg=vid)
