"""fcvid low-resolution baseline: ResNet-50 at 112, cross-entropy only (mAP)."""
from configs import default


def get_config(arg=None):
  return default.apply_variant(default.baseline_run("fcvid", 112), arg)
