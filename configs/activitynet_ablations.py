"""The paper's ablations on ActivityNet (R50 student, 50 epochs), picked by argument:

  --config=configs/activitynet_ablations.py:clip       Table 5: clip-level KD (KL)
  --config=configs/activitynet_ablations.py:frame      Table 5: frame-level KD (KL)
  --config=configs/activitynet_ablations.py:pixel      Table 5: pixel-level KD (MSE)
  --config=configs/activitynet_ablations.py:model      Table 6: R152 teacher fed 112 frames
  --config=configs/activitynet_ablations.py:resolution Table 6: R50 teacher fed 224 frames
  --config=configs/activitynet_ablations.py:baseline   no KD
"""
from configs import default

VARIANTS = ("clip", "frame", "pixel", "model", "resolution", "baseline")


def get_config(arg="pixel"):
  if arg not in VARIANTS:
    raise ValueError(f"unknown ablation {arg!r}; expected one of {VARIANTS}")
  if arg == "baseline":
    config = default.baseline_run("activitynet", 112)
  else:
    config = default.for_dataset("activitynet")
  config.num_epochs = 50.0  # the ablations train the student for 50 epochs
  if arg in ("clip", "frame"):
    config.kd_method = arg
  elif arg == "model":
    # Model distillation: the high-capacity teacher sees the low-resolution input.
    config.teacher.input_size = 112
    config.teacher.allow_other_resolution = True  # intended: the 224 px teacher fed 112
  elif arg == "resolution":
    # Resolution distillation: an R50 teacher (same as the student) at 224.
    config.teacher = default.get_model_config("resnet50", input_size=None)
    config.teacher.checkpoint = "runs/activitynet_resnet50_224"
    config.teacher.train_mode_bn = True
    default.add_teacher_checks(config.teacher)
  return config
