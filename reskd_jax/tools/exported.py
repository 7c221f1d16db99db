"""Loading an export directory (``python -m reskd_jax.tools.export``) with jax, numpy and json only.

``reskd_jax.tools.exported.load(DIR)`` returns an :class:`ExportedModel`: call it on
uint8 views ``(batch, T, S, S, 3)`` for class probabilities ``(batch, K)``, or
give :meth:`ExportedModel.predict_file` a video file or frame folder: it
applies the export's own recorded test transform (frame sampling, short-side
resize, crops; ``export.json``) and averages the views' probabilities, as
``python -m reskd_jax.tools.predict`` and the evaluator do. Loading imports neither
the model code nor TensorFlow; ``predict_file`` imports the decoder and the
test transform (TensorFlow) when first called.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np

ARTIFACT_FILE = "model.jax_export"
INFO_FILE = "export.json"


def test_views(frames: np.ndarray, data) -> np.ndarray:
  """A decoded video ``(N, H, W, 3)`` uint8 -> its test views ``(V, T, S, S, 3)`` uint8.

  The evaluator's transform (``decode.eval_indices``/``eval_views``):
  frame sampling, short-side resize, centre or three crops. ``data``: the
  test-transform keys of a run's ``config.data`` (attribute access).
  """
  import tensorflow as tf
  from reskd_jax.data import decode
  frames = np.asarray(frames)
  if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] < 1:
    raise ValueError(f"expected decoded frames (N, H, W, 3) with N >= 1, got {frames.shape}")
  indices = decode.eval_indices(frames.shape[0], data)
  unique, inverse = tf.unique(tf.reshape(indices, [-1]))
  images = tf.gather(tf.convert_to_tensor(frames, tf.uint8), unique)
  return decode.eval_views(images, inverse, data).numpy()


class ExportedModel:
  """A loaded export: call it on uint8 ``(batch, T, S, S, 3)`` to get ``(batch, K)``."""

  def __init__(self, directory: str):
    info_path = os.path.join(directory, INFO_FILE)
    self.info = {}
    if os.path.isfile(info_path):
      with open(info_path, encoding="utf-8") as f:
        self.info = json.load(f)
    path = os.path.join(directory, ARTIFACT_FILE)
    if not os.path.isfile(path):
      raise FileNotFoundError(f"{directory!r} holds no {ARTIFACT_FILE} (written by "
                              f"python -m reskd_jax.tools.export)")
    with open(path, "rb") as f:
      self.exported = jax.export.deserialize(bytearray(f.read()))
    self.class_names = tuple(self.info.get("class_names", ()))

  @property
  def transform(self):
    """The recorded test transform (``export.json`` input.transform), attribute access."""
    import ml_collections
    data = dict(self.info.get("input", {}).get("transform") or {})
    if not data:
      raise ValueError("export.json records no test transform (input.transform); export the "
                       "model again with python -m reskd_jax.tools.export")
    data["mean"], data["std"] = tuple(data["mean"]), tuple(data["std"])
    return ml_collections.ConfigDict(data)

  def __call__(self, video) -> jax.Array:
    return self.exported.call(jnp.asarray(np.asarray(video, np.uint8)))

  def predict_file(self, path: str, **frame_options) -> np.ndarray:
    """Class probabilities ``(K,)`` of a video file or frame folder (views averaged).

    Decoded as ``python -m reskd_jax.tools.predict`` decodes (``reskd_jax.data.video_io``;
    ``frame_options``: its ``FrameOptions``, e.g. ``fps=``), then sampled and
    cropped by the export's recorded test transform.
    """
    from reskd_jax.data import video_io
    data = self.transform
    frames = video_io.read_video(path, data.short_side, video_io.FrameOptions(**frame_options))
    views = test_views(frames, data)
    return np.asarray(self(views)).mean(axis=0)


def load(directory: str) -> ExportedModel:
  """The callable of an export directory (see :class:`ExportedModel`)."""
  return ExportedModel(directory)
