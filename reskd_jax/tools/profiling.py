"""Efficiency report of the student: GFLOPs, throughput and memory per resolution.

``run_profile(config, workdir)`` measures, for ``config.model`` fed each of
``config.profile.resolutions`` directly (no in-model resize):

- GFLOPs per video in the paper's convention (conv + linear multiply-adds) and
  XLA's compiled count (``reskd_jax.tools.flops``);
- inference throughput in videos/second at ``config.profile.batch_size`` in
  float32 and bfloat16 (compile and one warm-up call excluded, the median of
  ``config.profile.timed_runs`` calls, each ending in ``block_until_ready``).
  A batch size of 0 (the default) picks one that fits the platform: the
  paper's 64 on accelerators, 1 on a CPU, where a CPU also profiles float32
  only and times 2 calls unless ``config.profile.dtypes`` / ``timed_runs`` say
  otherwise (so that the default report stays short on a CPU; its timings are in
  docs/benchmarks.md);
- XLA's memory estimate of the compiled forward (arguments + outputs +
  temporaries), and the device's peak memory where ``memory_stats()`` reports
  it (accelerators; ``None`` on CPU). The device peak is process-wide and only
  grows, so the configurations are measured cheapest first (small
  resolutions, bfloat16 before float32), which makes each reading the peak of
  that configuration unless an earlier one needed more.

It prints a table (with the 112-vs-224 throughput ratio; the paper measured
3.3x on a V100) and writes ``profile.json`` and ``profile.txt`` to ``workdir``.
Weights are random: speed does not depend on them.
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import time
from typing import Any, Dict, List, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from reskd_jax.data import clips
from reskd_jax.errors import ConfigError
from reskd_jax.fileio import atomic_path, write_json_atomic
from reskd_jax.models import registry
from reskd_jax.tools import flops

PAPER_RATIO_112_224 = 3.3  # Table 4: R50 student, V100, batch 64
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
PAPER_BATCH_SIZE = 64  # Table 4's throughput batch
CPU_BATCH_SIZE = 1  # a CPU runs a ResNet-50 at 224 x 16 frames slowly (docs/benchmarks.md)
CPU_TIMED_RUNS = 2


def platform_defaults(platform: str) -> Dict[str, Any]:
  """Batch size, timed runs and dtypes used when the config leaves them unset (0 / absent)."""
  if platform == "cpu":
    return {"batch_size": CPU_BATCH_SIZE, "timed_runs": CPU_TIMED_RUNS, "dtypes": ("float32",)}
  return {"batch_size": PAPER_BATCH_SIZE, "timed_runs": 5, "dtypes": ("float32", "bfloat16")}


def format_gflops(value: Optional[float]) -> str:
  """Two decimals from 1 GFLOP up, three significant digits below (0.00412, never 0.00)."""
  if value is None or not math.isfinite(value):
    return "-"
  if value == 0 or abs(value) >= 1:
    return f"{value:.2f}"
  return f"{value:.3g}"


def _cfg_get(cfg, key, default=None):
  try:
    value = cfg.get(key, default) if hasattr(cfg, "get") else getattr(cfg, key, default)
  except (AttributeError, KeyError):
    return default
  return default if value is None else value


def build_student(config, dtype=jnp.float32):
  """``config.model`` without the in-model resize, at compute ``dtype``."""
  return registry.build_from_config(config.model, config.num_classes, dtype=dtype).clone(
      input_size=None)


def random_variables(model, num_frames: int, seed: int = 0) -> Dict[str, Any]:
  """He-scaled random weights, BN identity statistics, of the model's shapes.

  Avoids compiling ``model.init`` (slow on CPU for deep nets); values only
  need to be realistic enough to avoid denormals/NaNs in timing.
  """
  res = registry.min_resolution(model)
  shapes = jax.eval_shape(
      lambda x: model.init({"params": jax.random.PRNGKey(0)}, x, train=False),
      jax.ShapeDtypeStruct((1, num_frames, res, res, model.in_channels), jnp.float32))
  rng = np.random.default_rng(seed)

  def make(path, s):
    name = str(getattr(path[-1], "key", path[-1]))
    if name == "kernel":
      fan_in = int(np.prod(s.shape[:-1]))
      return (rng.standard_normal(s.shape, dtype=np.float32) * np.sqrt(2.0 / fan_in)).astype(
          np.float32)
    if name in ("scale", "var"):
      return np.ones(s.shape, np.float32)
    return np.zeros(s.shape, np.float32)

  return jax.tree_util.tree_map_with_path(make, shapes)


def _device_peak_mb(device) -> Optional[float]:
  try:
    stats = device.memory_stats()
  except Exception:  # not implemented on some backends
    return None
  if not stats:
    return None
  peak = stats.get("peak_bytes_in_use", stats.get("bytes_in_use"))
  return None if peak is None else peak / 2**20


def _xla_memory_mb(compiled) -> Optional[float]:
  try:
    m = compiled.memory_analysis()
  except Exception:
    return None
  if m is None:
    return None
  total = 0
  for field in ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes"):
    total += getattr(m, field, 0) or 0
  total -= getattr(m, "alias_size_in_bytes", 0) or 0
  return total / 2**20


def measure_throughput(model, variables, batch_size: int, num_frames: int, resolution: int,
                       timed_runs: int = 5, warmup_runs: int = 1, seed: int = 0) -> Dict[str, Any]:
  """Videos/second of ``model.apply(..., train=False)`` on one device."""
  device = jax.local_devices()[0]
  fn = jax.jit(lambda v, x: model.apply(v, x, train=False))
  x = jax.device_put(jax.random.normal(
      jax.random.PRNGKey(seed), (batch_size, num_frames, resolution, resolution,
                                 model.in_channels), jnp.float32), device)
  v = jax.device_put(variables, device)
  t0 = time.perf_counter()
  compiled = fn.lower(v, x).compile()
  compile_s = time.perf_counter() - t0
  for _ in range(max(1, warmup_runs)):
    compiled(v, x).block_until_ready()
  times = []
  for _ in range(max(1, int(timed_runs))):
    t0 = time.perf_counter()
    compiled(v, x).block_until_ready()
    times.append(time.perf_counter() - t0)
  median = statistics.median(times)
  result = {
      "videos_per_s": batch_size / median,
      "ms_per_batch": 1e3 * median,
      "compile_s": compile_s,
      "xla_memory_mb": _xla_memory_mb(compiled),
      "peak_memory_mb": _device_peak_mb(device),
  }
  del x, v, compiled
  return result


def device_description() -> str:
  d = jax.local_devices()[0]
  kind = getattr(d, "device_kind", d.platform)
  if d.platform == "cpu":
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
  return f"{kind} ({d.platform})"


def format_profile(rows: List[Dict[str, Any]], dtypes: Sequence[str]) -> str:
  head = f"{'res':>5} {'GFLOPs/video':>12} {'XLA GFLOPs':>10}"
  for dt in dtypes:
    short = "f32" if dt == "float32" else "bf16"
    head += f" {short + ' videos/s':>14} {short + ' mem MB':>11}"
  lines = [head]
  for r in rows:
    line = (f"{r['resolution']:>5} {format_gflops(r['gflops']):>12} "
            f"{format_gflops(r.get('xla_gflops')):>10}")
    for dt in dtypes:
      vps = r.get(f"videos_per_s_{dt}")
      mem = r.get(f"peak_memory_mb_{dt}")
      if mem is None:
        mem = r.get(f"xla_memory_mb_{dt}")
      line += f" {vps:>14.2f}" if vps is not None else f" {'-':>14}"
      line += f" {mem:>11.0f}" if mem is not None else f" {'-':>11}"
    lines.append(line)
  return "\n".join(lines)


def throughput_ratios(rows, dtypes, low=112, high=224) -> Dict[str, float]:
  by_res = {r["resolution"]: r for r in rows}
  out = {}
  if low in by_res and high in by_res:
    for dt in dtypes:
      a, b = by_res[low].get(f"videos_per_s_{dt}"), by_res[high].get(f"videos_per_s_{dt}")
      if a and b:
        out[dt] = a / b
    out["gflops"] = by_res[high]["gflops"] / by_res[low]["gflops"]
  return out


def run_profile(config, workdir: str, resolutions: Optional[Sequence[int]] = None,
                dtypes: Optional[Sequence[str]] = None) -> List[Dict[str, Any]]:
  """Profiles ``config.model`` per resolution; writes ``profile.json``/``profile.txt``.

  Returns one dict per resolution (in the order given) with ``resolution``,
  ``num_frames``, ``batch_size``, ``gflops``, ``xla_gflops`` and, per dtype
  ``d`` in ``float32``/``bfloat16``: ``videos_per_s_d``, ``ms_per_batch_d``,
  ``compile_s_d``, ``xla_memory_mb_d``, ``peak_memory_mb_d`` (None on CPU).
  """
  prof = config.profile
  platform = jax.local_devices()[0].platform
  auto = platform_defaults(platform)
  resolutions = [int(r) for r in (resolutions if resolutions is not None else prof.resolutions)]
  dtypes = list(dtypes if dtypes is not None
                else (_cfg_get(prof, "dtypes", None) or auto["dtypes"]))
  for dt in dtypes:
    if dt not in DTYPES:
      raise ConfigError(f"unknown dtype {dt!r} in config.profile.dtypes; expected one of {sorted(DTYPES)}")
  batch_size = int(_cfg_get(prof, "batch_size", 0))
  timed_runs = int(_cfg_get(prof, "timed_runs", 0))
  notes = []
  if batch_size <= 0:
    batch_size = auto["batch_size"]
    notes.append(f"batch {batch_size} chosen for {platform} (config.profile.batch_size=0; the "
                 f"paper's {PAPER_BATCH_SIZE} is what accelerators get)")
  if timed_runs <= 0:
    timed_runs = auto["timed_runs"]
  if platform == "cpu" and dtypes == ["float32"] and not _cfg_get(prof, "dtypes", None):
    notes.append("float32 only on CPU (add bfloat16 with "
                 "--config.profile.dtypes=\"('float32', 'bfloat16')\")")
  for note in notes:
    print(f"profile: {note}", flush=True)
  num_frames = int(clips.frames_per_clip(config.data))
  if not resolutions:
    raise ConfigError("no resolutions to profile (config.profile.resolutions is empty)")

  models = {dt: build_student(config, DTYPES[dt]) for dt in ("float32", *dtypes)}
  stride = registry.min_resolution(models["float32"])
  too_small = [r for r in resolutions if r < stride]
  if too_small:
    raise ConfigError(
        f"resolution(s) {too_small} smaller than the total stride {stride} of "
        f"{config.model.name} (strides={tuple(_cfg_get(config.model, 'strides', ()))}, "
        f"stem={_cfg_get(config.model, 'stem', 'imagenet')!r}): the last feature map "
        f"would be empty")
  variables = random_variables(models["float32"], num_frames)

  print(f"profile: counting GFLOPs at {len(resolutions)} resolution(s)...", flush=True)
  rows = flops.gflops_table(models["float32"], variables, num_frames, resolutions)
  for row in rows:
    row.update(batch_size=batch_size, num_frames=num_frames)
  by_res = {row["resolution"]: row for row in rows}
  # Cheapest first, so that the process-wide device peak is per configuration.
  order = sorted(((r, dt) for r in set(resolutions) for dt in dtypes),
                 key=lambda p: (p[0], p[1] != "bfloat16"))
  start = time.perf_counter()
  for k, (res, dt) in enumerate(order, 1):
    m = measure_throughput(models[dt], variables, batch_size, num_frames, res,
                           timed_runs=timed_runs)
    for key, value in m.items():
      by_res[res][f"{key}_{dt}"] = value
    print(f"profile [{k}/{len(order)}] {res} px {dt}: {m['videos_per_s']:.2f} videos/s "
          f"(compiled in {m['compile_s']:.1f} s; {time.perf_counter() - start:.0f} s so far)",
          flush=True)

  ratios = throughput_ratios(rows, dtypes)
  table = format_profile(rows, dtypes)
  header = (f"{config.model.name} student (tsm={bool(_cfg_get(config.model, 'tsm', False))}, "
            f"strides={tuple(_cfg_get(config.model, 'strides', (1, 2, 2, 2)))}), "
            f"{num_frames} frames, {config.num_classes} classes; batch {batch_size} videos, "
            f"median of {timed_runs} runs on {device_description()}")
  text = [header, *notes, table]
  if ratios:
    parts = [f"{dt} {ratios[dt]:.2f}x" for dt in dtypes if dt in ratios]
    text.append(f"throughput 112 vs 224: {', '.join(parts)} (GFLOPs ratio "
                f"{ratios['gflops']:.2f}x; paper: {PAPER_RATIO_112_224}x on a V100)")
  mem_note = ("memory: device peak (MB)" if any(r.get(f"peak_memory_mb_{d}") is not None
                                              for r in rows for d in dtypes)
              else "memory: XLA estimate of the compiled forward (MB); no device peak on CPU")
  text.append(mem_note)
  text = "\n".join(text)
  print(text)

  os.makedirs(workdir, exist_ok=True)
  report = {
      "model": {
          "name": config.model.name,
          "tsm": bool(_cfg_get(config.model, "tsm", False)),
          "strides": list(_cfg_get(config.model, "strides", (1, 2, 2, 2))),
          "width": int(_cfg_get(config.model, "width", 64)),
          "stem": _cfg_get(config.model, "stem", "imagenet"),
          "num_classes": int(config.num_classes),
      },
      "device": device_description(),
      "jax_version": jax.__version__,
      "batch_size": batch_size,
      "num_frames": num_frames,
      "timed_runs": timed_runs,
      "dtypes": dtypes,
      "throughput_ratio_112_224": ratios,
      "paper_ratio_112_224": PAPER_RATIO_112_224,
      "rows": rows,
  }
  write_json_atomic(os.path.join(workdir, "profile.json"), report, sort_keys=False)
  with atomic_path(os.path.join(workdir, "profile.txt")) as tmp, open(tmp, "w") as f:
    f.write(text + "\n")
  return rows
