"""``--mode=plan``: compile a run ahead of time for a Cloud TPU topology, without its hardware.

``python main.py --config=CONFIG --workdir=W --mode=plan --topology=v5e:2x2``
builds the train step and the eval step that ``--mode=train`` would run (same
config, models, optimizer, dtypes, ``train_step.make_mesh``, the config's
global batch split over the topology's chips, the teacher inside the step for
ResKD runs), compiles them with libtpu for the topology's compile-only devices
(``jax.experimental.topologies``; multi-host topologies compile from this one
process) and reports per chip:

- memory (``memory_analysis``): arguments, outputs, aliased (donated) and
  temporary bytes; their total ``arguments + outputs - aliased + temporaries
  + program`` against the chip's HBM and whether it fits under ``margin`` of it;
- XLA's flops and bytes per step (``cost_analysis``) and, from the chip's
  peak bf16 FLOP/s and HBM bandwidth (``reskd_jax.tools.chips``), the roofline
  bound ``step >= max(flops / peak, bytes / bandwidth)``, i.e. at most
  ``per-chip batch / step`` videos/s per chip (times the chips per slice);
  XLA's own ``optimal_seconds`` is not used;
- the collectives of the compiled program (count and result bytes per kind,
  parsed from its HLO); a data-parallel step should all-reduce gradients and
  BatchNorm statistics and nothing else;
- with ``max_batch``: the largest per-chip train batch that fits, predicted
  from two compiles (memory is close to affine in the batch) and confirmed by
  compiling the predicted batch.

Writes ``plan.json`` and ``plan.txt`` in the workdir. Needs libtpu (``pip
install -e '.[tpu]'``); without it, one line says so.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from reskd_jax import config_checks, evaluate, log_filter, meta as meta_lib, models, optim
from reskd_jax import platforms, train, train_step, workdir as workdir_lib
from reskd_jax.data import clips
from reskd_jax.errors import ConfigError, ReskdError
from reskd_jax.fileio import read_json, write_json_atomic
from reskd_jax.tools import chips

PLAN_JSON = "plan.json"
PLAN_TXT = "plan.txt"
DEFAULT_MARGIN = 0.9  # a plan "fits" when it needs at most 90% of the chip's HBM
# The teacher architecture assumed when config.teacher names none and no meta.json is found.
DEFAULT_TEACHER = "resnet152"
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4,
                "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}


class MissingLibtpuError(ReskdError):
  """``--mode=plan`` needs libtpu (the ``tpu`` extra)."""


def require_libtpu() -> None:
  try:
    import libtpu  # noqa: F401  (pylint: disable=import-outside-toplevel,unused-import)
  except ImportError:
    raise MissingLibtpuError(
        "--mode=plan compiles for Cloud TPU with libtpu, which is not installed: "
        "pip install -c constraints.txt -e '.[tpu]' (or `make install`)") from None


def _stderr_kept_on_error(verbose: bool):
  """libtpu prints start-up lines (no TPU attached, no worker hostnames) on stderr when it
  loads on a machine without TPUs; they mean nothing for compile-only devices. Shown only
  when something fails or with ``verbose``."""
  if verbose:
    return contextlib.nullcontext()
  return log_filter.captured_stderr(lambda text, failed: text if failed else "")


@contextlib.contextmanager
def _no_persistent_cache():
  """Compile-only TPU executables cannot be read back from JAX's persistent compilation
  cache ("PjRtCompiler must be constructed with a Client"): neither read nor write them."""
  before = jax.config.jax_enable_compilation_cache
  jax.config.update("jax_enable_compilation_cache", False)
  try:
    yield
  finally:
    jax.config.update("jax_enable_compilation_cache", before)


def topology_devices(name: str, verbose: bool = False):
  """(compile-only devices, chips) of a Cloud TPU topology such as ``v5e:2x2``."""
  require_libtpu()
  platforms.allow_compile_only_libtpu()
  from jax.experimental import topologies  # pylint: disable=import-outside-toplevel
  try:
    with _stderr_kept_on_error(verbose):
      devices = list(topologies.get_topology_desc(topology_name=name, platform="tpu").devices)
  except Exception as e:  # libtpu's errors are RuntimeErrors/JaxRuntimeErrors of many kinds
    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    raise ConfigError(f"--topology={name}: libtpu does not know this topology ({first}); "
                      f"names look like v5e:2x2, v5e:4x4, v5p:2x2x2, v6e:2x4") from None
  dims = name.split(":", 1)[-1].lower().split("x")
  try:
    num_chips = int(np.prod([int(d) for d in dims]))
  except ValueError:
    num_chips = len(devices)
  return devices, num_chips


# ---------------------------------------------------------------------------
# The run's models and steps, built as `reskd_jax.train` builds them.


def _prepare_teacher(config) -> List[str]:
  """Fills ``config.teacher`` from its checkpoint's meta.json when there is one."""
  notes = []
  meta = {}
  path = config.teacher.checkpoint
  if path:  # the meta.json alone is enough: a plan never reads the weights
    for where in (path, os.path.join(path, workdir_lib.VARIABLES)):
      meta = read_json(os.path.join(where, meta_lib.FILE), default=None) or {}
      if meta:
        break
  if meta:
    config_checks.fill_teacher(config, meta, repr(config.teacher.checkpoint))
    notes.append(f"teacher architecture from {config.teacher.checkpoint}/meta.json")
  elif config.teacher.name is None:
    config.teacher.name = DEFAULT_TEACHER
    notes.append(f"config.teacher.name unset and no meta.json at "
                 f"{config.teacher.checkpoint or '(no checkpoint)'}: planned with "
                 f"{DEFAULT_TEACHER} and the architecture's defaults")
  config_checks.check_resolution(config)
  return notes


def _check(config) -> int:
  """The config checks of `train` that do not need data or local devices; the class count."""
  train_step.check_mode(config.mode, config.kd_method)
  blocks = ("model", "teacher") if config.mode == "reskd" else ("model",)
  for key in blocks:
    if config[key].name is not None:
      models.check_name(config[key].name, f"config.{key}.name")
  config_checks.compute_dtype(config.dtype)
  if config.num_classes in (-1, None) or config.num_classes < 1:
    raise ConfigError(f"config.num_classes={config.num_classes}: a plan needs the class count "
                      f"(-1 takes it from the data set, which a plan does not read)")
  return int(config.num_classes)


class RunSteps:
  """The abstract (shape-only) state, teacher and steps of a config; nothing is allocated."""

  def __init__(self, config):
    self.config = config
    self.notes = _prepare_teacher(config) if config.mode == "reskd" else []
    self.num_classes = _check(config)
    self.dtype = config_checks.compute_dtype(config.dtype)
    self.num_frames = clips.frames_per_clip(config.data)
    self.student, self.teacher = train.build_networks(config, self.num_classes, self.dtype)
    init = models.with_bn_axis(self.student, None)
    variables = jax.eval_shape(lambda: models.init_variables(
        init, jax.random.key(0), self.num_frames, config.data.crop_size))
    # The schedule's step counts only shape a scalar function: any positive values do.
    self.tx, _ = train.create_optimizer(config, variables["params"], 100, 1000)
    self.state = jax.eval_shape(lambda v: train_step.create_train_state(v, self.tx), variables)
    self.teacher_vars = {}
    if self.teacher is not None:
      tvars = jax.eval_shape(lambda: models.init_variables(
          models.with_bn_axis(self.teacher, None), jax.random.key(0), self.num_frames,
          config.data.crop_size))
      self.teacher_vars = {k: tvars[k] for k in ("params", "batch_stats") if k in tvars}

  def train_fn(self, mesh):
    return train.sharded_train_step(self.config, self.student, self.teacher, self.tx,
                                    self.dtype, mesh)

  def eval_fn(self, mesh):
    return evaluate.sharded_eval_step(self.config, self.student, self.dtype, mesh)

  def train_args(self, mesh, global_batch: int):
    """ShapeDtypeStructs of ``(state, teacher_vars, batch, rng)`` placed as training places them."""
    c = self.config
    rep, split = NamedSharding(mesh, P()), NamedSharding(mesh, P(train_step.AXIS))
    size = clips.output_size(c.data)
    batch = {  # what pipeline.create_dataset(train=True) yields
        "video": jax.ShapeDtypeStruct((global_batch, self.num_frames, size, size, 3), jnp.uint8,
                                      sharding=split),
        "label": jax.ShapeDtypeStruct((global_batch,), jnp.int32, sharding=split),
        "multilabel": jax.ShapeDtypeStruct((global_batch, self.num_classes), jnp.float32,
                                           sharding=split),
    }
    key = jax.eval_shape(jax.random.key, 0)
    return (_placed(self.state, rep), _placed(self.teacher_vars, rep), batch,
            jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=rep))

  def eval_args(self, mesh, global_batch: int):
    c = self.config
    rep, split = NamedSharding(mesh, P()), NamedSharding(mesh, P(train_step.AXIS))
    size = clips.output_size(c.data)
    video = jax.ShapeDtypeStruct(
        (global_batch, clips.num_views(c.data), self.num_frames, size, size, 3),
        jnp.uint8, sharding=split)
    return _placed(self.state.variables, rep), {"video": video}


def _placed(tree, sharding):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


# ---------------------------------------------------------------------------
# What a compiled program tells.


def memory(compiled) -> Dict[str, int]:
  m = compiled.memory_analysis()
  out = {"arguments": int(m.argument_size_in_bytes), "outputs": int(m.output_size_in_bytes),
         "aliased": int(m.alias_size_in_bytes), "temporaries": int(m.temp_size_in_bytes),
         "program": int(m.generated_code_size_in_bytes)}
  out["total"] = (out["arguments"] + out["outputs"] - out["aliased"] + out["temporaries"]
                  + out["program"])
  return out


def cost(compiled) -> Dict[str, float]:
  c = compiled.cost_analysis()
  if isinstance(c, (list, tuple)):  # older JAX: one dict per program
    c = c[0] if c else {}
  return {"flops": float(c.get("flops", 0.0)),
          "bytes_accessed": float(c.get("bytes accessed", 0.0))}


_SHAPE = re.compile(r"\b(" + "|".join(_DTYPE_BYTES) + r")\[([\d,]*)\]")
_OP = re.compile(r"=\s*(.*?)\s(" + "|".join(COLLECTIVES) + r")(-start)?\(")


def _shape_bytes(text: str) -> int:
  total = 0
  for dtype, dims in _SHAPE.findall(text):
    total += _DTYPE_BYTES[dtype] * int(np.prod([int(d) for d in dims.split(",") if d] or [1]))
  return total


def collectives(hlo_text: str) -> Dict[str, Dict[str, int]]:
  """``{kind: {"count", "bytes"}}`` of the collectives in compiled HLO text.

  Bytes are those of each op's result shape; an asynchronous ``*-start`` op
  counts once (its ``*-done`` is skipped), and for the kinds whose start op
  returns (operand, result) only the last element, the result, is counted.
  """
  found: Dict[str, Dict[str, int]] = {}
  for line in hlo_text.splitlines():
    match = _OP.search(line)
    if not match:
      continue
    shape, kind, start = match.groups()
    if start and kind != "all-reduce" and shape.startswith("("):
      parts = _SHAPE.findall(shape)
      nbytes = (_DTYPE_BYTES[parts[-1][0]] * int(np.prod(
          [int(d) for d in parts[-1][1].split(",") if d] or [1]))) if parts else 0
    else:
      nbytes = _shape_bytes(shape)
    entry = found.setdefault(kind, {"count": 0, "bytes": 0})
    entry["count"] += 1
    entry["bytes"] += nbytes
  return found


def roofline(flops: float, nbytes: float, chip: chips.Chip, per_chip_batch: int,
             num_chips: int) -> Dict[str, float]:
  """Lower bound on step time and upper bounds on videos/s from peak FLOP/s and bandwidth."""
  compute_s = flops / chip.peak_bf16_flops
  memory_s = nbytes / chip.hbm_bytes_per_s
  step_s = max(compute_s, memory_s)
  per_chip = per_chip_batch / step_s if step_s > 0 else float("inf")
  return {"compute_s": compute_s, "memory_s": memory_s, "step_s_lower_bound": step_s,
          "bound_by": "compute" if compute_s >= memory_s else "memory",
          "videos_per_s_per_chip_upper_bound": per_chip,
          "videos_per_s_per_slice_upper_bound": per_chip * num_chips}


# ---------------------------------------------------------------------------
# Planning.


def _fmt_s(seconds: float) -> str:
  return f"{seconds:.1f}s" if seconds < 60 else f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


def _gib(nbytes: float) -> float:
  return nbytes / chips.GIB


class Planner:
  """Compiles a config's steps for one topology; each compile prints a progress line."""

  def __init__(self, steps: RunSteps, topology: str, hbm_gib: Optional[float] = None,
               margin: float = DEFAULT_MARGIN, stream=None, verbose: bool = False):
    self.steps = steps
    self.topology = topology
    self.chip = chips.for_topology(topology)
    self.devices, self.num_chips = topology_devices(topology, verbose)
    self.mesh = train_step.make_mesh(self.devices)
    self.num_devices = len(self.devices)
    self.devices_per_chip = max(self.num_devices // max(self.num_chips, 1), 1)
    self.num_processes = len({d.process_index for d in self.devices})
    chip_gib = self.chip.hbm_gib if hbm_gib is None else float(hbm_gib)
    self.device_hbm = int(chip_gib * chips.GIB / self.devices_per_chip)
    self.margin = margin
    self.stream = stream or sys.stdout
    self.compiles = 0
    self.verbose = verbose

  @property
  def limit(self) -> int:
    return int(self.device_hbm * self.margin)

  def say(self, text: str) -> None:
    print(f"[plan] {self.topology}: {text}", file=self.stream, flush=True)

  def compile_step(self, which: str, per_device_batch: int) -> Dict[str, Any]:
    """Compiles the train or eval step at ``per_device_batch``; its figures."""
    steps, mesh = self.steps, self.mesh
    global_batch = per_device_batch * self.num_devices
    self.say(f"compiling the {which} step, {per_device_batch} videos per device "
              f"({global_batch} in all, {self.num_devices} devices, "
              f"{self.num_processes} process{'es' if self.num_processes > 1 else ''}) ...")
    t0 = time.time()
    if which == "train":
      lowered = steps.train_fn(mesh).lower(*steps.train_args(mesh, global_batch))
    else:
      lowered = steps.eval_fn(mesh).lower(*steps.eval_args(mesh, global_batch))
    oom = None
    try:
      with _stderr_kept_on_error(self.verbose), _no_persistent_cache():
        compiled = lowered.compile()
    except Exception as e:  # the TPU compiler refuses programs larger than the chip's HBM
      text = str(e)
      if "RESOURCE_EXHAUSTED" not in text and "memory" not in text.lower():
        raise
      oom = text.strip().splitlines()[0][:300]
      compiled = None
    seconds = time.time() - t0
    self.compiles += 1
    if compiled is None:
      self.say(f"{which} step at {per_device_batch} videos/device does not fit "
                f"(compiler: {oom}) [{_fmt_s(seconds)}]")
      return {"step": which, "per_device_batch": per_device_batch,
              "global_batch": global_batch, "fits": False, "compiler_error": oom,
              "compile_seconds": round(seconds, 1)}
    mem = memory(compiled)
    flops = cost(compiled)
    found = collectives(compiled.as_text())
    fits = mem["total"] <= self.limit
    result = {
        "step": which, "per_device_batch": per_device_batch, "global_batch": global_batch,
        "memory_bytes": mem, "memory_gib": {k: round(_gib(v), 3) for k, v in mem.items()},
        "hbm_gib_per_device": round(_gib(self.device_hbm), 3), "margin": self.margin,
        "fits": bool(fits), "flops": flops["flops"], "bytes_accessed": flops["bytes_accessed"],
        "roofline": roofline(flops["flops"], flops["bytes_accessed"], self.chip,
                             per_device_batch * self.devices_per_chip, self.num_chips),
        "collectives": found,
        "only_all_reduce": set(found) <= {"all-reduce"},
        "compile_seconds": round(seconds, 1),
    }
    self.say(f"{which} step compiled in {_fmt_s(seconds)}: {_gib(mem['total']):.2f} GiB of "
              f"{_gib(self.device_hbm):.2f} GiB per device "
              f"({'fits' if fits else 'does NOT fit'} under {self.margin:.0%}), "
              f"{_flops_text(flops['flops'])}, "
              f"collectives: {_collectives_line(found)}")
    return result

  def largest_batch(self, first: Dict[str, Any]) -> Dict[str, Any]:
    """The largest per-device train batch under the limit, its edge confirmed by compiles.

    ``first`` is the compile at the config's batch. Memory is close to affine
    in the batch: fit ``a + c * batch`` through two compiled points (the
    config's batch and twice or half of it), compile the predicted largest
    batch and the one above it; where memory is not exactly affine, refit
    through the compiled points nearest the limit and repeat (at most 8
    rounds). A prediction is kept strictly between the largest batch known to
    fit and the smallest known not to. Where the fit is flat (near the limit
    the compiler recomputes rather than stores, so memory can stop growing
    with the batch) or points at or past a batch known not to fit (e.g. one
    the compiler refused), the next batch is halfway between the two (or
    between 0 and it, while none fits) instead, or twice the largest that fits
    while nothing above is known. Returns the
    batch, how many compiles it took and how far each prediction was off.
    """
    b0 = first["per_device_batch"]
    points = {b0: first}
    b1 = 2 * b0 if first.get("fits") else max(b0 // 2, 1)
    if b1 == b0:
      b1 = b0 + 1
    points[b1] = self.compile_step("train", b1)
    tries = []
    intercept = slope = 0.0
    first_slope = ((points[b1]["memory_bytes"]["total"] - first["memory_bytes"]["total"]) /
                   (b1 - b0) if "memory_bytes" in points[b1] and "memory_bytes" in first
                   else 0.0)
    for _ in range(8):
      measured = sorted(b for b, p in points.items() if "memory_bytes" in p)
      fit_b = [b for b in measured if points[b]["fits"]]
      over_b = sorted(b for b, p in points.items() if not p["fits"])  # with compiler refusals
      lo, hi = max(fit_b, default=None), min(over_b, default=None)
      if lo is not None and hi == lo + 1:
        break  # the edge: lo fits, lo + 1 does not
      if lo is None and hi == 1:
        break  # not even one video per device
      if len(measured) < 2:
        raise ConfigError(f"--max_batch: the train step on {self.topology} does not compile "
                          f"at {sorted(points)} videos per device; lower config.batch_size")
      # Memory = a + c * batch through the measured points nearest the limit.
      below = [b for b in measured if lo is None or b <= lo]
      above = [b for b in measured if lo is not None and b > lo]
      ba, bb = (below[-1], above[0]) if below and above else tuple(measured[-2:] if lo else
                                                                   measured[:2])
      ma, mb = points[ba]["memory_bytes"]["total"], points[bb]["memory_bytes"]["total"]
      slope = (mb - ma) / (bb - ba)
      intercept = ma - slope * ba
      # Where the fit is flat (memory stopped growing with the batch) or points at or past
      # the smallest batch known not to fit, it is no guide: halve the interval, or double
      # the largest batch that fits while nothing is known not to.
      flat = slope <= 0 or (first_slope > 0 and slope < first_slope / 4)
      predicted = int(math.floor((self.limit - intercept) / slope)) if slope > 0 else 0
      by = "fit"
      if hi is not None and (flat or predicted >= hi):
        predicted, by = ((lo or 0) + hi) // 2, "halving"
      elif flat:
        predicted, by = 2 * (lo or max(measured)), "doubling"
      # Strictly between the largest batch known to fit and the smallest known not to
      # (so never a batch already compiled).
      if hi is not None:
        predicted = min(predicted, hi - 1)
      predicted = max(predicted, (lo or 0) + 1)
      result = points[predicted] = self.compile_step("train", predicted)
      got = result.get("memory_bytes", {}).get("total")
      expected = intercept + slope * predicted
      tries.append({"per_device_batch": predicted, "by": by, "fits": result["fits"],
                    "predicted_bytes": int(expected), "compiled_bytes": got,
                    "error_percent": (round(100.0 * (expected - got) / got, 2) if got else None)})
      if result["fits"] and predicted + 1 not in points:
        points[predicted + 1] = self.compile_step("train", predicted + 1)
    fit_b = [b for b, p in points.items() if p["fits"]]
    largest = max(fit_b, default=0)
    confirmed = largest + 1 in points and not points[largest + 1]["fits"]
    return {"per_device_batch": largest, "per_chip_batch": largest * self.devices_per_chip,
            "global_batch": largest * self.num_devices, "edge_confirmed": bool(confirmed),
            "compiles": len(points), "compiled_batches": sorted(points),
            "fit": {"intercept_bytes": int(intercept), "bytes_per_video": int(slope)},
            "tries": tries}


# How --max_batch chose a batch other than by the affine fit (plan.txt's wording).
_SEARCH_STEPS = {"halving": "halfway", "doubling": "twice the largest that fit"}


def _try_text(t: Dict[str, Any]) -> str:
  """One compile of the --max_batch search, as plan.txt gives it."""
  fitted = t.get("by") not in _SEARCH_STEPS  # chosen by the affine fit
  how = (f"predicted {_gib(t['predicted_bytes']):.3f} GiB" if fitted
         else _SEARCH_STEPS[t["by"]])
  if not t["compiled_bytes"]:
    got = "refused by the compiler"
  else:
    got = f"compiled {_gib(t['compiled_bytes']):.3f} GiB"
    if fitted:
      got += f" ({t['error_percent']}% off)"
  return (f"{t['per_device_batch']}: {how}, {got}, "
          f"{'fits' if t['fits'] else 'does not fit'}")


def _flops_text(flops: float) -> str:
  return f"{flops / 1e12:.3f} TFLOP" if flops >= 1e10 else f"{flops / 1e9:.4f} GFLOP"


def _collectives_line(found: Dict[str, Dict[str, int]]) -> str:
  if not found:
    return "none"
  return ", ".join(f"{k} x{v['count']} ({v['bytes'] / 2**20:.1f} MiB)"
                   for k, v in sorted(found.items()))


def plan_topology(steps: RunSteps, topology: str, *, max_batch: bool = False,
                  hbm_gib: Optional[float] = None, margin: float = DEFAULT_MARGIN,
                  with_eval: bool = True, verbose: bool = False, stream=None) -> Dict[str, Any]:
  config = steps.config
  planner = Planner(steps, topology, hbm_gib=hbm_gib, margin=margin, stream=stream,
                    verbose=verbose)
  n = planner.num_devices
  for key in ("batch_size", "eval_batch_size"):
    if config[key] % n:
      raise ConfigError(f"config.{key}={config[key]} is not a multiple of the {n} devices of "
                        f"{topology}")
  t0 = time.time()
  train = planner.compile_step("train", config.batch_size // n)
  entry = {
      "topology": topology, "chip": planner.chip.name, "chips": planner.num_chips,
      "devices": n, "devices_per_chip": planner.devices_per_chip,
      "processes": planner.num_processes,
      "hbm_gib_per_chip": (planner.chip.hbm_gib if hbm_gib is None else float(hbm_gib)),
      "chip_figures": {"peak_bf16_flops": planner.chip.peak_bf16_flops,
                       "hbm_bytes_per_s": planner.chip.hbm_bytes_per_s,
                       "source": planner.chip.source},
      "train": train,
  }
  if with_eval:
    entry["eval"] = planner.compile_step("eval", config.eval_batch_size // n)
  if max_batch:
    entry["max_batch"] = planner.largest_batch(train)
    mb = entry["max_batch"]
    planner.say(f"largest train batch: {mb['per_device_batch']} videos per device "
                f"({mb['compiles']} compiles)")
  entry["compiles"] = planner.compiles
  entry["seconds"] = round(time.time() - t0, 1)
  return entry


def run_plan(config, workdir: str, topologies: Sequence[str], *, max_batch: bool = False,
             hbm_gib: Optional[float] = None, margin: float = DEFAULT_MARGIN,
             with_eval: bool = True, verbose: bool = False) -> Dict[str, Any]:
  """``--mode=plan``: plans every topology, writes plan.json and plan.txt, prints the table."""
  if not topologies:
    raise ConfigError("--mode=plan needs --topology (e.g. --topology=v5e:2x2,v5e:4x4)")
  for topology in topologies:
    try:
      chips.for_topology(topology)
    except KeyError as e:
      raise ConfigError(f"--topology={topology}: {e.args[0]}") from None
  require_libtpu()
  if not 0 < margin <= 1:
    raise ConfigError(f"--hbm_margin={margin}: expected a fraction in (0, 1]")
  t0 = time.time()
  steps = RunSteps(config)
  for note in steps.notes:
    print(f"[plan] note: {note}", flush=True)
  plans = [plan_topology(steps, t, max_batch=max_batch, hbm_gib=hbm_gib, margin=margin,
                         with_eval=with_eval, verbose=verbose) for t in topologies]
  result = {
      "config": {"model": config.model.name, "mode": config.mode,
                 "teacher": config.teacher.name if config.mode == "reskd" else None,
                 "dtype": config.dtype, "batch_size": config.batch_size,
                 "eval_batch_size": config.eval_batch_size,
                 "num_frames": steps.num_frames, "crop_size": config.data.crop_size,
                 "input_size": config.model.input_size, "num_classes": steps.num_classes,
                 "grad_accum_steps": optim.grad_accum_steps(config.optimizer),
                 "remat": bool(config.model.get("remat", False))},
      "notes": steps.notes, "plans": plans, "jax": jax.__version__,
      "libtpu": _libtpu_version(), "seconds": round(time.time() - t0, 1),
  }
  os.makedirs(workdir, exist_ok=True)
  write_json_atomic(os.path.join(workdir, PLAN_JSON), result)
  text = format_table(result)
  with open(os.path.join(workdir, PLAN_TXT), "w") as f:
    f.write(text)
  print(text, flush=True)
  print(f"wrote {os.path.join(workdir, PLAN_JSON)} and {PLAN_TXT}", flush=True)
  return result


def _libtpu_version() -> Optional[str]:
  try:
    import libtpu  # pylint: disable=import-outside-toplevel
    return getattr(libtpu, "__version__", None)
  except ImportError:
    return None


def format_table(result: Dict[str, Any]) -> str:
  c = result["config"]
  lines = [f"plan: {c['model']} ({c['mode']}"
           + (f", teacher {c['teacher']}" if c["teacher"] else "")
           + f"), {c['dtype']}, {c['num_frames']} frames, crop {c['crop_size']}"
           + (f" -> {c['input_size']}" if c["input_size"] else "")
           + f", global batch {c['batch_size']}"
           + (f" x {c['grad_accum_steps']} accumulated" if c["grad_accum_steps"] > 1 else "")
           + (", blocks rematerialised (config.model.remat)" if c.get("remat") else "")]
  lines += [f"note: {n}" for n in result["notes"]]
  header = (f"{'topology':<10} {'step':<5} {'b/dev':>5} {'args':>6} {'temp':>6} {'out':>6} "
            f"{'alias':>6} {'total':>6} {'HBM':>6} {'fits':<4} {'GFLOP':>9} {'GB acc':>7} "
            f"{'t_min ms':>8} {'vid/s/chip':>10} {'vid/s/slice':>11} {'compile':>8}  collectives")
  lines += ["memory in GiB per device; GFLOP and GB accessed per device and step (XLA); "
            "t_min = max(flops/peak, bytes/bandwidth); videos/s are upper bounds", header,
            "-" * len(header)]
  for p in result["plans"]:
    for which in ("train", "eval"):
      s = p.get(which)
      if not s:
        continue
      if "memory_gib" not in s:
        lines.append(f"{p['topology']:<10} {which:<5} {s['per_device_batch']:>5} does not "
                     f"compile: {s.get('compiler_error')}")
        continue
      m, r = s["memory_gib"], s["roofline"]
      lines.append(
          f"{p['topology']:<10} {which:<5} {s['per_device_batch']:>5} {m['arguments']:>6.2f} "
          f"{m['temporaries']:>6.2f} {m['outputs']:>6.2f} {m['aliased']:>6.2f} "
          f"{m['total']:>6.2f} {s['hbm_gib_per_device']:>6.2f} "
          f"{'yes' if s['fits'] else 'NO':<4} {s['flops'] / 1e9:>9.2f} "
          f"{s['bytes_accessed'] / 1e9:>7.2f} {1e3 * r['step_s_lower_bound']:>8.2f} "
          f"{r['videos_per_s_per_chip_upper_bound']:>10.1f} "
          f"{r['videos_per_s_per_slice_upper_bound']:>11.1f} "
          f"{_fmt_s(s['compile_seconds']):>8}  {_collectives_line(s['collectives'])}")
      if not s["only_all_reduce"]:
        lines.append(f"{'':<10} note: collectives other than all-reduce in the {which} step")
    lines.append(f"{p['topology']:<10} {p['chip']}: {p['chips']} chips, {p['devices']} devices"
                 f" ({p['devices_per_chip']}/chip), {p['processes']} host process(es), "
                 f"{p['hbm_gib_per_chip']:g} GiB HBM/chip, "
                 f"{p['chip_figures']['peak_bf16_flops'] / 1e12:g} TFLOP/s bf16, "
                 f"{p['chip_figures']['hbm_bytes_per_s'] / 1e9:g} GB/s "
                 f"({p['chip_figures']['source']}); {p['compiles']} compiles in "
                 f"{_fmt_s(p['seconds'])}")
    if "max_batch" in p:
      mb = p["max_batch"]
      tries = "; ".join(_try_text(t) for t in mb.get("tries", []))
      edge = ("" if mb.get("edge_confirmed") else
              f"; not confirmed: {mb['per_device_batch'] + 1} was not compiled or not measured")
      lines.append(f"{p['topology']:<10} largest train batch: {mb['per_device_batch']} videos "
                   f"per device ({mb['compiles']} compiles; {tries}{edge})")
  return "\n".join(lines) + "\n"
