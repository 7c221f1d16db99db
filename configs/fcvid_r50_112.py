"""fcvid ResKD: ResNet-50 at 112 from the ResNet-152 teacher at 224, 16 frames (mAP)."""
from configs import default


def get_config(arg=None):
  return default.apply_variant(default.for_dataset("fcvid"), arg)
