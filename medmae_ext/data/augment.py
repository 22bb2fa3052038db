"""Random augmentation of a whole batch on the training device: random resized crop and flips, 2D and 3D.

MONAI's per-item chain (``RandScaleCropd`` -> ``Resized`` -> ``RandFlipd``) cost 2-3 ms of CPU per image at every
size and ran in series with the training step; on a GPU it capped a run at a few hundred images/s per core.
:class:`BatchAugment` draws the same things -- per image and per axis an integer crop size uniform in
``[ceil(lo * S), ceil(hi * S)]``, an integer start uniform in ``[0, S - size]``, a flip per listed axis with
probability ``flip_prob`` -- and applies them to the batch on the device where it already is: on a GPU in one
``affine_grid`` + ``grid_sample`` call, on the CPU one ``interpolate`` call per image (faster there). Every key in
``keys`` gets the same crops and flips, so an MSMAE attention map stays aligned with its image exactly (the map is
resampled as the image is).

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
        erase_prob: random erasing (after the crop and flips, of the first key only; MAE's fine-tuning recipe uses
            0.25): the probability that an image gets one box of noise, drawn from the image's own mean and
            standard deviation. The box covers ``erase_area`` of the image; its first two sides have the ratio
            ``exp(U(log erase_aspect))`` (timm's ``RandomErasing``; 3D: the third side is the box's mean side).
        rand_augment: a :class:`~medmae_ext.data.randaugment.RandAugment` applied after the crop and flips and
            before random erasing (timm's order), or None.
    """

    def __init__(
        self,
        keys: Sequence[str] = ("image", "attn"),
        crop_scale: Sequence[float] | None = (0.6, 1.0),
        flip_prob: float = 0.5,
        flip_axes: Sequence[int] = (0,),
        mode: str = "bilinear",
        erase_prob: float = 0.0,
        erase_area: Sequence[float] = (0.02, 1 / 3),
        erase_aspect: Sequence[float] = (0.3, 3.3),
        rand_augment=None,
    ) -> None:
        self.keys = [keys] if isinstance(keys, str) else list(keys)
        if crop_scale is not None:
            lo, hi = (float(v) for v in crop_scale)
            if not 0 < lo <= hi <= 1:
                raise InputError(
                    f"config id 'augmentation#crop_scale' must be [lo, hi] with 0 < lo <= hi <= 1, got {list(crop_scale)}"
                )
            crop_scale = (lo, hi)
        for name, p in (
            ("config id 'augmentation#flip_prob'", flip_prob),
            ("config id 'random_erasing' ('augmentation#erase_prob')", erase_prob),
        ):
            if not 0 <= float(p) <= 1:
                raise InputError(f"{name} must be in [0, 1], got {p}")
        self.erase_prob = float(erase_prob)
        self.erase_area = tuple(float(v) for v in erase_area)
        self.erase_aspect = tuple(float(v) for v in erase_aspect)
        self.crop_scale = crop_scale
        self.flip_prob = float(flip_prob)
        self.flip_axes = [int(a) for a in flip_axes]
        self.mode = mode
        self.rand_augment = rand_augment

    def draw(self, n: int, spatial: Sequence[int]) -> AugmentDraw:
        """The random part, from torch's global CPU generator."""
        d = len(spatial)
        if any(a < 0 or a >= d for a in self.flip_axes):
            raise InputError(f"config id 'augmentation#flip_axes' {self.flip_axes} does not fit a {d}D image")
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

        The map is axis-aligned, so each axis's source coordinates are one row per image (``affine_grid``'s, built
        separably), clamped to the crop's first and last pixel centres, which is what ``interpolate`` does at the
        border of the cropped image."""
        n, d = draw.sizes.shape
        axes = []
        for a, s in enumerate(spatial):
            size, start = draw.sizes[:, a : a + 1].double(), draw.starts[:, a : a + 1].double()
            u = (2 * torch.arange(s, dtype=torch.float64) + 1) / s - 1  # output pixel centres, normalised
            u = torch.where(draw.flips[:, a : a + 1], -u, u)
            src = size / s * u + (2 * start + size) / s - 1
            src = torch.minimum(torch.maximum(src, (2 * start + 1) / s - 1), (2 * (start + size) - 1) / s - 1)
            shape = [n] + [1] * d
            shape[a + 1] = s
            axes.append(src.to(device=device, dtype=dtype).view(shape).expand(n, *spatial))
        return torch.stack(axes[::-1], dim=-1)  # grid_sample's last dim lists the axes last first

    #: on the CPU, 2D images of at least this many pixels are resized one by one (:meth:`on_each_image`)
    EACH_IMAGE_FROM = 96 * 96

    def on_each_image(self, x: torch.Tensor) -> bool:
        """Whether the crops are resized image by image with ``interpolate`` itself instead of through one grid: on
        the CPU for volumes and for images from :attr:`EACH_IMAGE_FROM` pixels, where building the grid and
        ``grid_sample`` cost more than one call per image (one core, batch of 32: 10.7 against 4.5 ms at 224 px,
        equal at 96 px, 0.3 against 1.0 ms at 28 px; 4 volumes of 96^3: 120 against 22 ms). A GPU does the batch in
        one ``grid_sample``. The two agree to 1e-5 (tested)."""
        if x.device.type != "cpu" or self.mode != "bilinear":
            return False
        return x.ndim == 5 or x.shape[2:].numel() >= self.EACH_IMAGE_FROM

    def apply(self, x: torch.Tensor, draw: AugmentDraw, grid: torch.Tensor | None, inplace: bool = False):
        """``x`` cropped, resized and flipped as ``draw`` says: through ``grid`` (:meth:`grid`), or with ``grid``
        None each crop resized by ``interpolate`` (:meth:`on_each_image`); with no crop, flipped only."""
        if self.crop_scale is None:  # flips only: exact, and only the images drawn to flip are touched
            flipped = [i for i in range(x.shape[0]) if draw.flips[i].any()]
            if not flipped:
                return x
            out = x if inplace else x.clone()
            for i in flipped:
                out[i] = x[i].flip([a + 1 for a in range(x.ndim - 2) if draw.flips[i, a]])
            return out
        if grid is None:
            x = x if x.is_floating_point() else x.to(torch.float32)
            out = torch.empty_like(x, memory_format=torch.contiguous_format)
            spatial, mode = tuple(x.shape[2:]), "bilinear" if x.ndim == 4 else "trilinear"
            for i in range(x.shape[0]):
                box = tuple(
                    slice(a, a + s) for a, s in zip(draw.starts[i].tolist(), draw.sizes[i].tolist(), strict=True)
                )
                crop = F.interpolate(
                    x[(slice(i, i + 1), slice(None)) + box], size=spatial, mode=mode, align_corners=False
                )
                dims = [a + 2 for a in range(len(spatial)) if draw.flips[i, a]]
                out[i : i + 1] = crop.flip(dims) if dims else crop
            return out
        return F.grid_sample(x.to(grid.dtype), grid, mode=self.mode, padding_mode="border", align_corners=False)

    def __call__(self, batch: dict, inplace: bool = False) -> dict:
        """The augmented batch. ``inplace``: flips may overwrite the batch's own tensors (the trainer's handler: a
        collated batch belongs to its iteration); a crop always writes new ones."""
        first = self.keys[0]
        if first not in batch:
            raise KeyError(f"batch augmentation: the batch has no {first!r} (keys: {sorted(batch)})")
        x = batch[first]
        n, spatial = x.shape[0], tuple(x.shape[2:])
        draw = self.draw(n, spatial)
        grid = None if self.crop_scale is None or self.on_each_image(x) else self.grid(draw, spatial, x.device)
        out = dict(batch)
        for k in self.keys:
            if k in batch:
                if tuple(batch[k].shape[2:]) != spatial:
                    raise ValueError(
                        f"batch augmentation: {k!r} has spatial shape {tuple(batch[k].shape[2:])}, "
                        f"{first!r} has {spatial}: they must match to move together"
                    )
                out[k] = self.apply(batch[k], draw, grid, inplace)
        if self.rand_augment is not None:
            out = self.rand_augment(out)
        if self.erase_prob:  # in place where the tensor is already a new one (a crop or a flip wrote it)
            out[first] = self.erase(out[first], inplace=inplace or out[first] is not batch[first])
        return out

    def erase_box(self, spatial: Sequence[int]) -> tuple[slice, ...] | None:
        """One random-erasing box (10 tries to fit, as timm), or None."""
        total = math.prod(spatial)
        for _ in range(10):
            area = total * float(torch.empty(()).uniform_(*self.erase_area))
            t = float(torch.empty(()).uniform_(math.log(self.erase_aspect[0]), math.log(self.erase_aspect[1])))
            logs = [t / 2, -t / 2] + [0.0] * (len(spatial) - 2)
            sides = [int(round(area ** (1 / len(spatial)) * math.exp(v))) for v in logs]
            if all(0 < n < s for n, s in zip(sides, spatial, strict=True)):
                starts = [int(torch.randint(0, s - n + 1, ())) for n, s in zip(sides, spatial, strict=True)]
                return tuple(slice(a, a + n) for a, n in zip(starts, sides, strict=True))
        return None

    def erase(self, x: torch.Tensor, inplace: bool = False) -> torch.Tensor:
        out = x if inplace else x.clone()
        for i in range(x.shape[0]):
            if float(torch.rand(())) >= self.erase_prob:
                continue
            box = self.erase_box(tuple(x.shape[2:]))
            if box is not None:
                where = (i, slice(None)) + box
                noise = torch.randn(out[where].shape).to(x.device, x.dtype)
                out[where] = noise * x[i].std() + x[i].mean()
        return out


class AugmentOnDevice:
    """Trainer handler: move the batch's keys that ``augment`` touches to ``device`` and apply it there, between the
    DataLoader and the iteration (``GET_BATCH_COMPLETED``). ``augment``: one augmentation or a list applied in order
    (:class:`BatchAugment`, then :class:`~medmae_ext.data.mixing.MixCut`); ``None`` entries are skipped, and with
    none left the handler does nothing."""

    def __init__(self, augment, device, non_blocking: bool = True) -> None:
        steps = augment if isinstance(augment, (list, tuple)) else [augment]
        self.steps = [s for s in steps if s is not None]
        self.device = torch.device(device)
        self.non_blocking = non_blocking

    def attach(self, engine: Engine) -> None:
        if self.steps:
            engine.add_event_handler(Events.GET_BATCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        batch = dict(engine.state.batch)
        for k in {key for step in self.steps for key in step.keys}:
            if isinstance(batch.get(k), torch.Tensor):
                batch[k] = batch[k].to(self.device, non_blocking=self.non_blocking)
        for step in self.steps:
            batch = step(batch, inplace=True)
        engine.state.batch = batch
