"""`<out>/manifest.json` (layout: reskd_jax.data.records.read_manifest), merged and replaced
atomically, and the class list a conversion holds on `<out>` while it runs."""

from __future__ import annotations

import contextlib
import fcntl
import os
from typing import Iterator, List, Optional

from reskd_jax.data import labels
from reskd_jax.data.records import MANIFEST
from reskd_jax.fileio import pid_alive, read_json, write_json_atomic

from data_prep.items import ConversionError

LOCK = ".manifest.lock"
CLAIMS = ".conversions.json"  # {pid: {"split": ..., "classes": [...]}} of running conversions


def load(out_dir: str) -> Optional[dict]:
  path = os.path.join(out_dir, MANIFEST)
  try:
    return read_json(path)
  except (OSError, ValueError) as e:
    raise ConversionError(f"cannot read the existing {path}: {e}; move it away to start afresh"
                          ) from None


def existing_classes(out_dir: str) -> Optional[List[str]]:
  m = load(out_dir)
  return list(m["classes"]) if m and m.get("classes") else None


def _claims(out_dir: str) -> dict:
  """The running conversions' claims (those of dead processes dropped)."""
  try:
    claims = read_json(os.path.join(out_dir, CLAIMS), default={})
  except (OSError, ValueError):
    claims = {}
  return {pid: c for pid, c in claims.items()
          if pid.isdigit() and (int(pid) == os.getpid() or pid_alive(int(pid)))}


def check_classes(out_dir: str, classes: List[str]):
  """ConversionError when `out_dir` already holds splits converted with another class
  list, or another conversion into it is running with another class list."""
  old = existing_classes(out_dir)
  if old is not None and old != list(classes):
    what = (labels.difference(old, classes, "the manifest", "this conversion")
            or f"{len(old)} classes, this conversion has {len(classes)}")
    raise ConversionError(
        f"{os.path.join(out_dir, MANIFEST)} was written with another class list ({what}): "
        f"convert into a fresh --out, or pass the same --classes")
  for pid, claim in _claims(out_dir).items():
    if int(pid) != os.getpid() and claim.get("classes") != list(classes):
      raise ConversionError(
          f"another conversion into {out_dir} (split {claim.get('split')!r}, process {pid}) "
          f"is running with another class list ({len(claim.get('classes', []))} classes, this "
          f"one has {len(classes)}): wait for it and reuse its classes, or pass the same "
          f"--classes to both")


def check_split_free(out_dir: str, split: str, claims: dict):
  """ConversionError when another running conversion (in `claims`) writes `split` into
  `out_dir`: two writers of one split would remove each other's temporary shards."""
  for pid, claim in claims.items():
    if int(pid) != os.getpid() and claim.get("split") == split:
      raise ConversionError(
          f"another conversion (process {pid}) is writing split {split!r} into {out_dir}: "
          f"wait for it to finish (or stop it), then rerun this command to check and complete "
          f"its work")


@contextlib.contextmanager
def _locked(out_dir: str):
  with open(os.path.join(out_dir, LOCK), "a") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def classes_held(out_dir: str, split: str, classes: List[str]) -> Iterator[None]:
  """Checks `classes` against `out_dir`'s manifest and running conversions, then holds
  them while the body runs: a concurrent conversion into `out_dir` with another class
  list is refused before it converts anything (see `check_classes`)."""
  path = os.path.join(out_dir, CLAIMS)
  with _locked(out_dir):
    check_classes(out_dir, classes)
    claims = _claims(out_dir)
    check_split_free(out_dir, split, claims)
    claims[str(os.getpid())] = {"split": split, "classes": list(classes)}
    write_json_atomic(path, claims, indent=1)
  try:
    yield
  finally:
    with _locked(out_dir):
      claims = _claims(out_dir)
      claims.pop(str(os.getpid()), None)
      if claims:
        write_json_atomic(path, claims, indent=1)
      elif os.path.exists(path):
        os.remove(path)


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
    write_json_atomic(os.path.join(out_dir, MANIFEST), manifest, indent=1, sort_keys=False)
  return manifest
