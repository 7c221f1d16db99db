"""Default hyper-parameters: ResKD on Mini-Kinetics (R50 student at 112, R152 teacher at 224).

Every number the training uses lives here; variants import this file and
override what differs (flax `examples/imagenet` style). Values follow the
authors' release (see README, "Faithfulness"). The package never reads this
file: a tool that runs without a config keeps its own default, e.g. the test
transform of converted weights that record none
(`reskd_jax.tools.inference.DEFAULT_TRANSFORM`, equal to `get_data_config()`'s
test keys below; tests/test_use.py checks that they agree).
"""

import ml_collections

from reskd_jax import augment

TEACHER_ARCH = "resnet152"  # the paper's teacher (its block is filled from its meta.json)


def get_data_config() -> ml_collections.ConfigDict:
  data = ml_collections.ConfigDict()
  data.name = "minik"  # used in messages and the results file
  # Output directory of `python -m data_prep ...` (holds manifest.json).
  data.data_dir = "data/minik"
  data.train_split = "train"
  data.eval_split = "val"
  # Frame sampling: "tsn" (one frame per segment) or "dense" (clip_len x interval).
  data.sampling = "tsn"
  data.num_frames = 8  # T segments (8 trimmed, 16 untrimmed datasets)
  data.clip_len = 8  # dense sampling only
  data.frame_interval = 8  # dense sampling only
  # Training augmentation (mmaction2 MultiScaleCrop), then flip and normalise.
  data.short_side = 256
  data.crop_size = 224
  data.multiscale_crop = True
  data.scales = (1.0, 0.875, 0.75, 0.66)
  data.max_wh_scale_gap = 1
  data.flip = True  # False for Something-Something (left/right is in the label)
  data.mean = augment.IMAGENET_MEAN
  data.std = augment.IMAGENET_STD
  # Test: short side `short_side`, `test_num_crops` crops of `crop_size` (1: centre).
  data.test_num_clips = 1
  data.test_num_crops = 1
  data.shuffle_buffer = 1024  # videos; it holds each clip's sampled JPEGs, not whole videos
  # JPEG decoding at 1/decode_scale size (1, 2, 4 or 8; libjpeg's DCT scaling, far
  # cheaper than decoding then resizing). Crops and short side shrink alike: 2
  # gives the release's "short side 128, centre crop 112" input for runs whose
  # every model sees 112 px (a baseline student, a student evaluated alone),
  # never a teacher at 224.
  data.decode_scale = 1
  # Keep the parsed records in memory (small data sets). In the "frames" layout these are the
  # small per-video records only: the sampled frames are still read from the .frames files.
  data.cache = False
  # Shards read by parallel background threads (True) or by the thread that parses them
  # (False: 12-15% less CPU per video, but one reader per host). None: parallel for
  # remote shards (gs://, s3://, ...), whose latency it hides, in-thread for local ones.
  data.parallel_reads = ml_collections.FieldReference(None, field_type=bool)
  # Training start-up verifies the SHA-256 checksums data_prep wrote into the manifest:
  # "background" (a thread; a damaged shard stops training at the next batch), "now"
  # (before training: one read of every shard), or "off". Counts and sizes are always checked.
  data.verify_checksums = "background"
  return data


def get_model_config(name: str, input_size=None) -> ml_collections.ConfigDict:
  model = ml_collections.ConfigDict()
  model.name = name
  model.tsm = False
  model.strides = (1, 2, 2, 2)
  model.width = 64
  model.stage_sizes = ml_collections.FieldReference(None, field_type=tuple)
  model.stem = "imagenet"
  # Video Swin options (None: the architecture's default, e.g. swin_s = 96, (2, 2, 18, 2),
  # (3, 6, 12, 24), window (8, 7, 7)). drop_path_rate: stochastic depth of the last block.
  model.embed_dim = ml_collections.FieldReference(None, field_type=int)
  model.depths = ml_collections.FieldReference(None, field_type=tuple)
  model.num_heads = ml_collections.FieldReference(None, field_type=tuple)
  model.window_size = ml_collections.FieldReference(None, field_type=tuple)
  model.drop_path_rate = ml_collections.FieldReference(None, field_type=float)
  model.dropout_rate = 0.5
  # In-model bilinear resize (no antialias) of the teacher's crop; None: use the crop.
  model.input_size = ml_collections.FieldReference(input_size, field_type=int)
  # ImageNet initialisation: a directory written by `python -m reskd_jax.tools.convert_weights`.
  model.init_from = ""
  # Rematerialisation: every residual block (ResNet/TSM, SlowOnly) and every Video Swin
  # transformer block under flax's nn.remat, so that the backward pass recomputes the
  # block's activations instead of keeping them: less accelerator memory for about one
  # more forward pass of compute. The numbers and the variables are those of False
  # (checkpoints load either way); the teacher, which takes no gradient, never uses it.
  # For a per-chip batch that does not fit otherwise (`--mode=plan` shows the memory).
  model.remat = False
  return model


def get_teacher_config(checkpoint: str = "") -> ml_collections.ConfigDict:
  """The teacher block: the model keys, unset (None), plus where the teacher is.

  Unset architecture keys are filled from the teacher checkpoint's meta.json
  at start-up; a key set here must agree with it.
  """
  teacher = ml_collections.ConfigDict()
  template = get_model_config(TEACHER_ARCH)
  for key in template.keys():
    if key not in ("init_from", "dropout_rate", "remat"):
      teacher[key] = ml_collections.FieldReference(None, field_type=template.get_type(key))
  # Converted teacher (reskd_jax.tools.convert_weights) or our own teacher run's workdir.
  teacher.checkpoint = checkpoint
  # The authors' teacher runs in train mode (BN batch statistics), without gradients.
  teacher.train_mode_bn = True
  add_teacher_checks(teacher)
  return teacher


def add_teacher_checks(teacher: ml_collections.ConfigDict) -> None:
  """A teacher must see the resolution and class order of its meta.json (checked at start-up)
  unless these say the difference is intended (e.g. a teacher fine-tuned at another size)."""
  teacher.allow_other_resolution = False
  teacher.allow_other_classes = False


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0

  # "teacher": CE at the teacher's resolution (teacher pre-training);
  # "baseline": CE only at the student's resolution;
  # "reskd": CE + kd_weight * KD with a frozen teacher.
  config.mode = "reskd"
  # KD method: "pixel_feature" (the paper's default MSE), "pixel_logit",
  # "frame" (KL on per-frame logits) or "clip" (KL on clip logits).
  config.kd_method = "pixel_feature"
  config.kd_weight = 100.0
  config.kd_temperature = 1.0  # for the KL-based methods (4 for pixel_logit in the paper)

  config.data = get_data_config()
  config.num_classes = 200

  config.model = get_model_config("resnet50", input_size=112)  # the student

  config.teacher = get_teacher_config()

  # Optimiser: SGD, lr 0.01 per 64 videos scaled linearly with the global batch.
  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.base_learning_rate = 0.01
  config.optimizer.base_batch_size = 64
  config.optimizer.momentum = 0.9
  config.optimizer.nesterov = True
  config.optimizer.weight_decay = 1e-4
  config.optimizer.bias_lr_mult = 2.0
  config.optimizer.clip_grad_norm = 20.0
  config.optimizer.warmup_epochs = 0.0
  config.optimizer.lr_by_epoch = True  # mmcv CosineAnnealing(by_epoch=True)
  config.optimizer.name = "sgd"  # or "adamw"
  config.optimizer.schedule = "cosine"  # or "step": x lr_step_gamma at each of lr_step_epochs
  config.optimizer.lr_step_epochs = ml_collections.FieldReference((), field_type=tuple)
  config.optimizer.lr_step_gamma = 0.1
  config.optimizer.backbone_lr_mult = 1.0  # lr factor of everything but the classifier `fc`
  # Micro-batches per optimizer update (optax.MultiSteps): the global batch of an update is
  # batch_size x grad_accum_steps; the schedule counts updates.
  config.optimizer.grad_accum_steps = 1
  # AdamW (name="adamw") only; every optimizer's knobs exist in every config.
  config.optimizer.b1 = 0.9
  config.optimizer.b2 = 0.999

  config.batch_size = 64  # global, videos
  config.num_epochs = 100.0
  config.label_smoothing = 0.0
  config.sync_bn = False  # per-device BatchNorm, as the released code
  config.dtype = "float32"  # compute dtype: "float32" or "bfloat16"

  config.log_every_steps = 50
  config.eval_every_epochs = 5.0
  config.checkpoint_every_steps = 1000
  config.keep_checkpoints = 3
  # Resuming a workdir with other model/data/batch settings than its config.json is an
  # error unless this is True.
  config.allow_config_change = False
  config.eval_metric = "top1"  # "top1" or "mAP"; the best checkpoint by it is kept
  config.steps_per_epoch = -1  # -1: from the data set size
  config.num_train_steps = -1  # -1: from num_epochs
  config.num_eval_steps = -1  # -1: the whole eval split
  config.eval_batch_size = 64

  # Profile mode: GFLOPs and throughput per resolution.
  config.profile = ml_collections.ConfigDict()
  config.profile.resolutions = (224, 144, 112, 96, 72, 56)
  # 0: fit the platform (accelerators: the paper's batch 64 and 5 timed runs;
  # CPU: batch 1, 2 runs, float32 only). See reskd_jax/tools/profiling.py.
  config.profile.batch_size = 0
  config.profile.timed_runs = 0
  # Compute dtypes to time, e.g. ("float32", "bfloat16"); empty: the platform's (CPU:
  # float32 only, accelerators: both).
  config.profile.dtypes = ml_collections.FieldReference((), field_type=tuple)
  return config


# ----------------------------------------------------------------------------
# Data set presets and the three run kinds. Every config file of this folder
# is one of these, plus what differs.

DATASETS = {
    # name: (num_classes, frames, flip, eval metric, student epochs, eval split)
    "minik": (200, 8, True, "top1", 100.0, "val"),
    "activitynet": (200, 16, True, "mAP", 200.0, "val"),
    "fcvid": (239, 16, True, "mAP", 100.0, "val"),
    "ssv2": (174, 8, False, "top1", 100.0, "val"),
    "k400": (400, 8, True, "top1", 150.0, "val"),
}
TEACHER_EPOCHS = 50.0


def for_dataset(name: str) -> ml_collections.ConfigDict:
  """The ResKD default (R50 at 112 from an R152 teacher at 224) on data set `name`."""
  num_classes, frames, flip, metric, epochs, eval_split = DATASETS[name]
  config = get_config()
  config.data.name = name
  config.data.data_dir = f"data/{name}"
  config.data.eval_split = eval_split
  config.data.num_frames = frames
  config.data.flip = flip
  config.num_classes = num_classes
  config.eval_metric = metric
  config.num_epochs = epochs
  config.teacher.checkpoint = f"runs/{name}_{TEACHER_ARCH}_224"
  return config


def teacher_run(name: str, arch: str = "resnet152") -> ml_collections.ConfigDict:
  """Teacher pre-training: CE at 224 for 50 epochs."""
  config = for_dataset(name)
  config.mode = "teacher"
  config.model = get_model_config(arch, input_size=None)
  config.num_epochs = TEACHER_EPOCHS
  return config


def baseline_run(name: str, resolution: int = 112) -> ml_collections.ConfigDict:
  """Plain low-resolution student: CE only, same schedule as the ResKD student."""
  config = for_dataset(name)
  config.mode = "baseline"
  config.model.input_size = resolution
  return config


def kinetics400_slowonly(mode: str) -> ml_collections.ConfigDict:
  """SlowOnly-R50 8x8x1 on Kinetics-400 (the paper's Table 3), as the authors' release.

  ``mode``: ``"teacher"`` (at 224), ``"baseline"`` or ``"reskd"`` (student at
  112, the teacher's crop resized in the model). Dense sampling 8 frames x
  interval 8; test 10 clips x 3 crops (ThreeCrop). SGD lr 0.01 per 64 videos,
  momentum 0.9, weight decay 1e-4, gradients clipped at 40, 10 warm-up epochs,
  step decay x0.1 at epochs 90 and 130, 150 epochs. Every run starts from the
  inflated ImageNet ResNet-50 (`model.init_from`, see the README).
  """
  config = for_dataset("k400")
  config.mode = mode
  data = config.data
  data.sampling = "dense"
  data.num_frames = 8
  data.clip_len = 8
  data.frame_interval = 8
  data.test_num_clips = 10
  data.test_num_crops = 3
  data.flip = mode != "reskd"  # the released ResKD SlowOnly config trains without flips
  config.model = get_model_config("slowonly_r50", input_size=None if mode == "teacher" else 112)
  config.teacher.name = "slowonly_r50"
  config.teacher.checkpoint = "runs/k400_slowonly_r50_224"
  config.kd_method = "pixel_feature"
  config.kd_weight = 100.0
  opt = config.optimizer
  opt.base_learning_rate = 0.01
  opt.base_batch_size = 64
  opt.momentum = 0.9
  opt.nesterov = False
  opt.weight_decay = 1e-4
  opt.bias_lr_mult = 1.0  # mmcv's default optimizer constructor: one group
  opt.clip_grad_norm = 40.0
  opt.warmup_epochs = 10.0
  opt.schedule = "step"
  opt.lr_step_epochs = (90, 130)
  config.num_epochs = 150.0
  return config


def kinetics400_swin(mode: str) -> ml_collections.ConfigDict:
  """Video Swin on Kinetics-400 (the paper's Table 3): Swin-B teacher, Swin-S student.

  ``mode``: ``"teacher"`` (Swin-B at 224, the official Kinetics-400 recipe:
  ImageNet-22K init, lr 3e-4, weight decay 0.05, stochastic depth 0.2, 30
  epochs; normally its released weights are converted instead),
  ``"baseline"`` or ``"reskd"`` (Swin-S at 112 from the inflated ImageNet-1K
  2D Swin-S, the teacher's crop resized in the model: AdamW lr 1e-3 per 512
  videos, weight decay 0.02, stochastic depth 0.1, 60 epochs). Both: dense
  sampling 32 frames x interval 2, test 4 clips x 3 crops (ThreeCrop), backbone
  lr x0.1, 2.5 linear warm-up epochs then cosine to 0, no gradient clipping,
  updates of 512 videos from 32-video steps x 16 accumulated (optax.MultiSteps).

  ResKD uses the pixel-level logit KD with the values of the authors' released
  config (weight 200, temperature 2, hard-coded in their head); the paper's
  appendix gives 500 and 4 (``configs/k400_swin_s_112_paper.py``). The teacher
  runs in train mode (its stochastic depth 0.1 active, as released) with its
  own frozen classifier.
  """
  config = for_dataset("k400")
  config.mode = mode
  data = config.data
  data.sampling = "dense"
  data.num_frames = 32
  data.clip_len = 32
  data.frame_interval = 2
  data.test_num_clips = 4
  data.test_num_crops = 3
  teacher = mode == "teacher"
  config.model = get_model_config("swin_b" if teacher else "swin_s",
                                  input_size=None if teacher else 112)
  config.model.drop_path_rate = 0.2 if teacher else 0.1
  config.model.init_from = ("weights/swin_b_in22k_inflated" if teacher
                            else "weights/swin_s_in1k_inflated")
  config.teacher = get_model_config("swin_b", input_size=None)
  config.teacher.drop_path_rate = 0.1
  config.teacher.checkpoint = "weights/swin_b_k400"
  config.teacher.train_mode_bn = True  # train mode: stochastic depth active
  add_teacher_checks(config.teacher)
  config.kd_method = "pixel_logit"
  config.kd_weight = 200.0
  config.kd_temperature = 2.0
  opt = config.optimizer
  opt.name = "adamw"
  opt.base_learning_rate = 3e-4 if teacher else 1e-3
  opt.weight_decay = 0.05 if teacher else 0.02
  opt.b1, opt.b2 = 0.9, 0.999
  opt.bias_lr_mult = 1.0
  opt.backbone_lr_mult = 0.1
  opt.clip_grad_norm = 0.0
  opt.warmup_epochs = 2.5
  opt.schedule = "cosine"
  opt.grad_accum_steps = 16
  config.batch_size = 32
  opt.base_batch_size = config.batch_size * opt.grad_accum_steps  # lr per 512-video update
  config.eval_batch_size = 8
  config.num_epochs = 30.0 if teacher else 60.0
  config.profile.resolutions = (224, 112)
  config.profile.batch_size = 8
  return config


# ----------------------------------------------------------------------------
# Variants selected on the command line, big_vision style:
#   --config=configs/minik_r50_112.py:tiny
# Every config file's `get_config(arg=None)` ends with `apply_variant(config, arg)`.

VARIANTS = ("tiny",)


def tiny(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Shrinks a run for tests and smoke runs on a CPU: tiny nets, 32 px crops, 4 frames,
  6 steps evaluated once at the end (override num_train_steps / eval_every_epochs for more).

  The teacher and student keep their roles (the student still sees half the
  teacher's resolution); point `data.data_dir` and `teacher.checkpoint` at
  tiny data and weights.
  """
  crop = 32
  for block in (config.model, config.teacher):
    name = block.name or ""  # a teacher's name may come from its meta.json
    if name.startswith("resnet"):
      block.name = "resnet18"
      block.width = 8
      block.stage_sizes = (1, 1, 1, 1)
      block.stem = "small"
    elif name.startswith("slowonly"):
      block.width = 8
      block.stage_sizes = (1, 1, 1, 1)
      crop = 64  # total stride 32: the 1/2-resolution student needs 32 px
    elif name.startswith("swin"):
      _tiny_swin(block)
  if config.model.input_size is not None:
    config.model.input_size = crop // 2
  config.data.num_frames = 4
  config.data.clip_len = 4  # dense sampling
  config.data.frame_interval = 2
  config.data.test_num_clips = min(config.data.test_num_clips, 2)
  config.data.short_side = crop + crop // 8
  config.data.crop_size = crop
  config.data.shuffle_buffer = 16
  config.batch_size = 8
  config.eval_batch_size = 8
  config.optimizer.grad_accum_steps = min(config.optimizer.grad_accum_steps, 2)
  config.log_every_steps = 1
  config.checkpoint_every_steps = 100
  # A short schedule (a smoke run, not a training): 6 steps, evaluated at the end.
  config.num_train_steps = 6
  config.eval_every_epochs = 1000.0
  config.profile.resolutions = (crop, crop // 2)
  config.profile.batch_size = 2
  config.profile.timed_runs = 1
  return config


def _tiny_swin(block: ml_collections.ConfigDict) -> None:
  """A tiny Video Swin: 8 channels, a plain and a shifted block in stage 1, window (2, 3, 3)."""
  block.embed_dim = 8
  block.depths = (2, 1, 1, 1)
  block.num_heads = (1, 1, 2, 2)
  block.window_size = (2, 3, 3)
  block.init_from = ""


def apply_variant(config: ml_collections.ConfigDict, arg=None) -> ml_collections.ConfigDict:
  """Applies the `:variant` suffix of `--config=FILE.py:variant` (None: unchanged)."""
  if arg in (None, ""):
    return config
  if arg not in VARIANTS:
    raise ValueError(f"unknown config variant {arg!r}; expected one of {VARIANTS}")
  return globals()[arg](config)
