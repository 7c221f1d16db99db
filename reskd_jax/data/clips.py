"""What a clip is, read from `config.data`, and the checks of `config.data`: one home.

Every module that needs the frames per clip (T), the decoded crop size (S) or the
number of test views (V) asks these functions, never `data.num_frames` directly:
TSN sampling gives `num_frames` frames, dense sampling `clip_len`.
"""

from reskd_jax.errors import ConfigError


def frames_key(data_cfg) -> str:
  """The key of `config.data` that sets T: num_frames for TSN sampling, clip_len for dense."""
  return "num_frames" if data_cfg.sampling == "tsn" else "clip_len"


def frames_per_clip(data_cfg) -> int:
  """T of the output: num_frames for TSN sampling, clip_len for dense sampling."""
  return getattr(data_cfg, frames_key(data_cfg))


def decode_scale(data_cfg) -> int:
  """`data.decode_scale` (1 when the config predates it): JPEG decoding at 1/scale size."""
  return int(data_cfg.get("decode_scale", 1))


def output_size(data_cfg) -> int:
  """S of the output: crop_size, divided by the decode scale (112 for 224 at scale 2)."""
  return data_cfg.crop_size // decode_scale(data_cfg)


def num_views(data_cfg) -> int:
  """V of the eval output: test_num_clips * test_num_crops."""
  return data_cfg.test_num_clips * data_cfg.test_num_crops


def check_data_config(data) -> None:
  """ConfigError (a ValueError) for `config.data` values the pipeline cannot use; the one
  home of these checks (config_checks.check_config runs them at start-up)."""
  check_clip_config(data, "config.data")
  if int(data.shuffle_buffer) < 1:
    raise ConfigError(f"config.data.shuffle_buffer={data.shuffle_buffer}: must be at least 1")


def check_clip_config(data, where: str) -> None:
  """The checks of the keys that say what a clip is (sampling, frames, crops, views): those
  of `config.data`, and of the test transform that predict and export read from meta.json
  (`where` names the source in the message)."""
  if data.sampling not in ("tsn", "dense"):
    raise ConfigError(f"{where}.sampling={data.sampling!r}: expected 'tsn' or 'dense'")
  if data.test_num_crops not in (1, 3):
    raise ConfigError(f"{where}.test_num_crops={data.test_num_crops}: expected 1 (centre) "
                      f"or 3 (ThreeCrop)")
  for key in ("num_frames", "clip_len", "frame_interval", "test_num_clips", "crop_size",
              "short_side"):
    if int(data[key]) < 1:
      raise ConfigError(f"{where}.{key}={data[key]}: must be at least 1")
  scale = decode_scale(data)
  if scale not in (1, 2, 4, 8):
    raise ConfigError(f"{where}.decode_scale={scale}: expected 1, 2, 4 or 8 (JPEG's DCT "
                      f"scaling)")
  if data.crop_size % scale or data.short_side % scale:
    raise ConfigError(f"{where}.crop_size={data.crop_size} and {where}.short_side="
                      f"{data.short_side} must be multiples of {where}.decode_scale={scale}")
  if data.short_side < data.crop_size:
    raise ConfigError(f"{where}.crop_size={data.crop_size} is larger than "
                      f"{where}.short_side={data.short_side}: crops are taken from frames "
                      f"resized to the short side; lower the crop or raise the short side")
