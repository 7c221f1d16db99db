"""Videos that are in two splits at once (a leak between train and val), found when a
split is written.

Two items are the same video when they resolve to the same file or frame folder
(symbolic links followed), or when two video files have the same size and the same
first MiB (a copy under another name). Each shard's sidecar (`.<shard>.json`, see
`shards`) records the source each item was made from, so the splits written earlier
are compared without reading their videos; only files whose sizes collide are read.
"""

from __future__ import annotations

import collections
import hashlib
import os
from typing import Dict, List, Optional, Sequence, Tuple

from reskd_jax.fileio import read_json

_HEAD = 1 << 20


def written_sources(results: Sequence[dict]) -> Dict[str, list]:
  """{video id: source state} of the videos written (not skipped) by shard results or
  sidecars."""
  out = {}
  for res in results:
    skipped = {s.get("item") for s in res.get("skipped", [])}
    for vid, state in (res.get("sources") or {}).items():
      if state and vid not in skipped:
        out[vid] = state
  return out


def split_sources(out_dir: str, split: str, entry: dict) -> Dict[str, list]:
  """The written videos' sources of a split already in the manifest (from its sidecars;
  shards without one are left out)."""
  sides = []
  for shard in entry.get("shards", []):
    try:
      sides.append(read_json(os.path.join(out_dir, split, f".{shard}.json")))
    except (OSError, ValueError):
      continue
  return written_sources([s for s in sides if isinstance(s, dict)])


def _head(path: str) -> Optional[str]:
  try:
    with open(path, "rb") as f:
      return hashlib.sha256(f.read(_HEAD)).hexdigest()
  except OSError:
    return None


def _keys(sources: Dict[str, list]) -> Dict[str, str]:
  return {vid: os.path.realpath(state[0]) for vid, state in sources.items()}


def find(mine: Dict[str, list], theirs: Dict[str, list]) -> List[Tuple[str, str]]:
  """(my id, their id) of the videos in both: same real path, or same size and head."""
  their_paths = {path: vid for vid, path in _keys(theirs).items()}
  pairs = {}
  for vid, path in _keys(mine).items():
    if path in their_paths:
      pairs[vid] = their_paths[path]
  # Copies under another name: video files (state [path, size, mtime]) of equal size.
  by_size = collections.defaultdict(list)
  for vid, state in theirs.items():
    if len(state) == 3 and os.path.isfile(state[0]):
      by_size[state[1]].append(vid)
  heads: Dict[str, Optional[str]] = {}
  for vid, state in mine.items():
    if vid in pairs or len(state) != 3 or state[1] not in by_size:
      continue
    head = _head(state[0])
    for other in by_size[state[1]]:
      if other not in heads:
        heads[other] = _head(theirs[other][0])
      if head is not None and heads[other] == head:
        pairs[vid] = other
        break
  return sorted(pairs.items())


def report(out_dir: str, split: str, results: Sequence[dict], manifest: Optional[dict],
           warn) -> Dict[str, List[List[str]]]:
  """{other split: [[id here, id there], ...]} for every earlier split sharing videos
  with this one; each such split is named in one warning line with the ids."""
  mine = written_sources(results)
  found = {}
  for other, entry in sorted(((manifest or {}).get("splits") or {}).items()):
    if other == split:
      continue
    pairs = find(mine, split_sources(out_dir, other, entry))
    if not pairs:
      continue
    found[other] = [list(p) for p in pairs]
    shown = ", ".join(a if a == b else f"{a} (= {b})" for a, b in pairs[:10])
    more = f", ... (all listed in manifest.json under splits.{split}.leaks)" if len(pairs) > 10 else ""
    warn(f"leak: {len(pairs)} video(s) of split {split!r} are also in split {other!r}: "
         f"{shown}{more}")
  return found
