"""Video models: one module per family (``resnet``: 2D ResNet / TSM / TSN).

Public entry point: :func:`build_model`. Models know nothing about data or
training; they map a video ``(B, T, H, W, 3)`` to logits ``(B, num_classes)``.
"""

from reskd_jax.models.resnet import (  # noqa: F401
    ARCHS,
    BN_EPSILON,
    BN_MOMENTUM,
    BasicBlock,
    Bottleneck,
    ResNet,
    VideoClassifier,
    build_model,
    conv_kernel_init,
    feature_channels,
    feature_size,
    head_kernel_init,
    init_variables,
    temporal_shift,
    with_bn_axis,
)
