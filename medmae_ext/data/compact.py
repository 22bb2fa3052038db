"""Cache entries in one byte a voxel where that gives the same floats back.

The deterministic preprocessing ends in float32 (the intensity step scales to [0, 1]), so a memory or disk cache
held 4 bytes per voxel of images that were read as 1 byte (PNG, JPEG, MedMNIST): 4.0x the uint8 image. When an
image's float values lie on a lattice of at most 256 levels -- ``value = lo + k * step``, which is what a min-max
or window scaling of uint8 pixels gives, and what a label map is -- :class:`Compactd` stores the level ``k`` as
uint8 plus ``(lo, step)``, and :class:`Expandd` gives the float32 image back when the item is read (to within
``1e-6`` of the value range, checked for each image when it is stored; an image that would not come back within it
stays float32). A resize or resampling between reading and caching leaves values off any lattice: those images
stay float32 (store the images at the training size to get the 1-byte cache), unless the cache is asked to quantize.

``Compactd(quantize=True)`` (config id ``cache_quantize`` of the training configs): an image off any such lattice is
stored as the nearest of 256 evenly spaced levels over its own range (:func:`quantized_code`), so it comes back off
by half a level at most -- ``(max - min) / 510``, the rounding an 8-bit source image already carries. For sets whose
images are resized when read and do not fit in RAM as float32 (ChestX-ray14's 1024^2 PNGs at 224 px: 5.6 GB instead
of 22.5 GB). Off by default: the training images are then exactly the images inference sees.

Where an item already holds its image as a uint8 array (the MedMNIST ``.npz`` reader: views into the file's one
array) and the stored levels are those pixels, :func:`source_codes` makes the cache entry a view of that array instead
of a second copy of the same bytes: the pixels are in memory once, for the reader and the cache together.

:func:`medmae_ext.data.caching.cached_dataset` puts the pair at the boundary of its memory or disk cache, so every
bundle's cache holds what it can in one byte and every transform after the cache sees float32 as before.
"""

from __future__ import annotations

import numpy as np
import torch
from monai.transforms import Transform
from monai.transforms.traits import RandomizableTrait

__all__ = ["Compactd", "Expandd", "lattice_code", "quantized_code", "expand", "source_codes", "like", "TOLERANCE"]

#: largest difference between an image and its stored form, as a fraction of the image's value range
TOLERANCE = 1e-6
_SUFFIX = "__lattice"


def _decode(codes: torch.Tensor, lo_step: torch.Tensor) -> torch.Tensor:
    """The float32 image of ``codes`` (uint8): one new tensor, scaled in place (no temporary copies)."""
    out = codes.to(torch.float32, memory_format=torch.contiguous_format, copy=True)
    return out.mul_(lo_step[1]).add_(lo_step[0])


def _codable(x) -> bool:
    """Whether ``x`` is an image a cache may store as codes: a non-empty float32 tensor of at least 2 dimensions."""
    return isinstance(x, torch.Tensor) and x.dtype == torch.float32 and x.ndim >= 2 and x.numel() > 0


def like(template, codes: torch.Tensor) -> torch.Tensor:
    """``codes`` as a ``MetaTensor`` with ``template``'s meta (affine, file name) where ``template`` is one."""
    if hasattr(template, "meta"):
        return type(template)(codes, meta=template.meta, applied_operations=template.applied_operations)
    return codes


def lattice_code(x, tolerance: float = TOLERANCE):
    """``(codes uint8, [lo, step] float32)`` that give ``x`` back within ``tolerance`` of its range, or None."""
    if not _codable(x):
        return None
    flat = x.detach().reshape(-1).as_subclass(torch.Tensor)
    if torch.unique(flat[:: max(1, flat.numel() // 2048)]).numel() > 256:  # most resampled images: rejected on a probe
        return None
    values = torch.unique(flat)
    if values.numel() > 256:
        return None
    lo, hi = float(values[0]), float(values[-1])
    if values.numel() == 1:
        step = 1.0
    else:
        gap = float((values[1:].double() - values[:-1].double()).min())
        levels = round((hi - lo) / gap)
        if levels > 255:
            return None
        step = (hi - lo) / levels
    lo_step = torch.tensor([lo, step], dtype=torch.float32)
    codes = torch.round((flat.double() - lo) / step)
    if codes.min() < 0 or codes.max() > 255:
        return None
    codes = codes.to(torch.uint8).reshape(x.shape)
    if (_decode(codes, lo_step) - x.detach().as_subclass(torch.Tensor)).abs().max() > tolerance * max(1.0, hi - lo):
        return None
    return like(x, codes), lo_step  # a MetaTensor keeps its meta (affine, file name) through the cache


def quantized_code(x):
    """``(codes uint8, [lo, step] float32)`` of ``x`` rounded to 256 evenly spaced levels from its minimum to its
    maximum: off by ``step / 2`` at most; None for what :func:`lattice_code` would not take either (not float32, under
    2 dimensions, empty, or not finite)."""
    if not _codable(x):
        return None
    plain = x.detach().as_subclass(torch.Tensor)
    lo, hi = float(plain.min()), float(plain.max())
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return None
    step = (hi - lo) / 255 if hi > lo else 1.0
    codes = torch.round((plain.double() - lo) / step).clamp_(0, 255).to(torch.uint8)
    return like(x, codes), torch.tensor([lo, step], dtype=torch.float32)


def _root(array: np.ndarray) -> np.ndarray:
    while isinstance(array.base, np.ndarray):
        array = array.base
    return array


def source_codes(entry, source, bases: dict) -> set:
    """Make each lattice code of ``entry`` (a cache entry) that equals the uint8 pixels of the same key in ``source``
    (the datalist item it was made from) up to a constant a view of those pixels, with ``(lo, step)`` moved to match;
    returns the keys so made. The view is taken of the array the pixels are a view of (``bases`` keeps one tensor of
    each such array), so a worker started by spawn gets that array once. The floats given back are checked to stay
    within :data:`TOLERANCE` as :func:`lattice_code` checks them; where they would not, the entry is left as it is."""
    shared = set()
    if not isinstance(entry, dict) or not isinstance(source, dict):
        return shared
    for k, codes in entry.items():
        lo_step = entry.get(f"{k}{_SUFFIX}") if isinstance(k, str) else None
        pixels = source.get(k)
        if lo_step is None or not isinstance(pixels, np.ndarray) or pixels.dtype != np.uint8:
            continue
        if tuple(pixels.shape) != tuple(codes.shape) or not pixels.flags.writeable or pixels.size == 0:
            continue
        root = _root(pixels)
        if root.dtype != np.uint8 or not root.flags.c_contiguous:
            continue  # a view of another dtype's bytes: copied as before
        if id(root) not in bases:
            bases[id(root)] = (root, torch.from_numpy(root))  # the root is kept: its id stays its own
        base = bases[id(root)][1]
        offset = pixels.__array_interface__["data"][0] - root.__array_interface__["data"][0]
        view = base.as_strided(pixels.shape, [s // pixels.itemsize for s in pixels.strides], offset // pixels.itemsize)
        plain = codes.as_tensor() if hasattr(codes, "as_tensor") else codes
        shift = view.to(torch.int16) - plain.to(torch.int16)
        c = int(shift.reshape(-1)[0])
        if not bool((shift == c).all()):
            continue
        lo, step = float(lo_step[0]), float(lo_step[1])
        moved = torch.tensor([lo - c * step, step], dtype=torch.float32)
        span = step * float(plain.max() - plain.min()) if plain.numel() else 0.0
        if (_decode(view, moved) - _decode(plain, lo_step)).abs().max() > TOLERANCE * max(1.0, span):
            continue
        entry[k], entry[f"{k}{_SUFFIX}"] = like(codes, view), moved
        shared.add(k)
    return shared


def expand(item):
    """``item`` with every stored lattice code turned back into its float32 image."""
    if not isinstance(item, dict) or not any(isinstance(k, str) and k.endswith(_SUFFIX) for k in item):
        return item
    out = {k: v for k, v in item.items() if not (isinstance(k, str) and k.endswith(_SUFFIX))}
    for k in list(out):
        code = item.get(f"{k}{_SUFFIX}") if isinstance(k, str) else None
        if code is not None:
            out[k] = _decode(out[k], code)
    return out


class Compactd(Transform):
    """Store each float32 image of an item that :func:`lattice_code` can code as uint8 + ``(lo, step)``; with
    ``quantize``, every other float32 image as :func:`quantized_code` (module doc)."""

    def __init__(self, quantize: bool = False) -> None:
        self.quantize = bool(quantize)

    def __call__(self, data):
        if not isinstance(data, dict):
            return data
        out = dict(data)
        for k, v in data.items():
            code = lattice_code(v) if isinstance(k, str) else None
            if code is None and self.quantize and isinstance(k, str):
                code = quantized_code(v)
            if code is not None:
                out[k], out[f"{k}{_SUFFIX}"] = code
        return out


class Expandd(Transform, RandomizableTrait):
    """The float32 images back (:func:`expand`). It carries MONAI's ``RandomizableTrait`` only so that a cache
    stops before it: the cache holds the compact form, every read gets floats."""

    def __call__(self, data):
        return [expand(d) for d in data] if isinstance(data, list) else expand(data)
