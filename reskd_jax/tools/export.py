"""`python -m reskd_jax.tools.export`: a trained model as a serving artifact, preprocessing included.

  python -m reskd_jax.tools.export --workdir=runs/minik_r50_112 --output=exported/minik_r50_112

The function exported takes a uint8 RGB video batch ``(batch, T, S, S, 3)``
(the T sampled frames of one view, cropped to the run's crop size S) and
returns class probabilities ``(batch, K)``: normalisation (the run's
mean/std, `reskd_jax.augment`), the student's in-model resize and softmax are
inside. The batch dimension is symbolic: one artifact serves any batch size.
The output directory holds

  model.jax_export     `jax.export` serialization (StableHLO; CPU, CUDA, TPU)
  export.json          class names, the expected input and how to make it
  saved_model/         a TensorFlow SavedModel (jax2tf), signature "serving_default",
                       unless --no-saved-model

`reskd_jax.tools.exported.load(DIR)` returns a callable (NumPy/JAX uint8 in,
probabilities out) that needs neither the model code nor the variables, nor
TensorFlow; its ``predict_file(path)`` applies the
export's own frame sampling and crops to a video file.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional, Sequence

import jax
import jax.numpy as jnp

from reskd_jax import platforms
from reskd_jax.data import clips
from reskd_jax.errors import EXIT_BAD_INPUT, ReskdError
from reskd_jax.fileio import atomic_path, write_json_atomic
from reskd_jax.tools.exported import ARTIFACT_FILE, INFO_FILE

if TYPE_CHECKING:
  from reskd_jax.tools import inference

# Writing an export needs the model code and TensorFlow; loading one does not, so these
# modules are imported by the functions that write (see reskd_jax.tools.exported).
SAVED_MODEL_DIR = "saved_model"
PLATFORMS = ("cpu", "cuda", "tpu")


def serving_function(model: inference.TrainedModel) -> Callable:
  """``uint8 (b, T, S, S, 3) -> float32 (b, K)`` with the variables closed over."""
  probabilities = model.probabilities_fn()
  variables = jax.tree.map(jnp.asarray, model.variables)

  def serve(video):
    return probabilities(variables, video[:, None])  # one view per video

  return serve


def input_spec(model: inference.TrainedModel, batch: Any = "b") -> jax.ShapeDtypeStruct:
  """The input the exported function takes; ``batch`` is a size or a symbolic name."""
  if isinstance(batch, str):
    (batch,) = jax.export.symbolic_shape(batch)
  data = model.data
  return jax.ShapeDtypeStruct(
      (batch, clips.frames_per_clip(data), data.crop_size, data.crop_size, 3),
      jnp.uint8)


def export_model(model: inference.TrainedModel,
                 platforms: Sequence[str] = PLATFORMS) -> jax.export.Exported:
  """The `jax.export.Exported` of :func:`serving_function` with a symbolic batch."""
  return jax.export.export(jax.jit(serving_function(model)), platforms=tuple(platforms))(
      input_spec(model))


def describe(model: inference.TrainedModel, platforms: Sequence[str]) -> Dict[str, Any]:
  """What `export.json` says: class names, the input and how to produce it."""
  data = model.data
  frames = clips.frames_per_clip(data)
  sampling = (f"{frames} frames, one at the centre of each of {frames} equal segments"
              if data.sampling == "tsn" else
              f"{frames} consecutive frames every {data.frame_interval} (dense)")
  crops = "the centre crop" if data.test_num_crops == 1 else "three crops along the long side"
  views = clips.num_views(data)
  return {
      "class_names": list(model.class_names),
      "num_classes": model.num_classes,
      "input": {
          "shape": ["batch", frames, data.crop_size, data.crop_size, 3],
          "dtype": "uint8",
          "layout": "RGB frames, 0-255, (batch, frames, height, width, channels)",
          "how": (f"sample {sampling}; resize the short side to {data.short_side} "
                  f"(bilinear); take {crops} of {data.crop_size}x{data.crop_size}. One row "
                  f"is one view; the run's evaluation averages the probabilities of "
                  f"{views} view(s) per video"),
          "transform": {k: (list(v) if isinstance(v, tuple) else v) for k, v in data.items()},
      },
      "output": {"shape": ["batch", model.num_classes], "dtype": "float32",
                 "meaning": "class probabilities (softmax), in class_names order"},
      "network": {"arch": model.meta.get("arch"), "resolution": model.resolution,
                  "source": os.path.abspath(model.path)},
      "platforms": list(platforms),
  }


def save_tf_saved_model(model: inference.TrainedModel, path: str) -> str:
  """A TensorFlow SavedModel of :func:`serving_function` (jax2tf, variables as tf.Variables)."""
  import tensorflow as tf
  from jax.experimental import jax2tf

  probabilities = model.probabilities_fn()
  tf_vars = tf.nest.map_structure(lambda x: tf.Variable(x, trainable=False), model.variables)
  converted = jax2tf.convert(lambda v, video: probabilities(v, video[:, None]),
                             polymorphic_shapes=[None, "(b, ...)"], with_gradient=False,
                             native_serialization_platforms=PLATFORMS)
  data = model.data
  spec = tf.TensorSpec([None, clips.frames_per_clip(data), data.crop_size,
                        data.crop_size, 3], tf.uint8, name="video")
  module = tf.Module()
  module._variables = tf.nest.flatten(tf_vars)  # tracked, saved with the model
  module.serve = tf.function(lambda video: {"probabilities": converted(tf_vars, video)},
                             input_signature=[spec], autograph=False)
  with atomic_path(path) as tmp:  # an existing SavedModel stays until the new one is whole
    tf.saved_model.save(module, tmp, signatures={"serving_default": module.serve})
  return path


def export_directory(model: inference.TrainedModel, output: str, *,
                     platforms: Sequence[str] = PLATFORMS, saved_model: bool = True,
                     log=print) -> Dict[str, Any]:
  """Writes the artifact, export.json and (optionally) the SavedModel; returns export.json."""
  os.makedirs(output, exist_ok=True)
  exported = export_model(model, platforms)
  path = os.path.join(output, ARTIFACT_FILE)
  with atomic_path(path) as tmp, open(tmp, "wb") as f:
    f.write(exported.serialize())
  info = describe(model, platforms)
  info["files"] = {"jax_export": ARTIFACT_FILE}
  log(f"wrote {path} ({os.path.getsize(path) / 1e6:.1f} MB, platforms {', '.join(platforms)})")
  if saved_model:
    try:
      save_tf_saved_model(model, os.path.join(output, SAVED_MODEL_DIR))
      info["files"]["tf_saved_model"] = SAVED_MODEL_DIR
      log(f"wrote {os.path.join(output, SAVED_MODEL_DIR)} (TensorFlow SavedModel, "
          f"signature serving_default: video -> probabilities)")
    except Exception as e:  # noqa: BLE001  jax2tf / TF failures of any kind
      info["tf_saved_model_error"] = f"{type(e).__name__}: {e}"
      log(f"warning: no TensorFlow SavedModel ({type(e).__name__}: {e}); the jax.export "
          f"artifact is complete")
  write_json_atomic(os.path.join(output, INFO_FILE), info)
  return info


def main(argv: Optional[Sequence[str]] = None) -> int:
  from reskd_jax.tools import inference
  p = argparse.ArgumentParser(prog="python -m reskd_jax.tools.export",
                              description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter,
                              epilog=__doc__.split("\n\n", 1)[1])
  p.add_argument("--workdir", required=True, help="training workdir or variables directory")
  p.add_argument("--output", required=True, help="output directory")
  p.add_argument("--classes", default=None,
                 help="class names when meta.json has none (text file, JSON list or data dir)")
  p.add_argument("--platforms", default=",".join(PLATFORMS),
                 help=f"comma-separated lowering platforms (default {','.join(PLATFORMS)})")
  p.add_argument("--no-saved-model", action="store_true", help="skip the TF SavedModel")
  args = p.parse_args(argv)
  platforms.hide_gpus_from_tf()
  try:
    model = inference.load(args.workdir, classes=args.classes)
    export_directory(model, args.output, platforms=[s for s in args.platforms.split(",") if s],
                     saved_model=not args.no_saved_model)
  except (ReskdError, FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return EXIT_BAD_INPUT
  return 0


if __name__ == "__main__":
  sys.exit(main())
