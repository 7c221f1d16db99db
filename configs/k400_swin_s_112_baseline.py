"""Kinetics-400 low-resolution baseline: Video Swin-S at 112, cross-entropy only.

Table 3: 76.3 top-1 at 421 GFLOPs per video (32x2x1, 4 clips x 3 crops); the
same schedule and ImageNet-1K initialisation as the ResKD student.
"""
from configs import default


def get_config(arg=None):
  return default.apply_variant(default.kinetics400_swin("baseline"), arg)
