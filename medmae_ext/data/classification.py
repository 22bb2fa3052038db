"""Datalists for the classification bundle: one entry point (:func:`dataset_items`) over every layout, and the
class-folder layout; the public datasets' CSV layouts are read in :mod:`~medmae_ext.data.public_csv`.

Every reader returns MONAI-style items ``{"image": path or array, "label": int or multi-hot float vector, "id"}``
and raises :class:`~medmae_ext.data.readers.DatalistError` naming the file, column or folder at fault. Datasets
without an official split are split deterministically by :func:`split_items`.
"""

from __future__ import annotations

import os

from .public_csv import chestxray14_csv, ham10000_csv, messidor2_csv
from .readers import IMAGE_SUFFIXES, Datalist, DatalistError, image_list, load_datalist, load_medmnist_npz
from .splits import group_by, select_split, split_items, spread_items

__all__ = [
    "split_items",
    "select_split",
    "spread_items",
    "image_folder",
    "dataset_items",
    "folder_classes",
    "match_folders",
]


def folder_classes(root: str) -> list[str]:
    """The class sub-folders of an ``image_folder`` set, sorted (of ``Training/`` when the set has one)."""
    if not os.path.isdir(root):
        raise DatalistError(f"image folder not found: {root}")
    sub = {d.lower(): d for d in os.listdir(root)}
    if "training" in sub and "testing" in sub:
        root = os.path.join(root, sub["training"])
    return sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))


def match_folders(root: str, class_names) -> list[str]:
    """The sub-folder of ``root`` for each name of ``class_names``, in that order (label k = the k-th name), matched
    case-insensitively; stops naming both lists when they are not the same set of classes."""
    folders = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    by_lower = {}
    for d in folders:
        by_lower.setdefault(d.lower(), []).append(d)
    names = [str(n) for n in class_names]
    clash = [v for v in by_lower.values() if len(v) > 1]
    missing = [n for n in names if n.lower() not in by_lower]
    extra = [d for d in folders if d.lower() not in {n.lower() for n in names}]
    if clash or missing or extra or len({n.lower() for n in names}) != len(names):
        raise DatalistError(
            f"{root}: class_names {names} do not match its class folders {folders}"
            + (f" (no folder for {missing})" if missing else "")
            + (f" (folders not in class_names: {extra})" if extra else "")
            + (f" (folders differing only in case: {clash})" if clash else "")
            + ". With data_format 'folder' the labels are the folders: leave --class_names out to use the folder "
            "names, or give one name per folder (any order: label k is the folder named class_names[k])."
        )
    return [by_lower[n.lower()][0] for n in names]


def image_folder(
    root: str,
    split: str = "training",
    classes: list[str] | None = None,
    seed: int = 0,
    group_pattern: str | None = None,
    split_by: str | None = None,
) -> list[dict]:
    """One sub-folder per class (e.g. the brain-tumour MRI set: ``glioma/ meningioma/ notumor/ pituitary/``).
    If ``root`` has ``Training/`` and ``Testing/`` folders, ``Testing`` is the test split and ``validation`` a seeded
    15% of ``Training``'s patients.

    ``classes`` (the config id ``class_names``): label ``k`` is the folder named ``classes[k]`` (case-insensitive);
    names that are not exactly the folders stop the run (:func:`match_folders`). Without it, the sorted folder
    names. Splits are by patient: ``group_pattern`` is a regex whose first group finds the patient id in a file name
    (e.g. ``"^(\\w+?)_"`` for ``P001_left.png``); a folder set without patient ids needs ``split_by="image"``, said
    explicitly, or it stops with an error (see :func:`~medmae_ext.data.splits.group_by`)."""
    if not os.path.isdir(root):
        raise DatalistError(f"image folder not found: {root}")
    sub = {d.lower(): d for d in os.listdir(root)}
    if "training" in sub and "testing" in sub:
        if split == "test":
            return image_folder(os.path.join(root, sub["testing"]), "all", classes, seed)
        items = image_folder(os.path.join(root, sub["training"]), "all", classes, seed)
        key = group_by(items, root, None, group_pattern, split_by)
        return split_items(items, split, 0.15, 0.0, seed, key)
    folders = match_folders(root, classes) if classes else folder_classes(root)
    if not folders:
        raise DatalistError(f"{root} has no class sub-folders")
    items = []
    for k, c in enumerate(folders):
        cdir = os.path.join(root, c)
        for f in sorted(os.listdir(cdir)):
            if f.lower().endswith(IMAGE_SUFFIXES):
                items.append({"image": os.path.join(cdir, f), "label": k, "id": f"{c}/{f}"})
    if not items:
        raise DatalistError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {root}")
    if split == "all":
        return items
    key = group_by(items, root, None, group_pattern, split_by)
    return split_items(items, split, seed=seed, group_key=key)


def dataset_items(
    data_format: str,
    path: str,
    split: str = "training",
    max_items: int | None = None,
    class_names=None,
    synthetic: dict | None = None,
    **kwargs,
) -> list[dict]:
    """One entry point for every bundle config (``data_format`` / ``data_path`` / ``data_kwargs`` config ids):

    * ``datalist`` -- decathlon-style JSON with ``training``/``validation``/``test`` sections (synthetic default);
    * ``medmnist`` -- a MedMNIST ``.npz`` (images in memory, same orientation as the PNG loader);
    * ``chestxray14``, ``ham10000``, ``messidor2``, ``folder`` -- see :mod:`~medmae_ext.data.public_csv` and :func:`image_folder`;
    * ``images`` -- a folder of images / volumes / DICOM series folders with no labels (pretraining, inference).

    ``max_items`` keeps that many items spread evenly over the split (quick runs; a file sorted by class, such as
    PneumoniaMNIST, still gives every class); ``kwargs`` go to the reader.

    ``select_frac`` (data_kwargs ``{"select_frac": 0.1}``): the ``validation`` split becomes a seeded,
    label-stratified ``select_frac`` of the reader's *training* split (by patient where items carry one) and
    ``training`` the rest, so that choosing the checkpoint on ``validation`` never looks at the reader's own
    validation split, which ``evaluate.json`` can then score untouched (run it without ``select_frac``).
    ``select_seed`` (default 0) seeds the cut; ``test`` is unchanged.

    ``class_names`` (the bundles pass theirs) names the classes of a 'folder' set (:func:`image_folder`); the other
    formats carry class indices and ignore it. The result is a :class:`~medmae_ext.data.readers.Datalist` (a list
    that knows it was read by the bundle, as opposed to items a caller such as MONAI Label gives directly).

    ``synthetic`` (the bundles pass their config id ``synthetic``: ``{"dir": ..., "kind": "2d" | "3d"}``): when
    ``path`` is that synthetic set's datalist, the set is written first if missing -- so it is made only when the
    default is actually read.
    """
    from .synthetic import ensure_synthetic

    ensure_synthetic(data_format, path, synthetic)
    select_frac = float(kwargs.pop("select_frac", 0.0) or 0.0)
    select_seed = int(kwargs.pop("select_seed", 0))
    if select_frac:
        if not 0.0 < select_frac < 1.0:
            raise DatalistError(f"data_kwargs 'select_frac' must be in (0, 1), got {select_frac}")
        if split not in ("training", "validation"):
            return dataset_items(data_format, path, split, max_items, class_names, **kwargs)
        train = dataset_items(data_format, path, "training", None, class_names, **kwargs)
        return Datalist(spread_items(select_split(train, split, select_frac, select_seed, source=path), max_items))
    readers = {
        "datalist": lambda: load_datalist(path, split, is_segmentation=None, **kwargs),
        "medmnist": lambda: load_medmnist_npz(path, split, **kwargs),
        "chestxray14": lambda: chestxray14_csv(path, split=split, **kwargs),
        "ham10000": lambda: ham10000_csv(path, split=split, **kwargs),
        "messidor2": lambda: messidor2_csv(path, split=split, **kwargs),
        "folder": lambda: image_folder(path, split, **{"classes": class_names, **kwargs}),
        "images": lambda: image_list(path, **kwargs),
    }
    if data_format not in readers:
        raise DatalistError(f"unknown data_format {data_format!r}: use one of {sorted(readers)}")
    return Datalist(spread_items(readers[data_format](), max_items))
