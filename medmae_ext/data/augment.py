"""Random augmentation of a whole batch on the training device: random resized crop and flips, 2D and 3D.

MONAI's per-item chain (``RandScaleCropd`` -> ``Resized`` -> ``RandFlipd``) cost 2-3 ms of CPU per image at every
size and ran in series with the training step; on a GPU it capped a run at a few hundred images/s per core.
:class:`BatchAugment` draws the same things -- per image and per axis an integer crop size uniform in
``[ceil(lo * S), ceil(hi * S)]``, an integer start uniform in ``[0, S - size]``, a flip per listed axis with
probability ``flip_prob`` -- and applies them to the batch in one ``affine_grid`` + ``grid_sample`` call on the
device where the batch already is. Every key in ``keys`` gets the same grid, so an MSMAE attention map stays aligned
with its image exactly (the map is resampled as the image is).

The crop is resized with bilinear (trilinear) interpolation, exactly as ``torch.nn.functional.interpolate(crop,
mode="bilinear", align_corners=False)`` resizes it (the tests compare them pixel for pixel); MONAI's ``Resized`` used
``area``. With no crop (``crop_scale=None``), flips are exact ``torch.flip``.

The draws come from torch's global generator on the CPU, which :class:`~medmae_ext.training.seeding.EpochSeeder`
seeds every epoch: a resumed run draws the same crops, and DataLoader workers no longer change them.
:class:`AugmentOnDevice` applies it to the trainer's batch (ignite's ``GET_BATCH_COMPLETED``), so MONAI's stock
``SupervisedTrainer`` and its ``prepare_batch`` stay as they are, and evaluators never see it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from ignite.engine import Engine, Events

from ..errors import InputError

__all__ = ["BatchAugment", "AugmentDraw", "AugmentOnDevice"]


@dataclass
class AugmentDraw:
    """One batch's random draw: per image and spatial axis (in the tensor's axis order) crop size, start, flip."""

    sizes: torch.Tensor  # [n, d] long
    starts: torch.Tensor  # [n, d] long
    flips: torch.Tensor  # [n, d] bool


class BatchAugment:
    """Random resized crop + flips of a channel-first batch ``[n, c, *spatial]`` (module doc).

    Args:
        keys: batch keys that get the augmentation (the first one must be present; the others when present, e.g.
            MSMAE's ``attn``).
        crop_scale: ``(lo, hi)`` fraction of each spatial size kept by the crop, drawn per axis (MONAI's
            ``RandScaleCropd(roi_scale=lo, max_roi_scale=hi, random_size=True)``); ``None``: no crop.
        flip_prob: probability of each flip.
        flip_axes: spatial axes (0-based, as MONAI's ``spatial_axis``) that may be flipped.
        mode: ``grid_sample`` interpolation of the resized crop.
    """

    def __init__(
        self,
        keys: Sequence[str] = ("image", "attn"),
        crop_scale: Sequence[float] | None = (0.6, 1.0),
        flip_prob: float = 0.5,
        flip_axes: Sequence[int] = (0,),
        mode: str = "bilinear",
    ) -> None:
        self.keys = [keys] if isinstance(keys, str) else list(keys)
        if crop_scale is not None:
            lo, hi = (float(v) for v in crop_scale)
            if not 0 < lo <= hi <= 1:
                raise InputError(f"crop_scale must satisfy 0 < lo <= hi <= 1, got {list(crop_scale)}")
            crop_scale = (lo, hi)
        if not 0 <= float(flip_prob) <= 1:
            raise InputError(f"flip_prob must be in [0, 1], got {flip_prob}")
        self.crop_scale = crop_scale
        self.flip_prob = float(flip_prob)
        self.flip_axes = [int(a) for a in flip_axes]
        self.mode = mode

    def draw(self, n: int, spatial: Sequence[int]) -> AugmentDraw:
        """The random part, from torch's global CPU generator."""
        d = len(spatial)
        if any(a < 0 or a >= d for a in self.flip_axes):
            raise InputError(f"flip_axes {self.flip_axes} do not fit a {d}D image")
        size = torch.tensor([int(s) for s in spatial])
        if self.crop_scale is None:
            sizes, starts = size.expand(n, d).clone(), torch.zeros(n, d, dtype=torch.long)
        else:  # MONAI's RandScaleCrop: ceil of the scaled size, then an integer uniform in [low, high]
            low = torch.tensor([math.ceil(self.crop_scale[0] * s) for s in spatial])
            high = torch.tensor([min(math.ceil(self.crop_scale[1] * s), s) for s in spatial])
            sizes = low + (torch.rand(n, d) * (high - low + 1)).long()
            starts = (torch.rand(n, d) * (size - sizes + 1)).long()
        flips = torch.zeros(n, d, dtype=torch.bool)
        for a in self.flip_axes:
            flips[:, a] = torch.rand(n) < self.flip_prob
        return AugmentDraw(sizes, starts, flips)

    def grid(self, draw: AugmentDraw, spatial: Sequence[int], device, dtype=torch.float32) -> torch.Tensor:
        """``grid_sample`` grid ``[n, *spatial, d]`` that crops, resizes to ``spatial`` and flips.

        The source coordinates are clamped to the crop's first and last pixel centres, which is what
        ``interpolate`` does at the border of the cropped image."""
        n, d = draw.sizes.shape
        size = torch.tensor([float(s) for s in spatial])
        sizes, starts = draw.sizes.double(), draw.starts.double()
        scale = sizes / size * torch.where(draw.flips, -1.0, 1.0)
        centre = (2 * starts + sizes) / size - 1
        lo = (2 * starts + 1) / size - 1
        hi = (2 * (starts + sizes) - 1) / size - 1
        theta = torch.zeros(n, d, d + 1, dtype=torch.float64)
        for j in range(d):  # affine_grid's coordinate j is the tensor's spatial axis d - 1 - j
            theta[:, j, j] = scale[:, d - 1 - j]
            theta[:, j, d] = centre[:, d - 1 - j]
        g = F.affine_grid(theta, [n, 1, *spatial], align_corners=False)
        view = (n,) + (1,) * d + (d,)
        g = torch.maximum(torch.minimum(g, hi.flip(1).view(view)), lo.flip(1).view(view))
        return g.to(device=device, dtype=dtype)

    def apply(self, x: torch.Tensor, draw: AugmentDraw, grid: torch.Tensor | None) -> torch.Tensor:
        if grid is None:  # flips only: exact
            d = x.ndim - 2
            for a in self.flip_axes:
                m = draw.flips[:, a].to(x.device).view((-1,) + (1,) * (d + 1))
                x = torch.where(m, x.flip(a + 2), x)
            return x
        return F.grid_sample(x.to(grid.dtype), grid, mode=self.mode, padding_mode="border", align_corners=False)

    def __call__(self, batch: dict) -> dict:
        first = self.keys[0]
        if first not in batch:
            raise KeyError(f"batch augmentation: the batch has no {first!r} (keys: {sorted(batch)})")
        x = batch[first]
        n, spatial = x.shape[0], tuple(x.shape[2:])
        draw = self.draw(n, spatial)
        grid = None if self.crop_scale is None else self.grid(draw, spatial, x.device)
        out = dict(batch)
        for k in self.keys:
            if k in batch:
                if tuple(batch[k].shape[2:]) != spatial:
                    raise ValueError(f"batch augmentation: {k!r} has spatial shape {tuple(batch[k].shape[2:])}, "
                                     f"{first!r} has {spatial}: they must match to move together")
                out[k] = self.apply(batch[k], draw, grid)
        return out


class AugmentOnDevice:
    """Trainer handler: move the batch's ``augment.keys`` to ``device`` and apply ``augment`` there, between the
    DataLoader and the iteration (``GET_BATCH_COMPLETED``). ``augment=None`` disables it."""

    def __init__(self, augment: BatchAugment | None, device, non_blocking: bool = True) -> None:
        self.augment = augment
        self.device = torch.device(device)
        self.non_blocking = non_blocking

    def attach(self, engine: Engine) -> None:
        if self.augment is not None:
            engine.add_event_handler(Events.GET_BATCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        batch = dict(engine.state.batch)
        for k in self.augment.keys:
            if isinstance(batch.get(k), torch.Tensor):
                batch[k] = batch[k].to(self.device, non_blocking=self.non_blocking)
        engine.state.batch = self.augment(batch)
