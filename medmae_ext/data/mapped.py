"""The memory cache kept in one file and memory-mapped: ``dataset_cache`` ``"mapped"`` (module doc of
:mod:`medmae_ext.data.caching`).

:class:`MappedCacheDataset` is a :class:`~medmae_ext.data.caching.PackedCacheDataset` whose blocks are saved once
under ``cache_dir`` and read back with ``torch.load(mmap=True, weights_only=True)`` by this run and every later one
with the same items and deterministic transforms: a restart or a resume does not fill the cache again.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from enum import Enum

import numpy as np
import torch
from monai.data import MetaTensor
from monai.data.utils import pickle_hashing
from monai.utils import convert_to_tensor

from .caching import PackedCacheDataset, first_line, first_random, item_hash, map_items
from .compact import like

__all__ = ["MappedCacheDataset", "transform_hash"]

logger = logging.getLogger(__name__)


def transform_hash(transform) -> str:
    """Key of the deterministic part of ``transform`` (a ``Compose``) with its parameters, as MONAI's
    ``PersistentDataset`` makes it (``pickle_hashing`` of the transforms up to the first random one)."""
    flat = transform.flatten()
    return pickle_hashing(flat.transforms[: first_random(flat)]).decode("utf-8")


_META, _BYTES = "__metatensor__", "__bytes__"


def _as_bytes(t: torch.Tensor) -> dict:
    """``t`` as a uint8 view of its bytes, with its dtype and shape: the packed blocks hold tensors of several dtypes
    (uint8 codes, float32 images and ``(lo, step)``), and ``torch.save`` refuses views of one storage as two dtypes."""
    flat = t.detach().contiguous().reshape(-1)
    return {_BYTES: flat.view(torch.uint8), "dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape)}


def _storable(value):
    """A leaf of a cache entry as ``torch.load(weights_only=True)`` reads it back: a tensor as its bytes
    (:func:`_as_bytes`); a ``MetaTensor`` as its tensor and the meta whose values are strings, numbers or arrays (the
    file name and the affine: what the reports and the crops read; ``applied_operations`` is dropped); a numpy array
    as a tensor."""
    if isinstance(value, MetaTensor):
        meta = {}
        for k, v in value.meta.items():
            k = k.value if isinstance(k, Enum) else k
            if not isinstance(k, str):
                continue
            if isinstance(v, (str, int, float, bool)):
                meta[str(k)] = v.value if isinstance(v, Enum) else v
            elif isinstance(v, (torch.Tensor, np.ndarray)):
                meta[str(k)] = convert_to_tensor(v, track_meta=False)
        return {_META: _as_bytes(value.as_tensor()), "meta": meta}
    if isinstance(value, np.ndarray):
        value = convert_to_tensor(value, convert_numeric=False, track_meta=False)
    return _as_bytes(value) if isinstance(value, torch.Tensor) else value


def _restored(value):
    """What :func:`_storable` stored, as it was (views of the mapped bytes)."""
    if isinstance(value, dict):
        if _BYTES in value:
            return value[_BYTES].view(getattr(torch, value["dtype"])).view(value["shape"])
        if _META in value:
            return MetaTensor(_restored(value[_META]), meta=value["meta"])
        return {k: _restored(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_restored(v) for v in value)
    return value


class MappedCacheDataset(PackedCacheDataset):
    """:class:`PackedCacheDataset` whose entries are saved once in ``cache_dir/mapped-<key>.pt`` and memory-mapped
    (``torch.load(mmap=True)``) by this run and every later one with the same key: each item's :func:`item_hash`
    (the item, and the size and modification time of every file it names) and the deterministic transforms with
    their parameters. A file that cannot be read (a full disk, a kill while it was written) is built again, with a
    warning naming it; a file is written under a temporary name and renamed, so a reader never sees half of one.

    The file is read with ``weights_only=True``: a ``MetaTensor`` keeps the meta values that are strings, numbers or
    arrays (file name, affine), not its ``applied_operations``. A DataLoader worker started by spawn maps the same
    file instead of receiving a copy."""

    def __init__(self, data, transform, cache_dir: str, **kwargs) -> None:
        self.cache_dir = str(cache_dir)
        self.path: str | None = None
        super().__init__(data, transform, **kwargs)

    def _key(self) -> str:
        h = hashlib.sha256(transform_hash(self.transform).encode())
        for item in self.data:
            h.update(item_hash(item))
        return h.hexdigest()[:32]

    def _map(self, path: str):
        entries = torch.load(path, mmap=True, weights_only=True)
        if not isinstance(entries, list) or len(entries) != self.cache_num:
            raise ValueError(f"holds {len(entries) if isinstance(entries, list) else type(entries).__name__} entries")
        return [_restored(e) for e in entries]

    def _fill_cache(self, indices=None) -> list:
        if self.cache_num <= 0:
            return []
        path = os.path.join(self.cache_dir, f"mapped-{self._key()}.pt")
        if os.path.isfile(path):
            try:
                entries = self._map(path)
                self.path = path
                return entries
            except Exception as e:  # noqa: BLE001 - any unreadable file is built again the same way
                logger.warning(
                    f"mapped cache {path} cannot be read ({type(e).__name__}: {first_line(e)}); building it again"
                )
        entries = self._trimmed(super()._fill_cache(indices))
        stored = map_items(entries, _storable)
        fd, tmp = tempfile.mkstemp(prefix=".mapped-", suffix=".tmp", dir=self.cache_dir)
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(stored, f)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        del entries, stored
        self._block = None  # the blocks built here are freed: the reads are the file's
        self.path = path
        try:
            return self._map(path)
        except Exception as e:
            raise RuntimeError(
                f"mapped cache {path} was written but cannot be read back ({type(e).__name__}: {e}); the items hold "
                "something torch.load(weights_only=True) refuses: use --dataset_cache memory or disk"
            ) from e

    def _trimmed(self, entries: list) -> list:
        """``entries`` with what views the last block moved into a copy of its used part: the file stores a
        storage whole, and the last block's unused tail would be written as well (32 MiB for a set of a few items)."""
        block = self._block
        if block is None or self._used >= block.numel():
            return entries
        used = block[: self._used].clone()
        start, end = block.data_ptr(), block.data_ptr() + block.numel()

        def move(t):
            if not isinstance(t, torch.Tensor) or not start <= t.data_ptr() < end:
                return t
            at, n = t.data_ptr() - start, t.numel() * t.element_size()
            return like(t, used[at : at + n].view(t.dtype).view(t.shape))

        return [map_items(e, move) for e in entries]

    def __getstate__(self):  # a worker started by spawn maps the file itself
        state = super().__getstate__()
        if self.path is not None:
            state["_cache"] = None
        return state

    def __setstate__(self, state) -> None:
        super().__setstate__(state)
        if self._cache is None and self.path is not None:
            self._cache = self._map(self.path)
