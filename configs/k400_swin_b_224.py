"""Kinetics-400 Video Swin-B teacher at 224 (32x2x1), the teacher of Table 3's Swin rows.

Normally not trained here: convert the official Video Swin-B Kinetics-400
checkpoint (ImageNet-22K pre-trained, 82.7 top-1 as released) with
`python -m reskd_jax.tools.convert_weights --format=videoswin --arch=swin_b ...` into
weights/swin_b_k400, which `configs/k400_swin_s_112.py` reads as its teacher,
and evaluate it with `--mode=eval --workdir=weights/swin_b_k400`. Training it
follows the official recipe (see `default.kinetics400_swin`).
"""
from configs import default


def get_config(arg=None):
  return default.apply_variant(default.kinetics400_swin("teacher"), arg)
