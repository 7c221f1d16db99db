"""Convert PyTorch ResNet weights (torchvision or mmaction2 TSN/TSM) to Flax variables.

Library use::

    variables, info = convert_state_dict(state_dict, "resnet50", fmt="torchvision")

Command line (writes a variables directory, see ``reskd_jax.checkpoints``)::

    python -m reskd_jax.convert --format=torchvision --arch=resnet50 \\
        --input=resnet50-0676ba61.pth --output=weights/r50_imagenet
    python -m reskd_jax.convert --format=mmaction --arch=resnet152 --num-classes=200 \\
        --input=tsn_r152_minik.pth --output=weights/r152_minik

Mapping: conv ``OIHW -> HWIO``; ``fc.weight (K, C) -> fc/kernel (C, K)``; BN
``weight -> scale``, ``bias -> bias``, ``running_mean -> mean``,
``running_var -> var``; ``num_batches_tracked`` is ignored. mmaction2 names
(``backbone.layer1.0.conv1.conv.weight``, ``...conv1.bn.*``, TSM's
``...conv1.net.conv.weight``, ``downsample.conv/bn``, ``cls_head.fc_cls.*``) are
first renamed to torchvision's.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np

FORMATS = ("torchvision", "mmaction")

# Blocks per stage and block type of each depth (as in models.ARCHS).
ARCH_LAYOUT = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
    "resnet101": ("bottleneck", (3, 4, 23, 3)),
    "resnet152": ("bottleneck", (3, 8, 36, 3)),
}

_BN_FIELDS = {"weight": "scale", "bias": "bias", "running_mean": "mean", "running_var": "var"}


class ConversionError(ValueError):
  """The checkpoint does not fit the requested architecture."""


# ---------------------------------------------------------------------------
# Reading and renaming


def load_torch_file(path: str) -> Mapping[str, Any]:
  """``torch.load(path, map_location="cpu", weights_only=True)`` with clear errors."""
  import torch

  if not os.path.exists(path):
    raise FileNotFoundError(f"no such file: {path!r}")
  try:
    return torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # pickle errors, zip errors, unsafe globals, ...
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip()
    first = text.splitlines()[0] if text else ""
    msg = f"could not read {path!r} as a PyTorch checkpoint: {type(e).__name__}: {first}"
    if "weights_only" in str(e) or "global" in str(e).lower():
      msg += ("\n  the file holds Python objects besides tensors (e.g. training metadata), "
              "which are not loaded for safety. If you trust it, save its weights alone "
              "and convert that file:\n    python -c \"import torch; c = torch.load('IN.pth', "
              "weights_only=False); torch.save(c.get('state_dict', c), 'OUT.pth')\"")
    raise ConversionError(msg) from e


def _to_numpy(value) -> np.ndarray:
  if hasattr(value, "detach"):
    value = value.detach().cpu()
    if str(value.dtype) == "torch.bfloat16":
      value = value.float()
    value = value.numpy()
  return np.asarray(value)


def extract_state_dict(obj: Any, fmt: str) -> Dict[str, Any]:
  """The flat ``{name: tensor}`` inside a loaded file (``state_dict``/``model`` wrappers)."""
  if not isinstance(obj, Mapping):
    raise ConversionError(f"expected a state dict (a mapping of names to tensors), got "
                          f"{type(obj).__name__}")
  for wrapper in ("state_dict", "model", "module"):
    if wrapper in obj and isinstance(obj[wrapper], Mapping):
      obj = obj[wrapper]
      break
  else:
    if fmt == "mmaction" and not any(str(k).startswith("backbone.") for k in obj):
      raise ConversionError("an mmaction2 checkpoint is a dict with 'state_dict' holding "
                            "'backbone.*' and 'cls_head.*' keys; found neither (top-level "
                            f"keys: {sorted(map(str, obj))[:10]})")
  out = {}
  for k, v in obj.items():
    k = str(k)
    if k.startswith("module."):  # DataParallel / DDP
      k = k[len("module."):]
    out[k] = v
  return out


_MM_STEM = re.compile(r"^conv1\.(conv|bn)\.(.+)$")
_MM_BLOCK = re.compile(r"^(layer\d+\.\d+)\.(conv\d)\.(?:net\.)?(conv|bn)\.(.+)$")
_MM_DOWN = re.compile(r"^(layer\d+\.\d+)\.downsample\.(conv|bn)\.(.+)$")


def mmaction_to_torchvision(state_dict: Mapping[str, Any]) -> Dict[str, Any]:
  """Renames mmaction2 TSN/TSM ResNet keys to torchvision's.

  Keys that are neither ``backbone.*`` nor ``cls_head.fc_cls.*`` are kept
  under their own name so that they show up as unexpected.
  """
  out = {}
  for key, value in state_dict.items():
    new = None
    if key.startswith("backbone."):
      k = key[len("backbone."):]
      m = _MM_STEM.match(k)
      if m:
        new = f"conv1.{m.group(2)}" if m.group(1) == "conv" else f"bn1.{m.group(2)}"
      if new is None:
        m = _MM_BLOCK.match(k)
        if m:
          block, conv, kind, field = m.groups()
          idx = conv[len("conv"):]
          new = f"{block}.conv{idx}.{field}" if kind == "conv" else f"{block}.bn{idx}.{field}"
      if new is None:
        m = _MM_DOWN.match(k)
        if m:
          block, kind, field = m.groups()
          new = f"{block}.downsample.{0 if kind == 'conv' else 1}.{field}"
    elif key.startswith("cls_head.fc_cls."):
      new = "fc." + key[len("cls_head.fc_cls."):]
    out[new if new is not None else key] = value
  return out


# ---------------------------------------------------------------------------
# Architecture checks


def detect_layout(state_dict: Mapping[str, Any]) -> Tuple[Optional[str], Tuple[int, ...]]:
  """(block type or None, blocks per stage) from torchvision-style keys."""
  blocks = {1: set(), 2: set(), 3: set(), 4: set()}
  bottleneck = False
  for key in state_dict:
    m = re.match(r"^layer(\d+)\.(\d+)\.(\w+)", key)
    if m and int(m.group(1)) in blocks:
      blocks[int(m.group(1))].add(int(m.group(2)))
      if m.group(3) in ("conv3", "bn3"):
        bottleneck = True
  counts = tuple(len(blocks[i]) for i in range(1, 5))
  if not any(counts):
    return None, counts
  return ("bottleneck" if bottleneck else "basic"), counts


def _arch_name(block: Optional[str], counts) -> Optional[str]:
  for name, layout in ARCH_LAYOUT.items():
    if layout == (block, tuple(counts)):
      return name
  return None


def check_depth(state_dict: Mapping[str, Any], arch: str) -> None:
  """Refuses a checkpoint of another depth, naming what it is."""
  block, counts = detect_layout(state_dict)
  want_block, want_counts = ARCH_LAYOUT[arch]
  if block is None:
    raise ConversionError(f"checkpoint has no 'layerX.Y.*' ResNet block weights "
                          f"(first keys: {sorted(state_dict)[:8]}); is --format right?")
  if (block, counts) == (want_block, want_counts):
    return
  actual = _arch_name(block, counts)
  what = f"it is a {actual}" if actual else f"it is not a standard ResNet ({block} blocks {counts})"
  diffs = [f"{have} blocks in layer{i + 1}"
           for i, (have, want) in enumerate(zip(counts, want_counts)) if have != want]
  if diffs:
    raise ConversionError(f"checkpoint has {', '.join(diffs)}: {what}, not a {arch}")
  raise ConversionError(f"checkpoint has {block} blocks "
                        f"({'with' if block == 'bottleneck' else 'without'} conv3): "
                        f"{what}, not a {arch}")


# ---------------------------------------------------------------------------
# Template and conversion


def flax_template(arch: str, num_classes: int, tsm: bool = False, **model_kwargs):
  """Shapes of our model's variables: ``{"params": ..., "batch_stats": ...}`` of ShapeDtypeStruct."""
  import jax
  import jax.numpy as jnp

  from reskd_jax.models import build_model

  model = build_model(arch, num_classes, tsm=tsm, **model_kwargs)
  res = model.backbone.total_stride
  dummy = jax.ShapeDtypeStruct((1, 1, res, res, model.in_channels), jnp.float32)
  return jax.eval_shape(lambda x: model.init({"params": jax.random.PRNGKey(0)}, x, train=False),
                        dummy)


def _flax_to_torch_name(coll: str, path: Tuple[str, ...]) -> Tuple[str, str]:
  """(torchvision key, kind) for a flax leaf path below ``params``/``batch_stats``."""
  *modules, leaf = path
  if modules[0] == "backbone":
    modules = modules[1:]
  parts = []
  for m in modules:
    mm = re.match(r"^layer(\d+)_(\d+)$", m)
    if mm:
      parts.append(f"layer{mm.group(1)}.{mm.group(2)}")
    elif m == "downsample_conv":
      parts.append("downsample.0")
    elif m == "downsample_bn":
      parts.append("downsample.1")
    else:
      parts.append(m)
  prefix = ".".join(parts)
  if leaf == "kernel":
    kind = "fc" if modules[-1] == "fc" else "conv"
    return f"{prefix}.weight", kind
  inverse = {v: k for k, v in _BN_FIELDS.items()}
  if modules[-1] == "fc" and leaf == "bias":
    return f"{prefix}.bias", "fc_bias"
  return f"{prefix}.{inverse[leaf]}", "bn"


def _torch_shape(flax_shape, kind):
  if kind == "conv":  # HWIO -> OIHW
    h, w, i, o = flax_shape
    return (o, i, h, w)
  if kind == "fc":
    return tuple(reversed(flax_shape))
  return tuple(flax_shape)


def _convert_array(value: np.ndarray, kind: str) -> np.ndarray:
  value = value.astype(np.float32)
  if kind == "conv":
    return np.ascontiguousarray(value.transpose(2, 3, 1, 0))
  if kind == "fc":
    return np.ascontiguousarray(value.T)
  return value


def _fmt_list(items, limit=20):
  items = sorted(items)
  text = ", ".join(items[:limit])
  if len(items) > limit:
    text += f", ... ({len(items) - limit} more)"
  return text


def convert_state_dict(state_dict: Mapping[str, Any], arch: str, fmt: str = "torchvision",
                       tsm: bool = False, num_classes: Optional[int] = None,
                       include_head: bool = True,
                       ignore_prefixes=()) -> Tuple[Dict[str, Any], Dict[str, Any]]:
  """A PyTorch state dict -> our Flax ``{"params", "batch_stats"}`` (numpy float32).

  Args:
    state_dict: the loaded file (a flat state dict, or a dict with
      ``state_dict``/``model`` holding one).
    arch: ``resnet18`` ... ``resnet152``; a checkpoint of another depth is refused.
    fmt: ``"torchvision"`` or ``"mmaction"`` (TSN/TSM ResNet recogniser).
    tsm: recorded for the caller; TSM has no parameters of its own.
    num_classes: expected classifier size; ``None`` takes it from the checkpoint.
    include_head: ``False`` drops ``fc`` (backbone-only checkpoints).
    ignore_prefixes: keys of the file starting with any of these are dropped
      before checking (e.g. extra modules saved beside the recogniser).

  Returns ``(variables, info)`` where ``info`` has ``num_classes``, ``arch``,
  ``ignored`` (e.g. ``num_batches_tracked`` keys).

  Raises ``ConversionError`` listing missing / unexpected keys and shape
  mismatches (in the checkpoint's torchvision-style names).
  """
  if fmt not in FORMATS:
    raise ConversionError(f"unknown format {fmt!r}; expected one of {FORMATS}")
  if arch not in ARCH_LAYOUT:
    raise ConversionError(f"unknown arch {arch!r}; expected one of {sorted(ARCH_LAYOUT)}")
  sd = extract_state_dict(state_dict, fmt)
  dropped = sorted(k for k in sd if ignore_prefixes and k.startswith(tuple(ignore_prefixes)))
  sd = {k: v for k, v in sd.items() if k not in set(dropped)}
  if fmt == "mmaction":
    sd = mmaction_to_torchvision(sd)
  ignored = sorted(k for k in sd if k.endswith("num_batches_tracked"))
  sd = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
  check_depth(sd, arch)

  if num_classes is None:
    if "fc.weight" in sd and include_head:
      num_classes = int(sd["fc.weight"].shape[0])
    else:
      num_classes = 1000
  template = flax_template(arch, num_classes)

  import jax
  expected = {}  # torch key -> (collection, flax path, kind, flax shape)
  for coll in ("params", "batch_stats"):
    flat = jax.tree_util.tree_flatten_with_path(template[coll])[0]
    for keypath, leaf in flat:
      path = tuple(str(getattr(k, "key", k)) for k in keypath)
      if not include_head and path[0] == "fc":
        continue
      tkey, kind = _flax_to_torch_name(coll, path)
      expected[tkey] = (coll, path, kind, tuple(leaf.shape))

  if not include_head:
    sd = {k: v for k, v in sd.items() if not k.startswith("fc.")}
  missing = sorted(set(expected) - set(sd))
  unexpected = sorted(set(sd) - set(expected))
  mismatched = []
  for tkey, (coll, path, kind, fshape) in expected.items():
    if tkey in sd:
      have = tuple(sd[tkey].shape)
      want = _torch_shape(fshape, kind)
      if have != want:
        mismatched.append(f"{tkey}: checkpoint {have}, expected {want}")
  if missing or unexpected or mismatched:
    parts = [f"checkpoint ({fmt}) does not fit {arch} with {num_classes} classes:"]
    if missing:
      parts.append(f"  missing keys ({len(missing)}): {_fmt_list(missing)}")
    if unexpected:
      parts.append(f"  unexpected keys ({len(unexpected)}): {_fmt_list(unexpected)}")
    if mismatched:
      parts.append(f"  shape mismatch ({len(mismatched)}): {'; '.join(sorted(mismatched)[:20])}")
      if any(m.startswith("fc.") for m in mismatched):
        parts.append("  (for the classifier, pass --num-classes matching the checkpoint, "
                     "or leave it out)")
    raise ConversionError("\n".join(parts))

  variables: Dict[str, Any] = {"params": {}, "batch_stats": {}}
  for tkey, (coll, path, kind, fshape) in expected.items():
    node = variables[coll]
    for p in path[:-1]:
      node = node.setdefault(p, {})
    node[path[-1]] = _convert_array(_to_numpy(sd[tkey]), kind)
  info = {"arch": arch, "num_classes": num_classes, "format": fmt, "tsm": bool(tsm),
          "ignored": ignored + dropped, "include_head": include_head}
  return variables, info


def convert_file(input_path: str, output_dir: str, arch: str, fmt: str = "torchvision",
                 tsm: bool = False, num_segments: Optional[int] = None,
                 num_classes: Optional[int] = None, ignore_prefixes=()) -> Dict[str, Any]:
  """Reads ``input_path``, converts, writes a variables directory; returns its metadata."""
  from reskd_jax import checkpoints, meta as meta_lib

  obj = load_torch_file(input_path)
  variables, info = convert_state_dict(obj, arch, fmt=fmt, tsm=tsm, num_classes=num_classes,
                                       ignore_prefixes=ignore_prefixes)
  meta = meta_lib.for_converted(arch, info["num_classes"], tsm, num_segments,
                                os.path.abspath(input_path), fmt)
  checkpoints.save_variables(output_dir, variables, meta)
  return meta


# ---------------------------------------------------------------------------
# CLI


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="python -m reskd_jax.convert",
      description="Convert torchvision / mmaction2 ResNet weights to reskd_jax variables.")
  p.add_argument("--format", required=True, choices=FORMATS,
                 help="torchvision ImageNet state dict, or mmaction2 TSN/TSM recogniser")
  p.add_argument("--arch", required=True, choices=sorted(ARCH_LAYOUT))
  p.add_argument("--tsm", action="store_true", help="the checkpoint is a TSM model")
  p.add_argument("--num-segments", type=int, default=8, help="TSM segments (metadata)")
  p.add_argument("--num-classes", type=int, default=None,
                 help="classifier size to expect (default: from the checkpoint)")
  p.add_argument("--ignore", default="",
                 help="comma-separated key prefixes of the file to drop (e.g. 'teacher.')")
  p.add_argument("--input", required=True, help="the .pth file")
  p.add_argument("--output", required=True, help="output directory")
  return p


def main(argv=None) -> int:
  args = _parser().parse_args(argv)
  try:
    if os.path.isfile(args.output):
      raise ConversionError(f"--output={args.output!r} is a file; give a directory")
    meta = convert_file(args.input, args.output, args.arch, fmt=args.format, tsm=args.tsm,
                        num_segments=args.num_segments, num_classes=args.num_classes,
                        ignore_prefixes=tuple(p for p in args.ignore.split(",") if p))
  except (ConversionError, FileNotFoundError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"wrote {args.output}: {meta['arch']}, {meta['num_classes']} classes, "
        f"tsm={meta['tsm']} (from {args.input})")
  return 0


if __name__ == "__main__":
  sys.exit(main())
