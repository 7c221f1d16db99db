"""`<out>/manifest.json` (layout: reskd_jax.records.read_manifest), merged and replaced atomically."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from typing import List, Optional

from reskd_jax.records import MANIFEST

from data_prep.items import ConversionError

LOCK = ".manifest.lock"


def load(out_dir: str) -> Optional[dict]:
  path = os.path.join(out_dir, MANIFEST)
  if not os.path.isfile(path):
    return None
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise ConversionError(f"cannot read the existing {path}: {e}; move it away to start afresh"
                          ) from None


def existing_classes(out_dir: str) -> Optional[List[str]]:
  m = load(out_dir)
  return list(m["classes"]) if m and m.get("classes") else None


def check_classes(out_dir: str, classes: List[str]):
  """ConversionError when `out_dir` already holds splits converted with another class list."""
  old = existing_classes(out_dir)
  if old is not None and old != list(classes):
    raise ConversionError(
        f"{os.path.join(out_dir, MANIFEST)} was written with another class list ({len(old)} "
        f"classes, this conversion has {len(classes)}): convert into a fresh --out, or pass "
        f"the same --classes")


@contextlib.contextmanager
def _locked(out_dir: str):
  with open(os.path.join(out_dir, LOCK), "a") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def update(out_dir: str, dataset: str, classes: List[str], multi_label: bool, split: str,
           entry: dict) -> dict:
  """Sets `splits[split] = entry`, keeping the other splits; returns the new manifest."""
  os.makedirs(out_dir, exist_ok=True)
  with _locked(out_dir):
    check_classes(out_dir, classes)
    old = load(out_dir) or {}
    manifest = {
        "dataset": dataset,
        "classes": list(classes),
        "multi_label": bool(multi_label or old.get("multi_label", False)),
        "splits": dict(old.get("splits", {})),
    }
    manifest["splits"][split] = entry
    manifest["splits"] = dict(sorted(manifest["splits"].items()))
    path = os.path.join(out_dir, MANIFEST)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
      json.dump(manifest, f, indent=1)
      f.write("\n")
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  return manifest
