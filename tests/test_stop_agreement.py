"""The agreed stop of a 2-process run (2 processes x 2 CPU devices, gloo) when a scheduler
signals ONE of its processes.

The run is the demo teacher as a person launches it: `configs/demo.py:teacher` at 32 px,
batch 8, a log line (and a stop check) every step, a checkpoint every 5 steps, each
process started directly with explicit --coordinator_address/--num_processes/--process_id
(`python main.py`, no wrapper shell: a shell that starts main.py as its child receives a
signal sent to it in main.py's place, see docs/multihost.md). One process gets SIGTERM by
`os.kill`, as a scheduler sends it: process 0 at a step between two checkpoints (process 1
signalled while a checkpoint is being written is test_multihost's
test_sigterm_to_one_process_stops_both_then_resumes_bit_identical).
Both must stop after the same step, soon after the signal, with a complete checkpoint at
it, and exit 143; nothing trains on to the last step.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from data_prep.demo_data import prepare_demo
from helpers import ROOT, free_port, kill_all, multihost_env, tail as _tail, wait_for
from reskd_jax import checkpoints, errors, workdir as workdir_lib

STEPS = 30
STOP_LIMIT = 120  # seconds from the signal to both processes' exit


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory):
  root = tmp_path_factory.mktemp("stop_agreement")
  return prepare_demo(str(root / "demo"), num_train=48, num_test=16, workers=1,
                      log=lambda *a: None)


def _launch(data, workdir, logdir):
  port = free_port()
  env = multihost_env()  # 2 CPU devices, gloo, the tests' compilation cache
  procs, logs = [], []
  for i in range(2):
    logs.append(os.path.join(logdir, f"p{i}.log"))
    cmd = [sys.executable, "main.py", "--config=configs/demo.py:teacher",
           f"--workdir={workdir}", f"--config.data.data_dir={data}",
           "--config.data.short_side=32", "--config.data.crop_size=32",
           "--config.batch_size=8", "--config.eval_batch_size=8",
           "--config.eval_every_epochs=100", "--config.log_every_steps=1",
           "--config.checkpoint_every_steps=5", f"--config.num_train_steps={STEPS}",
           f"--coordinator_address=localhost:{port}", "--num_processes=2",
           f"--process_id={i}"]
    with open(logs[-1], "w") as log:
      procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log,
                                    stderr=subprocess.STDOUT))
  return procs, logs


@pytest.mark.e2e
def test_sigterm_to_process_0_between_saves_stops_both_at_the_same_step(demo_data, tmp_path):
  target, at_step = 0, 7
  workdir = str(tmp_path / "run")
  procs, logs = _launch(demo_data, workdir, str(tmp_path))
  try:
    wait_for(logs, procs, f"[train] step {at_step}/")  # helpers.TIMEOUT at most
    os.kill(procs[target].pid, signal.SIGTERM)  # that process alone, as a scheduler does
    signalled = time.time()
    codes = [p.wait(timeout=max(signalled + STOP_LIMIT - time.time(), 1)) for p in procs]
  except subprocess.TimeoutExpired:
    pytest.fail("the run did not stop in time\n" + _tail(logs))
  finally:
    kill_all(procs)
  assert codes == [errors.EXIT_PREEMPTED] * 2, _tail(logs)
  texts = [open(path).read() for path in logs]
  stopped = [[int(line.split("stopped at step ")[1].split()[0])
              for line in text.splitlines() if "stopped at step " in line] for text in texts]
  assert len(stopped[0]) == 1 and stopped[0] == stopped[1], _tail(logs)
  step = stopped[0][0]
  assert at_step < step <= at_step + 4, (step, _tail(logs))  # soon: not the last step
  assert f"[train] step {STEPS}/" not in texts[0]
  assert "received SIGTERM" in texts[target] and "received SIGTERM" not in texts[1 - target]
  assert "Traceback" not in "".join(texts), _tail(logs)

  ckpt = os.path.join(workdir, workdir_lib.CHECKPOINTS)
  names = os.listdir(ckpt)
  on_disk = sorted(int(n) for n in names if n.isdigit())
  assert on_disk and on_disk[-1] == step, names
  sums = json.load(open(os.path.join(ckpt, checkpoints.CHECKSUMS_FILE)))
  assert sorted(map(int, sums)) == on_disk
  assert not [n for n in names if "tmp" in n], names
  assert not os.path.exists(os.path.join(workdir, workdir_lib.RESULTS))
