"""Class labels of the classification bundles: the default class names, where each label came from (for the run
record), and the checks of every label before training."""

from __future__ import annotations

import logging
import os

import numpy as np

from .classification import dataset_items, folder_classes, match_folders
from .readers import DatalistError

__all__ = ["check_labels", "class_names_for", "classification_items", "label_source"]

logger = logging.getLogger(__name__)


def class_names_for(data_format: str, data_path: str, settings) -> list[str]:
    """Default ``class_names``: the recorded ones when ``settings`` (a :class:`~medmae_ext.bundle.settings.Settings`)
    come from a trained model's record; else, for ``data_format`` 'folder', the folder names; else the config's."""
    if "class_names" in getattr(settings, "recorded", {}):
        return list(settings["class_names"])
    if data_format == "folder":
        return folder_classes(data_path)
    return list(settings["class_names"])


def label_source(data_format: str, data_path: str, class_names) -> str:
    """Where the class labels come from and how they map to ``class_names`` (for the run record)."""
    names = [str(n) for n in class_names]
    if data_format == "folder":
        root = os.path.join(data_path, "Training") if os.path.isdir(os.path.join(data_path, "Training")) else data_path
        folders = match_folders(root, names)
        return f"folder names under {os.path.abspath(data_path)}: " + ", ".join(
            f"{f}/ -> {k} {n}" for k, (f, n) in enumerate(zip(folders, names, strict=False))
        )
    return (
        f"label values of data_format {data_format!r} ({os.path.abspath(str(data_path))}); names from config id "
        "class_names: " + ", ".join(f"{k} = {n}" for k, n in enumerate(names))
    )


def classification_items(
    data_format: str,
    path: str,
    split: str,
    num_classes: int,
    multi_label: bool = False,
    class_names=None,
    label_key: str = "label",
    **kwargs,
) -> list[dict]:
    """:func:`dataset_items` of ``split``, its class labels checked (:func:`check_labels`): the classification
    bundles' training, validation and evaluation items."""
    items = dataset_items(data_format, path, split, class_names=class_names, **kwargs)
    return check_labels(items, num_classes, label_key, multi_label, class_names, path)


def check_labels(
    items: list[dict],
    num_classes: int,
    label_key: str = "label",
    multi_label: bool = False,
    class_names=None,
    source: str = "datalist",
) -> list[dict]:
    """Check every item's class label before training; returns ``items``.

    Errors name the item (id and image file) and the config ids to change: a missing or non-integer label, a label
    outside ``0 .. num_classes - 1``, a multi-hot vector of the wrong length -- and a head larger than the labels
    (the highest class never occurs: e.g. binary data with the default three ``class_names``), which trains fine
    and scores nonsense (AUC NaN for the class that never occurs).
    """
    names = f" {list(class_names)}" if class_names is not None else ""
    seen = set()
    for i, it in enumerate(items):
        image = it.get("image") if isinstance(it.get("image"), str) else "in memory"
        where = f"{source}: item {i} (id={it.get('id', '?')}, image={image})"
        if label_key not in it:
            raise DatalistError(f"{where} has no {label_key!r} (config id 'label_key'; keys: {sorted(it)})")
        y = it[label_key]
        if multi_label:
            v = np.asarray(y, dtype=np.float32).reshape(-1)
            if v.size != num_classes or not np.isin(v, (0.0, 1.0)).all():
                raise DatalistError(
                    f"{where}: multi-hot label {v.tolist()} does not have {num_classes} 0/1 entries "
                    f"(config ids 'class_names'{names} / 'num_classes')"
                )
            seen.update(np.flatnonzero(v).tolist())
            continue
        arr = np.asarray(y)
        if arr.size != 1 or not (
            np.issubdtype(arr.dtype, np.integer) or (np.issubdtype(arr.dtype, np.floating) and float(arr) == int(arr))
        ):
            raise DatalistError(f"{where}: label {y!r} is not a class index (an integer 0..{num_classes - 1})")
        k = int(arr)
        if not 0 <= k < num_classes:
            raise DatalistError(
                f"{where}: label {k} is outside 0..{num_classes - 1} (num_classes={num_classes}"
                f"{', class_names' + names if names else ''}); fix the label or pass --class_names "
                f"with one name per class"
            )
        seen.add(k)
    if items and not multi_label and max(seen) + 1 < num_classes:
        raise DatalistError(
            f"{source}: labels use classes {sorted(seen)} but the network has {num_classes} outputs "
            f"(class_names{names or ' / num_classes'}): classes {list(range(max(seen) + 1, num_classes))} never occur. "
            "Pass --class_names with one name per class of your data (e.g. \"['normal','pneumonia']\")."
        )
    missing = sorted(set(range(num_classes)) - seen)
    if items and missing:
        logger.warning(f"{source}: classes {missing} do not occur in this split")
    return items
