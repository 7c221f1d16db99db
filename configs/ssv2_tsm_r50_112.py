"""Something-Something V2 ResKD: TSM ResNet-50 student at 112, TSM ResNet-50 teacher at 224."""
from configs import default


def get_config(arg=None):
  config = default.for_dataset("ssv2")
  config.model.tsm = True
  config.teacher = default.get_model_config("resnet50", input_size=None)
  config.teacher.tsm = True
  config.teacher.checkpoint = "runs/ssv2_resnet50_224"
  config.teacher.train_mode_bn = True
  default.add_teacher_checks(config.teacher)
  return default.apply_variant(config, arg)
