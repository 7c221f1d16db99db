"""Video Swin weights for the converter: official release, mmaction2 1.x, 2D ImageNet Swin.

The Swin entry of ``reskd_jax.tools.convert_weights.FAMILY_WEIGHTS``: :func:`prepare` turns
a loaded state dict into the release's names (checking the model size) and
:func:`source_key` names the checkpoint tensor of each Flax parameter. Use it
through the converter::

    python -m reskd_jax.tools.convert_weights --format=videoswin --arch=swin_b \\
        --input=swin_base_patch244_window877_kinetics400_22k.pth --output=weights/swin_b_k400
    python -m reskd_jax.tools.convert_weights --format=swin2d --arch=swin_s \\
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
  initialisation, see ``checkpoints.merge_pretrained``).

Mapping: Conv3d ``(O, I, t, h, w) -> (t, h, w, I, O)``; Linear ``weight (out,
in) -> kernel (in, out)``; LayerNorm ``weight -> scale``; Flax ``layers_i`` /
``blocks_j`` are the release's ``layers.i`` / ``blocks.j``.
"""

from __future__ import annotations

import re
from typing import Any, Dict, Mapping, Optional, Tuple

from reskd_jax.errors import WeightsError
from reskd_jax.models import HEAD_NAME, registry, swin

FORMATS = ("videoswin", "swin2d")
HEAD_KEY = "cls_head.fc_cls.weight"
# Buffers the model recomputes; the converter drops them and lists them as ignored.
IGNORED_SUFFIXES = ("relative_position_index", "attn_mask")
_DROPPED_PREFIXES = ("cls_head.fc_cls_t.",)  # ResKD's Swin head: the teacher's frozen fc


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
# The converter's hooks


def source_key(path: Tuple[str, ...]) -> Tuple[str, str]:
  """(the release's key, kind) of a Flax leaf path below ``params``."""
  *modules, leaf = path
  if modules[0] == HEAD_NAME:
    prefix = "cls_head.fc_cls"
  else:
    prefix = ".".join(re.sub(r"^(layers|blocks)_(\d+)$", r"\1.\2", m) for m in modules)
  kind = "plain"
  if leaf == "kernel":
    kind = "conv" if modules[-2:] == ["patch_embed", "proj"] else "linear"
  name = "weight" if leaf in ("kernel", "scale") else leaf
  return f"{prefix}.{name}", kind


def prepare(sd: Dict[str, Any], fmt: str, arch: str,
            options: Mapping[str, Any]) -> Dict[str, Any]:
  """A flat state dict -> the release's ``backbone.*`` / ``cls_head.fc_cls.*`` names.

  ``videoswin``: ``backbone.norm3`` (mmaction2 1.x) becomes ``backbone.norm``;
  ``swin2d``: inflated (:func:`inflate_2d`) with ``options["window_size"]`` and
  ``options["patch_size"]``. Both drop ``cls_head.fc_cls_t.*`` and refuse a
  checkpoint of another family or size in one line.
  """
  sd = {k: v for k, v in sd.items() if not k.startswith(_DROPPED_PREFIXES)}
  line = _family_line(sd, arch, fmt)
  if line:
    raise WeightsError(line)
  proj = next(v for k, v in sd.items() if k.endswith("patch_embed.proj.weight"))
  if fmt == "videoswin":
    if len(proj.shape) == 4:
      raise WeightsError("the checkpoint is a 2D (image) Swin: inflate it with "
                         f"--format=swin2d --arch={arch}")
    if not any(k.startswith("backbone.") for k in sd):
      raise WeightsError("a Video Swin recogniser holds 'backbone.*' and 'cls_head.*' keys; "
                         f"found neither (first keys: {sorted(sd)[:6]})")
    sd = video_keys(sd)
  elif fmt == "swin2d":
    if len(proj.shape) != 4:
      raise WeightsError("the checkpoint is a video Swin (5-D patch kernel): convert it "
                         f"with --format=videoswin --arch={arch}")
    sd = inflate_2d(sd, options.get("window_size", swin.WINDOW_SIZE),
                    options.get("patch_size", swin.PATCH_SIZE))
  else:
    raise WeightsError(f"unknown Swin format {fmt!r}; expected one of {FORMATS}")
  _check_arch(sd, arch, options)
  return sd
