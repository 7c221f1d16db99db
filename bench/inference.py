"""ResNet-50 student inference throughput: our JAX model vs the plain-PyTorch reference.

Same machine, same run, same weights layout (torchvision ResNet-50 + TSN head),
float32, eval mode, at each resolution. Prints videos/second and the ratio.

    python bench/inference.py --batch-size=1 --frames=8 --iters=5
    python bench/inference.py --batch-size=64 --frames=16 --resolutions=112,224   # on a GPU box
"""

from __future__ import annotations

import argparse
import os
import platform
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from timing import median_time  # noqa: E402

from reskd_jax.models import build_model  # noqa: E402
from reskd_jax.tools import convert_weights  # noqa: E402


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--arch", default="resnet50")
  p.add_argument("--batch-size", type=int, default=1, help="videos per batch")
  p.add_argument("--frames", type=int, default=8)
  p.add_argument("--resolutions", default="112,224")
  p.add_argument("--iters", type=int, default=5, help="timed iterations (median reported)")
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument("--num-classes", type=int, default=200)
  p.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
  p.add_argument("--channels-last", action="store_true", help="torch channels_last memory format")
  p.add_argument("--skip-torch", action="store_true")
  p.add_argument("--torch-device", default="cpu",
                 help="where torch runs: cpu, or cuda (the same GPU as JAX)")
  args = p.parse_args(argv)

  import torch  # optional: only the benchmarks against PyTorch need it

  from tests.torch_models import resnet as torch_resnet

  if args.threads:
    torch.set_num_threads(args.threads)
  depth = int(args.arch.replace("resnet", ""))
  tmodel = torch_resnet.resnet(depth, args.num_classes).eval()
  variables, _ = convert_weights.convert_state_dict(tmodel.state_dict(), args.arch)
  jmodel = build_model(args.arch, args.num_classes)
  fwd = jax.jit(lambda v, x: jmodel.apply(v, x, train=False))
  variables = jax.device_put(variables)
  if args.channels_last:
    tmodel = tmodel.to(memory_format=torch.channels_last)
  tmodel = tmodel.to(args.torch_device)

  print(f"# {args.arch}, batch {args.batch_size} videos x {args.frames} frames, float32, "
        f"median of {args.iters} (warm-up {args.warmup})")
  print(f"# JAX {jax.__version__} on {jax.devices()[0].device_kind}; torch {torch.__version__} "
        f"({args.torch_device}, {torch.get_num_threads()} threads); "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores")
  print(f"{'res':>5} {'JAX videos/s':>13} {'torch videos/s':>15} {'JAX/torch':>10}")
  results = {}
  for res in [int(r) for r in args.resolutions.split(",")]:
    rng = np.random.default_rng(0)
    video = rng.standard_normal((args.batch_size, args.frames, res, res, 3)).astype(np.float32)
    x = jax.device_put(jnp.asarray(video))
    fwd(variables, x).block_until_ready()  # compile
    t_jax, _ = median_time(lambda: fwd(variables, x).block_until_ready(), args.iters,
                           args.warmup)
    t_torch = float("nan")
    if not args.skip_torch:
      tv = torch.from_numpy(video.transpose(0, 1, 4, 2, 3).copy())
      if args.channels_last:
        b, t = tv.shape[:2]
        tv = tv.reshape(b * t, *tv.shape[2:]).contiguous(memory_format=torch.channels_last)
        tv = tv.reshape(b, t, *tv.shape[1:])

      tv = tv.to(args.torch_device)

      def run_torch():
        with torch.inference_mode():
          tmodel(tv)
        if args.torch_device.startswith("cuda"):
          torch.cuda.synchronize()
      t_torch, _ = median_time(run_torch, args.iters, args.warmup)
    vj, vt = args.batch_size / t_jax, args.batch_size / t_torch
    results[res] = (vj, vt)
    print(f"{res:>5} {vj:>13.2f} {vt:>15.2f} {vj / vt:>9.2f}x")
  if 112 in results and 224 in results:
    j = results[112][0] / results[224][0]
    t = results[112][1] / results[224][1]
    print(f"112 vs 224 throughput: JAX {j:.2f}x, torch {t:.2f}x (paper, V100: 3.3x)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
