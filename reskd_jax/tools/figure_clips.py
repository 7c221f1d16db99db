"""The clips Figure 4 is drawn on: arrays, video files, frame folders, or a data set's eval clips."""

from __future__ import annotations

from typing import Any, Mapping, Optional

import jax
import ml_collections
import numpy as np

from reskd_jax import augment
from reskd_jax.data import pipeline, records, video_io
from reskd_jax.tools import inference


def model_from_workdir(path: str, overrides: Optional[Mapping[str, Any]] = None):
  """(model, variables) from a variables directory / workdir and its meta.json.

  The model includes the run's in-model resize (a student given its
  teacher's crop sees its own resolution, as in training).
  """
  run = inference.load(path, meta_overrides=overrides)
  return run.model, run.variables


def _resize_normalize(arr, resolution, normalized, mean, std) -> np.ndarray:
  arr = np.asarray(arr, np.float32)
  if not normalized:
    arr = (arr - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
  if resolution and arr.shape[2:4] != (resolution, resolution):
    n, t, _, _, c = arr.shape
    arr = np.asarray(jax.image.resize(arr, (n, t, resolution, resolution, c), "bilinear",
                                      antialias=False))
  return arr


def is_array_file(path: str) -> bool:
  return path.endswith((".npy", ".npz"))


def load_videos(path: str, resolution: Optional[int] = None, normalized: bool = False,
                mean=augment.IMAGENET_MEAN, std=augment.IMAGENET_STD,
                transform: Optional[inference.TrainedModel] = None) -> np.ndarray:
  """Clips ``(N, T, H, W, 3)``, normalised, from arrays or videos.

  ``path``: a ``.npy``/``.npz`` of ``(N, T, H, W, 3)`` (0-255 RGB unless
  ``normalized``), or comma-separated video files / frame folders, decoded by
  ``video_io`` and cut by the test transform of ``transform`` (a loaded run;
  the first view of each video). Resized bilinearly (no antialias, like the
  student's in-model resize) to ``resolution`` when given.
  """
  paths = [p for p in path.split(",") if p]
  if len(paths) == 1 and is_array_file(paths[0]):
    if paths[0].endswith(".npz"):
      with np.load(paths[0]) as data:
        arr = data[data.files[0]]
    else:
      arr = np.load(paths[0])
    arr = np.asarray(arr, np.float32)
    if arr.ndim == 4:
      arr = arr[None]
    if arr.ndim != 5 or arr.shape[-1] != 3:
      raise ValueError(f"{path}: expected videos of shape (N, T, H, W, 3), got {arr.shape}")
    return _resize_normalize(arr, resolution, normalized, mean, std)
  if transform is None:
    raise ValueError("load_videos: video files need a run's test transform (transform=)")
  clips = []
  for p in paths:
    if is_array_file(p):
      raise ValueError(f"{p}: give either one .npy/.npz or video files, not both")
    frames = video_io.read_video(p, transform.data.short_side)
    clips.append(transform.views(frames)[0])
  return _resize_normalize(np.stack(clips), resolution, False, transform.data.mean,
                           transform.data.std)


def load_eval_clips(data_dir: str, run: inference.TrainedModel, num_clips: int,
                    split: Optional[str] = None, resolution: Optional[int] = None) -> np.ndarray:
  """The first ``num_clips`` clips of a converted data set's eval split, cut by the run's
  test transform (first view), normalised; ``split`` defaults to "val", else "test"."""
  manifest = records.read_manifest(data_dir)
  splits = sorted(manifest.get("splits", {}))
  if split is None:
    split = next((s for s in ("val", "test") if s in splits), None)
    if split is None:
      raise ValueError(f"{data_dir!r} has no 'val' or 'test' split ({splits}); pass --split")
  data = ml_collections.ConfigDict(run.data.to_dict())
  data.data_dir, data.shuffle_buffer, data.cache = data_dir, 1, False
  ds = pipeline.create_dataset(data, split, train=False, batch_size=num_clips,
                                     num_classes=len(manifest.get("classes", ())) or 1)
  batch = next(ds.as_numpy_iterator())
  clips = batch["video"][:, 0][batch["mask"] > 0]
  return _resize_normalize(clips, resolution, False, run.data.mean, run.data.std)
