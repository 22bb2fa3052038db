"""Where the deterministic part of the preprocessing is kept between epochs: RAM, disk, or nowhere.

``cache`` (config id ``dataset_cache`` of every training config):

* ``"memory"`` (default) -- MONAI ``CacheDataset``: every item's deterministic transforms once, in RAM. Fastest;
  needs the whole preprocessed split in RAM on every process (under ``multi_gpu_train.json``: its shard). The entries
  are packed into large blocks (:class:`PackedCacheDataset`): kept one by one among each item's short-lived float
  copies, they left the C heap fragmented, and a 20k-item 224 px set took 5.6x its pixels' bytes instead of ~1x. An
  entry whose stored levels are the uint8 pixels its item already holds (the ``.npz`` reader) is a view of them.
* ``"mapped"`` -- the memory cache kept in one file under ``cache_dir`` and memory-mapped
  (:class:`medmae_ext.data.mapped.MappedCacheDataset`): built once, and every later run, resume or rank with the same
  items and deterministic transforms maps it instead of building it again (ChestX-ray14 at 224 px: ~50 CPU-minutes
  at each start otherwise). Reads are as fast as the memory cache's once the file is in the page cache, which the
  kernel shares between processes and can evict: for sets near the RAM size. Keyed as the disk cache is.
* ``"disk"`` -- MONAI ``PersistentDataset`` under ``cache_dir``: computed once, read back every epoch; for sets that
  do not fit in RAM (ChestX-ray14's 112k images at 224 px are ~22 GB as float32). The cache key of an item covers
  the item, the size and modification time of each file it names, and the deterministic transforms with their
  parameters (``pickle_hashing``), so a changed image, ``--img_size`` or ``--pixdim`` is never served stale. An
  entry that cannot be read (a full disk or a kill while it was written) is recomputed, with a warning naming it.
* ``"none"`` -- MONAI ``Dataset``: everything recomputed every epoch (least memory; use DataLoader workers).

Random transforms always run per draw, in all three. :class:`CachedView` reads the deterministic part back (the
MSMAE attention refresh), from the cache where there is one.
"""

from __future__ import annotations

import copy
import logging
import os
import threading

import torch
from monai.data import CacheDataset, Dataset, MetaTensor, PersistentDataset
from monai.data.utils import pickle_hashing
from monai.transforms import Compose, Transform
from monai.transforms.traits import RandomizableTrait

from .compact import Compactd, Expandd, expand, source_codes
from .readers import DatalistError

__all__ = ["CACHE_KINDS", "CachedView", "CheckedPersistentDataset", "PackedCacheDataset", "cached_dataset", "item_hash"]

logger = logging.getLogger(__name__)

CACHE_KINDS = ("memory", "mapped", "disk", "none")


def _file_stamps(value, out: list) -> list:
    if isinstance(value, str) and os.path.exists(value):
        paths = (
            [value] if os.path.isfile(value) else sorted(os.path.join(value, f) for f in os.listdir(value))
        )  # a DICOM series folder: its files
        out += [(p, os.path.getsize(p), os.path.getmtime(p)) for p in paths if os.path.isfile(p)]
    elif isinstance(value, (list, tuple)):
        for v in value:
            _file_stamps(v, out)
    elif isinstance(value, dict):
        for k in sorted(value):
            _file_stamps(value[k], out)
    return out


def item_hash(item) -> bytes:
    """Cache key of one datalist item: the item itself plus size and mtime of every file (or series folder) it names."""
    return pickle_hashing((item, _file_stamps(item, [])))


def first_line(e: BaseException) -> str:
    """What a warning about an unreadable cache file says of ``e``: its first line, or that the file is empty."""
    text = str(e).strip()
    return text.splitlines()[0] if text else "empty or truncated"


class CheckedPersistentDataset(PersistentDataset):
    """MONAI's ``PersistentDataset`` that recomputes an entry it cannot read, with a warning naming the file.

    A full disk or a kill while an entry is copied into ``cache_dir`` leaves it empty or truncated; MONAI recomputes
    only entries with a bad pickle header, and every later run died on the others (``EOFError`` with no message, or
    a ``PytorchStreamReader`` error naming no file)."""

    def _cachecheck(self, item_transformed):
        if self.cache_dir is not None:
            name = self.hash_func(item_transformed).decode("utf-8") + self.transform_hash
            entry = self.cache_dir / f"{name}.pt"
            if entry.is_file():
                try:
                    return torch.load(entry, weights_only=self.weights_only)
                except PermissionError:
                    raise
                except Exception as e:  # noqa: BLE001 - any unreadable entry is recomputed the same way
                    logger.warning(
                        f"disk cache entry {entry} cannot be read ({type(e).__name__}: {first_line(e)}); recomputing it"
                    )
                    entry.unlink(missing_ok=True)
        return super()._cachecheck(item_transformed)


def map_items(value, fn):
    """``fn`` applied to every leaf of an item (dicts, lists and tuples rebuilt around the results)."""
    if isinstance(value, dict):
        return {k: map_items(v, fn) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(map_items(v, fn) for v in value)
    return fn(value)


class PackedCacheDataset(CacheDataset):
    """MONAI's ``CacheDataset`` whose entries' CPU tensors are copied into blocks of ``block_bytes`` (views of them).

    Building an entry makes several short-lived float copies of the image (load, scaling, the compact coding), each
    larger than the entry. Kept where the allocator put it, every entry pinned its share of the C heap between them,
    and the heap could not shrink: the resident memory of a memory cache grew by about the float32 image per item
    (measured: 20k items at 224 px, 0.93 GiB of uint8 pixels, grew 5.25 GiB). In blocks, the entries sit together and
    the short-lived copies reuse the same free space (the same set: 0.97 GiB). What the entries hold is unchanged:
    the same values, dtypes, shapes and ``MetaTensor`` meta; a tensor larger than a quarter block is kept as it is.

    An image whose stored levels are the uint8 pixels its datalist item already holds (the MedMNIST ``.npz`` reader)
    is not copied at all: its entry is a view of those pixels (:func:`~medmae_ext.data.compact.source_codes`), so the
    reader and the cache hold them once between them."""

    def __init__(self, *args, block_bytes: int = 32 << 20, **kwargs) -> None:
        self._block_bytes = int(block_bytes)
        self._block: torch.Tensor | None = None
        self._used = 0
        self._lock = threading.Lock()
        self._sources: dict = {}
        self._tail_of, self._tail_found = None, (None, False)
        super().__init__(*args, copy_cache=False, **kwargs)
        self._sources = {}  # the entries hold views of the arrays; a later entry shares them by address all the same

    def __getstate__(self):  # DataLoader workers started by spawn: the lock stays here
        state = dict(self.__dict__)
        state["_lock"], state["_sources"] = None, {}
        return state

    def __setstate__(self, state) -> None:
        self.__dict__.update(state, _lock=threading.Lock())

    def _pack_tensor(self, t: torch.Tensor) -> torch.Tensor:
        n = t.numel() * t.element_size()
        if t.device.type != "cpu" or n == 0 or n > self._block_bytes // 4 or t.requires_grad:
            return t
        with self._lock:
            if self._block is None or self._used + n > self._block.numel():
                self._block, self._used = torch.empty(self._block_bytes, dtype=torch.uint8), 0
            start, self._used = self._used, (self._used + n + 63) // 64 * 64  # aligned for any dtype
            block = self._block
        return block[start : start + n].view(t.dtype).view(t.shape).copy_(t)

    def _pack(self, value):
        if type(value) is MetaTensor:
            packed = self._pack_tensor(value.as_tensor())
            return MetaTensor(packed, meta=value.meta, applied_operations=value.applied_operations)
        return self._pack_tensor(value) if type(value) is torch.Tensor else value

    def _load_cache_item(self, idx: int):
        entry = super()._load_cache_item(idx)
        with self._lock:
            shared = source_codes(entry, self.data[idx], self._sources)
        if not shared:
            return map_items(entry, self._pack)
        return {k: v if k in shared else map_items(v, self._pack) for k, v in entry.items()}

    @staticmethod
    def _copy(value):
        """A copy for the random transforms (MONAI's ``copy_cache``); ``deepcopy`` would copy a view's whole block."""
        return value.clone() if isinstance(value, torch.Tensor) else copy.deepcopy(value)

    def _tail(self) -> tuple[int | None, bool]:
        """Where the cache stops in ``self.transform`` and whether :class:`~medmae_ext.data.compact.Expandd` is all
        that follows it; found once per transform (it was 12% of a read at 224 px)."""
        if self._tail_of is not self.transform:
            first = first_random(self.transform)
            rest = [] if first is None else self.transform.transforms[first:]
            self._tail_found = (first, bool(rest) and all(isinstance(t, Expandd) for t in rest))
            self._tail_of = self.transform
        return self._tail_found

    def _transform(self, index: int):
        if self.hash_as_key or self._cache is None or not -len(self) <= index < self.cache_num:
            return super()._transform(index)  # MONAI's path (copy_cache is off: this class copies)
        data = self._cache[index]
        if data is None:
            data = self._cache[index] = self._load_cache_item(index)
        first, expand_only = self._tail()
        if expand_only and isinstance(data, dict):
            # nothing random after the cache (the batch is augmented on the device): as MONAI's cache with no random
            # transform, the entry is read without a copy -- the coded images come back as new floats, the others as
            # the entry's tensors, which the DataLoader's collate copies into the batch
            out = expand(data)
            return dict(out) if out is data else out
        return data if first is None else self.transform(map_items(data, self._copy), start=first)


def cached_dataset(
    data,
    transform,
    cache: str = "memory",
    cache_dir: str | None = None,
    num_workers: int = 0,
    config_id: str = "dataset_cache",
    shard: dict | None = None,
    items=None,
    compact: bool = True,
    quantize: bool = False,
):
    """A MONAI dataset over ``data`` that keeps the deterministic transforms' output as ``cache`` says (module doc).

    ``shard`` (the multi-GPU configs set it): keyword arguments of :func:`medmae_ext.training.distributed.shard_items`; the
    dataset then holds this rank's shard of ``data`` only (``dataset.data``). ``data`` itself stays the whole list,
    so whoever overrides it (MONAI Label's ``train#dataset#data``) still gets sharded, never replaced.

    ``items``: when not None, what the dataset holds in place of ``data``, which then stays the config id MONAI Label
    overrides (unetr: :func:`medmae_ext.training.serving.session_split` of MONAI Label's two lists).

    ``compact``: a memory or disk cache stores what it can in one byte a voxel (:mod:`medmae_ext.data.compact`);
    what the transforms after the cache see is unchanged. ``quantize`` (config id ``cache_quantize``): it stores every
    image in one byte, those resized when read too, each off by half of one of 256 levels of its range at most
    (:func:`medmae_ext.data.compact.quantized_code`); for sets that do not fit in RAM as float32."""
    if items is not None:
        data = items
    if shard is not None:
        from ..training.distributed import shard_items

        data = shard_items(data, **shard)
    if cache not in CACHE_KINDS:
        raise DatalistError(f"config id {config_id!r} must be one of {CACHE_KINDS}, got {cache!r}")
    if cache != "none" and compact:
        transform = compact_at_cache(transform, quantize=quantize)
    if cache == "memory":
        return PackedCacheDataset(data, transform, cache_rate=1.0, num_workers=num_workers)
    if cache in ("mapped", "disk"):
        if not cache_dir:
            raise DatalistError(f"config id {config_id!r}={cache!r} needs a cache folder (config id 'cache_dir')")
        os.makedirs(cache_dir, exist_ok=True)
    if cache == "mapped":
        from .mapped import MappedCacheDataset

        return MappedCacheDataset(data, transform, cache_dir, cache_rate=1.0, num_workers=num_workers)
    if cache == "disk":
        return CheckedPersistentDataset(
            data, transform, cache_dir=cache_dir, hash_func=item_hash, hash_transform=pickle_hashing
        )
    return Dataset(data, transform)


def first_random(transform) -> int | None:
    return transform.get_index_of_first(lambda t: isinstance(t, RandomizableTrait) or not isinstance(t, Transform))


def compact_at_cache(transform, quantize: bool = False):
    """``transform`` (a ``Compose``) with :class:`~medmae_ext.data.compact.Compactd` and
    :class:`~medmae_ext.data.compact.Expandd` where a cache stops (before the first random transform)."""
    if not isinstance(transform, Compose) or any(isinstance(t, Expandd) for t in transform.transforms):
        return transform
    steps = list(transform.transforms)
    first = first_random(transform)
    first = len(steps) if first is None else first
    return Compose(
        steps[:first] + [Compactd(quantize), Expandd()] + steps[first:],
        map_items=transform.map_items,
        unpack_items=transform.unpack_items,
        log_stats=transform.log_stats,
        lazy=transform._lazy,
        overrides=transform.overrides,
    )


class CachedView(torch.utils.data.Dataset):
    """The items of a :func:`cached_dataset` up to its first random transform, without recomputing what its cache
    holds: the memory cache's entries as they are, the disk cache's entries read back, and with no cache the
    deterministic transforms run. The MSMAE attention refresh reads the training images through it (it re-ran the
    whole deterministic chain before, 16% of a refresh)."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset
        transform = getattr(dataset, "transform", None)
        if not isinstance(transform, Compose):
            raise TypeError(f"CachedView needs a dataset with a Compose transform, got {type(transform).__name__}")
        self.first_random = first_random(transform)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        ds = self.dataset
        if isinstance(ds, CacheDataset) and ds._cache and ds._cache[index] is not None:
            return expand(ds._cache[index])
        if isinstance(ds, PersistentDataset):
            return expand(ds._cachecheck(ds.data[index]))
        return ds.transform(ds.data[index], end=self.first_random)
