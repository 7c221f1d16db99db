"""Cost of the ResKD step against its parts, measured side by side in one run.

  python bench/train_step.py                      # R50 student @112, R152 teacher @224
  python bench/train_step.py --student=resnet18 --teacher=resnet34 --frames=4   # CPU-sized

Per device: `--videos` videos x `--frames` frames. Prints, for
  (a) the ResKD train step (teacher forward in train-mode BN + student
      forward/backward + KD + update), the sharded step used in training;
  (b) the teacher forward alone (train-mode BN, no gradient);
  (c) the student train step alone (baseline mode, CE only);
the median time per step, peak device memory where the backend reports it
(XLA's compiled temp+argument size otherwise), and the ratio a / (b + c)
(target: at most 1.1). The timed runs interleave (a), (b), (c) so that load
on a shared machine hits all three alike.

Then `--input-steps` ResKD steps are fed the way the trainer feeds them,
through `transfer.prefetch_to_mesh` (2 batches in flight), from the
tf.data pipeline over `--data-dir` (converted records, e.g. those written by
bench/input_pipeline.py) or, without it, from ready host arrays; it reports
the fraction of step time spent waiting for the next batch.
"""

import argparse
import itertools
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from configs import default  # noqa: E402
from reskd_jax import augment, models, optim, train_step  # noqa: E402
from reskd_jax.data import pipeline, transfer  # noqa: E402


def _peak_mb():
  stats = jax.local_devices()[0].memory_stats() or {}
  peak = stats.get("peak_bytes_in_use")
  return None if peak is None else peak / 2**20


def _compiled_mb(fn, *args):
  try:
    mem = fn.lower(*args).compile().memory_analysis()
    return (mem.temp_size_in_bytes + mem.argument_size_in_bytes) / 2**20
  except Exception:  # memory_analysis is not on every backend
    return None


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--student", default="resnet50")
  p.add_argument("--teacher", default="resnet152")
  p.add_argument("--crop", type=int, default=224)
  p.add_argument("--student-res", type=int, default=112)
  p.add_argument("--videos", type=int, default=2, help="videos per device")
  p.add_argument("--frames", type=int, default=8)
  p.add_argument("--classes", type=int, default=200)
  p.add_argument("--runs", type=int, default=5)
  p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  p.add_argument("--input-steps", type=int, default=5,
                 help="ResKD steps fed through prefetch_to_mesh (0: skip)")
  p.add_argument("--data-dir", default="",
                 help="converted records feeding those steps (default: ready host arrays)")
  args = p.parse_args(argv)

  dtype = jnp.float32 if args.dtype == "float32" else jnp.bfloat16
  mesh = train_step.make_mesh()
  n = mesh.size
  student = models.build_model(args.student, args.classes, input_size=args.student_res,
                               dtype=dtype)
  teacher = models.build_model(args.teacher, args.classes, dropout_rate=0.0, dtype=dtype)
  # Host copies: the two train states below must not share (donated) buffers.
  svars = jax.tree.map(np.asarray, models.init_variables(student, jax.random.key(0), args.frames,
                                                         args.student_res))
  tvars = models.init_variables(teacher, jax.random.key(1), args.frames, args.crop)
  opt = ml_collections.ConfigDict(dict(
      name="sgd", base_learning_rate=0.01, base_batch_size=64, momentum=0.9, nesterov=True,
      weight_decay=1e-4, bias_lr_mult=2.0, clip_grad_norm=20.0, warmup_epochs=0.0))
  tx = optim.create_optimizer(opt, svars["params"], lambda s: 0.01)
  common = dict(student=student, tx=tx, mean=augment.IMAGENET_MEAN,
                std=augment.IMAGENET_STD, flip=True, dtype=dtype)
  kd_step = train_step.shard_train_step(
      train_step.make_train_step(mode="reskd", teacher=teacher, **common), mesh)
  ce_step = train_step.shard_train_step(train_step.make_train_step(mode="baseline", **common),
                                        mesh)

  def teacher_fwd(tv, batch):
    video = augment.preprocess(batch["video"], jax.random.key(0), mean=common["mean"],
                                  std=common["std"], flip=False, dtype=dtype)
    out, _ = teacher.apply(tv, video, train=True, return_dict=True, mutable=["batch_stats"])
    return jnp.mean(out["features"])  # keep the whole forward live

  t_fwd = jax.jit(jax.shard_map(lambda tv, b: jax.lax.pmean(teacher_fwd(tv, b), "data"),
                                mesh=mesh, in_specs=(P(), P("data")), out_specs=P()))

  rs = np.random.RandomState(0)
  batch = {
      "video": rs.randint(0, 256, (n * args.videos, args.frames, args.crop, args.crop, 3)
                          ).astype(np.uint8),
      "label": rs.randint(0, args.classes, (n * args.videos,)).astype(np.int32)}
  batch = jax.device_put(batch, jax.sharding.NamedSharding(mesh, P("data")))
  tvars = train_step.replicate(tvars, mesh)
  state_kd = train_step.replicate(train_step.create_train_state(svars, tx), mesh)
  state_ce = train_step.replicate(train_step.create_train_state(svars, tx), mesh)
  rng = jax.random.key(0)

  print(f"device: {jax.devices()[0].device_kind} x{n} ({jax.devices()[0].platform}); "
        f"{args.videos} videos x {args.frames} frames per device; {args.dtype}")
  mem = {"kd": _compiled_mb(kd_step, state_kd, tvars, batch, rng),
         "teacher": _compiled_mb(t_fwd, tvars, batch),
         "student": _compiled_mb(ce_step, state_ce, {}, batch, rng)}
  # Warm-up (compilation) of all three.
  state_kd, _ = kd_step(state_kd, tvars, batch, rng)
  jax.block_until_ready(t_fwd(tvars, batch))
  state_ce, _ = ce_step(state_ce, {}, batch, rng)
  jax.block_until_ready((state_kd, state_ce))
  times = {"kd": [], "teacher": [], "student": []}
  for _ in range(args.runs):
    t0 = time.perf_counter()
    state_kd, m = kd_step(state_kd, tvars, batch, rng)
    jax.block_until_ready(m)
    times["kd"].append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    jax.block_until_ready(t_fwd(tvars, batch))
    times["teacher"].append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    state_ce, m = ce_step(state_ce, {}, batch, rng)
    jax.block_until_ready(m)
    times["student"].append(time.perf_counter() - t0)
  med = {k: statistics.median(v) for k, v in times.items()}
  peak = _peak_mb()
  names = {"kd": f"(a) ResKD step ({args.student}@{args.student_res} + "
                 f"{args.teacher}@{args.crop})",
           "teacher": f"(b) teacher forward ({args.teacher}@{args.crop}, train-mode BN)",
           "student": f"(c) student train step ({args.student}@{args.student_res}, CE)"}
  for k in ("kd", "teacher", "student"):
    m = mem[k]
    print(f"{names[k]:<62} {1e3 * med[k]:9.1f} ms/step  "
          f"compiled memory {m:.0f} MiB" if m is not None else
          f"{names[k]:<62} {1e3 * med[k]:9.1f} ms/step")
  if peak is not None:
    print(f"peak device memory over the run: {peak:.0f} MiB")
  ratio = med["kd"] / (med["teacher"] + med["student"])
  print(f"ratio (a) / ((b) + (c)) = {ratio:.3f}  (target <= 1.1)")
  if args.input_steps > 0:
    host = host_batches(args, n * args.videos, batch)
    state_kd = input_wait(kd_step, state_kd, tvars, rng, host, mesh, args.input_steps)
  return 0


def host_batches(args, batch_size, device_batch):
  """Per-host {"video", "label"} NumPy batches: the tf.data pipeline, or one batch repeated."""
  if not args.data_dir:
    local = jax.tree.map(np.asarray, device_batch)
    return itertools.repeat(local)
  cfg = default.get_data_config()
  cfg.data_dir = args.data_dir
  cfg.num_frames = args.frames
  cfg.crop_size = args.crop
  info = pipeline.dataset_info(args.data_dir)
  ds = pipeline.create_dataset(cfg, cfg.train_split, train=True, batch_size=batch_size,
                                     num_classes=info.num_classes)
  return ({"video": b["video"], "label": b["label"]} for b in ds.as_numpy_iterator())


def input_wait(step, state, tvars, rng, host, mesh, steps: int):
  """Runs `steps` steps fed by prefetch_to_mesh; prints the share of time spent waiting."""
  batches = transfer.prefetch_to_mesh(host, mesh, size=2)
  state, m = step(state, tvars, next(batches), rng)  # warm-up: fills the pipeline
  jax.block_until_ready(m)
  waits, totals = [], []
  for _ in range(steps):
    t0 = time.perf_counter()
    batch = next(batches)
    t1 = time.perf_counter()
    state, m = step(state, tvars, batch, rng)
    jax.block_until_ready(m)
    waits.append(t1 - t0)
    totals.append(time.perf_counter() - t0)
  share = sum(waits) / sum(totals)
  print(f"input: {steps} steps through prefetch_to_mesh (2 batches ahead): waited "
        f"{1e3 * statistics.median(waits):.1f} ms median, {1e3 * max(waits):.1f} ms at most "
        f"per step; {100 * share:.1f}% of step time spent waiting for input")
  return state


if __name__ == "__main__":
  sys.exit(main())
