"""The classifier a ``vit_classification`` run trains, by config id ``architecture`` (recorded in the run record like
every size, so that evaluation, inference and export build the same network):

* ``"vit"`` (default) -- :class:`~medmae_ext.networks.vit.ViTClassifier`, the network MAE / MSMAE encoders load into;
* ``"resnet18"`` -- MONAI's ResNet-18, from scratch: the CNN anchor of the comparisons (the MedMNIST v2 baselines are
  ResNet-18/50). For inputs of 64 px or less its stem is a 3x3 stride-1 convolution without max pooling (as CIFAR-size
  ResNets, and the 28 px MedMNIST ones, are built), so that a 28 px image is not reduced to 7 px by the first two
  layers; larger inputs keep the 7x7 stride-2 stem. The ViT ids (patch size, layers, pooling...) do not apply to it.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from ..errors import InputError

__all__ = ["ARCHITECTURES", "classifier"]

ARCHITECTURES = ("vit", "resnet18")


def classifier(
    architecture: str = "vit",
    *,
    num_classes: int,
    in_channels: int,
    img_size: Sequence[int] | int,
    spatial_dims: int = 2,
    **vit_kwargs,
) -> nn.Module:
    """The network of ``architecture`` (module doc); ``vit_kwargs`` go to :class:`ViTClassifier` only."""
    if architecture == "vit":
        from .vit import ViTClassifier

        return ViTClassifier(num_classes, in_channels, img_size, spatial_dims=spatial_dims, **vit_kwargs)
    if architecture == "resnet18":
        from monai.networks.nets import resnet18

        size = img_size if isinstance(img_size, int) else max(img_size)
        small = size <= 64
        return resnet18(
            spatial_dims=spatial_dims,
            n_input_channels=in_channels,
            num_classes=num_classes,
            conv1_t_size=3 if small else 7,
            conv1_t_stride=1 if small else 2,
            no_max_pool=small,
        )
    raise InputError(f"config id 'architecture' must be one of {ARCHITECTURES}, got {architecture!r}")
