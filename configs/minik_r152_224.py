"""Mini-Kinetics teacher pre-training: TSN ResNet-152 at 224, 8 frames, 50 epochs."""
from configs import default


def get_config(arg=None):
  return default.apply_variant(default.teacher_run("minik", "resnet152"), arg)
