"""One ResKD training step: plain PyTorch vs JAX, same machine, same run.

The step (pixel-level feature KD, the paper's default): the teacher (ResNet-50
by default, the paper's "resolution distillation" set-up) sees the 224 px
crop in train-mode BatchNorm without gradients; the ResNet-50 student sees
the same crop bilinearly downsampled to 112 px inside the step;
loss = CE + 100 * MSE(teacher map, student map upsampled to 7x7); SGD with
momentum 0.9. Both sides start from the same weights; float32.

JAX side: ``reskd_jax.train_step.make_train_step`` + ``shard_train_step`` on a
one-device mesh (``--jax-impl=project``, the default), or a straightforward
single-jit version written here (``--jax-impl=simple``).

    python bench/train_step_vs_torch.py --batch-size=2 --frames=4 --iters=5
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from timing import median_time  # noqa: E402

from reskd_jax import train_step as ts  # noqa: E402
from reskd_jax.augment import IMAGENET_MEAN as MEAN, IMAGENET_STD as STD  # noqa: E402
from reskd_jax.models import build_model  # noqa: E402
from reskd_jax.tools import convert_weights  # noqa: E402


def torch_step_fn(args, video_u8, labels):
  import torch
  import torch.nn.functional as F

  from tests.torch_models import resnet as torch_resnet

  torch.manual_seed(0)
  t_depth = int(args.teacher_arch.replace("resnet", ""))
  student = torch_resnet.resnet(50, args.num_classes).train()
  teacher = torch_resnet.resnet(t_depth, args.num_classes).train()
  for p in teacher.parameters():
    p.requires_grad_(False)
  opt = torch.optim.SGD(student.parameters(), lr=args.lr, momentum=0.9)
  mean = torch.tensor(MEAN).view(1, 1, 3, 1, 1)
  std = torch.tensor(STD).view(1, 1, 3, 1, 1)
  video = torch.from_numpy(video_u8.transpose(0, 1, 4, 2, 3).copy())  # (B,T,3,H,W) uint8
  labels = torch.from_numpy(labels).long()

  def step():
    x = (video.float() - mean) / std
    b, t = x.shape[:2]
    with torch.no_grad():  # train-mode BN, no gradient (the authors' teacher)
      _, f_t = teacher(x, return_features=True)
    small = F.interpolate(x.flatten(0, 1), size=(args.student_res, args.student_res),
                          mode="bilinear", align_corners=False).view(b, t, 3, args.student_res,
                                                                     args.student_res)
    logits, f_s = student(small, return_features=True)
    up = F.interpolate(f_s.flatten(0, 1), size=f_t.shape[-2:], mode="bilinear",
                       align_corners=False)
    loss = F.cross_entropy(logits, labels) + args.kd_weight * F.mse_loss(up, f_t.flatten(0, 1))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.item()

  return step, (student, teacher)


def jax_step_fn(args, video_u8, labels, student_t, teacher_t):
  student = build_model("resnet50", args.num_classes, input_size=args.student_res)
  teacher = build_model(args.teacher_arch, args.num_classes, dropout_rate=0.0)  # as train.py
  s_vars, _ = convert_weights.convert_state_dict(student_t.state_dict(), "resnet50")
  t_vars, _ = convert_weights.convert_state_dict(teacher_t.state_dict(), args.teacher_arch)
  tx = optax.sgd(args.lr, momentum=0.9)
  batch = {"video": jnp.asarray(video_u8), "label": jnp.asarray(labels, jnp.int32)}
  rng = jax.random.PRNGKey(0)

  if args.jax_impl == "project":
    mesh = ts.make_mesh(jax.devices()[:1])
    step = ts.shard_train_step(ts.make_train_step(
        student=student, tx=tx, mode="reskd", teacher=teacher, kd_method="pixel_feature",
        kd_weight=args.kd_weight, mean=MEAN, std=STD, flip=False), mesh)
    state = ts.create_train_state(s_vars, tx)
    state, t_vars, batch = (ts.replicate(state, mesh), ts.replicate(t_vars, mesh),
                            jax.device_put(batch, jax.sharding.NamedSharding(
                                mesh, jax.sharding.PartitionSpec(ts.AXIS))))
    holder = {"state": state}

    def run():
      holder["state"], metrics = step(holder["state"], t_vars, batch, rng)
      return float(metrics["loss"])
    return run

  # "simple": one jit, no mesh.
  mean, std = jnp.asarray(MEAN), jnp.asarray(STD)

  @jax.jit
  def simple_step(params, batch_stats, opt_state, t_vars, batch, rng):
    x = (batch["video"].astype(jnp.float32) - mean) / std
    t_out, _ = teacher.apply(t_vars, x, train=True, return_dict=True, mutable=["batch_stats"])
    f_t = jax.lax.stop_gradient(t_out["features"])

    def loss_fn(params):
      out, new_state = student.apply({"params": params, "batch_stats": batch_stats}, x,
                                     train=True, return_dict=True, mutable=["batch_stats"],
                                     rngs={"dropout": rng})
      b, t, h, w, c = out["features"].shape
      up = jax.image.resize(out["features"], (b, t, *f_t.shape[2:4], c), "bilinear",
                            antialias=False)
      ce = optax.softmax_cross_entropy_with_integer_labels(out["logits"], batch["label"]).mean()
      return ce + args.kd_weight * jnp.mean((up - f_t) ** 2), new_state["batch_stats"]

    (loss, new_bs), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), new_bs, opt_state, loss

  holder = {"p": s_vars["params"], "bs": s_vars["batch_stats"],
            "o": tx.init(s_vars["params"])}

  def run():
    holder["p"], holder["bs"], holder["o"], loss = simple_step(
        holder["p"], holder["bs"], holder["o"], t_vars, batch, rng)
    return loss.item()
  return run


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--batch-size", type=int, default=2, help="videos per step")
  p.add_argument("--frames", type=int, default=4)
  p.add_argument("--teacher-res", type=int, default=224)
  p.add_argument("--student-res", type=int, default=112)
  p.add_argument("--teacher-arch", default="resnet50")
  p.add_argument("--num-classes", type=int, default=200)
  p.add_argument("--kd-weight", type=float, default=100.0)
  p.add_argument("--lr", type=float, default=1e-4)
  p.add_argument("--iters", type=int, default=5)
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument("--jax-impl", choices=("project", "simple"), default="project")
  p.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
  p.add_argument("--skip-torch", action="store_true", help="time the JAX step only")
  args = p.parse_args(argv)

  import torch  # optional: only the benchmarks against PyTorch need it

  if args.threads:
    torch.set_num_threads(args.threads)
  rng = np.random.default_rng(0)
  video = rng.integers(0, 256, (args.batch_size, args.frames, args.teacher_res,
                                args.teacher_res, 3), dtype=np.uint8)
  labels = rng.integers(0, args.num_classes, (args.batch_size,)).astype(np.int32)

  t_step, (student_t, teacher_t) = torch_step_fn(args, video, labels)
  j_step = jax_step_fn(args, video, labels, student_t, teacher_t)
  t0 = time.perf_counter()
  first_loss_jax = j_step()  # compile + first step
  compile_s = time.perf_counter() - t0
  t_jax, _ = median_time(j_step, args.iters, max(0, args.warmup - 1))
  first_loss_torch, t_torch = float("nan"), float("nan")
  if not args.skip_torch:
    first_loss_torch = t_step()
    t_torch, _ = median_time(t_step, args.iters, max(0, args.warmup - 1))
  print(f"# ResKD step: R50 student @{args.student_res} <- {args.teacher_arch} teacher "
        f"@{args.teacher_res} (train-mode BN, no grad), CE + {args.kd_weight:g}*MSE, SGD; "
        f"batch {args.batch_size} videos x {args.frames} frames, float32")
  print(f"# JAX {jax.__version__} ({args.jax_impl} step) on {jax.devices()[0].device_kind}; "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads); "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores")
  print(f"# first-step loss: JAX {first_loss_jax:.4f}, torch {first_loss_torch:.4f} "
        f"(same weights and data; JAX has head dropout, torch none); JAX compile {compile_s:.1f}s")
  print(f"{'':>6} {'s/step':>8} {'videos/s':>9}")
  print(f"{'JAX':>6} {t_jax:>8.3f} {args.batch_size / t_jax:>9.2f}")
  print(f"{'torch':>6} {t_torch:>8.3f} {args.batch_size / t_torch:>9.2f}")
  print(f"JAX speed-up over torch: {t_torch / t_jax:.2f}x")
  return 0


if __name__ == "__main__":
  sys.exit(main())
