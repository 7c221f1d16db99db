"""fcvid teacher pre-training: TSN ResNet-152 at 224, 16 frames, 50 epochs (mAP)."""
from configs import default


def get_config(arg=None):
  return default.apply_variant(default.teacher_run("fcvid", "resnet152"), arg)
