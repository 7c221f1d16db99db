"""Mini-Kinetics low-resolution baseline: ResNet-50 at 112, cross-entropy only."""
from configs import default


def get_config(arg=None):
  return default.apply_variant(default.baseline_run("minik", 112), arg)
