"""Kinetics-400 low-resolution baseline: SlowOnly-R50 at 112, cross-entropy only.

Table 3: 69.3 top-1 at 332 GFLOPs per video (10 clips x 3 crops).
"""
from configs import default


def get_config(arg=None):
  return default.apply_variant(default.kinetics400_slowonly("baseline"), arg)
