"""Convert PyTorch weights (torchvision, mmaction2 TSN/TSM/SlowOnly, Video Swin) to Flax variables.

Library use::

    variables, info = convert_state_dict(state_dict, "resnet50", fmt="torchvision")

Command line (writes a variables directory, see ``reskd_jax.checkpoints``)::

    python -m reskd_jax.tools.convert_weights --format=torchvision --arch=resnet50 \\
        --input=resnet50-0676ba61.pth --output=weights/r50_imagenet
    python -m reskd_jax.tools.convert_weights --format=mmaction --arch=resnet152 --num-classes=200 \\
        --input=tsn_r152_minik.pth --output=weights/r152_minik
    python -m reskd_jax.tools.convert_weights --format=mmaction --arch=slowonly_r50 \\
        --input=slowonly_r50_8x8x1_k400.pth --output=weights/slowonly_r50_k400
    python -m reskd_jax.tools.convert_weights --format=torchvision --arch=slowonly_r50 \\
        --input=resnet50-11ad3fa6.pth --output=weights/r50_imagenet_slowonly  # inflated
    python -m reskd_jax.tools.convert_weights --format=videoswin --arch=swin_b \
        --input=swin_base_patch244_window877_kinetics400_22k.pth --output=weights/swin_b_k400

Mapping: conv ``O, I, *kernel -> *kernel, I, O`` (2D and 3D); linear ``(K, C)
-> kernel (C, K)``; BN ``weight -> scale``, ``bias -> bias``, ``running_mean ->
mean``, ``running_var -> var``; ``num_batches_tracked`` is ignored. For 2D
ResNets, mmaction2 names (``backbone.layer1.0.conv1.conv.weight``,
``...conv1.bn.*``, TSM's ``...conv1.net.conv.weight``, ``downsample.conv/bn``,
``cls_head.fc_cls.*``) are first renamed to torchvision's; SlowOnly keeps
mmaction2's names, and a torchvision ResNet-50 given for SlowOnly is inflated
(:func:`inflate_torchvision`). Video Swin files (official, mmaction2 1.x, or a
2D ImageNet Swin to inflate) are mapped by :mod:`reskd_jax.tools.swin_weights`.
Which families and formats exist: :data:`FAMILY_WEIGHTS` (the architecture
names come from ``reskd_jax.models``).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sys
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import jax
import numpy as np

from reskd_jax import checkpoints, meta as meta_lib, models
from reskd_jax.data import labels
from reskd_jax.errors import DataError, WeightsError
from reskd_jax.models import slowonly
from reskd_jax.tools import swin_weights

FORMATS = ("torchvision", "mmaction") + swin_weights.FORMATS

# Block type and blocks per stage of each 2D ResNet depth, from the model registry.
ARCH_LAYOUT = {name: (models.default_options(name)["block"],
                      tuple(models.default_options(name)["stage_sizes"]))
               for name in models.names("resnet")}

_BN_FIELDS = {"weight": "scale", "bias": "bias", "running_mean": "mean", "running_var": "var"}


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
    raise WeightsError(msg) from e


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
    raise WeightsError(f"expected a state dict (a mapping of names to tensors), got "
                          f"{type(obj).__name__}")
  for wrapper in ("state_dict", "model", "module"):
    if wrapper in obj and isinstance(obj[wrapper], Mapping):
      obj = obj[wrapper]
      break
  else:
    if fmt == "mmaction" and not any(str(k).startswith("backbone.") for k in obj):
      raise WeightsError("an mmaction2 checkpoint is a dict with 'state_dict' holding "
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
    raise WeightsError(f"checkpoint has no 'layerX.Y.*' ResNet block weights "
                          f"(first keys: {sorted(state_dict)[:8]}); is --format right?")
  if (block, counts) == (want_block, want_counts):
    return
  actual = _arch_name(block, counts)
  what = f"it is a {actual}" if actual else f"it is not a standard ResNet ({block} blocks {counts})"
  diffs = [f"{have} blocks in layer{i + 1}"
           for i, (have, want) in enumerate(zip(counts, want_counts)) if have != want]
  if diffs:
    raise WeightsError(f"checkpoint has {', '.join(diffs)}: {what}, not a {arch}")
  raise WeightsError(f"checkpoint has {block} blocks "
                        f"({'with' if block == 'bottleneck' else 'without'} conv3): "
                        f"{what}, not a {arch}")


# ---------------------------------------------------------------------------
# Template and conversion


def flax_template(arch: str, num_classes: int, **model_kwargs):
  """Shapes of our model's variables (``params``, and ``batch_stats`` where it has BatchNorm)."""
  model = models.build_model(arch, num_classes, **model_kwargs)
  res = models.min_resolution(model)
  frames = models.family_of(model).temporal_multiple
  return jax.eval_shape(lambda: models.init_variables(model, jax.random.key(0), frames, res))


def _flax_to_torch_name(path: Tuple[str, ...]) -> Tuple[str, str]:
  """(torchvision key, kind) for a 2D ResNet leaf path below ``params``/``batch_stats``."""
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
    return f"{prefix}.weight", ("linear" if modules[-1] == models.HEAD_NAME else "conv")
  if modules[-1] == models.HEAD_NAME and leaf == "bias":
    return f"{prefix}.bias", "plain"
  inverse = {v: k for k, v in _BN_FIELDS.items()}
  return f"{prefix}.{inverse[leaf]}", "plain"


def _prepare_resnet(sd: Dict[str, Any], fmt: str, arch: str,
                    options: Mapping[str, Any]) -> Dict[str, Any]:
  del options  # the depth is the architecture's
  if fmt == "mmaction":
    sd = mmaction_to_torchvision(sd)
  check_depth(sd, arch)
  return sd


def _slowonly_name(path: Tuple[str, ...]) -> Tuple[str, str]:
  """(mmaction2 key, kind) for a SlowOnly leaf path below ``params``/``batch_stats``."""
  *modules, leaf = path
  inverse = {v: k for k, v in _BN_FIELDS.items()}
  if modules == [models.HEAD_NAME]:
    return f"cls_head.fc_cls.{'weight' if leaf == 'kernel' else 'bias'}", (
        "linear" if leaf == "kernel" else "plain")
  if len(modules) == 1:  # stem: conv1 / bn1 -> backbone.conv1.{conv,bn}
    prefix = "backbone.conv1"
    layer = modules[0]
  else:
    block, layer = modules
    m = re.match(r"^layer(\d+)_(\d+)$", block)
    prefix = f"backbone.layer{m.group(1)}.{m.group(2)}"
    if layer.startswith("downsample_"):
      prefix += ".downsample"
    else:
      prefix += f".conv{layer[-1]}"
  if leaf == "kernel":
    return f"{prefix}.conv.weight", "conv"
  return f"{prefix}.bn.{inverse[leaf]}", "plain"


_TV_STEM = re.compile(r"^(conv1|bn1)\.(.+)$")
_TV_BLOCK = re.compile(r"^layer(\d+)\.(\d+)\.(conv|bn)(\d)\.(.+)$")
_TV_DOWN = re.compile(r"^layer(\d+)\.(\d+)\.downsample\.([01])\.(.+)$")


def inflate_torchvision(sd: Mapping[str, Any], arch: str) -> Dict[str, Any]:
  """A torchvision 2D ResNet state dict -> SlowOnly (mmaction2) names, convs inflated.

  As mmaction2's ``ResNet3d.inflate_weights`` (``pretrained2d=True``, how the
  released SlowOnly runs start from ImageNet): a 2D kernel ``(O, I, h, w)``
  becomes ``(O, I, t, h, w)``, repeated over ``t`` and divided by ``t`` (t = 3
  for the conv1 of the inflated stages, else 1); BN is copied; ``fc`` is kept
  as ``cls_head.fc_cls`` (dropped by ``init_from``, which keeps a fresh head).
  """
  block, counts = detect_layout(sd)
  want = tuple(models.default_options(arch)["stage_sizes"])
  if (block, counts) != ("bottleneck", want):
    actual = _arch_name(block, counts) or f"{block} blocks {counts}"
    raise WeightsError(f"a 2D ResNet inflated into {arch} must be a bottleneck ResNet with "
                       f"blocks {want}; the checkpoint is {actual}")
  out = {}
  for key, value in sd.items():
    t, new = 1, key
    m_stem, m_block, m_down = _TV_STEM.match(key), _TV_BLOCK.match(key), _TV_DOWN.match(key)
    if key.startswith("fc."):
      new = "cls_head.fc_cls." + key[len("fc."):]
    elif m_stem:
      kind = "conv" if m_stem.group(1) == "conv1" else "bn"
      new = f"backbone.conv1.{kind}.{m_stem.group(2)}"
    elif m_block:
      stage, idx, kind, n, field = m_block.groups()
      new = f"backbone.layer{stage}.{idx}.conv{n}.{kind}.{field}"
      if kind == "conv" and n == "1" and slowonly.INFLATE[int(stage) - 1]:
        t = 3
    elif m_down:
      stage, idx, sub, field = m_down.groups()
      new = f"backbone.layer{stage}.{idx}.downsample.{'conv' if sub == '0' else 'bn'}.{field}"
    if new.endswith("conv.weight"):
      value = _to_numpy(value)
      if value.ndim == 4:
        value = np.repeat(value[:, :, None], t, axis=2) / t
    out[new] = value
  return out


def _prepare_slowonly(sd: Dict[str, Any], fmt: str, arch: str,
                      options: Mapping[str, Any]) -> Dict[str, Any]:
  del options  # the depth is the architecture's
  if fmt == "torchvision":
    sd = inflate_torchvision(sd, arch)
  want = tuple(models.default_options(arch)["stage_sizes"])
  blocks = {i: set() for i in range(1, 5)}
  for key in sd:
    m = re.match(r"^backbone\.layer(\d+)\.(\d+)\.", key)
    if m and int(m.group(1)) in blocks:
      blocks[int(m.group(1))].add(int(m.group(2)))
  counts = tuple(len(blocks[i]) for i in range(1, 5))
  if counts != want:
    diffs = [f"{have} blocks in layer{i + 1}"
             for i, (have, w) in enumerate(zip(counts, want)) if have != w]
    raise WeightsError(f"checkpoint has {', '.join(diffs)}: it is not a {arch} "
                       f"(blocks per stage {want})")
  return sd


@dataclasses.dataclass(frozen=True)
class FamilyWeights:
  """How the checkpoints of one model family map onto our variables.

  Attributes:
    formats: the ``--format`` values this family's files come in.
    prepare: ``(state_dict, fmt, arch, options) -> state_dict`` renamed to the
      names ``source_key`` gives (and checked for depth), or ``WeightsError``;
      ``options`` are the model's build options (the architecture's defaults
      updated with the caller's).
    source_key: a leaf path below ``params``/``batch_stats`` -> ``(checkpoint
      key, kind)``, kind one of :data:`KINDS`.
    head_key: the classifier weight's key after ``prepare`` (its rows give the
      number of classes).
    ignored_suffixes: keys ending so (buffers the model recomputes) are dropped
      after ``prepare`` and reported in ``info["ignored"]``.
  """
  formats: Tuple[str, ...]
  prepare: Callable[[Dict[str, Any], str, str, Mapping[str, Any]], Dict[str, Any]]
  source_key: Callable[[Tuple[str, ...]], Tuple[str, str]]
  head_key: str
  ignored_suffixes: Tuple[str, ...] = ("num_batches_tracked",)


FAMILY_WEIGHTS: Dict[str, FamilyWeights] = {
    "resnet": FamilyWeights(formats=("torchvision", "mmaction"), prepare=_prepare_resnet,
                            source_key=_flax_to_torch_name, head_key="fc.weight"),
    "slowonly": FamilyWeights(formats=("mmaction", "torchvision"), prepare=_prepare_slowonly,
                              source_key=_slowonly_name, head_key="cls_head.fc_cls.weight"),
    "swin": FamilyWeights(formats=swin_weights.FORMATS, prepare=swin_weights.prepare,
                          source_key=swin_weights.source_key, head_key=swin_weights.HEAD_KEY,
                          ignored_suffixes=swin_weights.IGNORED_SUFFIXES),
}


def _conv_to_flax(value: np.ndarray) -> np.ndarray:  # (O, I, *k) -> (*k, I, O)
  return value.transpose(tuple(range(2, value.ndim)) + (1, 0))


def _conv_torch_shape(shape) -> Tuple[int, ...]:  # (*k, I, O) -> (O, I, *k)
  return (shape[-1], shape[-2], *shape[:-2])


# kind -> (checkpoint array -> our array, our shape -> checkpoint shape)
KINDS: Dict[str, Tuple[Callable, Callable]] = {
    "conv": (_conv_to_flax, _conv_torch_shape),
    "linear": (lambda v: v.T, lambda s: tuple(reversed(s))),
    "plain": (lambda v: v, tuple),
}

_FAMILY_WORDS = {"resnet": "a 2D ResNet", "slowonly": "a 3D ResNet (SlowOnly)",
                 "swin": "a Video Swin transformer"}


def detect_family(sd: Mapping[str, Any]) -> Tuple[Optional[str], str]:
  """(family or None, the evidence) from a flat state dict's keys and stem shape."""
  for key in sd:
    if key.endswith("patch_embed.proj.weight"):
      return "swin", f"it has {key!r}"
  for key in ("backbone.conv1.conv.weight", "conv1.weight", "backbone.conv1.weight"):
    if key in sd:
      shape = tuple(sd[key].shape)
      family = "slowonly" if len(shape) == 5 else "resnet" if len(shape) == 4 else None
      return family, f"{key} has shape {shape}"
  return None, ""


# (family, format) whose files hold another family's weights (inflated on conversion).
_SOURCE_FAMILY = {("slowonly", "torchvision"): "resnet"}


def _check_family(sd: Mapping[str, Any], arch: str, family: str, fmt: str) -> None:
  found, evidence = detect_family(sd)
  if _SOURCE_FAMILY.get((family, fmt)) == found:
    return
  if found is not None and found != family:
    others = ", ".join(models.names(found))
    raise WeightsError(f"checkpoint is {_FAMILY_WORDS.get(found, found)} ({evidence}), not "
                       f"{_FAMILY_WORDS.get(family, family)} like {arch}; pass --arch="
                       f"one of {others}")


def _fmt_list(items, limit=20):
  items = sorted(items)
  text = ", ".join(items[:limit])
  if len(items) > limit:
    text += f", ... ({len(items) - limit} more)"
  return text


def convert_state_dict(state_dict: Mapping[str, Any], arch: str, fmt: str = "torchvision",
                       tsm: bool = False, num_classes: Optional[int] = None,
                       include_head: bool = True,
                       ignore_prefixes=(),
                       **model_options) -> Tuple[Dict[str, Any], Dict[str, Any]]:
  """A PyTorch state dict -> our Flax variables (numpy float32).

  Args:
    state_dict: the loaded file (a flat state dict, or a dict with
      ``state_dict``/``model`` holding one).
    arch: a name of ``reskd_jax.models``; a checkpoint of another depth or
      family is refused, naming what it is.
    fmt: one of the family's formats (:data:`FAMILY_WEIGHTS`): ``"torchvision"``
      or ``"mmaction"`` (TSN/TSM ResNet or SlowOnly recogniser), ``"videoswin"``
      or ``"swin2d"`` (Video Swin; see :mod:`reskd_jax.tools.swin_weights`).
    tsm: recorded for the caller; TSM has no parameters of its own.
    num_classes: expected classifier size; ``None`` takes it from the checkpoint.
    include_head: ``False`` drops ``fc`` (backbone-only checkpoints).
    ignore_prefixes: keys of the file starting with any of these are dropped
      before checking (e.g. extra modules saved beside the recogniser).
    model_options: build options of the model that differ from the
      architecture's (e.g. a small ``embed_dim`` for test models).

  Returns ``(variables, info)`` where ``info`` has ``num_classes``, ``arch``,
  ``ignored`` (e.g. ``num_batches_tracked`` keys).

  Raises ``WeightsError`` listing missing / unexpected keys and shape
  mismatches (in the checkpoint's names).
  """
  if fmt not in FORMATS:
    raise WeightsError(f"unknown format {fmt!r}; expected one of {FORMATS}")
  if arch not in models.ARCHS:
    raise WeightsError(f"unknown arch {arch!r}; expected one of {', '.join(models.names())}")
  family = models.family_name(arch)
  spec = FAMILY_WEIGHTS[family]
  if fmt not in spec.formats:
    raise WeightsError(f"--format={fmt} does not apply to {arch}; its weights come as "
                       f"{' or '.join(spec.formats)}")
  sd = extract_state_dict(state_dict, fmt)
  dropped = sorted(k for k in sd if ignore_prefixes and k.startswith(tuple(ignore_prefixes)))
  sd = {k: v for k, v in sd.items() if k not in set(dropped)}
  _check_family(sd, arch, family, fmt)
  options = {**models.default_options(arch),
             **{k: v for k, v in model_options.items() if v is not None}}
  sd = spec.prepare(sd, fmt, arch, options)
  ignored = sorted(k for k in sd if k.endswith(spec.ignored_suffixes))
  sd = {k: v for k, v in sd.items() if not k.endswith(spec.ignored_suffixes)}

  if num_classes is None:
    if spec.head_key in sd and include_head:
      num_classes = int(sd[spec.head_key].shape[0])
    else:
      num_classes = 1000
  template = flax_template(arch, num_classes, **model_options)

  expected = {}  # checkpoint key -> (collection, flax path, kind, flax shape)
  head_keys = set()
  for coll in template:
    flat = jax.tree_util.tree_flatten_with_path(template[coll])[0]
    for keypath, leaf in flat:
      path = tuple(str(getattr(k, "key", k)) for k in keypath)
      tkey, kind = spec.source_key(path)
      if path[0] == models.HEAD_NAME:
        head_keys.add(tkey)
        if not include_head:
          continue
      expected[tkey] = (coll, path, kind, tuple(leaf.shape))

  if not include_head:
    sd = {k: v for k, v in sd.items() if k not in head_keys}
  missing = sorted(set(expected) - set(sd))
  unexpected = sorted(set(sd) - set(expected))
  mismatched = []
  for tkey, (coll, path, kind, fshape) in expected.items():
    if tkey in sd:
      have = tuple(sd[tkey].shape)
      want = tuple(KINDS[kind][1](fshape))
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
      if any(m.split(":")[0] in head_keys for m in mismatched):
        parts.append("  (for the classifier, pass --num-classes matching the checkpoint, "
                     "or leave it out)")
    raise WeightsError("\n".join(parts))

  variables: Dict[str, Any] = {coll: {} for coll in template}
  for tkey, (coll, path, kind, fshape) in expected.items():
    node = variables[coll]
    for p in path[:-1]:
      node = node.setdefault(p, {})
    value = _to_numpy(sd[tkey]).astype(np.float32)
    node[path[-1]] = np.ascontiguousarray(KINDS[kind][0](value))
  info = {"arch": arch, "num_classes": num_classes, "format": fmt, "tsm": bool(tsm),
          "ignored": ignored + dropped, "include_head": include_head}
  return variables, info


def convert_file(input_path: str, output_dir: str, arch: str, fmt: str = "torchvision",
                 tsm: bool = False, num_segments: Optional[int] = None,
                 num_classes: Optional[int] = None, ignore_prefixes=(), class_names=(),
                 **model_options) -> Dict[str, Any]:
  """Reads ``input_path``, converts, writes a variables directory; returns its metadata.

  ``model_options`` (build options that differ from the architecture's) are
  recorded in ``meta.json``, so that the variables can be rebuilt.
  ``class_names`` (the release's class list, in the classifier's order) are
  recorded too: a ResKD run then checks that its data set has them in that order.
  """
  obj = load_torch_file(input_path)
  variables, info = convert_state_dict(obj, arch, fmt=fmt, tsm=tsm, num_classes=num_classes,
                                       ignore_prefixes=ignore_prefixes, **model_options)
  meta = meta_lib.for_converted(arch, info["num_classes"], tsm, num_segments,
                                os.path.abspath(input_path), fmt, model_options)
  if class_names:
    if len(class_names) != info["num_classes"]:
      raise WeightsError(f"{len(class_names)} class names for a checkpoint with "
                         f"{info['num_classes']} classes ({input_path})")
    meta["class_names"] = [str(n) for n in class_names]
  checkpoints.save_variables(output_dir, variables, meta)
  return meta


# ---------------------------------------------------------------------------
# CLI


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="python -m reskd_jax.tools.convert_weights",
      description="Convert torchvision / mmaction2 / Video Swin weights to reskd_jax "
                  "variables.")
  p.add_argument("--format", required=True, choices=FORMATS,
                 help="torchvision ImageNet state dict, mmaction2 recogniser (TSN/TSM "
                      "ResNet, SlowOnly), videoswin (official or mmaction2 1.x Video Swin) "
                      "or swin2d (ImageNet Swin, inflated into a video model)")
  p.add_argument("--arch", required=True, choices=models.names())
  p.add_argument("--tsm", action="store_true", help="the checkpoint is a TSM model")
  p.add_argument("--num-segments", type=int, default=8, help="TSM segments (metadata)")
  p.add_argument("--num-classes", type=int, default=None,
                 help="classifier size to expect (default: from the checkpoint)")
  p.add_argument("--ignore", default="",
                 help="comma-separated key prefixes of the file to drop (e.g. 'teacher.')")
  p.add_argument("--input", required=True, help="the .pth file")
  p.add_argument("--output", required=True, help="output directory")
  p.add_argument("--classes", default=None,
                 help="the checkpoint's class names in classifier order (text file, one a line "
                      "or '0 abseiling' lines; a JSON list; or a converted data set directory), "
                      "stored in meta.json so that runs can check the class order")
  return p


def main(argv=None) -> int:
  args = _parser().parse_args(argv)
  try:
    if os.path.isfile(args.output):
      raise WeightsError(f"--output={args.output!r} is a file; give a directory")
    names = ()
    if args.classes:
      names = labels.read_class_names(args.classes)
    meta = convert_file(args.input, args.output, args.arch, fmt=args.format, tsm=args.tsm,
                        num_segments=args.num_segments, num_classes=args.num_classes,
                        ignore_prefixes=tuple(p for p in args.ignore.split(",") if p),
                        class_names=names)
  except (WeightsError, DataError, FileNotFoundError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"wrote {args.output}: {meta['arch']}, {meta['num_classes']} classes, "
        f"tsm={meta['tsm']} (from {args.input})")
  return 0


if __name__ == "__main__":
  sys.exit(main())
