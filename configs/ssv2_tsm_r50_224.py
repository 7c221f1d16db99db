"""Something-Something V2 teacher: TSM ResNet-50 at 224, 8 frames, no flip."""
from configs import default


def get_config():
  config = default.teacher_run("ssv2", "resnet50")
  config.model.tsm = True
  return config
