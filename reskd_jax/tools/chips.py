"""Public per-chip figures of Cloud TPU generations: the one table `--mode=plan` reads.

Each row is copied from Google Cloud's page of that generation (``source``);
peak compute is the dense bfloat16 matrix rate. HBM capacity is given on those
pages as "GB" for v5e/v6e and "GiB" for v4/v5p; we read all of them as GiB (the
plan's fit test keeps a safety margin on top). A topology name
``v5e:2x2`` selects the row by the part before the colon.
"""

from __future__ import annotations

import dataclasses
from typing import Dict

GIB = 1024 ** 3


@dataclasses.dataclass(frozen=True)
class Chip:
  name: str
  peak_bf16_flops: float  # FLOP/s per chip, dense bfloat16
  hbm_gib: float  # HBM per chip
  hbm_bytes_per_s: float  # HBM bandwidth per chip
  source: str

  @property
  def hbm_bytes(self) -> int:
    return int(self.hbm_gib * GIB)


CHIPS: Dict[str, Chip] = {
    "v4": Chip("v4", 275e12, 32, 1200e9, "https://cloud.google.com/tpu/docs/v4"),
    "v5e": Chip("v5e", 197e12, 16, 819e9, "https://cloud.google.com/tpu/docs/v5e"),
    "v5p": Chip("v5p", 459e12, 95, 2765e9, "https://cloud.google.com/tpu/docs/v5p"),
    "v6e": Chip("v6e", 918e12, 32, 1640e9, "https://cloud.google.com/tpu/docs/v6e"),
}


def for_topology(topology: str) -> Chip:
  """The chip of a topology name such as ``v5e:2x2`` (KeyError naming the known ones)."""
  name = topology.split(":", 1)[0].strip().lower()
  if name not in CHIPS:
    raise KeyError(f"no chip figures for {name!r} (topology {topology!r}); known: "
                   f"{', '.join(sorted(CHIPS))}")
  return CHIPS[name]
