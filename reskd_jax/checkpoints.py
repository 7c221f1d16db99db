"""Model variables on disk: ``{"params", "batch_stats"}`` plus a ``meta.json``.

A *variables directory* is what ``python -m reskd_jax.convert`` writes and what
the trainer writes for its final/best student (``<workdir>/variables``)::

    DIR/meta.json     {"arch", "num_classes", "tsm", "source", ...}
    DIR/orbax/        an orbax StandardCheckpointer checkpoint of the variables

:func:`load_variables` accepts such a directory, or a training workdir that
holds one in ``variables/``. :func:`merge_pretrained` puts loaded (e.g.
ImageNet) weights into freshly initialised variables, keeping the classifier
from the initialisation.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from typing import Any, Dict, Mapping, Optional

import numpy as np

META_FILE = "meta.json"
ORBAX_DIR = "orbax"
VARIABLES_SUBDIR = "variables"
COLLECTIONS = ("params", "batch_stats")
HEAD_NAME = "fc"  # top-level classifier module of models.VideoClassifier


def _jsonable(value):
  if isinstance(value, Mapping):
    return {str(k): _jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_jsonable(v) for v in value]
  if isinstance(value, (np.integer,)):
    return int(value)
  if isinstance(value, (np.floating,)):
    return float(value)
  if isinstance(value, (str, int, float, bool)) or value is None:
    return value
  return str(value)


def _to_plain_dict(tree):
  """Unfreezes FrozenDicts / mappings into nested dicts."""
  if isinstance(tree, Mapping):
    return {k: _to_plain_dict(v) for k, v in tree.items()}
  return tree


def save_variables(path: str, variables: Mapping[str, Any],
                   metadata: Optional[Mapping[str, Any]] = None) -> str:
  """Writes ``variables`` (``params`` and ``batch_stats``) and ``meta.json`` to ``path``.

  An existing variables directory at ``path`` is replaced (the new one is
  written beside it first, so a crash leaves the old one intact). Arrays are
  fetched to host memory first. Returns the absolute path.
  """
  import jax
  import orbax.checkpoint as ocp

  path = os.path.abspath(os.fspath(path))
  variables = _to_plain_dict(variables)
  missing = [c for c in ("params",) if c not in variables]
  if missing:
    raise ValueError(f"save_variables: variables have no {missing} collection "
                     f"(got {sorted(variables)})")
  tree = {c: variables[c] for c in COLLECTIONS if c in variables}
  tree.setdefault("batch_stats", {})
  tree = jax.tree_util.tree_map(lambda x: np.asarray(jax.device_get(x)), tree)

  tmp = f"{path}.tmp-{os.getpid()}"
  if os.path.exists(tmp):
    shutil.rmtree(tmp)
  os.makedirs(tmp)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(os.path.join(tmp, ORBAX_DIR), tree)
    ckptr.wait_until_finished()
  meta = dict(_jsonable(dict(metadata or {})))
  meta.setdefault("saved_at", time.strftime("%Y-%m-%dT%H:%M:%S"))
  meta["num_parameters"] = int(sum(np.size(x) for x in jax.tree_util.tree_leaves(tree["params"])))
  with open(os.path.join(tmp, META_FILE), "w") as f:
    json.dump(meta, f, indent=2, sort_keys=True)
    f.write("\n")
  old = None
  if os.path.exists(path):
    old = f"{path}.old-{os.getpid()}"
    os.rename(path, old)
  os.rename(tmp, path)
  if old is not None:
    shutil.rmtree(old, ignore_errors=True)
  return path


def resolve_variables_dir(path: str) -> str:
  """The variables directory for ``path``: ``path`` itself or ``path/variables``."""
  path = os.fspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f"no such checkpoint directory: {path!r}")
  if os.path.isdir(os.path.join(path, ORBAX_DIR)):
    return path
  sub = os.path.join(path, VARIABLES_SUBDIR)
  if os.path.isdir(os.path.join(sub, ORBAX_DIR)):
    return sub
  if os.path.isfile(path) and path.endswith((".pth", ".pt", ".pkl")):
    raise FileNotFoundError(
        f"{path!r} is a PyTorch file; convert it first: python -m reskd_jax.convert "
        f"--format=torchvision|mmaction --arch=... --input={path} --output=DIR")
  raise FileNotFoundError(
      f"{path!r} holds no saved variables: expected {os.path.join(path, ORBAX_DIR)!r} "
      f"(a directory written by reskd_jax.convert / save_variables) or "
      f"{os.path.join(sub, ORBAX_DIR)!r} (a training workdir)")


def load_variables(path: str) -> Dict[str, Any]:
  """Loads ``{"params", "batch_stats"}`` as numpy arrays (host memory)."""
  import orbax.checkpoint as ocp

  directory = os.path.abspath(resolve_variables_dir(path))
  with ocp.StandardCheckpointer() as ckptr:
    restored = ckptr.restore(os.path.join(directory, ORBAX_DIR))
  restored = _to_plain_dict(restored)
  out = {c: restored.get(c, {}) for c in COLLECTIONS}
  import jax
  return jax.tree_util.tree_map(np.asarray, out)


def load_metadata(path: str) -> Dict[str, Any]:
  """The ``meta.json`` of a variables directory (or of ``workdir/variables``)."""
  directory = resolve_variables_dir(path)
  meta_path = os.path.join(directory, META_FILE)
  if not os.path.exists(meta_path):
    return {}
  with open(meta_path) as f:
    return json.load(f)


def _flatten(tree, prefix=()):
  out = {}
  if isinstance(tree, Mapping):
    for k, v in tree.items():
      out.update(_flatten(v, prefix + (str(k),)))
  else:
    out[prefix] = tree
  return out


def _unflatten(flat):
  out: Dict[str, Any] = {}
  for key, value in flat.items():
    node = out
    for k in key[:-1]:
      node = node.setdefault(k, {})
    node[key[-1]] = value
  return out


def _is_head(key) -> bool:
  # (collection, "fc", ...): the classifier of models.VideoClassifier.
  return len(key) > 1 and key[1] == HEAD_NAME


def _fmt(keys, limit=20):
  keys = sorted("/".join(k) for k in keys)
  text = ", ".join(keys[:limit])
  if len(keys) > limit:
    text += f", ... ({len(keys) - limit} more)"
  return text


def merge_pretrained(init_variables: Mapping[str, Any], loaded: Mapping[str, Any],
                     skip_head: bool = True) -> Dict[str, Any]:
  """Backbone (and, unless ``skip_head``, classifier) from ``loaded``, the rest from init.

  With ``skip_head=True`` (ImageNet initialisation for a new label set) the
  ``fc`` entries come from ``init_variables`` and any ``fc`` in ``loaded`` is
  ignored. Every other entry of ``init_variables`` must exist in ``loaded``
  with the same shape, and ``loaded`` must have nothing more; otherwise a
  ``ValueError`` lists the missing, unexpected and mismatched entries.
  Collections other than ``params``/``batch_stats`` in init are kept as they are.
  Loaded arrays are cast to the init dtype.
  """
  init = _to_plain_dict(init_variables)
  loaded = _to_plain_dict(loaded)
  result = {}
  missing, unexpected, mismatched = [], [], []
  for coll in COLLECTIONS:
    if coll not in init:
      continue
    init_flat = _flatten(init[coll], (coll,))
    load_flat = _flatten(loaded.get(coll, {}), (coll,))
    merged = {}
    for key, value in init_flat.items():
      if skip_head and _is_head(key):
        merged[key] = value
        continue
      if key not in load_flat:
        missing.append(key)
        continue
      new = load_flat[key]
      if tuple(np.shape(new)) != tuple(np.shape(value)):
        mismatched.append(f"{'/'.join(key)}: checkpoint {tuple(np.shape(new))}, "
                          f"model {tuple(np.shape(value))}")
        continue
      dtype = getattr(value, "dtype", None)
      merged[key] = np.asarray(new, dtype=dtype) if dtype is not None else np.asarray(new)
    for key in load_flat:
      if key not in init_flat and not (skip_head and _is_head(key)):
        unexpected.append(key)
    result[coll] = _unflatten(merged).get(coll, {})
  if missing or unexpected or mismatched:
    parts = ["pretrained variables do not fit the model:"]
    if missing:
      parts.append(f"  missing in checkpoint ({len(missing)}): {_fmt(missing)}")
    if unexpected:
      parts.append(f"  unexpected in checkpoint ({len(unexpected)}): {_fmt(unexpected)}")
    if mismatched:
      more = f", ... ({len(mismatched) - 20} more)" if len(mismatched) > 20 else ""
      parts.append(f"  shape mismatch ({len(mismatched)}): " + "; ".join(mismatched[:20]) + more)
    parts.append("  (is the checkpoint for the same architecture / depth / width?)")
    raise ValueError("\n".join(parts))
  for coll, value in init.items():
    if coll not in result:
      result[coll] = value
  return result
