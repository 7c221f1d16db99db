"""`--mode=plan`: compile-ahead plans for Cloud TPU topologies with libtpu, on a CPU machine.

The tiny ResKD config compiled for a single-host (v5e:2x2) and a multi-host
(v5e:4x4, 4 processes' chips, compiled from this one process) topology through
main.py; the largest-batch search against direct compiles under a small memory
figure; the one-line stop without libtpu; the accelerator extras' pins.
"""

import io
import json
import os
import re
import subprocess
import sys

import pytest

from reskd_jax import errors, meta as meta_lib
from reskd_jax.fileio import write_json_atomic
from reskd_jax.tools import chips

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = "configs/activitynet_r50_112.py:tiny"
NUM_CLASSES = 200  # activitynet's

try:
  import libtpu  # noqa: F401
  HAVE_LIBTPU = True
except ImportError:
  HAVE_LIBTPU = False
needs_libtpu = pytest.mark.skipif(
    not HAVE_LIBTPU, reason="libtpu is not installed (`make install` installs the tpu extra)")


def _teacher(tmp_path):
  """A teacher checkpoint's meta.json alone: a plan reads the architecture, never the weights."""
  directory = tmp_path / "teacher"
  directory.mkdir(exist_ok=True)
  write_json_atomic(str(directory / "meta.json"), meta_lib.for_converted(
      "resnet18", NUM_CLASSES, False, None, "shape only", "test",
      {"width": 8, "stage_sizes": (1, 1, 1, 1), "stem": "small"}))
  return str(directory)


def _env(**extra):
  # No JAX_COMPILATION_CACHE_DIR: compile-only TPU executables cannot be cached.
  return dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2", **extra)


def _main(workdir, *args, env=None):
  return subprocess.run([sys.executable, "main.py", f"--config={CONFIG}",
                         f"--workdir={workdir}", "--mode=plan", *args],
                        cwd=ROOT, env=env or _env(), capture_output=True, text=True,
                        timeout=900)


@pytest.fixture(scope="module")
def plans(tmp_path_factory):
  """One main.py run planning the tiny ResKD run on v5e:2x2 and the multi-host v5e:4x4."""
  tmp = tmp_path_factory.mktemp("plan")
  workdir = tmp / "w"
  proc = _main(workdir, "--topology=v5e:2x2,v5e:4x4",
               f"--config.teacher.checkpoint={_teacher(tmp)}",
               "--config.batch_size=16", "--config.eval_batch_size=16")
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
  return proc, json.loads((workdir / "plan.json").read_text()), workdir


@needs_libtpu
def test_plan_of_tiny_reskd_single_and_multi_host(plans):
  proc, result, workdir = plans
  assert result["config"]["mode"] == "reskd" and result["config"]["teacher"] == "resnet18"
  by_topology = {p["topology"]: p for p in result["plans"]}
  assert set(by_topology) == {"v5e:2x2", "v5e:4x4"}
  assert by_topology["v5e:2x2"]["processes"] == 1 and by_topology["v5e:2x2"]["chips"] == 4
  assert by_topology["v5e:4x4"]["processes"] == 4 and by_topology["v5e:4x4"]["chips"] == 16
  for topology, p in by_topology.items():
    assert p["chip"] == "v5e" and p["hbm_gib_per_chip"] == chips.CHIPS["v5e"].hbm_gib
    train, evaluation = p["train"], p["eval"]
    # The config's global batch of 16 split over the topology's chips.
    assert train["per_device_batch"] * p["devices"] == 16
    for step in (train, evaluation):
      mem = step["memory_bytes"]
      assert mem["arguments"] > 0 and mem["total"] > 0
      assert mem["total"] == (mem["arguments"] + mem["outputs"] - mem["aliased"]
                              + mem["temporaries"] + mem["program"])
      assert step["fits"] is True  # a tiny net in 16 GiB
      assert step["flops"] > 0 and step["bytes_accessed"] > 0
      roof = step["roofline"]
      assert roof["step_s_lower_bound"] == pytest.approx(max(
          step["flops"] / chips.CHIPS["v5e"].peak_bf16_flops,
          step["bytes_accessed"] / chips.CHIPS["v5e"].hbm_bytes_per_s))
      assert roof["videos_per_s_per_slice_upper_bound"] == pytest.approx(
          roof["videos_per_s_per_chip_upper_bound"] * p["chips"])
      assert step["compile_seconds"] > 0
    # The donated train state aliases its outputs; gradients and BN statistics are all-reduced.
    assert train["memory_bytes"]["aliased"] > 0
    assert train["collectives"]["all-reduce"]["count"] >= 1
    assert train["collectives"]["all-reduce"]["bytes"] > 0
    assert train["only_all_reduce"] is True
    assert evaluation["collectives"] == {}  # per-device inference: nothing to exchange
  # A progress line per compile, then the table (also in plan.txt).
  assert len(re.findall(r"\[plan\] v5e:\dx\d: compiling the (train|eval) step", proc.stdout)) == 4
  table = (workdir / "plan.txt").read_text()
  assert "v5e:4x4" in table and "all-reduce" in table and table in proc.stdout
  # libtpu's start-up complaints about absent TPU hosts are not shown.
  assert "TPU_WORKER_HOSTNAMES" not in proc.stderr and "Traceback" not in proc.stderr


@pytest.fixture
def own_cache(tmp_path):
  """A persistent compilation cache of this test's own (the suite's is shared with the other
  pytest-xdist worker, which may add entries meanwhile)."""
  import jax
  from jax._src import compilation_cache
  shared = jax.config.jax_compilation_cache_dir
  jax.config.update("jax_compilation_cache_dir", str(tmp_path / "cache"))
  compilation_cache.reset_cache()
  yield str(tmp_path / "cache")
  jax.config.update("jax_compilation_cache_dir", shared)
  compilation_cache.reset_cache()


@needs_libtpu
def test_largest_batch_prediction_against_direct_compiles(plans, tmp_path, own_cache):
  """Under a small memory figure, the predicted batch fits and the next one up does not."""
  import jax
  from configs import activitynet_r50_112
  from reskd_jax.tools import plan

  _, result, _ = plans
  first = next(p for p in result["plans"] if p["topology"] == "v5e:2x2")["train"]
  # HBM such that the limit (90% of it) is 60% of what the config batch needs: the search
  # goes down from there (tiny nets on TPU are far from affine; the edge is what counts).
  hbm_gib = first["memory_bytes"]["total"] * 0.6 / 0.9 / chips.GIB
  config = activitynet_r50_112.get_config("tiny")
  config.teacher.checkpoint = _teacher(tmp_path)
  config.batch_size = config.eval_batch_size = 16
  out = plan.run_plan(config, str(tmp_path / "w"), ["v5e:2x2"], max_batch=True,
                      hbm_gib=hbm_gib, with_eval=False)
  found = out["plans"][0]["max_batch"]
  best = found["per_device_batch"]
  assert 1 <= best < first["per_device_batch"] and found["edge_confirmed"]
  assert found["compiles"] == len(found["compiled_batches"]) <= 8
  assert found["tries"] and all(t["error_percent"] is not None for t in found["tries"]
                                if t["compiled_bytes"])
  # Direct compiles, independent of the search's own records (JAX's persistent cache, on in
  # this test process, is bypassed: it cannot read compile-only TPU executables back).
  cache = own_cache
  assert jax.config.jax_compilation_cache_dir == cache
  cached_before = set(os.listdir(cache)) if os.path.isdir(cache) else set()
  steps = plan.RunSteps(config)
  planner = plan.Planner(steps, "v5e:2x2", hbm_gib=hbm_gib, stream=io.StringIO())
  assert planner.compile_step("train", best)["fits"] is True
  assert planner.compile_step("train", best + 1)["fits"] is False
  after = set(os.listdir(cache)) if os.path.isdir(cache) else set()
  assert not [f for f in after - cached_before if f.startswith("jit_step")]  # nothing cached
  table = (tmp_path / "w" / "plan.txt").read_text()
  assert f"largest train batch: {best} videos per device" in table


def test_plan_without_libtpu_stops_with_one_line(tmp_path):
  """libtpu made unimportable (a stand-in package that raises ImportError) -> one line, exit 2."""
  fake = tmp_path / "nolibtpu" / "libtpu"
  fake.mkdir(parents=True)
  (fake / "__init__.py").write_text("raise ImportError('libtpu hidden by the test')\n")
  proc = _main(tmp_path / "w", "--topology=v5e:2x2",
               env=_env(PYTHONPATH=str(tmp_path / "nolibtpu")))
  assert proc.returncode == errors.EXIT_BAD_INPUT, proc.stderr[-2000:]
  lines = [line for line in proc.stderr.splitlines() if line.strip()]
  assert len(lines) == 1, proc.stderr
  assert lines[0].startswith("error: ") and "libtpu" in lines[0] and ".[tpu]" in lines[0]
  assert not (tmp_path / "w" / "plan.json").exists()


def test_bad_topology_and_batch_are_one_line(tmp_path):
  proc = _main(tmp_path / "w", "--topology=v9x:2x2", "--max-batch")  # the spelling too
  assert proc.returncode == errors.EXIT_BAD_INPUT
  assert proc.stderr.strip().count("\n") == 0 and "v9x" in proc.stderr
  assert "v4, v5e, v5p, v6e" in proc.stderr
  if HAVE_LIBTPU:  # the tiny config's batch of 8 over 16 chips
    proc = _main(tmp_path / "w", "--topology=v5e:4x4",
                 f"--config.teacher.checkpoint={_teacher(tmp_path)}")
    assert proc.returncode == errors.EXIT_BAD_INPUT, proc.stderr[-2000:]
    assert "config.batch_size=8 is not a multiple of the 16 devices of v5e:4x4" in proc.stderr


def test_table_header_says_when_the_blocks_are_rematerialised():
  from reskd_jax.tools import plan
  config = {"model": "swin_s", "mode": "reskd", "teacher": "swin_b", "dtype": "bfloat16",
            "batch_size": 32, "num_frames": 32, "crop_size": 224, "input_size": 112,
            "grad_accum_steps": 16, "remat": False}
  result = {"config": config, "notes": [], "plans": []}
  assert "remat" not in plan.format_table(result).splitlines()[0]
  config["remat"] = True
  assert plan.format_table(result).splitlines()[0].endswith(
      "x 16 accumulated, blocks rematerialised (config.model.remat)")


def test_collectives_are_parsed_from_hlo_text():
  from reskd_jax.tools import plan
  hlo = "\n".join([
      "  %all-reduce.1 = (f32[64]{0}, bf16[3,3,8]{2,1,0}) all-reduce(%a, %b), channel_id=1",
      "  %ar = f32[]{:T(128)} all-reduce(%c), to_apply=%add",
      "  %ags = (f32[4,8]{1,0}, f32[16,8]{1,0}) all-gather-start(%x), dimensions={0}",
      "  %agd = f32[16,8]{1,0} all-gather-done(%ags)",
      "  %cp = s32[2]{0} collective-permute(%y), source_target_pairs={{0,1}}",
      "  %f = f32[8]{0} fusion(%all-reduce.1), kind=kLoop",
  ])
  found = plan.collectives(hlo)
  assert found["all-reduce"] == {"count": 2, "bytes": 64 * 4 + 9 * 8 * 2 + 4}
  assert found["all-gather"] == {"count": 1, "bytes": 16 * 8 * 4}
  assert found["collective-permute"] == {"count": 1, "bytes": 8}
  assert set(found) == {"all-reduce", "all-gather", "collective-permute"}


def test_roofline_is_the_slower_of_compute_and_memory():
  from reskd_jax.tools import plan
  chip = chips.CHIPS["v5e"]
  r = plan.roofline(2 * chip.peak_bf16_flops, chip.hbm_bytes_per_s, chip, 8, 4)
  assert r["step_s_lower_bound"] == pytest.approx(2.0) and r["bound_by"] == "compute"
  assert r["videos_per_s_per_chip_upper_bound"] == pytest.approx(4.0)
  assert r["videos_per_s_per_slice_upper_bound"] == pytest.approx(16.0)
  r = plan.roofline(1.0, 3 * chip.hbm_bytes_per_s, chip, 8, 4)
  assert r["bound_by"] == "memory" and r["step_s_lower_bound"] == pytest.approx(3.0)


def _constraints():
  pins = {}
  for line in open(os.path.join(ROOT, "constraints.txt")):
    line = line.split("#")[0].strip()
    if "==" in line:
      name, version = line.split("==", 1)
      pins[re.sub(r"[-_.]+", "-", name).lower()] = version
  return pins


def test_accelerator_extras_are_declared_and_agree_with_constraints():
  """setup.py's tpu/cuda12/cuda13 extras pin jax (and libtpu) as constraints.txt does."""
  import ast
  tree = ast.parse(open(os.path.join(ROOT, "setup.py")).read())
  consts = {t.id: n.value.value for n in tree.body if isinstance(n, ast.Assign)
            for t in n.targets if isinstance(t, ast.Name) and isinstance(n.value, ast.Constant)}
  call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call)
              and getattr(n.func, "id", "") == "setup")
  extras_node = next(k.value for k in call.keywords if k.arg == "extras_require")

  def value(node):
    if isinstance(node, ast.JoinedStr):  # f"jax[tpu]=={JAX_VERSION}"
      return "".join(str(v.value) if isinstance(v, ast.Constant) else str(consts[v.value.id])
                     for v in node.values)
    return ast.literal_eval(node)

  extras = {ast.literal_eval(k): [value(v) for v in vals.elts]
            for k, vals in zip(extras_node.keys, extras_node.values)}
  pins = _constraints()
  assert {"tpu", "cuda12", "cuda13"} <= set(extras)
  for extra in ("tpu", "cuda12", "cuda13"):
    jax_req = next(r for r in extras[extra] if r.startswith("jax["))
    assert jax_req == f"jax[{extra}]=={pins['jax']}", (extra, jax_req)
    assert pins["jaxlib"] == pins["jax"]
  libtpu_req = next(r for r in extras["tpu"] if r.startswith("libtpu"))
  assert libtpu_req == f"libtpu=={pins['libtpu']}"
  # `make test` installs the tpu extra, so the plan tests run on a fresh clone.
  makefile = open(os.path.join(ROOT, "Makefile")).read()
  assert re.search(r"pip install .*-c constraints\.txt -e '\.\[[a-z,]*\btpu\b[a-z,]*\]'", makefile)
  if HAVE_LIBTPU:
    from importlib import metadata
    assert metadata.version("libtpu") == pins["libtpu"]


@needs_libtpu
def test_installed_libtpu_without_chips_leaves_jax_on_the_cpu_quietly():
  """With the tpu extra on a machine without TPU chips, importing reskd_jax keeps JAX off
  libtpu: no TPU probe, none of libtpu's start-up lines (JAX_PLATFORMS unset, as a user
  has it; JAX may already be imported by then)."""
  env = {k: v for k, v in os.environ.items() if k not in ("JAX_PLATFORMS", "XLA_FLAGS")}
  code = ("import reskd_jax, jax; print(jax.config.jax_platforms, "
          "[d.platform for d in jax.devices()])")
  proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.strip() == "cpu ['cpu']", proc.stdout
  assert "TPU" not in proc.stderr and "libtpu" not in proc.stderr, proc.stderr[-2000:]


class _FakePlanner:
  """What Planner.largest_batch uses: compile_step and the limit, memory given by `mem`
  (bytes per device for a batch, None where the compiler refuses the program)."""

  def __init__(self, mem, limit):
    self.mem, self.limit, self.compiled = mem, limit, []
    self.topology, self.devices_per_chip, self.num_devices = "v5e:2x4", 1, 8

  def compile_step(self, which, batch):
    assert which == "train" and batch not in self.compiled, (which, batch, self.compiled)
    self.compiled.append(batch)
    m = self.mem(batch)
    if m is None:
      return {"per_device_batch": batch, "fits": False, "compiler_error": "RESOURCE_EXHAUSTED"}
    return {"per_device_batch": batch, "fits": m <= self.limit, "memory_bytes": {"total": m}}


@pytest.mark.parametrize("name,mem,limit,edge,start", [
    # Affine: the first prediction is the edge (4 compiles).
    ("affine", lambda b: 1000 + 100 * b, 10000, 90, 8),
    # What SlowOnly@112 on v5e:2x4 did: affine up to 76, then flat (the compiler recomputes
    # instead of storing), so the fit through 76 and 77 pointed at 426, and the search
    # walked down from there one refused batch at a time. Now: double, then halve.
    ("flat_at_the_limit", lambda b: (None if b > 100 else 20000 if b > 80 else
                                     1000 + 100 * min(b, 76)), 8650, 80, 8),
    ("flat_then_refused", lambda b: None if b >= 90 else 1000 + 100 * min(b, 76), 10000, 89, 8),
    ("refused_above_edge", lambda b: None if b > 60 else 1000 + 100 * b, 10000, 60, 8),
    # The config's batch and half of it both over the limit, memory flat there: halve
    # towards 0 (no batch known to fit yet) instead of walking down from 31.
    ("nothing_fits_and_flat", lambda b: 1000 * b if b <= 2 else 10000, 5000, 2, 64),
])
def test_largest_batch_search_finds_the_edge_when_memory_is_not_affine(name, mem, limit, edge,
                                                                       start):
  from reskd_jax.tools import plan
  fake = _FakePlanner(mem, limit=limit)
  first = fake.compile_step("train", start)
  result = plan.Planner.largest_batch(fake, first)
  assert result["per_device_batch"] == edge, (name, fake.compiled, result)
  assert result["edge_confirmed"], (name, fake.compiled)
  assert result["compiles"] == len(fake.compiled) <= 14, fake.compiled
  if start < edge:  # growing from below: never far above the edge
    assert all(b < 2 * edge + 2 for b in fake.compiled), fake.compiled
