"""Kinetics-400 ResKD: SlowOnly-R50 at 112 from the SlowOnly-R50 teacher at 224.

Table 3: 73.1 top-1 at 332 GFLOPs per video (10 clips x 3 crops). Pixel-level
feature KD: MSE between the teacher's (8, 7, 7, 2048) map and the student's
(8, 4, 4, 2048) map upsampled bilinearly, weight 100. The teacher comes from
`config.teacher.checkpoint` (default: the workdir of configs/k400_slowonly_r50_224.py).
"""
from configs import default


def get_config(arg=None):
  return default.apply_variant(default.kinetics400_slowonly("reskd"), arg)
