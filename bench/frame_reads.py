"""Reading 8 sampled frames of a video: stored layouts compared side by side (no decoding).

  python bench/frame_reads.py --data-dir=WORKDIR/hd-4x250/records-sequence_example

WORKDIR: bench/input_pipeline.py's --workdir (it writes the data). Times, per
video and in process CPU time, with one tf.data thread, a TSN draw of 8 frames
followed by getting their JPEG bytes, for:

  sequence_example  every frame in the video's record: read it whole, parse, gather 8
  frames            the "frames" layout: the small record, then 8 preads (+ CRC-32)
  array_record      one ArrayRecord record per frame (group_size:1, uncompressed),
                    `ArrayRecordReader.read(indices)` in a tf.numpy_function

The candidates other than the two layouts are written here, from the data set.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from data_prep.repack import repack  # noqa: E402
from reskd_jax import platforms  # noqa: E402
from reskd_jax.data import pipeline as ip, records, sampling  # noqa: E402


def _array_record(data_dir, out):
  """One ArrayRecord file per shard (a record per frame) and per video (first, count)."""
  from array_record.python.array_record_module import ArrayRecordWriter
  manifest = records.read_manifest(data_dir)
  entry = manifest["splits"]["train"]
  index = []
  os.makedirs(out, exist_ok=True)
  for shard in entry["shards"]:
    path = os.path.join(out, shard + ".array_record")
    writer = ArrayRecordWriter(path, "group_size:1,uncompressed")
    k = 0
    for video in records.iter_videos(os.path.join(data_dir, "train", shard),
                                     records.split_layout(entry)):
      index.append((path, k, len(video["frames"])))
      for f in video["frames"]:
        writer.write(f)
      k += len(video["frames"])
    writer.close()
  return index


def run(ds, videos):
  it = iter(ds)
  next(it)
  cpu0, wall0 = time.process_time(), time.perf_counter()
  n = 0
  while n < videos:
    next(it)
    n += 1
  return (time.process_time() - cpu0) / n * 1e3, (time.perf_counter() - wall0) / n * 1e3


def draw(n, j):
  u = tf.random.stateless_uniform([8], tf.stack([tf.constant(0, tf.int64), j]), dtype=tf.float64)
  return sampling.tsn_train_indices(n, 8, u)


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--data-dir", required=True, help="a sequence_example-layout data set")
  p.add_argument("--videos", type=int, default=400)
  p.add_argument("--rounds", type=int, default=2)
  args = p.parse_args()
  platforms.hide_gpus_from_tf()
  base = os.path.dirname(os.path.abspath(args.data_dir))
  frames_dir = os.path.join(base, "records-frames")
  if not os.path.isfile(os.path.join(frames_dir, records.MANIFEST)):
    repack(args.data_dir, frames_dir, log=lambda _: None)
  ar_index = _array_record(args.data_dir, os.path.join(base, "array_record"))
  old_files = [os.path.join(args.data_dir, "train", s)
               for s in records.read_manifest(args.data_dir)["splits"]["train"]["shards"]]
  new_files = [os.path.join(frames_dir, "train", s) for s in
               records.read_manifest(frames_dir)["splits"]["train"]["shards"]]
  options = tf.data.Options()
  options.threading.private_threadpool_size = 1
  options.threading.max_intra_op_parallelism = 1

  def old():
    ds = ip._read_records(old_files, len(old_files), False, records.LAYOUT_SEQUENCE).repeat()

    def f(j, rec):
      ex = records.parse_sequence_example(rec)
      return tf.gather(ex["frames"], draw(tf.shape(ex["frames"])[0], j))
    return ds.enumerate().map(f).with_options(options)

  def new():
    ds = ip._read_records(new_files, len(new_files), False, records.LAYOUT_FRAMES).repeat()

    def f(j, el):
      ex = records.parse_index_example(el["record"], el["frames_file"])
      strings, ok = records.read_frames(ex, draw(records.stored_frames(ex), j))
      return strings, ok
    return ds.enumerate().map(f).with_options(options)

  def array_record():
    from array_record.python.array_record_module import ArrayRecordReader
    readers = {}

    def read(path, first, idx):
      path = path.decode()
      if path not in readers:
        readers[path] = ArrayRecordReader(path, "readahead_buffer_size:0,max_parallelism:0")
      return np.array(readers[path].read([int(first + i) for i in idx]), dtype=object)

    paths, firsts, counts = (list(x) for x in zip(*ar_index))
    ds = tf.data.Dataset.from_tensor_slices((paths, firsts, counts)).repeat()

    def f(j, el):
      path, first, n = el
      idx = draw(n, j)
      return tf.numpy_function(read, [path, first, idx], tf.string, stateful=False)
    return ds.enumerate().map(f).with_options(options)

  print("ms per video (CPU, wall) for getting 8 sampled JPEGs, one thread:")
  for r in range(args.rounds):
    for name, make in (("sequence_example", old), ("frames", new), ("array_record", array_record)):
      cpu, wall = run(make(), args.videos)
      print(f"  round {r}: {name:<17} {cpu:6.3f} ms CPU {wall:6.3f} ms wall", flush=True)


if __name__ == "__main__":
  main()
