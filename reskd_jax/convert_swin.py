"""Convert Video Swin weights (official release, mmaction2 1.x, or 2D ImageNet Swin) to Flax.

Library use::

    variables, info = convert_state_dict(torch.load(path, weights_only=True), "swin_b",
                                         fmt="videoswin")

Command line (through ``python -m reskd_jax.convert``, which hands these
formats to this module)::

    python -m reskd_jax.convert --format=videoswin --arch=swin_b \\
        --input=swin_base_patch244_window877_kinetics400_22k.pth --output=weights/swin_b_k400
    python -m reskd_jax.convert --format=swin2d --arch=swin_s \\
        --input=swin_small_patch4_window7_224.pth --output=weights/swin_s_in1k_inflated

Formats:

* ``videoswin``: a Video Swin recogniser, the official release
  (``backbone.norm.*``) or mmaction2 1.x (``backbone.norm3.*``); keys
  ``backbone.patch_embed.proj``, ``backbone.layers.i.blocks.j.{norm1, attn.qkv,
  attn.proj, attn.relative_position_bias_table, norm2, mlp.fc1, mlp.fc2}``,
  ``backbone.layers.i.downsample.{norm, reduction}``, ``cls_head.fc_cls``.
  The ``relative_position_index`` buffers are dropped (the model computes
  them), as is ``cls_head.fc_cls_t`` (the frozen teacher classifier that
  ResKD's Swin head keeps beside the student's).
* ``swin2d``: an ImageNet Swin image classifier (``{"model": state_dict}`` with
  ``patch_embed.proj``, ``layers.i.blocks.j...``, ``norm``, ``head``), inflated
  into a video model as the release's ``inflate_weights`` does: the patch
  kernel repeated over its temporal size and divided by it, each bias table
  (bicubically resized first if the 2D window differs) tiled over the
  ``2 Wd - 1`` temporal offsets; ``attn_mask`` buffers dropped; the ImageNet
  ``head`` becomes ``fc`` (a new label set takes its classifier from the
  initialisation, see ``checkpoint.merge_pretrained``).

Mapping: Conv3d ``(O, I, t, h, w) -> (t, h, w, I, O)``; Linear ``weight (out,
in) -> kernel (in, out)``; LayerNorm ``weight -> scale``. Everything is read
with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
import re
from typing import Any, Dict, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from reskd_jax import checkpoint, convert
from reskd_jax.convert import WeightsError
from reskd_jax.models import registry, swin

FORMATS = ("videoswin", "swin2d")

_IGNORED_PREFIXES = ("cls_head.fc_cls_t.",)  # ResKD's Swin head: the teacher's frozen fc


def _strip_buffers(sd: Mapping[str, Any]) -> Tuple[Dict[str, Any], list]:
  out, ignored = {}, []
  for key, value in sd.items():
    if key.endswith(("relative_position_index", "attn_mask", "num_batches_tracked")):
      ignored.append(key)
    else:
      out[key] = value
  return out, ignored


def _family_line(sd: Mapping[str, Any], arch: str, fmt: str) -> Optional[str]:
  """One line when ``sd`` is not a Swin model (None when it looks like one)."""
  if any(k.endswith("patch_embed.proj.weight") for k in sd):
    return None
  resnet = sorted(k for k in sd if re.search(r"(^|\.)(layer\d+\.\d+\.conv\d|conv1)\.", k))
  if resnet:
    return (f"the checkpoint is a ResNet-family model (keys such as {resnet[0]!r}), not a "
            f"Video Swin: convert it with --format=torchvision|mmaction and a ResNet or "
            f"SlowOnly --arch, or give a Swin checkpoint for --arch={arch}")
  return (f"the checkpoint has no 'patch_embed.proj.weight': it is not a Swin model "
          f"(first keys: {sorted(sd)[:6]}); --format={fmt} --arch={arch} needs one")


def _layout(sd: Mapping[str, Any]) -> Dict[str, Any]:
  """embed_dim, depths, num_heads read from torch-style ``backbone.*`` keys."""
  blocks: Dict[int, set] = {}
  heads: Dict[int, int] = {}
  for key, value in sd.items():
    m = re.match(r"^backbone\.layers\.(\d+)\.blocks\.(\d+)\.(.+)$", key)
    if m:
      i = int(m.group(1))
      blocks.setdefault(i, set()).add(int(m.group(2)))
      if m.group(2) == "0" and m.group(3) == "attn.relative_position_bias_table":
        heads[i] = int(value.shape[1])
  stages = sorted(blocks)
  proj = sd.get("backbone.patch_embed.proj.weight")
  return {
      "embed_dim": int(proj.shape[0]) if proj is not None else None,
      "depths": tuple(len(blocks[i]) for i in stages),
      "num_heads": tuple(heads.get(i, 0) for i in stages),
  }


def _check_arch(sd: Mapping[str, Any], arch: str, options: Mapping[str, Any]) -> None:
  """Refuses a Swin checkpoint of another size, naming the one it is."""
  have = _layout(sd)
  want = {k: (tuple(v) if isinstance(v, (list, tuple)) else v) for k, v in options.items()
          if k in have}
  diffs = [f"{k} {have[k]} (expected {want[k]})" for k in want if have[k] != want[k]]
  if not diffs:
    return
  actual = None
  for name in registry.names("swin"):
    defaults = registry.default_options(name)
    if all(tuple(defaults[k]) == have[k] if isinstance(have[k], tuple) else defaults[k] == have[k]
           for k in have):
      actual = name
  what = f"it is a {actual}" if actual else "it is not a standard Video Swin size"
  raise WeightsError(f"checkpoint has {', '.join(diffs)}: {what}, not a {arch}")


def video_keys(sd: Mapping[str, Any]) -> Dict[str, Any]:
  """Official / mmaction2 1.x recogniser keys -> the release's names (``backbone.norm``)."""
  out = {}
  for key, value in sd.items():
    if key.startswith("backbone.norm3."):
      key = "backbone.norm." + key[len("backbone.norm3."):]
    out[key] = value
  return out


def inflate_2d(sd: Mapping[str, Any], window_size, patch_size) -> Dict[str, Any]:
  """An ImageNet 2D Swin state dict -> Video Swin recogniser keys, inflated.

  As the release's ``inflate_weights``: patch kernel ``(C, 3, h, w)`` repeated
  ``Pt`` times over a new temporal axis and divided by ``Pt``; every bias
  table bicubically resized to ``(2Wh-1) x (2Ww-1)`` when its size differs,
  then repeated ``2 Wd - 1`` times (d-major rows). ``head`` -> ``cls_head.fc_cls``.
  """
  import torch

  wd, wh, ww = window_size
  out = {}
  for key, value in sd.items():
    value = torch.as_tensor(value)
    if key == "patch_embed.proj.weight":
      value = value.unsqueeze(2).repeat(1, 1, patch_size[0], 1, 1) / patch_size[0]
    elif key.endswith("relative_position_bias_table"):
      rows, heads = value.shape
      want = (2 * wh - 1) * (2 * ww - 1)
      if rows != want:
        side = int(round(rows**0.5))
        value = torch.nn.functional.interpolate(
            value.float().permute(1, 0).reshape(1, heads, side, side),
            size=(2 * wh - 1, 2 * ww - 1), mode="bicubic").reshape(heads, want).permute(1, 0)
      value = value.repeat(2 * wd - 1, 1)
    if key.startswith("head."):
      out["cls_head.fc_cls." + key[len("head."):]] = value
    else:
      out["backbone." + key] = value
  return out


# ---------------------------------------------------------------------------
# Flax side


def _torch_name(path: Tuple[str, ...]) -> str:
  """The release's key of a Flax parameter path (below ``params``)."""
  *modules, leaf = path
  if modules[0] == "fc":
    prefix = "cls_head.fc_cls"
  else:
    prefix = ".".join(re.sub(r"^(layers|blocks)_(\d+)$", r"\1.\2", m) for m in modules)
  if leaf in ("kernel", "scale"):
    leaf = "weight"
  return f"{prefix}.{leaf}"


def _torch_shape(shape, leaf: str):
  if leaf == "kernel" and len(shape) == 5:  # (t, h, w, I, O) -> (O, I, t, h, w)
    return (shape[4], shape[3], shape[0], shape[1], shape[2])
  if leaf == "kernel":
    return tuple(reversed(shape))
  return tuple(shape)


def _to_flax(value: np.ndarray, leaf: str) -> np.ndarray:
  value = value.astype(np.float32)
  if leaf == "kernel" and value.ndim == 5:
    return np.ascontiguousarray(value.transpose(2, 3, 4, 1, 0))
  if leaf == "kernel":
    return np.ascontiguousarray(value.T)
  return value


def template(model):
  """Shapes of ``model``'s variables (``jax.eval_shape``, nothing allocated)."""
  t = model.backbone.patch_size[0]
  dummy = jax.ShapeDtypeStruct((1, t, 32, 32, model.in_channels), jnp.float32)
  return jax.eval_shape(lambda x: model.init({"params": jax.random.PRNGKey(0)}, x), dummy)


def assign(sd: Mapping[str, Any], model, what: str,
           include_head: bool = True) -> Dict[str, Any]:
  """Release-named tensors -> ``{"params", "batch_stats": {}}`` for ``model``.

  Raises ``WeightsError`` listing missing / unexpected keys and shape
  mismatches (in the release's names); ``what`` names the model in it.
  """
  expected = {}
  for keypath, leaf in jax.tree_util.tree_flatten_with_path(template(model)["params"])[0]:
    path = tuple(str(getattr(k, "key", k)) for k in keypath)
    if path[0] == "fc" and not include_head:
      continue
    expected[_torch_name(path)] = (path, tuple(leaf.shape))
  if not include_head:
    sd = {k: v for k, v in sd.items() if not k.startswith("cls_head.")}
  missing = sorted(set(expected) - set(sd))
  unexpected = sorted(set(sd) - set(expected))
  mismatched = sorted(
      f"{k}: checkpoint {tuple(sd[k].shape)}, expected {_torch_shape(shape, path[-1])}"
      for k, (path, shape) in expected.items()
      if k in sd and tuple(sd[k].shape) != _torch_shape(shape, path[-1]))
  if missing or unexpected or mismatched:
    parts = [f"checkpoint does not fit {what}:"]
    if missing:
      parts.append(f"  missing keys ({len(missing)}): {convert._fmt_list(missing)}")
    if unexpected:
      parts.append(f"  unexpected keys ({len(unexpected)}): {convert._fmt_list(unexpected)}")
    if mismatched:
      parts.append(f"  shape mismatch ({len(mismatched)}): {'; '.join(mismatched[:20])}")
      if any(m.startswith("cls_head.") for m in mismatched):
        parts.append("  (for the classifier, pass --num-classes matching the checkpoint, "
                     "or leave it out)")
    raise WeightsError("\n".join(parts))
  params: Dict[str, Any] = {}
  for key, (path, _) in expected.items():
    node = params
    for p in path[:-1]:
      node = node.setdefault(p, {})
    node[path[-1]] = _to_flax(convert._to_numpy(sd[key]), path[-1])
  return {"params": params, "batch_stats": {}}


def prepare(obj: Any, arch: str, fmt: str, options: Mapping[str, Any],
            ignore_prefixes=()) -> Tuple[Dict[str, Any], list]:
  """A loaded file -> (release-named ``backbone.*``/``cls_head.*`` tensors, ignored keys)."""
  if fmt not in FORMATS:
    raise WeightsError(f"unknown Swin format {fmt!r}; expected one of {FORMATS}")
  sd = convert.extract_state_dict(obj, "torchvision")
  dropped = sorted(k for k in sd if k.startswith(tuple(ignore_prefixes) + _IGNORED_PREFIXES))
  sd = {k: v for k, v in sd.items() if k not in set(dropped)}
  line = _family_line(sd, arch, fmt)
  if line:
    raise WeightsError(line)
  sd, ignored = _strip_buffers(sd)
  proj = next(v for k, v in sd.items() if k.endswith("patch_embed.proj.weight"))
  if fmt == "videoswin":
    if len(proj.shape) == 4:
      raise WeightsError("the checkpoint is a 2D (image) Swin: inflate it with "
                            f"--format=swin2d --arch={arch}")
    if not any(k.startswith("backbone.") for k in sd):
      raise WeightsError("a Video Swin recogniser holds 'backbone.*' and 'cls_head.*' "
                            f"keys; found neither (first keys: {sorted(sd)[:6]})")
    sd = video_keys(sd)
  else:
    if len(proj.shape) != 4:
      raise WeightsError("the checkpoint is a video Swin (5-D patch kernel): convert it "
                            f"with --format=videoswin --arch={arch}")
    sd = inflate_2d(sd, options["window_size"], options["patch_size"])
  _check_arch(sd, arch, options)
  return sd, sorted(ignored + dropped)


def convert_state_dict(obj: Any, arch: str, fmt: str = "videoswin",
                       num_classes: Optional[int] = None, include_head: bool = True,
                       ignore_prefixes=(), **model_options) -> Tuple[Dict[str, Any], Dict]:
  """A loaded PyTorch file -> our Flax ``{"params", "batch_stats": {}}`` (numpy float32).

  Args:
    obj: the loaded file (a state dict, or a dict with ``state_dict``/``model``).
    arch: ``swin_t``, ``swin_s`` or ``swin_b``; a checkpoint of another size or
      family is refused in one line.
    fmt: ``"videoswin"`` (official or mmaction2 1.x recogniser) or ``"swin2d"``
      (ImageNet Swin, inflated).
    num_classes: expected classifier size; ``None`` takes it from the checkpoint.
    include_head: ``False`` drops the classifier.
    ignore_prefixes: keys of the file starting with any of these are dropped.
    model_options: options of the registry's ``build_model`` (e.g. a small
      ``embed_dim`` for tests; ``window_size`` for the inflation).

  Returns ``(variables, info)``; ``info`` has ``arch``, ``num_classes``,
  ``format``, ``ignored`` (dropped buffers and keys), ``include_head``.
  """
  registry.check_name(arch, "arch")
  if registry.family_name(arch) != "swin":
    raise WeightsError(f"--arch={arch} is not a Video Swin; formats {FORMATS} are for "
                          f"{', '.join(registry.names('swin'))}")
  options = {**registry.default_options(arch), **model_options}
  options.setdefault("window_size", swin.WINDOW_SIZE)
  options.setdefault("patch_size", swin.PATCH_SIZE)
  sd, ignored = prepare(obj, arch, fmt, options, ignore_prefixes)
  head = sd.get("cls_head.fc_cls.weight")
  if not include_head or head is None:
    include_head = False
  if num_classes is None:
    num_classes = int(head.shape[0]) if include_head else 400
  model = registry.build_model(arch, num_classes, **model_options)
  variables = assign(sd, model, f"{arch} with {num_classes} classes ({fmt})", include_head)
  info = {"arch": arch, "num_classes": num_classes if include_head else None, "format": fmt,
          "ignored": ignored, "include_head": include_head}
  return variables, info


def convert_file(input_path: str, output_dir: str, arch: str, fmt: str = "videoswin",
                 num_classes: Optional[int] = None, ignore_prefixes=(),
                 **model_options) -> Dict[str, Any]:
  """Reads ``input_path``, converts, writes a variables directory; returns its metadata.

  ``model_options`` (registry build options that differ from the architecture's
  defaults, e.g. for small test models) are recorded in ``meta.json``.
  """
  obj = convert.load_torch_file(input_path)
  variables, info = convert_state_dict(obj, arch, fmt=fmt, num_classes=num_classes,
                                       ignore_prefixes=ignore_prefixes, **model_options)
  meta = {
      **model_options,
      "arch": arch,
      "num_classes": info["num_classes"],
      "source": os.path.abspath(input_path),
      "source_format": fmt,
      "converter": "reskd_jax.convert",
  }
  checkpoint.save_variables(output_dir, variables, meta)
  return meta
