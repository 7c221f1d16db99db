"""Kinetics-400 ResKD Swin-S at 112 with the paper's appendix KD values: weight 500, T = 4.

Otherwise `k400_swin_s_112.py` (whose defaults, 200 and 2, are those of the
authors' released config).
"""
from configs import default


def get_config(arg=None):
  config = default.kinetics400_swin("reskd")
  config.kd_weight = 500.0
  config.kd_temperature = 4.0
  return default.apply_variant(config, arg)
