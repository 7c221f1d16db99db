"""Throughput of the tf.data input pipeline, in videos/s and videos per CPU-second.

  python bench/input_pipeline.py                  # the full table (a few minutes)
  python bench/input_pipeline.py --only=train-tsn-8 --clips=hd --threads=1

Generates real encoded videos with PyAV (H.264, yuv420p, lossy as downloaded
clips are) at two sizes, converts them with `data_prep` (`folder` format,
short side 256, JPEG quality 90) and runs `reskd_jax.input_pipeline` on them:

  340x256   Kinetics' typical size, stored unchanged;
  hd        1280x720 (16:9) sources, stored at short side 256 (455x256).

Pipelines (batches of `--batch-size`, full training augmentation: TSN or
dense sampling, MultiScaleCrop to 224; evaluation: centre crop (1x1) or 10
clips x 3 crops (10x3) at 256):

  train-tsn-8, train-tsn-16, train-dense-8, train-dense-16, eval-1x1, eval-10x3

each with one tf.data thread (`--threads=1`) and with all cores. The first
batch (graph building, shuffle buffer) is excluded. "videos/CPU-s" divides by
the CPU time of the whole process (all threads), so it holds on a busy
machine where wall-clock videos/s does not; videos/s is only meaningful on a
quiet one. `--decode-scale=2` measures reduced-scale decoding (half-size
frames, crops of 112 at short side 128).
"""

import argparse
import os
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
from reskd_jax import input_pipeline, records  # noqa: E402

CLIPS = {"340x256": (256, 340), "hd": (720, 1280)}  # name -> source (height, width)
PIPELINES = ("train-tsn-8", "train-tsn-16", "train-dense-8", "train-dense-16", "eval-1x1",
             "eval-10x3")
CLASSES = ("a", "b", "c", "d")
FPS = 25


def synthetic_frames(rng: np.random.Generator, num: int, height: int, width: int) -> np.ndarray:
  """(num, h, w, 3) uint8: a textured background, moving shapes and sensor noise.

  Enough detail that JPEG sizes (and decoding cost) resemble real footage,
  unlike flat test patterns.
  """
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


def write_h264(path: str, frames: np.ndarray) -> None:
  with av.open(path, "w", format="mp4") as container:
    stream = container.add_stream("libx264", rate=FPS)
    stream.width, stream.height = frames.shape[2], frames.shape[1]
    stream.pix_fmt = "yuv420p"
    stream.options = {"crf": "23", "preset": "veryfast"}
    for f in frames:
      for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)


def prepare(root: str, kind: str, num_videos: int, num_frames: int) -> str:
  """Videos of `kind` under root/<kind>/videos, converted to root/<kind>/records (reused)."""
  out = os.path.join(root, f"{kind}-{num_videos}x{num_frames}")
  data_dir = os.path.join(out, "records")
  if os.path.isfile(os.path.join(data_dir, records.MANIFEST)):
    return data_dir
  height, width = CLIPS[kind]
  rng = np.random.default_rng(0)
  print(f"writing {num_videos} H.264 videos of {num_frames} frames at {width}x{height} "
        f"and converting them (short side 256)...", flush=True)
  for split in ("train", "val"):
    for i in range(num_videos):
      folder = os.path.join(out, "videos", split, CLASSES[i % len(CLASSES)])
      os.makedirs(folder, exist_ok=True)
      write_h264(os.path.join(folder, f"{i:04d}.mp4"),
                 synthetic_frames(rng, num_frames, height, width))
    convert_format("folder", None, os.path.join(out, "videos", split), data_dir, split,
                   options=ConvertOptions(short_side=256, jpeg_quality=90),
                   num_shards=4, workers=1, log=lambda _: None)
  return data_dir


def data_config(data_dir: str, pipeline: str, decode_scale: int):
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
    cfg.frame_interval = 64 // frames
  else:
    clips, crops = (int(v) for v in rest[0].split("x"))
    cfg.test_num_clips, cfg.test_num_crops = clips, crops
    if crops == 3:
      cfg.crop_size = cfg.short_side  # ThreeCrop spans the short side (mmaction2)
  return cfg


def measure(data_dir: str, pipeline: str, threads: int, batch_size: int, min_videos: int,
            decode_scale: int = 1):
  """(videos/s, videos per CPU-second, videos measured) after one warm-up batch."""
  cfg = data_config(data_dir, pipeline, decode_scale)
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
  p.add_argument("--frames", type=int, default=64, help="frames per video")
  p.add_argument("--batch-size", type=int, default=8)
  p.add_argument("--min-videos", type=int, default=240, help="videos timed per measurement")
  p.add_argument("--decode-scale", type=int, default=1, choices=(1, 2, 4))
  args = p.parse_args(argv)

  input_pipeline.hide_gpus_from_tf()
  kinds = [k for k in args.clips.split(",") if k]
  pipelines = [q for q in args.only.split(",") if q]
  for name in kinds + pipelines:
    if name not in CLIPS and name not in PIPELINES:
      p.error(f"unknown clip kind or pipeline {name!r}")
  threads = [0 if t == "all" else int(t) for t in args.threads.split(",")]
  dirs = {k: prepare(args.workdir, k, args.videos, args.frames) for k in kinds}
  print(f"{os.cpu_count()} CPUs; batches of {args.batch_size}; decode_scale "
        f"{args.decode_scale}; videos/CPU-s = videos per second of process CPU time")
  print(f"{'pipeline':<16} {'clips':<8} {'stored':>8} {'threads':>7} {'videos/s':>9} "
        f"{'videos/CPU-s':>12} {'frames/CPU-s':>12}")
  for pipeline in pipelines:
    for kind in kinds:
      stored = "340x256" if kind == "340x256" else "455x256"
      for t in threads:
        cfg = data_config(dirs[kind], pipeline, args.decode_scale)
        per_video = (input_pipeline.frames_per_clip(cfg) * (1 if pipeline.startswith("train")
                                                             else cfg.test_num_clips))
        vps, vpc, _ = measure(dirs[kind], pipeline, t, args.batch_size, args.min_videos,
                              args.decode_scale)
        print(f"{pipeline:<16} {kind:<8} {stored:>8} {t or 'all':>7} {vps:>9.1f} {vpc:>12.1f} "
              f"{vpc * per_video:>12.0f}", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
