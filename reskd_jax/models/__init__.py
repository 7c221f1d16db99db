"""Video models: one module per family and one registry of names.

Families: ``resnet`` (2D ResNet / TSM / TSN), ``slowonly`` (3D ResNet,
mmaction2 ResNet3dSlowOnly), ``swin`` (Video Swin
Transformer). :mod:`reskd_jax.models.registry` is the one
place that says which architectures exist (:data:`ARCHS`) and how a name or a
config block becomes a model (:func:`build_model`, :func:`build_from_config`).
Models know nothing about data or training; they map a video
``(B, T, H, W, 3)`` to logits ``(B, num_classes)``.
"""

from reskd_jax.models.layers import HEAD_NAME  # noqa: F401
from reskd_jax.models.registry import (  # noqa: F401
    ARCHS,
    FAMILIES,
    UnknownModelError,
    build_from_config,
    build_model,
    check_name,
    config_options,
    default_options,
    family_name,
    family_of,
    feature_channels,
    feature_shape,
    feature_size,
    init_variables,
    min_resolution,
    names,
    with_bn_axis,
)
from reskd_jax.models.resnet import temporal_shift  # noqa: F401
from reskd_jax.models.slowonly import SlowOnly  # noqa: F401
