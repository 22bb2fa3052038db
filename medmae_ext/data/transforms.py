"""Dictionary transforms used by the medmae bundles (besides MONAI's own)."""

from __future__ import annotations

import os

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import LoadImaged as _MonaiLoadImaged
from monai.transforms import MapTransform
from monai.transforms.traits import RandomizableTrait
from monai.utils import convert_to_dst_type

from ..errors import ImageReadError, InputError
from .dicom import check_dicom_series

__all__ = ["LoadImaged", "ValidateImaged", "RemapLabeld", "AttachAttentiond", "source_of"]


def source_of(data: dict, key: str) -> str:
    """Best description of where ``data[key]`` came from: its file name, else the item's id."""
    meta = getattr(data.get(key), "meta", None) or {}
    src = meta.get("filename_or_obj") or data.get("id")
    return f"{src!r}" if src else "(in-memory item)"


class _NamingLoader:
    """Wraps MONAI's ``LoadImage`` so that a file it cannot read raises :class:`ImageReadError` naming the file
    (a truncated ``.nii.gz`` otherwise says only ``EOFError: Compressed file ended ...``)."""

    def __init__(self, loader):
        self.loader = loader

    def __call__(self, filename, reader=None):
        try:
            return self.loader(filename, reader)
        except Exception as e:
            raise ImageReadError.of(filename, e) from e

    def __getattr__(self, name):  # everything else is the wrapped loader's (MONAI Label sets image_only on it)
        if "loader" not in self.__dict__:  # during unpickling / copying
            raise AttributeError(name)
        return getattr(self.__dict__["loader"], name)

    def __setattr__(self, name, value):
        if name == "loader":
            self.__dict__["loader"] = value
        else:
            setattr(self.loader, name, value)


class LoadImaged(_MonaiLoadImaged):
    """MONAI ``LoadImaged`` that also takes items whose image is already an array (MedMNIST ``.npz``, in-memory sets).

    A file path (or a DICOM series folder) is loaded by MONAI as usual; a series is named after its folder (MONAI
    names it after one of its slice files), so that outputs are named after the series. An array or tensor is taken as it is -- it
    must be channel first, as :func:`medmae_ext.data.load_medmnist_npz` makes it -- and wrapped in a ``MetaTensor``
    whose ``filename_or_obj`` is the item's ``id``, so every later transform and error message sees the same thing
    whichever reader made the item. The bundles' transform chains therefore work unchanged for every ``data_format``.
    A file that cannot be read raises :class:`~medmae_ext.errors.ImageReadError` naming it.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._loader = _NamingLoader(self._loader)

    def __call__(self, data, reader=None):
        d = dict(data)
        arrays = [k for k in self.key_iterator(d) if isinstance(d[k], (np.ndarray, torch.Tensor))]
        if not arrays:
            folders = {k: str(d[k]) for k in self.key_iterator(d) if isinstance(d[k], str) and os.path.isdir(d[k])}
            slices = {k: check_dicom_series(folder) for k, folder in folders.items()}
            d = super().__call__(d, reader)
            for k, folder in folders.items():  # a DICOM series: name it (and its outputs) after its folder
                if isinstance(d[k], MetaTensor):
                    d[k].meta["filename_or_obj"] = os.path.normpath(folder)
                if slices[k] > 1 and slices[k] not in tuple(d[k].shape[1:]):
                    raise InputError(
                        f"DICOM series {folder}: {slices[k]} slices, but the volume read has shape "
                        f"{tuple(d[k].shape[1:])}: slices were dropped while reading"
                    )
            return d
        others = [k for k in self.key_iterator(d) if k not in arrays]
        if others:
            raise InputError(
                f"{source_of(d, arrays[0])}: {arrays} are arrays but {others} are not: give every key of "
                "an item as a file path, or every key as an array."
            )
        for k in arrays:
            d[k] = MetaTensor(torch.as_tensor(np.asarray(d[k])), meta={"filename_or_obj": str(d.get("id", k))})
        return d


class ValidateImaged(MapTransform):
    """Check loaded images before they reach the network; errors name the file and the config key to change.

    Args:
        keys: keys to check (channel-first arrays).
        channels: expected channel count (the network's ``in_channels``).
        spatial_dims: expected number of spatial dimensions (2 or 3).
        finite: NaN / Inf voxels are an error (one such image turns every weight into NaN within an iteration).
    """

    def __init__(
        self,
        keys: KeysCollection,
        channels: int | None = None,
        spatial_dims: int | None = None,
        allow_missing_keys: bool = False,
        finite: bool = True,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.channels = channels
        self.spatial_dims = spatial_dims
        self.finite = finite

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            if not isinstance(img, (np.ndarray, torch.Tensor)):
                raise InputError(f"{source_of(d, key)}: {key!r} is a {type(img).__name__}, expected an image array.")
            shape = tuple(img.shape)
            if self.spatial_dims is not None and len(shape) - 1 != self.spatial_dims:
                raise InputError(
                    f"{source_of(d, key)}: {key!r} has shape {shape} (channel first), i.e. {len(shape) - 1} spatial "
                    f"dims, but this config expects {self.spatial_dims}D images."
                )
            if self.channels is not None and shape[0] != self.channels:
                raise InputError(
                    f"{source_of(d, key)}: {key!r} has {shape[0]} channel(s) (shape {shape}) but the network expects "
                    f"{self.channels} (config id 'in_channels'): convert the images or change 'in_channels'."
                )
            if self.finite:
                t = torch.as_tensor(img)
                if t.is_floating_point():
                    bad = ~torch.isfinite(t)
                    if bad.any():
                        raise InputError(
                            f"{source_of(d, key)}: {key!r} has {int(bad.sum())} NaN/Inf voxel(s) of {t.numel()} "
                            f"(first at index {tuple(int(i) for i in bad.nonzero()[0])}): fix or drop this image."
                        )
        return d


class RemapLabeld(MapTransform):
    """Map a source atlas's label ids to the bundle's classes; ids the map does not name become background (0).

    ``label_map`` is the config id of the same name: ``{source_id: class_index}`` (keys may be strings, as JSON
    writes them), e.g. TotalSegmentator v2 -> this bundle's liver/spleen/kidney/aorta
    ``{"5": 1, "1": 2, "2": 3, "3": 3, "52": 4}``. ``None`` (the default) leaves labels unchanged. Place it right after
    loading, before any resampling, so that only the source ids are ever seen. The map is checked by
    :func:`medmae_ext.data.label_lookup` (errors name the config id ``label_map``)."""

    def __init__(
        self, keys: KeysCollection, label_map: dict | None, num_classes: int, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        from .label_maps import label_lookup

        self.lut = label_lookup(label_map, num_classes)

    def __call__(self, data):
        from .label_maps import map_label_ids

        d = dict(data)
        if self.lut is None:
            return d
        for key in self.key_iterator(d):
            lab = d[key]
            mapped = map_label_ids(np.round(np.asarray(lab)).astype(np.int64), self.lut)
            d[key] = convert_to_dst_type(mapped, lab, dtype=lab.dtype)[0]
        return d


class AttachAttentiond(MapTransform, RandomizableTrait):
    """Add the cached MSMAE attention map of the sample as an image-sized channel ``attention_key``.

    Each patch-grid value is repeated over its patch, so the map has the image's spatial shape; place this
    transform *before* the random crop / flip and list ``attention_key`` in their ``keys`` (with
    ``allow_missing_keys=True``): image and map then get exactly the same crop and flip. Samples without a cached
    map (before the first refresh) get no ``attention_key``, and the masking falls back to its warm-up.

    It carries MONAI's ``RandomizableTrait`` only so that ``CacheDataset`` never caches its output: the cache
    changes during training.
    """

    def __init__(self, cache, image_key: str = "image", attention_key: str = "attn", id_key: str = "id") -> None:
        super().__init__(image_key)
        self.cache = cache
        self.image_key = image_key
        self.attention_key = attention_key
        self.id_key = id_key

    def __call__(self, data):
        d = dict(data)
        if not len(self.cache):
            return d
        if self.id_key not in d:
            raise KeyError(f"AttachAttentiond needs {self.id_key!r} in every item (keys: {sorted(d)})")
        grid_map = self.cache.get(d[self.id_key])
        if grid_map is None:
            raise KeyError(f"no attention map cached for sample {d[self.id_key]!r}: refresh the cache on this dataset")
        spatial = tuple(d[self.image_key].shape[1:])
        if len(spatial) != grid_map.ndim or any(s % g for s, g in zip(spatial, grid_map.shape, strict=False)):
            raise ValueError(
                f"{source_of(d, self.image_key)}: image of spatial shape {spatial} does not tile the attention grid "
                f"{tuple(grid_map.shape)}: attach the map where the image has the network's img_size."
            )
        full = grid_map
        for axis, (s, g) in enumerate(zip(spatial, grid_map.shape, strict=False)):
            full = full.repeat_interleave(s // g, dim=axis)
        d[self.attention_key] = full.unsqueeze(0).float()
        return d
