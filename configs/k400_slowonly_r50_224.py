"""Kinetics-400 SlowOnly-R50 8x8x1 teacher at 224 (Table 3: 74.5 top-1, 1260 GFLOPs per video).

Train it here, or skip training: convert a released mmaction2 SlowOnly-R50
8x8x1 Kinetics-400 checkpoint (`python -m reskd_jax.tools.convert_weights --format=mmaction
--arch=slowonly_r50 ...`) and point the ResKD config's `teacher.checkpoint` at it.
"""
from configs import default


def get_config(arg=None):
  return default.apply_variant(default.kinetics400_slowonly("teacher"), arg)
