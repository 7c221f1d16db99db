"""`python -m data_prep <format> ...`: convert a video data set to ResKD TFRecords."""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from typing import Optional, Sequence

from reskd_jax.data.records import LAYOUT_FRAMES, LAYOUTS

from data_prep.annotations import FORMATS
from data_prep.converter import convert_format
from data_prep.demo_data import prepare_demo
from data_prep.encode import ConvertOptions
from data_prep.items import ConversionError
from data_prep.repack import repack
from data_prep.tfds_repack import repack_tfds

DESCRIPTION = """\
Convert a video data set to the layout read by reskd_jax (<out>/manifest.json,
<out>/<split>/<split>-00000-of-000NN.tfrecord and .frames): frames resized to
--short-side and JPEG encoded, each shard's JPEGs in its .frames file and one
small record per video locating them, so training reads only the frames it
samples.

Run once per split into the same --out (the manifest keeps every split; the
second split reuses the first one's class list, and stops before any work when
its labels are not all in it). Bad or partial videos are skipped and listed with
their reason in manifest.json; the command fails (exit status 2, one line) when
its input or --out is unusable, the disk fills up, another conversion is writing
the same split, or nothing could be converted. Interrupted? Rerun the same
command: finished shards are verified and kept.
"""

RULES = """\
rules (details in data_prep/README.md):
  completeness  a video is complete when it decodes the frame count its container
                declares (mp4, avi), else when decoding reaches the end time its
                container declares (mkv, webm: variable frame rate videos are judged
                by their timestamps); a video declaring neither (a live-recorded
                webm) cannot be checked. Otherwise it is partial: skipped unless
                --allow-partial.
  rotation      a video's display rotation (display matrix side data, e.g. phone
                videos) is applied as players do (--no-autorotate: stored pixels).
  bit depth     16-bit images are scaled to 8 bits (65535 -> 255), not clipped;
                10-bit videos are converted to 8-bit RGB by FFmpeg.
  frame folders two files for one frame number (img_00001.jpg, img_1.jpg) skip the
                folder; frames of mixed sizes skip it unless --resize-mixed-frames.
  reconversion  each shard records the size and modification time of every source;
                a rerun writes again the shards whose sources changed, and says so.
  list files    a line starting with '#' is a comment (reported), unless its path
                exists under --source; labels are class names or class indices, not
                both: a number among names is skipped with its reason.
  classes       folder: every sub-folder is a class, an empty one too (reported).
  leaks         videos already in another split of --out (same file, or a copy)
                are reported with their ids when a split is written.
"""

FORMAT_HELP = {
    "kinetics": "Kinetics-400 CSV (label,youtube_id,time_start,time_end,split); clips "
                "<source>/[<label>/]<youtube_id>_<start:06d>_<end:06d>.mp4",
    "minik": "Mini-Kinetics / mmaction2 video list: `relative/path.mp4 label` per line",
    "activitynet": "ActivityNet v1.3 JSON (database -> id -> subset, annotations); videos "
                   "<source>/v_<id>.mp4 or <source>/<id>.*; multi-label",
    "fcvid": "FCVID list: `relative/path.mp4 label [label ...]` per line; multi-label",
    "sthv2": "Something-Something V2 split JSON (id, template, label) with --classes="
             "something-something-v2-labels.json; videos <source>/<id>.webm",
    "folder": "<source>/<class_name>/<video file or frame folder>; no --annotations",
    "rawframes": "mmaction2 rawframes list: `folder num_frames label [label ...]` per line; "
                 "frames <source>/<folder>/img_00001.jpg ...",
}

EXAMPLES = """\
examples:
  python -m data_prep minik --annotations=minik/train_list.txt --classes=minik/classes.txt \\
      --source=minik/videos --out=data/minik --split=train
  python -m data_prep activitynet --annotations=activity_net.v1-3.min.json \\
      --source=anet/videos --out=data/anet --split=val --fps=1
  python -m data_prep demo --out=data/demo
See data_prep/README.md for every format.
"""


def _positive_int(text):
  v = int(text)
  if v < 1:
    raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
  return v


def _positive_float(text):
  v = float(text)
  if not v > 0:
    raise argparse.ArgumentTypeError(f"must be > 0, got {v}")
  return v


def _quality(text):
  v = int(text)
  if not 1 <= v <= 100:
    raise argparse.ArgumentTypeError(f"must be in 1..100, got {v}")
  return v


def _non_negative(text):
  v = int(text)
  if v < 0:
    raise argparse.ArgumentTypeError(f"must be >= 0, got {v}")
  return v


def _add_convert_args(p: argparse.ArgumentParser, fmt: str):
  if fmt != "folder":
    p.add_argument("--annotations", required=True, help="annotation file of the split")
  p.add_argument("--source", required=True,
                 help="root of the videos / frame folders (paths in the annotations are "
                      "relative to it)")
  p.add_argument("--out", required=True, help="output directory (holds manifest.json)")
  p.add_argument("--split", default="train", help="split name written (default: train)")
  p.add_argument("--classes", default=None,
                 help="class list: text file (one name a line, line order = index) or JSON "
                      "(list of names, or name -> index)")
  p.add_argument("--short-side", type=_non_negative, default=256,
                 help="resize frames so the short side is exactly this, aspect kept "
                      "(default 256; 0 keeps the source size)")
  sub = p.add_mutually_exclusive_group()
  sub.add_argument("--frame-stride", type=_positive_int, default=1,
                   help="keep every N-th frame (default 1: all)")
  sub.add_argument("--fps", type=_positive_float, default=None,
                   help="video files: keep frames at about F per second (long untrimmed videos)")
  p.add_argument("--max-frames", type=_non_negative, default=0,
                 help="keep at most N frames per video, spread uniformly (the centre frame of "
                      "N equal segments); 0 (default): all. Bounds storage of long untrimmed "
                      "videos; training then samples among these N only")
  p.add_argument("--layout", choices=LAYOUTS, default=LAYOUT_FRAMES,
                 help="stored layout (default frames: a shard's JPEGs in a .frames file, read "
                      "frame by frame; sequence_example: every frame inside its video's "
                      "record, the layout before format 3)")
  p.add_argument("--jpeg-quality", type=_quality, default=90, help="JPEG quality (default 90)")
  p.add_argument("--filename-tmpl", default="img_{:05d}.jpg",
                 help="frame file names in frame folders (default img_{:05d}.jpg)")
  p.add_argument("--num-shards", type=_positive_int, default=None,
                 help="shards for this split (default: one per 100 videos, at least one per "
                      "worker; a rerun keeps the count already in --out)")
  p.add_argument("--workers", type=_positive_int, default=None,
                 help="parallel processes (default: CPU count; 1: in this process)")
  p.add_argument("--decode-threads", type=_non_negative, default=1,
                 help="FFmpeg decoder threads per process (default 1; 0: automatic)")
  p.add_argument("--allow-partial", action="store_true",
                 help="keep videos that decode only in part (fewer frames, or an earlier end, "
                      "than the container or the list declares; gaps in a frame folder; no "
                      "declared length to check against); listed as partial in "
                      "manifest.json. Default: skip them")
  p.add_argument("--no-autorotate", dest="autorotate", action="store_false",
                 help="keep the stored pixels of videos with a display rotation (default: "
                      "rotate them as players show them)")
  p.add_argument("--resize-mixed-frames", action="store_true",
                 help="frame folders whose frames differ in size: resize every frame to the "
                      "first one's size (default: skip such folders, naming them)")
  p.add_argument("--shuffle-seed", type=int, default=0,
                 help="seed of the fixed video-to-shard permutation (default 0)")


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="python -m data_prep", description=DESCRIPTION + "\n" + RULES, epilog=EXAMPLES,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  subs = parser.add_subparsers(dest="format", required=True, metavar="<format>",
                               help=f"one of: {', '.join(FORMATS)}, demo, repack")
  for fmt in FORMATS:
    p = subs.add_parser(fmt, help=FORMAT_HELP[fmt], description=FORMAT_HELP[fmt],
                        epilog=RULES, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_convert_args(p, fmt)
  demo = subs.add_parser("demo", help="generate and convert the synthetic demo data set",
                         description=textwrap.dedent("""\
      Generates the demo videos (8 classes: shape x direction) under <out>/raw and converts
      them to <out>/records (splits train and test). Nothing is downloaded; a rerun with
      the same settings returns at once."""))
  demo.add_argument("--out", required=True)
  demo.add_argument("--num-train", type=_positive_int, default=600)
  demo.add_argument("--num-test", type=_positive_int, default=400)
  demo.add_argument("--seed", type=int, default=0)
  demo.add_argument("--workers", type=_positive_int, default=None)
  rp = subs.add_parser("repack", help="rewrite a converted data set in another stored layout, "
                                      "or a TFDS/Beam build in the one training reads",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description=textwrap.dedent("""\
      Rewrites the data set at --data-dir (e.g. one converted before the frames layout) into
      a new directory --out in --layout, copying the JPEGs as they are (nothing is decoded):
      same classes, splits, shards and video order.

      With --from-tfds=NAME[/CONFIG] --tfds-data-dir=DIR instead, rewrites a data set built
      by the TFDS builders of data_prep/tfds_builders.py (locally, or with Apache Beam: the
      beam config) in --layout, copying its JPEGs as they are. Classes: the builder's label
      names. Splits: TFDS train -> train, validation -> val, test -> test (the names
      `python -m data_prep --split` and the training configs use; others kept). Videos are
      sorted by video id and sent to shards as the converter does (--num-shards,
      --shuffle-seed): the result equals what `python -m data_prep` writes from a list of
      the same videos in video-id order. Each split's JPEGs pass through a scratch file in
      --out (removed at the end)."""),
                       epilog=textwrap.dedent("""\
      examples:
        python -m data_prep repack --data-dir=data/old --out=data/new
        python -m data_prep repack --from-tfds=reskd_kinetics400/beam \\
            --tfds-data-dir=gs://bucket/tfds --out=data/k400
      An interrupted run leaves no manifest.json: rerun the same command."""))
  source = rp.add_mutually_exclusive_group(required=True)
  source.add_argument("--data-dir", help="converted data set (holds manifest.json)")
  source.add_argument("--from-tfds", metavar="NAME[/CONFIG]",
                      help="a built TFDS data set of data_prep.tfds_builders, e.g. "
                           "reskd_minik or reskd_kinetics400/beam")
  rp.add_argument("--tfds-data-dir", metavar="DIR",
                  help="with --from-tfds: the data directory it was built in (tfds build "
                       "--data_dir)")
  rp.add_argument("--out", required=True, help="new directory for the repacked data set")
  rp.add_argument("--layout", choices=LAYOUTS, default=LAYOUT_FRAMES)
  rp.add_argument("--splits", default=None,
                  help="comma list (default: every split; with --from-tfds, TFDS or written "
                       "names: validation or val)")
  rp.add_argument("--num-shards", type=_positive_int, default=None,
                  help="with --from-tfds: shards per split (default: one per 100 videos)")
  rp.add_argument("--shuffle-seed", type=int, default=0,
                  help="with --from-tfds: seed of the video-to-shard permutation (default 0, "
                       "as the converter's)")
  return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
  # TensorFlow only writes records here (no maths): without oneDNN it also prints nothing at
  # import, so that an error stays the one line the user sees (workers inherit this).
  os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
  args = build_parser().parse_args(argv)
  try:
    if args.format == "demo":
      records = prepare_demo(args.out, num_train=args.num_train, num_test=args.num_test,
                             seed=args.seed, workers=args.workers)
      print(f"demo data set ready: {records}")
      return 0
    if args.format == "repack":
      splits = args.splits.split(",") if args.splits else None
      if args.from_tfds:
        repack_tfds(args.from_tfds, args.tfds_data_dir, args.out, args.layout, splits=splits,
                    num_shards=args.num_shards, shuffle_seed=args.shuffle_seed)
      else:
        if args.tfds_data_dir or args.num_shards:
          raise ConversionError("--tfds-data-dir and --num-shards go with --from-tfds; "
                                "repack --data-dir keeps the data set's shards")
        repack(args.data_dir, args.out, args.layout, splits=splits)
      return 0
    options = ConvertOptions(short_side=args.short_side, jpeg_quality=args.jpeg_quality,
                             frame_stride=args.frame_stride, fps=args.fps,
                             filename_tmpl=args.filename_tmpl, decode_threads=args.decode_threads,
                             allow_partial=args.allow_partial, autorotate=args.autorotate,
                             resize_mixed_frames=args.resize_mixed_frames,
                             max_frames=args.max_frames, layout=args.layout)
    convert_format(args.format, getattr(args, "annotations", None), args.source, args.out,
                   args.split, classes=args.classes, options=options,
                   num_shards=args.num_shards, workers=args.workers,
                   shuffle_seed=args.shuffle_seed)
    return 0
  except ConversionError as e:
    print(f"error: {e}", file=sys.stderr)
    return e.exit_status
  except OSError as e:  # e.g. the disk filled up while writing
    print(f"error: {e}; finished shards are kept: rerun the same command to resume",
          file=sys.stderr)
    return ConversionError.exit_status
  except KeyboardInterrupt:
    print("interrupted: finished shards are kept; rerun the same command to resume",
          file=sys.stderr)
    return 130
