"""The CPU demo (`make demo`): ResKD on a synthetic motion-and-detail data set.

  --config=configs/demo.py:teacher   TSM ResNet (tiny) at 64 px
  --config=configs/demo.py:baseline  the same network at 32 px, cross-entropy only
  --config=configs/demo.py:reskd     ... plus 100 x MSE to the 64 px teacher's last map

The data (data_prep/demo_data.py): 8 grayscale frames, one small shape moving
left or right in noise; the label is shape x direction (8 classes), so both
fine spatial detail and temporal order matter. 600 training clips: with
so little data the low-resolution baseline memorises, and the teacher's
guidance is what lets the student generalise (see README, "The demo").
Sized for a 2-core CPU: a per-frame ResNet with a 3x3/2 stem, one basic
block per stage, widths 8-64 (~0.3 M parameters).

The ablations in miniature (`python -m reskd_jax.tools.demo --ablations`; the
paper's Tables 5 and 6), each a student at 32 px like `reskd` but for:
  --config=configs/demo.py:clip          KD on the clip logits (KL, T = 1)
  --config=configs/demo.py:frame         KD on the per-frame logits (KL, T = 1)
  --config=configs/demo.py:pixel_logit   KD on the per-position logits (KL, T = 4, alpha 500)
  --config=configs/demo.py:teacher_large       a deeper teacher (two blocks per stage) at 64 px
  --config=configs/demo.py:teacher_large_low   the same deeper teacher trained at 32 px
  --config=configs/demo.py:model         model distillation: teacher_large_low, fed 32 px
  --config=configs/demo.py:both          teacher_large fed 64 px (bigger and sharper)
`reskd` itself is the pixel-level feature KD of Table 5 and, its teacher being
the student's own network at 64 px, the resolution distillation of Table 6.
"""
from configs import default

RUNS = ("teacher", "baseline", "reskd")
ABLATIONS = ("clip", "frame", "pixel_logit", "teacher_large", "teacher_large_low", "model",
             "both")
TEACHER_RUNS = ("teacher", "teacher_large", "teacher_large_low")
NUM_CLASSES = 8


def _model(input_size=None, blocks=1):
  model = default.get_model_config("resnet18", input_size=input_size)
  model.tsm = True
  model.stage_sizes = (blocks,) * 4
  model.width = 8
  model.stem = "small"
  model.dropout_rate = 0.0
  return model


def get_config(arg="reskd"):
  if arg not in RUNS + ABLATIONS:
    raise ValueError(f"configs/demo.py: unknown run {arg!r}; expected one of "
                     f"{RUNS + ABLATIONS}")
  config = default.get_config()
  config.mode = ("teacher" if arg in TEACHER_RUNS else "baseline" if arg == "baseline"
                 else "reskd")
  config.data.name = "demo"
  config.data.data_dir = "runs/demo/data/records"
  config.data.train_split = "train"
  config.data.eval_split = "test"
  config.data.num_frames = 8
  config.data.short_side = 64
  config.data.crop_size = 64
  config.data.multiscale_crop = False  # the object is small: keep it in the frame
  config.data.flip = False  # left/right is part of the label
  config.data.cache = True
  config.data.shuffle_buffer = 600
  config.num_classes = NUM_CLASSES

  config.model = _model(input_size=None if arg == "teacher" else 32)
  config.teacher = _model(input_size=None)
  config.teacher.checkpoint = "runs/demo/teacher"
  config.teacher.train_mode_bn = True
  default.add_teacher_checks(config.teacher)
  config.kd_weight = 100.0
  if arg in ("clip", "frame"):
    config.kd_method = arg
  elif arg == "pixel_logit":  # the paper's setting for it (appendix A.1, Video Swin)
    config.kd_method = "pixel_logit"
    config.kd_temperature = 4.0
    config.kd_weight = 500.0
  elif arg == "teacher_large":
    config.model = _model(input_size=None, blocks=2)
  elif arg == "teacher_large_low":
    config.model = _model(input_size=32, blocks=2)
  elif arg in ("model", "both"):
    low = arg == "model"
    config.teacher = _model(input_size=32 if low else None, blocks=2)
    config.teacher.checkpoint = "runs/demo/" + ("teacher_large_low" if low else "teacher_large")
    config.teacher.train_mode_bn = True
    default.add_teacher_checks(config.teacher)

  # AdamW suits this small scale (the paper's SGD recipe targets ImageNet-initialised R50s).
  config.optimizer.name = "adamw"
  config.optimizer.base_learning_rate = 2e-3
  config.optimizer.base_batch_size = 32
  config.optimizer.weight_decay = 1e-4
  config.optimizer.clip_grad_norm = 0.0
  config.optimizer.lr_by_epoch = False
  config.batch_size = 32
  config.eval_batch_size = 50
  config.num_epochs = 50.0 if arg in TEACHER_RUNS else 45.0  # the teacher must be strong
  config.log_every_steps = 50
  config.eval_every_epochs = 1000.0  # only at the end
  config.checkpoint_every_steps = 500
  config.keep_checkpoints = 1
  return config
