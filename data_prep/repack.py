"""`python -m data_prep repack`: a converted data set rewritten in another stored layout.

Data sets converted before the "frames" layout (`reskd_jax.data.records`) hold every
frame of a video in its record, so training reads all of them to use a few.
Repacking copies the JPEGs as they are (nothing is decoded or encoded again)
into the "frames" layout, shard by shard, keeping the manifest's classes,
splits, shard order and video order: the training stream of a given seed is
the same on either copy. Each shard is written under a temporary name and
renamed when complete; the manifest is written last, so an interrupted
repack leaves no data set that looks complete (rerun it).
"""

from __future__ import annotations

import contextlib
import copy
import os
from typing import Callable, Iterable, Iterator, Optional, Sequence

from reskd_jax.data import records
from reskd_jax.fileio import atomic_path, write_json_atomic

from data_prep.items import ConversionError
from data_prep.shards import file_digest


def repack(data_dir: str, out_dir: str, layout: str = records.LAYOUT_FRAMES,
           splits: Optional[Sequence[str]] = None,
           log: Callable[[str], None] = print) -> dict:
  """Writes `data_dir`'s splits (all, or `splits`) to `out_dir` in `layout`; returns the
  new manifest. ConversionError when `data_dir` is not a converted data set, `out_dir`
  is the same directory or already holds a data set, or a video's frames are damaged."""
  try:
    manifest = records.read_manifest(data_dir)
  except FileNotFoundError as e:
    raise ConversionError(str(e)) from None
  if os.path.abspath(out_dir) == os.path.abspath(data_dir):
    raise ConversionError("repack writes a new data set: give --out another directory")
  if os.path.exists(os.path.join(out_dir, records.MANIFEST)):
    raise ConversionError(f"{out_dir!r} already holds a data set ({records.MANIFEST})")
  if layout not in records.LAYOUTS:
    raise ConversionError(f"unknown layout {layout!r} (known: {records.LAYOUTS})")
  names = list(manifest.get("splits", {})) if splits is None else list(splits)
  out = copy.deepcopy(manifest)
  out["splits"] = {}
  for split in names:
    if split not in manifest.get("splits", {}):
      raise ConversionError(f"split {split!r} is not in {data_dir!r}")
    entry = manifest["splits"][split]
    old_layout = records.split_layout(entry)
    new = dict(entry, layout=layout, shards=[], shard_bytes=[], shard_sizes=[],
               shard_sha256=[])
    new.pop("frames_bytes", None)
    if layout == records.LAYOUT_FRAMES:
      new["frames_bytes"] = []
    if isinstance(new.get("options"), dict):
      new["options"] = dict(new["options"], layout=layout)
    os.makedirs(os.path.join(out_dir, split), exist_ok=True)
    for name in entry["shards"]:
      src = next((p for p in (os.path.join(data_dir, split, name), os.path.join(data_dir, name))
                  if os.path.isfile(p)), None)
      if src is None:
        raise ConversionError(f"shard {name!r} of split {split!r} not found in {data_dir!r}")
      written = write_shard(os.path.join(out_dir, split, os.path.basename(name)), layout,
                            _checked(src, old_layout))
      for key, value in written.items():
        if key != "num_videos":
          new[key].append(value)
      new["shards"].append(os.path.basename(name))
      new["shard_sizes"].append(written["num_videos"])
      log(f"  [{split}] {os.path.basename(name)}: {written['num_videos']} videos")
    if sum(new["shard_sizes"]) != int(entry.get("num_videos", sum(new["shard_sizes"]))):
      raise ConversionError(f"split {split!r} of {data_dir!r} holds {sum(new['shard_sizes'])} "
                            f"videos, its manifest says {entry['num_videos']}")
    out["splits"][split] = new
  write_json_atomic(os.path.join(out_dir, records.MANIFEST), out, indent=1)
  log(f"repacked {len(names)} split(s) of {data_dir} into {out_dir} ({layout} layout)")
  return out


def _checked(src: str, layout: str) -> Iterator[dict]:
  """The videos of shard `src`, each checked to hold the frames its record declares."""
  try:
    for video in records.iter_videos(src, layout):
      if len(video["frames"]) != video["num_frames"] or not video["frames"]:
        raise ConversionError(f"{src}: video {video['video_id']} holds "
                              f"{len(video['frames'])} frames, its record says "
                              f"{video['num_frames']}")
      yield video
  except ValueError as e:  # a frame failing its CRC-32
    raise ConversionError(str(e)) from None


def write_shard(dst: str, layout: str, videos: Iterable[dict]) -> dict:
  """Writes `videos` (dicts as `records.iter_videos` yields them) as the shard `dst` in
  `layout`, under temporary names moved into place when complete (`fileio.atomic_path`:
  its `.frames` file first, the records last, as the converter does), so an interrupted
  run leaves no shard that looks finished. Returns the shard's manifest values:
  num_videos, shard_bytes, shard_sha256 and (layout "frames") frames_bytes."""
  frames = records.frames_path(dst) if layout == records.LAYOUT_FRAMES else None
  count = 0
  with atomic_path(dst) as tmp:
    with (atomic_path(frames) if frames else contextlib.nullcontext()) as tmp_frames:
      with records.ShardWriter(tmp, layout, frames_file=tmp_frames) as writer:
        for video in videos:
          writer.write(video["video_id"], video["frames"], video["labels"],
                       video["label_names"], video["height"], video["width"])
          count += 1
      with open(tmp, "rb") as f:
        os.fsync(f.fileno())
      size, sha256 = file_digest(tmp)
      out = {"num_videos": count, "shard_bytes": size, "shard_sha256": sha256}
      if frames:
        out["frames_bytes"] = file_digest(tmp_frames)[0]
  return out
