"""bench/accelerator_check.sh stops with one line when no accelerator is visible (this CPU box)."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_accelerator_check_fails_with_one_line_without_an_accelerator(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHON=sys.executable, OUT=str(tmp_path / "out"))
  proc = subprocess.run(["bash", os.path.join(ROOT, "bench", "accelerator_check.sh")],
                        env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2, proc.stdout + proc.stderr
  assert proc.stdout == ""
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: no accelerator visible to JAX")
  assert "'cpu'" in lines[0]
  assert not (tmp_path / "out").exists()  # nothing half-written
