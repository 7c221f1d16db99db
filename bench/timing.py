"""Timing helper shared by the benchmarks."""

import statistics
import time


def median_time(fn, iters: int, warmup: int):
  """Runs ``fn`` ``warmup`` times, then ``iters`` timed times; returns (median s, all times).

  ``fn`` must block until its work is done (``block_until_ready`` / synchronous torch).
  """
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(iters):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return statistics.median(times), times
