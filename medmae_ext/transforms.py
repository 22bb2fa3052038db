"""Dictionary transforms used by the medmae bundles (besides MONAI's own)."""

from __future__ import annotations

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

__all__ = ["ValidateImaged", "source_of"]


def source_of(data: dict, key: str) -> str:
    """Best description of where ``data[key]`` came from: its file name, else the item's id."""
    meta = getattr(data.get(key), "meta", None) or {}
    src = meta.get("filename_or_obj") or data.get("id")
    return f"'{src}'" if src else "(in-memory item)"


class ValidateImaged(MapTransform):
    """Check loaded images before they reach the network; errors name the file and the config key to change.

    Args:
        keys: keys to check (channel-first arrays).
        channels: expected channel count (the network's ``in_channels``).
        spatial_dims: expected number of spatial dimensions (2 or 3).
    """

    def __init__(
        self,
        keys: KeysCollection,
        channels: int | None = None,
        spatial_dims: int | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.channels = channels
        self.spatial_dims = spatial_dims

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            if not isinstance(img, (np.ndarray, torch.Tensor)):
                raise TypeError(f"{source_of(d, key)}: '{key}' is a {type(img).__name__}, expected an image array.")
            shape = tuple(img.shape)
            if self.spatial_dims is not None and len(shape) - 1 != self.spatial_dims:
                raise ValueError(
                    f"{source_of(d, key)}: '{key}' has shape {shape} (channel first), i.e. {len(shape) - 1} spatial "
                    f"dims, but this config expects {self.spatial_dims}D images."
                )
            if self.channels is not None and shape[0] != self.channels:
                raise ValueError(
                    f"{source_of(d, key)}: '{key}' has {shape[0]} channel(s) (shape {shape}) but the network expects "
                    f"{self.channels} (config id 'in_channels'): convert the images or change 'in_channels'."
                )
        return d
