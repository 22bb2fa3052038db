"""RandAugment of a 2D batch on the training device, per image (the MAE fine-tuning recipe's ``rand-m9-mstd0.5-inc1``,
timm's ``RandAugment`` after Cubuk et al. 2019, for single-channel medical images).

Per image, ``num_ops`` rounds; in each round the image draws one operation uniformly from ``ops`` (with replacement)
and applies it with probability ``prob`` at a magnitude ``m ~ N(magnitude, magnitude_std)`` clipped to ``[0, 10]``.
The operations and their scales are timm's "increasing" ones, written for float images: every intensity operation
works on the image's own range ``[lo, hi]`` (its minimum and maximum when the round starts; 0 and 1 for an X-ray the
preprocessing min-max scaled, a CT window's 0 and 1 when the window is filled) where timm's work on ``[0, 255]``:

========================  =========================================================================================
``rotate``                ``30 m / 10`` degrees about the centre, either sign
``shear_x``, ``shear_y``  shear ``0.3 m / 10`` about the centre, either sign
``translate_x/_y``        ``0.45 m / 10`` of the side, either sign
``brightness``            ``lo + (x - lo) f``, ``f = 1 +- 0.9 m / 10`` (PIL's blend with black)
``contrast``              ``mean + (x - mean) f`` (PIL's blend with the mean grey)
``sharpness``             ``blur + (x - blur) f`` with PIL's 3x3 smoothing kernel, border pixels kept
``equalize``              PIL's histogram equalisation over 256 levels of ``[lo, hi]``
``posterize``             ``4 - int(4 m / 10)`` bits of ``[lo, hi]`` kept
``solarize``              values above ``hi - (hi - lo) m / 10`` inverted
``solarize_add``          ``(hi - lo) 110 m / 2550`` added below the middle of the range
``invert``                ``hi + lo - x``
========================  =========================================================================================

Every result is clipped to ``[lo, hi]``. Geometric operations resample bilinearly and fill what comes from outside
the image with the image's mean (timm fills with the dataset's mean colour); they move every key in ``keys`` with
the same grid, so an MSMAE attention map stays aligned (filled with 0: no attention outside the image). Intensity
operations touch the first key only. Left out of timm's list: ``Color`` (no colour in a grey image) and
``AutoContrast`` (the preprocessing already scales each image to its range). 2D only: a 3D batch is refused when
the config is read.

Draws come from torch's global CPU generator (seeded per epoch by
:class:`~medmae_ext.training.seeding.EpochSeeder`). Applied by :class:`~medmae_ext.data.augment.BatchAugment` after
its crop and flips and before random erasing, as timm orders them. Config ids ``rand_augment`` (operations per image,
0 = off) and ``rand_augment_magnitude`` of vit_classification.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..errors import InputError

__all__ = ["GEOMETRIC_OPS", "INTENSITY_OPS", "RandAugment", "rand_augment"]

GEOMETRIC_OPS = ("rotate", "shear_x", "shear_y", "translate_x", "translate_y")
INTENSITY_OPS = (
    "brightness",
    "contrast",
    "sharpness",
    "equalize",
    "posterize",
    "solarize",
    "solarize_add",
    "invert",
)
#: operations that take a random sign (timm's ``_randomly_negate``)
SIGNED_OPS = GEOMETRIC_OPS + ("brightness", "contrast", "sharpness")


class RandAugment:
    """Per-image RandAugment of ``batch[keys[0]]`` (``[n, c, h, w]``), geometric operations on every key (module doc).

    Args:
        num_ops: operations drawn per image (timm's ``n``; the MAE recipe uses 2).
        magnitude: mean magnitude on timm's 0-10 scale (the MAE recipe: 9).
        magnitude_std: standard deviation of the magnitude per application (the MAE recipe: 0.5).
        prob: probability that a drawn operation is applied (timm: 0.5).
        ops: the operations to draw from (default: all of :data:`GEOMETRIC_OPS` and :data:`INTENSITY_OPS`).
        keys: the image, then maps that move with it (MSMAE's ``attn``).
        spatial_dims: 2 (a 3D batch is refused).
    """

    def __init__(
        self,
        num_ops: int = 2,
        magnitude: float = 9.0,
        magnitude_std: float = 0.5,
        prob: float = 0.5,
        ops: Sequence[str] | None = None,
        keys: Sequence[str] = ("image", "attn"),
        spatial_dims: int = 2,
    ) -> None:
        if int(num_ops) != num_ops or num_ops < 0:
            raise InputError(f"config id 'rand_augment' (operations per image) must be an integer >= 0, got {num_ops}")
        if not 0 <= float(magnitude) <= 10:
            raise InputError(f"config id 'rand_augment_magnitude' must be in [0, 10] (timm's scale), got {magnitude}")
        if float(magnitude_std) < 0 or not 0 <= float(prob) <= 1:
            raise InputError(f"RandAugment: magnitude_std must be >= 0 and prob in [0, 1], got {magnitude_std}, {prob}")
        if num_ops and int(spatial_dims) != 2:
            raise InputError(
                f"config id 'rand_augment' is for 2D images; this run is {spatial_dims}D (set --rand_augment 0)"
            )
        self.ops = list(ops) if ops is not None else list(GEOMETRIC_OPS + INTENSITY_OPS)
        unknown = [o for o in self.ops if o not in GEOMETRIC_OPS + INTENSITY_OPS]
        if unknown or not self.ops:
            raise InputError(f"RandAugment ops: unknown {unknown}; choose from {list(GEOMETRIC_OPS + INTENSITY_OPS)}")
        # per operation index: takes a random sign / moves the image (looked up per image in each round)
        self._signed = torch.tensor([name in SIGNED_OPS for name in self.ops])
        self._geometric = torch.tensor([name in GEOMETRIC_OPS for name in self.ops])
        self.num_ops, self.magnitude, self.magnitude_std = int(num_ops), float(magnitude), float(magnitude_std)
        self.prob = float(prob)
        self.keys = [keys] if isinstance(keys, str) else list(keys)

    def draw(self, n: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Per round: the operation index per image (-1: not applied), its magnitude, its sign."""
        rounds = []
        for _ in range(self.num_ops):
            op = torch.randint(len(self.ops), (n,))
            applied = torch.rand(n) < self.prob
            m = (self.magnitude + self.magnitude_std * torch.randn(n)).clamp(0, 10)
            sign = torch.where(torch.rand(n) < 0.5, -1.0, 1.0)
            rounds.append((torch.where(applied, op, -1), m, sign))
        return rounds

    def __call__(self, batch: dict, inplace: bool = False) -> dict:
        first = self.keys[0]
        x = batch[first]
        if x.ndim != 4:
            raise InputError(f"config id 'rand_augment' is for 2D batches [n, c, h, w], got shape {tuple(x.shape)}")
        out = dict(batch)
        for op, m, sign in self.draw(x.shape[0]):
            out = self.round(out, op, m, sign)
        return out

    def round(self, batch: dict, op: torch.Tensor, m: torch.Tensor, sign: torch.Tensor) -> dict:
        """One round: each image's drawn operation (module doc)."""
        first = self.keys[0]
        x = batch[first]
        out = dict(batch)
        flat = x.flatten(1)
        lo, hi = flat.amin(1), flat.amax(1)
        drawn = op.clamp_min(0)  # -1 (not applied) looks up operation 0; those images are left out below
        level = (m / 10 * torch.where(self._signed[drawn], sign, 1.0)).to(x.device, torch.float64)
        geo = (op >= 0) & self._geometric[drawn]
        if geo.any():
            idx = geo.nonzero().flatten().to(x.device)
            names = [self.ops[int(o)] for o in op[geo]]
            grid = self.grid(names, level[idx], tuple(x.shape[2:]), x.device)
            for k in self.keys:
                if isinstance(batch.get(k), torch.Tensor):
                    fill = x[idx].mean(dim=tuple(range(1, x.ndim)), keepdim=True) if k == first else 0.0
                    out[k] = self.resample(batch[k], idx, grid, fill)
        y = out[first]
        for j, name in enumerate(self.ops):
            if name not in INTENSITY_OPS:
                continue
            idx = (op == j).nonzero().flatten().to(x.device)
            if len(idx):
                shape = (-1,) + (1,) * (x.ndim - 1)
                a, b = lo[idx].view(shape), hi[idx].view(shape)
                v = getattr(self, name)(y[idx].float(), a, b, level[idx].view(shape).float())
                y = y.clone() if y is x else y
                y[idx] = torch.minimum(torch.maximum(v, a), b).to(y.dtype)
        out[first] = y
        return out

    # geometric ----------------------------------------------------------------------------------------------------

    @staticmethod
    def grid(names: Sequence[str], level: torch.Tensor, spatial: Sequence[int], device) -> torch.Tensor:
        """``affine_grid`` of each image's operation: output pixel -> input pixel, about the image centre, in pixel
        units (so a rotation stays a rotation on a non-square image)."""
        h, w = spatial
        n = len(names)
        a = torch.eye(3, dtype=torch.float64).repeat(n, 1, 1)
        for i, name in enumerate(names):
            v = float(level[i])
            if name == "rotate":
                t = math.radians(30 * v)
                a[i, :2, :2] = torch.tensor([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
            elif name == "shear_x":
                a[i, 0, 1] = 0.3 * v
            elif name == "shear_y":
                a[i, 1, 0] = 0.3 * v
            elif name == "translate_x":
                a[i, 0, 2] = 0.45 * v * w
            elif name == "translate_y":
                a[i, 1, 2] = 0.45 * v * h
        # affine_grid's coordinates are (x along w, y along h) in [-1, 1]; pixel units are half a side per unit
        d = torch.diag(torch.tensor([w / 2, h / 2, 1.0], dtype=torch.float64))
        theta = torch.linalg.inv(d) @ a @ d
        return F.affine_grid(theta[:, :2].float().to(device), [n, 1, h, w], align_corners=False)

    @staticmethod
    def resample(x: torch.Tensor, idx: torch.Tensor, grid: torch.Tensor, fill) -> torch.Tensor:
        sel = x[idx].float()
        moved = F.grid_sample(sel, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        inside = F.grid_sample(torch.ones_like(sel[:, :1]), grid, mode="bilinear", align_corners=False)
        out = x.clone()
        out[idx] = (moved + (1 - inside) * fill).to(x.dtype)
        return out

    # intensity: x [k, c, h, w], lo / hi / level [k, 1, 1, 1] ----------------------------------------------------

    @staticmethod
    def brightness(x, lo, hi, level):
        return lo + (x - lo) * (1 + 0.9 * level)

    @staticmethod
    def contrast(x, lo, hi, level):
        mean = x.mean(dim=tuple(range(1, x.ndim)), keepdim=True)
        return mean + (x - mean) * (1 + 0.9 * level)

    @staticmethod
    def sharpness(x, lo, hi, level):
        kernel = torch.tensor([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]], device=x.device) / 13
        c = x.shape[1]
        blur = F.conv2d(x, kernel.expand(c, 1, 3, 3), groups=c)
        degenerate = x.clone()
        degenerate[:, :, 1:-1, 1:-1] = blur
        return degenerate + (x - degenerate) * (1 + 0.9 * level)

    @staticmethod
    def _levels(x, lo, hi):
        """``x`` on 256 integer levels of ``[lo, hi]`` (as timm's 8-bit images)."""
        return ((x - lo) / (hi - lo).clamp_min(1e-12) * 255).round().clamp(0, 255)

    @classmethod
    def equalize(cls, x, lo, hi, level):
        """PIL's ``ImageOps.equalize`` on 256 levels of ``[lo, hi]``: level ``i`` -> ``(step // 2 + count below i) //
        step`` with ``step = (count - count of the top level present) // 255``; an image it cannot spread is kept."""
        q = cls._levels(x, lo, hi).long().flatten(1)
        hist = torch.zeros(q.shape[0], 256, device=x.device, dtype=torch.long).scatter_add_(1, q, torch.ones_like(q))
        top = 255 - (hist.flip(1) > 0).long().argmax(1, keepdim=True)
        step = (q.shape[1] - hist.gather(1, top)) // 255
        below = hist.cumsum(1) - hist
        lut = torch.div(step // 2 + below, step.clamp_min(1), rounding_mode="floor").clamp(max=255)
        lut = torch.where(step > 0, lut, torch.arange(256, device=x.device).expand_as(lut))
        return lo + lut.gather(1, q).view_as(x).to(x.dtype) / 255 * (hi - lo)

    @classmethod
    def posterize(cls, x, lo, hi, level):
        bits = 4 - (4 * level.abs()).floor()  # timm's posterize-increasing: 4 bits at magnitude 0, 0 at 10
        step = 2 ** (8 - bits)
        return lo + torch.floor(cls._levels(x, lo, hi) / step) * step / 255 * (hi - lo)

    @staticmethod
    def solarize(x, lo, hi, level):
        threshold = hi - (hi - lo) * level.abs()
        return torch.where(x >= threshold, hi + lo - x, x)

    @staticmethod
    def solarize_add(x, lo, hi, level):
        return torch.where(x < (lo + hi) / 2, x + (hi - lo) * 110 / 255 * level.abs(), x)

    @staticmethod
    def invert(x, lo, hi, level):
        return hi + lo - x


def rand_augment(
    num_ops: int = 0,
    magnitude: float = 9.0,
    keys: Sequence[str] = ("image", "attn"),
    spatial_dims: int = 2,
    **kwargs,
) -> RandAugment | None:
    """The config's ``rand_augmentation``: a :class:`RandAugment`, or None when ``num_ops`` is 0 (the default)."""
    aug = RandAugment(num_ops, magnitude, keys=keys, spatial_dims=spatial_dims, **kwargs)  # checks the values
    return aug if aug.num_ops else None
