"""Something-Something V2 low-resolution baseline: TSM ResNet-50 at 112, CE only."""
from configs import default


def get_config(arg=None):
  config = default.baseline_run("ssv2", 112)
  config.model.tsm = True
  return default.apply_variant(config, arg)
