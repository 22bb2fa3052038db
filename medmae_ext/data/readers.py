"""Readers that turn real datasets into MONAI datalists (lists of dicts), with errors that name the file and key.

* :func:`load_datalist` -- MONAI decathlon-style datalist JSON (MSD tasks, BTCV's ``dataset_0.json``, BraTS, the
  synthetic sets of :mod:`medmae_ext.data.synthetic`). Every path is checked up front.
* :func:`load_medmnist_npz` -- MedMNIST ``.npz`` files (``train_images``/``train_labels``/``val_*``/``test_*``);
  images stay in memory as channel-first float arrays.
"""

from __future__ import annotations

import json
import logging
import os
from collections import UserList
from collections.abc import Sequence

import numpy as np
from monai.data import load_decathlon_datalist

from ..errors import InputError

__all__ = [
    "Datalist",
    "lazy",
    "image_list",
    "is_dicom_series",
    "load_datalist",
    "load_medmnist_npz",
    "check_files",
    "DatalistError",
]

logger = logging.getLogger(__name__)

PATH_KEYS = ("image", "label", "mask", "lesion")


class Datalist(UserList):
    """The items a bundle reads itself from its ``data_format`` / ``data_path`` (every reader returns one). Items given
    to a bundle directly -- MONAI Label overrides ``train#dataset#data`` with its datastore's labelled images -- are
    a plain ``list``: :func:`medmae_ext.training.serving.data_supplied` tells them apart by this type alone, whoever
    started the run.

    With ``loader`` the items are read on first use (:func:`lazy`), not when the config id is evaluated: MONAI Label
    (3D Slicer sends ``run_id ""``) evaluates every id of ``train.json``, and a bundle given its items directly must
    then neither read nor write (the synthetic default) its own data."""

    def __init__(self, items=None, loader=None) -> None:
        self._loader = loader
        self._items = None if loader is not None else list(items or [])

    @property
    def data(self) -> list:
        if self._items is None:
            self._items = list(self._loader())
            self._loader = None
        return self._items

    @data.setter
    def data(self, value) -> None:
        self._items, self._loader = list(value), None

    def __reduce__(self):  # pickled (DataLoader workers, caches) with its items, read
        return (Datalist, (self.data,))


def lazy(reader, *args, **kwargs) -> Datalist:
    """``reader(*args, **kwargs)``'s items, read when first used (see :class:`Datalist`)."""
    return Datalist(loader=lambda: reader(*args, **kwargs))


class DatalistError(InputError):
    """A datalist (JSON / CSV / npz / folder) is malformed or names files that do not exist."""


def check_files(items: list[dict], source: str, keys: Sequence[str] = PATH_KEYS) -> list[dict]:
    """Raise :class:`DatalistError` naming the first item/key whose file is missing."""
    missing = []
    for i, item in enumerate(items):
        for k in keys:
            v = item.get(k)
            paths = v if isinstance(v, (list, tuple)) else [v]
            for p in paths:
                if isinstance(p, str) and not os.path.exists(p):
                    missing.append(f"item {i} (id={item.get('id', '?')}) key {k!r}: {p}")
    if missing:
        more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
        raise DatalistError(f"{source}: missing file(s): " + "; ".join(missing[:3]) + more)
    return items


def load_datalist(
    datalist_file: str,
    data_list_key: str = "training",
    base_dir: str | None = None,
    is_segmentation: bool | None = True,
    required_keys: Sequence[str] = ("image",),
    max_items: int | None = None,
) -> list[dict]:
    """Load one section of a decathlon-style datalist JSON and check it.

    Paths are relative to ``base_dir`` (default: the JSON's folder). Each item gains an ``id`` (its own, or the
    image file name) used to key per-sample caches such as MSMAE's attention maps. ``is_segmentation=None`` decides
    per file: ``label`` entries are paths (segmentation) when one of them names an existing file, else class labels.
    """
    if not os.path.isfile(datalist_file):
        raise DatalistError(f"datalist file not found: {datalist_file}")
    try:
        with open(datalist_file) as f:
            raw = json.load(f)
    except ValueError as e:
        raise DatalistError(f"{datalist_file} is not valid JSON: {e}") from e
    if data_list_key not in raw:
        raise DatalistError(
            f"{datalist_file} has no section {data_list_key!r} (sections: {sorted(k for k in raw if isinstance(raw[k], list))})"
        )
    if not raw[data_list_key]:
        raise DatalistError(f"{datalist_file}: section {data_list_key!r} is empty")
    for i, item in enumerate(raw[data_list_key]):
        if not isinstance(item, dict):
            raise DatalistError(f"{datalist_file}: {data_list_key}[{i}] is {type(item).__name__}, expected an object")
        for k in required_keys:
            if k not in item:
                raise DatalistError(f"{datalist_file}: {data_list_key}[{i}] has no key {k!r} (keys: {sorted(item)})")
    base_dir = base_dir if base_dir is not None else os.path.dirname(os.path.abspath(datalist_file))
    if is_segmentation is None:
        is_segmentation = any(
            isinstance(it.get("label"), str) and os.path.exists(os.path.join(base_dir, it["label"]))
            for it in raw[data_list_key]
        )
    items = load_decathlon_datalist(datalist_file, is_segmentation, data_list_key, base_dir)
    for item in items:
        if "id" not in item:
            img = item["image"][0] if isinstance(item["image"], (list, tuple)) else item["image"]
            item["id"] = os.path.basename(str(img))
    if max_items:
        items = items[: int(max_items)]
    keys = PATH_KEYS if is_segmentation else tuple(k for k in PATH_KEYS if k != "label")  # else a class label
    return check_files(items, f"{datalist_file} [{data_list_key}]", keys)


_MEDMNIST_SPLITS = {"training": "train", "train": "train", "validation": "val", "val": "val", "test": "test"}


def load_medmnist_npz(path: str, split: str = "training", max_items: int | None = None) -> list[dict]:
    """Items ``{"image": channel-first array as stored, "label": int or float vector, "id"}`` from a MedMNIST ``.npz``
    (``{split}_images`` uint8 ``[N, H, W]``, ``[N, H, W, 3]`` or ``[N, D, H, W]``; ``{split}_labels`` ``[N, 1]`` or
    multi-label ``[N, K]``). Each image is a view into the file's one array, in its own dtype (uint8: 1 byte a pixel,
    no float copy per item); the bundles' intensity step scales it, exactly as it scales a PNG of the same pixels.

    Orientation: the spatial axes are reversed into MONAI's reader convention -- a 2D image becomes ``[C, W, H]``,
    exactly what ``LoadImage`` gives for a PNG of the same pixels (``PIL.Image.fromarray(images[i]).save(...)``), and a
    volume ``[C, W, H, D]`` as ITK/NIfTI readers index it. So a model trained from the ``.npz`` sees PNGs of the same
    images (inference) the right way round, and ``RandFlipd(spatial_axis=0)`` is a left-right flip for both."""
    if not os.path.isfile(path):
        raise DatalistError(f"MedMNIST file not found: {path}")
    prefix = _MEDMNIST_SPLITS.get(split)
    if prefix is None:
        raise DatalistError(f"unknown split {split!r} for {path}: use one of {sorted(_MEDMNIST_SPLITS)}")
    ik, lk = f"{prefix}_images", f"{prefix}_labels"
    try:
        with np.load(path) as npz:
            for k in (ik, lk):
                if k not in npz.files:
                    raise DatalistError(f"{path} has no array {k!r} (arrays: {sorted(npz.files)})")
            images, labels = npz[ik], npz[lk]  # the arrays are decompressed here: damage shows here
    except DatalistError:
        raise
    except Exception as e:  # zlib "Error -3 while decompressing", BadZipFile, a truncated download
        raise DatalistError(
            f"{path} is damaged or not a .npz file ({type(e).__name__}: {e}): download or copy it again (its "
            "size and checksum should match the source's)"
        ) from e
    if len(images) != len(labels):
        raise DatalistError(f"{path}: {ik!r} has {len(images)} entries but {lk!r} has {len(labels)}")
    if images.ndim == 4 and images.shape[-1] in (3, 4) and images.shape[1] not in (3, 4):
        images = np.moveaxis(images, -1, 1)  # N, H, W, C -> N, C, H, W (RGB MedMNIST)
    elif images.ndim in (3, 4):
        images = images[:, None]  # grey 2D [N, H, W] or 3D [N, D, H, W]
    else:
        raise DatalistError(f"{path}: {ik!r} has shape {images.shape}; expected [N, H, W(, 3)] or [N, D, H, W]")
    spatial = list(range(2, images.ndim))
    images = images.transpose([0, 1] + spatial[::-1])  # numpy row-major -> MONAI reader order (see docstring)
    labels = labels.reshape(len(labels), -1)
    n = len(images) if not max_items else min(len(images), int(max_items))
    name = os.path.splitext(os.path.basename(path))[0]
    return [
        {
            "image": images[i],
            "label": int(labels[i, 0]) if labels.shape[1] == 1 else labels[i].astype(np.float32),
            "id": f"{name}:{prefix}:{i}",
        }
        for i in range(n)
    ]


def is_dicom_series(path: str) -> bool:
    """True for a folder whose files are DICOM (the ``DICM`` marker at byte 128), i.e. one series to read as a volume."""
    if not os.path.isdir(path):
        return False
    files = [os.path.join(path, f) for f in os.listdir(path) if os.path.isfile(os.path.join(path, f))]
    if not files:
        return False
    for f in files[:3]:
        with open(f, "rb") as fh:
            fh.seek(128)
            if fh.read(4) != b"DICM":
                return False
    return True


#: file suffixes read as images or volumes by MONAI's ``LoadImage`` (anything else in a folder is skipped, named)
IMAGE_SUFFIXES = (
    ".png",
    ".jpg",
    ".jpeg",
    ".bmp",
    ".tif",
    ".tiff",
    ".nii",
    ".nii.gz",
    ".nrrd",
    ".mha",
    ".mhd",
    ".dcm",
    ".npy",
)


def _is_dicom_file(path: str) -> bool:
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def image_list(input_dir: str, pattern: str = "*") -> list[dict]:
    """``[{"image": path, "id": name}]`` for inference and unlabelled pretraining: the image files of ``input_dir``
    matching ``pattern`` (sorted; ``data_kwargs {"pattern": "*/*.png"}`` reaches into sub-folders) and its
    sub-folders that are DICOM series (each one volume). ``input_dir`` that is itself a DICOM series folder gives one
    item. The ``id`` (a series' folder name) names the outputs. Other files (``readme.txt``, ``.DS_Store``) are
    skipped with a warning naming them; an image file is one with a suffix of :data:`IMAGE_SUFFIXES` or the DICOM
    marker."""
    import glob

    if not os.path.isdir(input_dir):
        raise DatalistError(f"input folder not found: {input_dir}")
    if is_dicom_series(input_dir):
        return [{"image": input_dir, "id": os.path.basename(os.path.normpath(input_dir))}]
    matched = sorted(glob.glob(os.path.join(input_dir, pattern)))
    found, skipped, folders = [], [], []
    for f in matched:
        if os.path.isdir(f):
            (found if is_dicom_series(f) else folders).append(f)
        elif f.lower().endswith(IMAGE_SUFFIXES) or _is_dicom_file(f):
            found.append(f)
        else:
            skipped.append(os.path.relpath(f, input_dir))
    if skipped:
        logger.warning(
            f"{input_dir}: {len(skipped)} file(s) that are not images skipped: {skipped[:5]}"
            + (" ..." if len(skipped) > 5 else "")
            + f" (images end in {', '.join(IMAGE_SUFFIXES)} or are DICOM)"
        )
    unmatched = [
        os.path.join(input_dir, n)
        for n in sorted(os.listdir(input_dir))
        if not n.startswith(".") and os.path.join(input_dir, n) not in set(matched)
    ]
    series = [os.path.basename(p) for p in unmatched if is_dicom_series(p)]
    if series:
        logger.warning(
            f"{input_dir}: {len(series)} DICOM series folder(s) do not match the pattern {pattern!r} and are not read: "
            f"{series[:5]}; to read them too set the pattern to '*' (--input_glob '*', or data_kwargs 'pattern')"
        )
    if folders:
        logger.info(
            f"{input_dir}: {len(folders)} sub-folder(s) that are not DICOM series not read: "
            f"{[os.path.basename(d) for d in folders[:5]]}"
        )
    if not found:
        hint = ""
        if folders:
            names = ", ".join(os.path.basename(d) + "/" for d in folders[:3])
            hint = (
                f"; it matched {len(folders)} folder(s) ({names}) that are not DICOM series: for images in "
                "sub-folders set --data_kwargs \"{'pattern': '*/*.png'}\" (the suffix of your files)"
            )
        elif skipped:
            hint = f"; the {len(skipped)} file(s) there are not images ({skipped[:3]})"
        raise DatalistError(f"no image file or DICOM series folder matches {os.path.join(input_dir, pattern)}{hint}")
    # an item's id names its outputs: in sub-folders (normal/a.png, pneumonia/a.png) the relative path keeps them apart
    return [{"image": f, "id": os.path.relpath(os.path.normpath(f), input_dir).replace(os.sep, "_")} for f in found]
