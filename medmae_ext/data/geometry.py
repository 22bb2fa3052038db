"""Geometry of 3D inputs: resampling that refuses impossible sizes, and how far apart two grids lie in space."""

from __future__ import annotations

import itertools

import numpy as np
from monai.transforms import Spacingd

from ..errors import InputError

__all__ = ["SafeSpacingd", "MAX_VOXELS", "resampled_shape", "max_position_difference"]

#: default voxel limit of a resampled volume (config id ``max_voxels``): 2^28 voxels = 1 GiB as float32, e.g.
#: 645^3; a whole-body CT resampled to 1.5 x 1.5 x 2 mm has about 0.1 of it
MAX_VOXELS = 2**28


def resampled_shape(shape, affine, pixdim) -> tuple[int, ...]:
    """Spatial shape of a volume of ``shape`` with voxel-to-world ``affine`` resampled to spacing ``pixdim``."""
    a = np.asarray(affine, dtype=np.float64)[:3, :3]
    spacing = np.sqrt((a**2).sum(axis=0))
    return tuple(max(1, int(round(n * s / float(p)))) for n, s, p in zip(shape, spacing, pixdim, strict=False))


def max_position_difference(shape, affine_a, affine_b) -> float:
    """Largest distance in mm between where two voxel-to-world affines put the same voxel of a grid of ``shape``:
    affines are linear, so the largest is at one of the grid's 8 corners."""
    a, b = np.asarray(affine_a, np.float64), np.asarray(affine_b, np.float64)
    corners = np.array([list(c) + [1.0] for c in itertools.product(*[(0, n - 1) for n in shape[:3]])])
    return float(np.linalg.norm((corners @ a.T - corners @ b.T)[:, :3], axis=1).max())


class SafeSpacingd(Spacingd):
    """MONAI ``Spacingd`` that stops, naming the file, its spacing and the resampled size, before resampling to more
    than ``max_voxels`` voxels (a header spacing of 30 mm made MONAI ask for 55 GB and the process abort). It also
    tolerates non-dict ``<key>_*`` entries such as MONAI Label's ``image_path`` (MONAI 1.6.1's ``Spacingd`` calls
    ``.update`` on them), putting them back unchanged."""

    def __init__(self, *args, max_voxels: int = MAX_VOXELS, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.max_voxels = int(max_voxels)

    def _check(self, d: dict) -> None:
        from .transforms import source_of

        pixdim = self.spacing_transform.pixdim
        for key in self.key_iterator(d):
            img = d[key]
            affine = getattr(img, "affine", None)
            if affine is None:
                continue
            shape = resampled_shape(img.shape[1:], affine, pixdim)
            n = int(np.prod(shape, dtype=np.int64))
            if n > self.max_voxels:
                a = np.asarray(affine, np.float64)[:3, :3]
                spacing = [round(float(v), 4) for v in np.sqrt((a**2).sum(axis=0))]
                raise InputError(
                    f"{source_of(d, key)}: spacing {spacing} mm, shape {tuple(img.shape[1:])}: resampled to pixdim "
                    f"{list(pixdim)} mm it would be {shape} = {n:,} voxels ({n * 4 / 2**30:.1f} GiB as float32), over "
                    f"the limit max_voxels={self.max_voxels:,}. A wrong spacing in the header? Fix the file, or raise "
                    "--max_voxels if the volume really is that large."
                )

    def __call__(self, data, lazy=None):
        d = dict(data)
        self._check(d)
        aside = {
            k: d.pop(k)
            for k in list(d)
            if isinstance(k, str) and any(k.startswith(f"{key}_") for key in self.keys) and not isinstance(d[k], dict)
        }
        out = super().__call__(d, lazy=lazy)
        out.update(aside)
        return out
