"""Start-up of the input pipelines: building the train and eval tf.data pipelines of a run and
reading their first batch, with the pipeline's functions traced as written (what
`reskd_jax.data.pipeline` does) and through AutoGraph (tf.data's default), side by side.

  python bench/pipeline_startup.py [--data_dir=DIR] [--rounds=2]

Without `--data_dir` it makes the demo data set (`data_prep.demo_data`, 48 + 16 videos) in a
temporary directory. Each measurement is a fresh process (TensorFlow traces a function
once per process), the two ways alternating; CPU seconds are those of the whole process
from just before the first pipeline is built to the first batch of the second.
"""

import argparse
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_CHILD = r"""
import sys, time
sys.path.insert(0, {root!r})
from configs import demo
from reskd_jax.data import pipeline
if {autograph!r}:
  pipeline._as_written = lambda fn: fn  # tf.data's default: AutoGraph converts each function
config = demo.get_config("reskd")
config.data.data_dir = {data_dir!r}
cpu, wall = time.process_time(), time.time()
for train, split in ((True, config.data.train_split), (False, config.data.eval_split)):
  next(iter(pipeline.create_dataset(config.data, split, train=train, batch_size=8,
                                    num_classes=config.num_classes)))
print(time.process_time() - cpu, time.time() - wall)
"""


def _measure(data_dir: str, autograph: bool):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-c", _CHILD.format(root=ROOT, autograph=autograph,
                                                            data_dir=data_dir)],
                       env=env, capture_output=True, text=True, check=True)
  cpu, wall = map(float, out.stdout.split()[-2:])
  return cpu, wall


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--data_dir", default=None,
                      help="a converted data set with the demo config's splits")
  parser.add_argument("--rounds", type=int, default=2)
  args = parser.parse_args()
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  data_dir = args.data_dir
  if data_dir is None:
    sys.path.insert(0, ROOT)
    from data_prep.demo_data import prepare_demo
    data_dir = prepare_demo(os.path.join(tempfile.mkdtemp(), "demo"), num_train=48,
                            num_test=16, workers=1, log=lambda *a: None)
  rows = {True: [], False: []}
  for _ in range(args.rounds):
    for autograph in (True, False):
      rows[autograph].append(_measure(data_dir, autograph))
  print(f"{'functions':<12} {'CPU s (each round)':<24} {'wall s (each round)':<24}")
  for autograph, name in ((True, "AutoGraph"), (False, "as written")):
    cpu = " ".join(f"{c:.2f}" for c, _ in rows[autograph])
    wall = " ".join(f"{w:.2f}" for _, w in rows[autograph])
    print(f"{name:<12} {cpu:<24} {wall:<24}")
  mean = {k: sum(c for c, _ in v) / len(v) for k, v in rows.items()}
  print(f"as written / AutoGraph, CPU: {mean[False] / mean[True]:.2f}")


if __name__ == "__main__":
  main()
