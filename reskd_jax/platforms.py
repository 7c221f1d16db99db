"""Keeps JAX from probing for a TPU on machines that have libtpu but no TPU chips.

libtpu is installed by the ``tpu`` extra, also on CPU machines, where it only
serves ``--mode=plan`` (compile-only TPU devices). There JAX would still try
to start a TPU client at the first ``jax.devices()``, which costs start-up
time (docs/benchmarks.md) and prints libtpu's errors about missing TPU hosts
on stderr. Unless ``JAX_PLATFORMS`` is set, :func:`skip_absent_tpu` leaves
the TPU out when no TPU chip is attached (JAX's own PCI check) and no NVIDIA
GPU is visible; on a Cloud TPU VM or a GPU machine nothing changes.

:func:`quiet_tensorflow` is the one place that silences TensorFlow's C++
start-up lines by default.
"""

from __future__ import annotations

import glob
import importlib.util
import os


def tpu_chips_attached() -> int:
  """TPU chips on this machine's PCI bus (JAX's own check; 0 where it cannot tell)."""
  try:
    from jax._src import hardware_utils  # pylint: disable=import-outside-toplevel
    return int(hardware_utils.num_available_tpu_chips_and_device_id()[0])
  except Exception:  # pylint: disable=broad-except  (a private helper that may move)
    return 0


def allow_compile_only_libtpu() -> None:
  """Lets several processes load libtpu where no TPU is attached (compile-only use).

  libtpu takes a machine-wide lock file (/tmp/libtpu_lockfile) so that one
  process owns the chips; without chips there is nothing to own, and plans
  (or tests) running side by side would otherwise fail with "Internal error
  when accessing libtpu multi-process lockfile".
  """
  if not tpu_chips_attached():
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")


def quiet_tensorflow() -> None:
  """``TF_CPP_MIN_LOG_LEVEL=2`` unless set: no C++ INFO/WARNING lines from TensorFlow.

  TensorFlow reads it once, when first imported; the package's ``__init__``
  calls this, and every entry point (``main.py``, ``python -m data_prep``,
  ``python -m reskd_jax.tools.*``) imports the package before TensorFlow.
  ``main.py --verbosity=1`` sets ``0`` before that, to see them.
  """
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def skip_absent_tpu() -> bool:
  """Sets ``JAX_PLATFORMS=cpu`` in the situation above (before JAX starts); True if it did."""
  if os.environ.get("JAX_PLATFORMS") or os.environ.get("JAX_FORCE_TPU_INIT"):
    return False
  if importlib.util.find_spec("libtpu") is None:
    return False
  if glob.glob("/dev/nvidia[0-9]*"):
    return False
  if tpu_chips_attached():
    return False
  os.environ["JAX_PLATFORMS"] = "cpu"
  # JAX reads JAX_PLATFORMS when it is first imported, which `tpu_chips_attached` (or the
  # caller) may have done already: set the option itself too.
  import jax  # pylint: disable=import-outside-toplevel
  jax.config.update("jax_platforms", "cpu")
  return True


def hide_gpus_from_tf() -> None:
  """Keeps TF (tf.data runs on the host) off the accelerators: it would reserve their memory."""
  import tensorflow as tf
  try:
    tf.config.set_visible_devices([], "GPU")
  except (RuntimeError, ValueError):  # already initialised, or no such device type
    pass
