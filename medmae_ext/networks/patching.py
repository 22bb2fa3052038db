"""Patch bookkeeping shared by the MAE networks, the loss and the handlers.

Patch order is the order of ``monai.networks.blocks.PatchEmbeddingBlock`` (a strided convolution flattened
row-major over the patch grid), so patch ``i`` of :func:`patchify` is token ``i`` of the encoder.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "patchify",
    "unpatchify",
    "patch_weights",
    "grid_shape",
    "gather_patches",
    "scatter_patches",
    "quiet_meshgrid",
]


def grid_shape(spatial_shape: Sequence[int], patch_size: Sequence[int]) -> tuple[int, ...]:
    if len(spatial_shape) != len(patch_size):
        raise ValueError(f"image has {len(spatial_shape)} spatial dims but patch_size has {len(patch_size)}.")
    if any(int(p) < 1 for p in patch_size) or any(int(s) < 1 for s in spatial_shape):
        raise ValueError(
            f"patch_size {tuple(patch_size)} and image size {tuple(spatial_shape)} must be positive "
            "(config ids 'patch_size' / 'img_size')."
        )
    for i, (s, p) in enumerate(zip(spatial_shape, patch_size, strict=False)):
        if s % p:
            raise ValueError(
                f"image size {tuple(spatial_shape)} is not divisible by patch_size {tuple(patch_size)} "
                f"(spatial dim {i}: {s} % {p} = {s % p})."
            )
    return tuple(s // p for s, p in zip(spatial_shape, patch_size, strict=False))


def patchify(x: torch.Tensor, patch_size: Sequence[int]) -> torch.Tensor:
    """``[B, C, *spatial]`` -> ``[B, N, prod(patch_size) * C]`` (voxels of a patch first, then channels)."""
    b, c = x.shape[:2]
    nd = x.ndim - 2
    grid = grid_shape(x.shape[2:], patch_size)
    shape = [b, c]
    for g, p in zip(grid, patch_size, strict=False):
        shape += [g, p]
    perm = [0] + [2 + 2 * i for i in range(nd)] + [3 + 2 * i for i in range(nd)] + [1]
    return x.reshape(shape).permute(perm).reshape(b, math.prod(grid), math.prod(patch_size) * c)


def gather_patches(x: torch.Tensor, patch_size: Sequence[int], index: torch.Tensor) -> torch.Tensor:
    """``patchify(x, patch_size)[b, index[b, k]]`` -> ``[B, K, prod(patch_size) * C]``.

    One rearranging copy of the image, then whole patches picked as contiguous rows (``index_select``): on the CPU
    about twice as fast as ``torch.gather`` with an index expanded over the voxels, or advanced indexing of the
    un-copied view."""
    patches = patchify(x, patch_size)
    b, n, p = patches.shape
    rows = (torch.arange(b, device=index.device).unsqueeze(1) * n + index).reshape(-1)
    return patches.reshape(b * n, p).index_select(0, rows).reshape(b, index.shape[1], p)


def unpatchify(p: torch.Tensor, patch_size: Sequence[int], grid: Sequence[int], channels: int) -> torch.Tensor:
    """Inverse of :func:`patchify`: ``[B, N, prod(patch_size) * C]`` -> ``[B, C, *spatial]``."""
    b = p.shape[0]
    nd = len(grid)
    x = p.reshape([b, *grid, *patch_size, channels])
    # dims now: 0 B, 1..nd grid, nd+1..2nd patch, 2nd+1 C  ->  B, C, g0, p0, g1, p1, ...
    perm = [0, 2 * nd + 1]
    for i in range(nd):
        perm += [1 + i, 1 + nd + i]
    return x.permute(perm).reshape([b, channels, *[g * q for g, q in zip(grid, patch_size, strict=False)]])


def patch_weights(attn_map: torch.Tensor, patch_size: Sequence[int]) -> torch.Tensor:
    """Average an image-resolution map ``[B, 1, *spatial]`` over each patch -> ``[B, N]`` (token order)."""
    pool = F.avg_pool2d if attn_map.ndim == 4 else F.avg_pool3d
    return pool(attn_map.float(), kernel_size=tuple(patch_size)).flatten(1)


def scatter_patches(values: torch.Tensor, index: torch.Tensor, num_patches: int) -> torch.Tensor:
    """``[B, K, P]`` values of the patches ``index`` ``[B, K]`` -> ``[B, num_patches, P]``, zeros elsewhere."""
    out = values.new_zeros(values.shape[0], num_patches, values.shape[-1])
    return out.scatter(1, index.unsqueeze(-1).expand(-1, -1, values.shape[-1]), values)


@contextlib.contextmanager
def quiet_meshgrid():
    """MONAI's sin-cos position embedding (``build_sincos_position_embedding``) calls ``torch.meshgrid`` without
    ``indexing=`` (its result is the same as ``"ij"``), and torch warns at every network built: silenced here, for
    that warning only."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"torch\.meshgrid: in an upcoming release", category=UserWarning)
        yield
