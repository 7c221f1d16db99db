"""reskd-jax: cross-resolution knowledge distillation (ResKD) for video recognition in JAX/Flax."""

from setuptools import find_packages, setup

# The accelerator extras must match jax/jaxlib exactly (constraints.txt pins the same).
JAX_VERSION = "0.10.2"
LIBTPU_VERSION = "0.0.42.1"

setup(
    name="reskd-jax",
    version="0.1.0",
    description="ResKD (cross-resolution knowledge distillation for efficient video "
                "recognition) in JAX/Flax",
    license="Apache-2.0",
    # configs/ is not installed: config files are loaded by path (`--config=configs/...`)
    # and import `configs.default` from the checkout's root (`python main.py`, `make test`,
    # `make demo` all run there).
    packages=find_packages(include=["reskd_jax", "reskd_jax.*", "data_prep", "data_prep.*"]),
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.8.0",
        "flax>=0.10.0",
        "optax>=0.2.4",
        "orbax-checkpoint>=0.11.0",
        "chex>=0.1.88",
        "ml-collections>=1.0.0",
        "dm-pix>=0.4.3",
        "tensorflow-cpu>=2.18",
        "tensorflow-datasets>=4.9.7",
        "clu>=0.0.12",
        "av>=12.0",
        "numpy>=1.26",
        "matplotlib>=3.8",
        "absl-py>=2.1",
        "tensorboard>=2.16",
    ],
    extras_require={
        "test": ["pytest>=8.0", "pytest-xdist>=3.5", "scikit-learn>=1.4"],
        "torch": ["torch>=2.4"],
        # Cluster-scale data generation (the TFDS builders' `beam` configs).
        "beam": ["apache-beam>=2.60"],
        # Accelerators: JAX's own extras at the pinned jax version (tests/test_plan.py checks
        # these pins against constraints.txt). `tpu` brings libtpu: training on a Cloud TPU VM,
        # and `--mode=plan` (compile-only TPU topologies) on any machine. tf.data stays on
        # the host CPU (tensorflow-cpu) everywhere.
        "tpu": [f"jax[tpu]=={JAX_VERSION}", f"libtpu=={LIBTPU_VERSION}"],
        "cuda12": [f"jax[cuda12]=={JAX_VERSION}"],
        "cuda13": [f"jax[cuda13]=={JAX_VERSION}"],
    },
)
