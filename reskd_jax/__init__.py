"""reskd-jax: ResKD (cross-resolution knowledge distillation for video recognition) in JAX/Flax."""

from reskd_jax import platforms as _platforms

# libtpu (the `tpu` extra, also used by --mode=plan on CPU machines) must not make JAX probe
# for TPU chips that are not there: every entry point imports this package first.
_platforms.skip_absent_tpu()
# TensorFlow quiet by default, before any module of the package imports it.
_platforms.quiet_tensorflow()
