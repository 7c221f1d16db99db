"""Kinetics-400 ResKD: Video Swin-S at 112 from the Video Swin-B teacher at 224.

Table 3: 80.0 top-1 at 421 GFLOPs per video (32x2x1, 4 clips x 3 crops).
Pixel-level logit KD (the two maps have 768 and 1024 channels): each model's
classifier at every position of its last map, the student's logits upsampled
bilinearly 4x4 -> 7x7, KL(softmax(t/T) || softmax(s/T)) averaged over positions
and classes, times T^2. This file has the values of the authors' released
config (weight 200, T = 2); `k400_swin_s_112_paper.py` has the paper's
appendix values (500, 4). The student starts from the inflated ImageNet-1K 2D
Swin-S (`model.init_from`); the teacher from `teacher.checkpoint` (converted).
"""
from configs import default


def get_config(arg=None):
  return default.apply_variant(default.kinetics400_swin("reskd"), arg)
