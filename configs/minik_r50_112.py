"""Mini-Kinetics ResKD: ResNet-50 student at 112 from the ResNet-152 teacher at 224.

The teacher comes from `config.teacher.checkpoint`: our own teacher run
(`configs/minik_r152_224.py`, workdir runs/minik_resnet152_224 by default) or
a converted release file (`python -m reskd_jax.tools.convert_weights`).
"""
from configs import default


def get_config(arg=None):
  return default.apply_variant(default.for_dataset("minik"), arg)
