"""Throughput of the tf.data input pipeline, in videos/s and videos per CPU-second.

  python bench/input_pipeline.py                  # the full table (a long while)
  python bench/input_pipeline.py --only=train-tsn-8 --clips=hd --threads=1 --lengths=64,250,1500

Generates real encoded videos with PyAV (H.264, yuv420p, lossy as downloaded
clips are) at two sizes and three lengths (64 frames, 250 = 10 s at 25 fps,
1500 = a minute), converts them with `data_prep` (`folder` format, short side
256, JPEG quality 90) in both stored layouts of `reskd_jax.data.records` (the
"sequence_example" layout converted, then repacked to "frames" with
`data_prep repack`: the same JPEGs) and runs `reskd_jax.data.pipeline` on
them, the two layouts measured one after the other for each row:

  340x256   Kinetics' typical size, stored unchanged;
  hd        1280x720 (16:9) sources, stored at short side 256 (455x256).

Pipelines (batches of `--batch-size`, full training augmentation: TSN or
dense sampling, MultiScaleCrop to 224; evaluation: centre crop (1x1) or 10
clips x 3 crops (10x3) at 256):

  train-tsn-8, train-tsn-16, train-dense-8, train-dense-16, eval-1x1, eval-10x3

each with one tf.data thread (`--threads=1`) and with all cores. Every data
set has `--videos` clips per split (24); for clips over 64 frames only
`--long-videos` (4) distinct ones are generated and converted, and copied at
the record level (JPEGs unchanged) to make up the number, which keeps
generation short while every data set has epochs of the same length. Storage per video of each layout is printed first. The first
batch (graph building, shuffle buffer) is excluded. "videos/CPU-s" divides by
the CPU time of the whole process (all threads), so it holds on a busy
machine where wall-clock videos/s does not; videos/s is only meaningful on a
quiet one. `--decode-scale=2` measures reduced-scale decoding (half-size
frames, crops of 112 at short side 128).
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import av  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from configs import default  # noqa: E402
from data_prep import ConvertOptions, convert_format  # noqa: E402
from data_prep.repack import repack  # noqa: E402
from reskd_jax import platforms  # noqa: E402
from reskd_jax.data import clips, pipeline as input_pipeline, records  # noqa: E402

CLIPS = {"340x256": (256, 340), "hd": (720, 1280)}  # name -> source (height, width)
LAYOUTS = (records.LAYOUT_SEQUENCE, records.LAYOUT_FRAMES)
_PERIOD = 16  # distinct frames generated per clip (0.13 s each); the others repeat them, shifted
PIPELINES = ("train-tsn-8", "train-tsn-16", "train-dense-8", "train-dense-16", "eval-1x1",
             "eval-10x3")
CLASSES = ("a", "b", "c", "d")
FPS = 25


def synthetic_frames(rng: np.random.Generator, num: int, height: int, width: int):
  """`num` (h, w, 3) uint8 frames: a textured background, moving shapes and sensor noise.

  Enough detail that JPEG sizes (and decoding cost) resemble real footage,
  unlike flat test patterns. Frames past the first 16 repeat those, shifted
  sideways by 8 pixels per repetition (yielded one by one), so that long clips
  are quick to generate.
  """
  frames = _distinct_frames(rng, min(num, _PERIOD), height, width)
  for t in range(num):
    if t < _PERIOD:
      yield frames[t]
    else:
      yield np.roll(frames[t % _PERIOD], 8 * (t // _PERIOD), axis=1)


def _distinct_frames(rng, num, height, width):
  y, x = np.mgrid[:height, :width].astype(np.float32)
  freqs = rng.uniform(0.01, 0.08, size=(3, 2)).astype(np.float32)
  phase = rng.uniform(0, 6.28, size=3).astype(np.float32)
  base = np.stack([110 + 60 * np.sin(x * freqs[c, 0] + phase[c]) * np.cos(y * freqs[c, 1])
                   for c in range(3)], -1)
  texture = rng.normal(0, 18, size=(height // 4 + 1, width // 4 + 1, 3)).astype(np.float32)
  base += np.repeat(np.repeat(texture, 4, 0), 4, 1)[:height, :width]
  shapes = [(rng.uniform(0.1, 0.3) * height, rng.uniform(0, width), rng.uniform(0, height),
             rng.uniform(-8, 8), rng.uniform(-4, 4), rng.uniform(0, 255, 3)) for _ in range(4)]
  frames = np.empty((num, height, width, 3), np.uint8)
  for t in range(num):
    img = np.roll(base, 2 * t, axis=1).copy()
    for radius, cx, cy, vx, vy, colour in shapes:
      mask = (x - (cx + vx * t) % width) ** 2 + (y - (cy + vy * t) % height) ** 2 < radius ** 2
      img[mask] = 0.5 * img[mask] + 0.5 * colour
    img += rng.normal(0, 4, size=img.shape).astype(np.float32)
    frames[t] = np.clip(img, 0, 255).astype(np.uint8)
  return frames


def write_h264(path: str, frames, height: int, width: int) -> None:
  with av.open(path, "w", format="mp4") as container:
    stream = container.add_stream("libx264", rate=FPS)
    stream.width, stream.height = width, height
    stream.pix_fmt = "yuv420p"
    stream.options = {"crf": "23", "preset": "veryfast"}
    for f in frames:
      for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)


def prepare(root: str, kind: str, distinct: int, num_videos: int, num_frames: int,
            splits) -> dict:
  """{layout: data_dir} of `num_videos` clips of `kind` per split in each of `LAYOUTS`
  (reused when there).

  `distinct` H.264 videos are written (root/<kind>-<distinct>x<frames>/videos) and
  converted (records-converted, "sequence_example" layout), then copied at the record
  level, JPEGs unchanged, to `num_videos` per split (records-sequence_example-<n>v;
  copies get new video ids), then repacked to the "frames" layout
  (records-frames-<n>v, `data_prep repack`), so both layouts hold the same JPEGs.
  """
  out = os.path.join(root, f"{kind}-{distinct}x{num_frames}")
  converted = os.path.join(out, "records-converted")
  dirs = {layout: os.path.join(out, f"records-{layout}-{num_videos}v") for layout in LAYOUTS}
  old = dirs[records.LAYOUT_SEQUENCE]
  height, width = CLIPS[kind]
  for split in splits:
    if split not in _splits(converted):
      print(f"writing {distinct} H.264 videos of {num_frames} frames at {width}x{height} "
            f"({split}) and converting them (short side 256)...", flush=True)
      for i in range(distinct):
        folder = os.path.join(out, "videos", split, CLASSES[i % len(CLASSES)])
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"{i:04d}.mp4")
        frames = synthetic_frames(np.random.default_rng([i, split == "train"]), num_frames,
                                  height, width)
        if not os.path.isfile(path):  # (videos of an interrupted run are kept)
          write_h264(path + ".tmp.mp4", frames, height, width)
          os.replace(path + ".tmp.mp4", path)
      convert_format("folder", None, os.path.join(out, "videos", split), converted, split,
                     options=ConvertOptions(short_side=256, jpeg_quality=90,
                                            layout=records.LAYOUT_SEQUENCE),
                     num_shards=min(4, distinct), workers=1, log=lambda _: None)
    if split not in _splits(old):
      _copy_videos(converted, old, split, num_videos)
  new = dirs[records.LAYOUT_FRAMES]
  if _splits(old) != _splits(new):
    shutil.rmtree(new, ignore_errors=True)
    repack(old, new, records.LAYOUT_FRAMES, log=lambda _: None)
  return dirs


def _splits(data_dir: str) -> set:
  if not os.path.isfile(os.path.join(data_dir, records.MANIFEST)):
    return set()
  return set(records.read_manifest(data_dir)["splits"])


def _copy_videos(src: str, dst: str, split: str, num_videos: int, num_shards: int = 4):
  """`split` of `src` written to `dst` ("sequence_example" layout) with its videos
  repeated, at the record level, to `num_videos` (the copies named <video_id>~<k>)."""
  manifest = records.read_manifest(src)
  entry = manifest["splits"][split]
  videos = [v for shard in entry["shards"] for v in records.iter_videos(
      os.path.join(src, split, shard), records.split_layout(entry))]
  names, sizes, sizes_bytes = [], [], []
  os.makedirs(os.path.join(dst, split), exist_ok=True)
  for k in range(num_shards):
    names.append(records.shard_name(split, k, num_shards))
    path = os.path.join(dst, split, names[-1])
    chosen = range(k * num_videos // num_shards, (k + 1) * num_videos // num_shards)
    with records.ShardWriter(path, records.LAYOUT_SEQUENCE) as writer:
      for j in chosen:
        v = videos[j % len(videos)]
        copy = j // len(videos)
        writer.write(v["video_id"] + (f"~{copy}" if copy else ""), v["frames"], v["labels"],
                     v["label_names"], v["height"], v["width"])
    sizes.append(len(chosen))
    sizes_bytes.append(os.path.getsize(path))
  out = (records.read_manifest(dst) if _splits(dst) else
         dict(manifest, splits={}))
  out["splits"][split] = {"num_videos": num_videos, "layout": records.LAYOUT_SEQUENCE,
                          "shards": names, "shard_sizes": sizes, "shard_bytes": sizes_bytes,
                          "skipped": []}
  with open(os.path.join(dst, records.MANIFEST), "w") as f:
    json.dump(out, f, indent=1)


def storage(data_dir: str) -> tuple:
  """(bytes per video, bytes per frame) of a converted data set, all its files."""
  manifest = records.read_manifest(data_dir)
  total = sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(data_dir)
              for f in files)
  videos = sum(int(e["num_videos"]) for e in manifest["splits"].values())
  frames = sum(len(v["frames"]) for split in manifest["splits"] for shard in
               manifest["splits"][split]["shards"] for v in records.iter_videos(
                   os.path.join(data_dir, split, shard), records.split_layout(
                       manifest["splits"][split])))
  return total / videos, total / frames


def data_config(data_dir: str, pipeline: str, decode_scale: int, num_frames: int = 64):
  cfg = default.get_data_config()
  cfg.data_dir = data_dir
  cfg.decode_scale = decode_scale
  cfg.shuffle_buffer = 64
  kind, *rest = pipeline.split("-")
  if kind == "train":
    sampling, frames = rest[0], int(rest[1])
    cfg.sampling = sampling
    cfg.num_frames = frames
    cfg.clip_len = frames
    cfg.frame_interval = max(1, min(64, num_frames) // frames)
  else:
    clips, crops = (int(v) for v in rest[0].split("x"))
    cfg.test_num_clips, cfg.test_num_crops = clips, crops
    if crops == 3:
      cfg.crop_size = cfg.short_side  # ThreeCrop spans the short side (mmaction2)
  return cfg


def measure(data_dir: str, pipeline: str, threads: int, batch_size: int, min_videos: int,
            decode_scale: int = 1, num_frames: int = 64):
  """(videos/s, videos per CPU-second, videos measured) after one warm-up batch."""
  cfg = data_config(data_dir, pipeline, decode_scale, num_frames)
  train = pipeline.startswith("train")
  split = "train" if train else "val"

  def make():
    ds = input_pipeline.create_dataset(cfg, split, train=train, batch_size=batch_size,
                                       num_classes=len(CLASSES), process_index=0,
                                       process_count=1)
    if threads:
      options = tf.data.Options()
      options.threading.private_threadpool_size = threads
      ds = ds.with_options(options)
    return ds.repeat() if not train else ds

  it = iter(make().as_numpy_iterator())
  next(it)
  videos = 0
  wall0, cpu0 = time.perf_counter(), time.process_time()
  while videos < min_videos:
    batch = next(it)
    videos += len(batch["label"]) if train else int(batch["mask"].sum())
  wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
  del it
  return videos / wall, videos / cpu, videos


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(),
                                                   "reskd_bench_input_pipeline"),
                 help="where the generated videos and records are kept (reused)")
  p.add_argument("--clips", default=",".join(CLIPS), help=f"comma list of {list(CLIPS)}")
  p.add_argument("--only", default=",".join(PIPELINES), help=f"comma list of {PIPELINES}")
  p.add_argument("--threads", default="1,all", help="comma list: a number or 'all'")
  p.add_argument("--videos", type=int, default=24, help="videos per split")
  p.add_argument("--long-videos", type=int, default=4,
                 help="distinct videos generated for clips over 64 frames (then copied to "
                      "--videos per split, JPEGs unchanged)")
  p.add_argument("--lengths", default="64,250,1500", help="comma list: frames per video")
  p.add_argument("--layouts", default=",".join(LAYOUTS),
                 help=f"comma list of stored layouts to measure, each row alternating: {LAYOUTS}")
  p.add_argument("--batch-size", type=int, default=8)
  p.add_argument("--min-videos", type=int, default=240, help="videos timed per measurement")
  p.add_argument("--decode-scale", type=int, default=1, choices=(1, 2, 4))
  args = p.parse_args(argv)

  platforms.hide_gpus_from_tf()
  kinds = [k for k in args.clips.split(",") if k]
  pipelines = [q for q in args.only.split(",") if q]
  for name in kinds + pipelines:
    if name not in CLIPS and name not in PIPELINES:
      p.error(f"unknown clip kind or pipeline {name!r}")
  threads = [0 if t == "all" else int(t) for t in args.threads.split(",")]
  lengths = [int(n) for n in args.lengths.split(",") if n]
  layouts = [x for x in args.layouts.split(",") if x]
  for layout in layouts:
    if layout not in LAYOUTS:
      p.error(f"unknown layout {layout!r}")
  splits = sorted({"train" if q.startswith("train") else "val" for q in pipelines})
  dirs = {(k, n): prepare(args.workdir, k, min(args.videos, args.long_videos) if n > 64
                          else args.videos, args.videos, n, splits)
          for k in kinds for n in lengths}
  print(f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.1f}; batches of "
        f"{args.batch_size}; decode_scale {args.decode_scale}; videos/CPU-s = videos per "
        f"second of process CPU time")
  print("storage (all splits converted):")
  for (kind, n), by_layout in dirs.items():
    for layout in layouts:
      per_video, per_frame = storage(by_layout[layout])
      print(f"  {kind:<8} {n:>5} frames  {layout:<16} {per_video / 2**20:8.2f} MiB/video "
            f"{per_frame / 2**10:7.1f} KiB/frame")
  print(f"{'pipeline':<16} {'clips':<8} {'stored':>8} {'frames':>6} {'layout':<16} "
        f"{'threads':>7} {'videos/s':>9} {'videos/CPU-s':>12} {'frames/CPU-s':>12}")
  for pipeline in pipelines:
    for kind in kinds:
      stored = "340x256" if kind == "340x256" else "455x256"
      for n in lengths:
        for t in threads:
          for layout in layouts:
            data_dir = dirs[(kind, n)][layout]
            cfg = data_config(data_dir, pipeline, args.decode_scale, n)
            per_video = (clips.frames_per_clip(cfg) *
                         (1 if pipeline.startswith("train") else cfg.test_num_clips))
            vps, vpc, _ = measure(data_dir, pipeline, t, args.batch_size, args.min_videos,
                                  args.decode_scale, n)
            print(f"{pipeline:<16} {kind:<8} {stored:>8} {n:>6} {layout:<16} {t or 'all':>7} "
                  f"{vps:>9.1f} {vpc:>12.1f} {vpc * per_video:>12.0f}", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
