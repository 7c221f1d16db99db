"""Something-Something V2 teacher: TSM ResNet-50 at 224, 8 frames, no flip."""
from configs import default


def get_config(arg=None):
  config = default.teacher_run("ssv2", "resnet50")
  config.model.tsm = True
  return default.apply_variant(config, arg)
