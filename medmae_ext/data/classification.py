"""Datalists for the classification bundle from the layouts public medical datasets ship in.

Every reader returns MONAI-style items ``{"image": path or array, "label": int or multi-hot float vector, "id"}``
and raises :class:`~medmae_ext.data.readers.DatalistError` naming the file, column or folder at fault. Datasets
without an official split are split deterministically by :func:`split_items`.
"""

from __future__ import annotations

import csv
import os
import random

import numpy as np

from .readers import DatalistError, check_files, load_datalist, load_medmnist_npz

__all__ = [
    "CHESTXRAY14_CLASSES", "HAM10000_CLASSES", "split_items", "chestxray14_csv", "ham10000_csv", "messidor2_csv",
    "image_folder", "classification_datalist",
]

CHESTXRAY14_CLASSES = [
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia", "Pneumothorax",
    "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia",
]
HAM10000_CLASSES = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm", ".nii", ".nii.gz")
SPLITS = ("training", "validation", "test")


def split_items(items: list[dict], split: str, val_frac: float = 0.15, test_frac: float = 0.15, seed: int = 0):
    """Deterministic shuffle-and-cut of ``items`` into training / validation / test."""
    if split not in SPLITS:
        raise DatalistError(f"unknown split {split!r}: use one of {SPLITS}")
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    n_val, n_test = int(round(len(items) * val_frac)), int(round(len(items) * test_frac))
    cut = {"validation": order[:n_val], "test": order[n_val:n_val + n_test], "training": order[n_val + n_test:]}
    return [items[i] for i in sorted(cut[split])]


def _read_csv(path: str, required: list[str]) -> list[dict]:
    if not os.path.isfile(path):
        raise DatalistError(f"CSV file not found: {path}")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise DatalistError(f"{path} has no data rows")
    missing = [c for c in required if c not in rows[0]]
    if missing:
        raise DatalistError(f"{path} lacks column(s) {missing} (columns: {list(rows[0])})")
    return rows


def _find_image(stem: str, dirs: list[str]) -> str | None:
    for d in dirs:
        for ext in ("",) + IMAGE_EXTS + tuple(e.upper() for e in IMAGE_EXTS):
            p = os.path.join(d, stem + ext)
            if os.path.isfile(p):
                return p
    return None


def chestxray14_csv(csv_path: str, image_dir: str, split: str = "training", split_dir: str | None = None,
                    val_frac: float = 0.1, seed: int = 0) -> list[dict]:
    """NIH ChestX-ray14 ``Data_Entry_2017.csv`` (``Image Index``, ``Finding Labels`` = ``A|B`` or ``No Finding``):
    multi-label items with a 14-dim multi-hot ``label``. With ``split_dir`` holding the official
    ``train_val_list.txt`` / ``test_list.txt``, ``test`` is the official test list and ``validation`` a seeded
    ``val_frac`` of train_val; otherwise everything is split by :func:`split_items`."""
    rows = _read_csv(csv_path, ["Image Index", "Finding Labels"])
    items = []
    for i, r in enumerate(rows):
        findings = [f.strip() for f in r["Finding Labels"].split("|") if f.strip() and f.strip() != "No Finding"]
        unknown = [f for f in findings if f not in CHESTXRAY14_CLASSES]
        if unknown:
            raise DatalistError(f"{csv_path} row {i + 2}: unknown finding(s) {unknown} in 'Finding Labels'")
        label = np.zeros(len(CHESTXRAY14_CLASSES), np.float32)
        for f in findings:
            label[CHESTXRAY14_CLASSES.index(f)] = 1.0
        items.append({"image": os.path.join(image_dir, r["Image Index"]), "label": label, "id": r["Image Index"]})
    if split_dir:
        lists = {}
        for name in ("train_val_list.txt", "test_list.txt"):
            p = os.path.join(split_dir, name)
            if not os.path.isfile(p):
                raise DatalistError(f"official split file not found: {p}")
            lists[name] = {ln.strip() for ln in open(p) if ln.strip()}
        if split == "test":
            chosen = [it for it in items if it["id"] in lists["test_list.txt"]]
        else:
            tv = [it for it in items if it["id"] in lists["train_val_list.txt"]]
            parts = {"validation": split_items(tv, "validation", val_frac, 0.0, seed),
                     "training": split_items(tv, "training", val_frac, 0.0, seed)}
            if split not in parts:
                raise DatalistError(f"unknown split {split!r}: use one of {SPLITS}")
            chosen = parts[split]
    else:
        chosen = split_items(items, split, val_frac, 0.2, seed)
    return check_files(chosen, csv_path)


def ham10000_csv(csv_path: str, image_dirs, split: str = "training", seed: int = 0) -> list[dict]:
    """HAM10000 ``HAM10000_metadata.csv`` (``image_id``, ``dx``); images ``<image_id>.jpg`` in any of
    ``image_dirs`` (``HAM10000_images_part_1`` / ``_part_2``). Labels index :data:`HAM10000_CLASSES`. The split is
    by ``lesion_id`` when present, so images of one lesion never straddle splits."""
    rows = _read_csv(csv_path, ["image_id", "dx"])
    dirs = [image_dirs] if isinstance(image_dirs, str) else list(image_dirs)
    items = []
    for i, r in enumerate(rows):
        if r["dx"] not in HAM10000_CLASSES:
            raise DatalistError(f"{csv_path} row {i + 2}: unknown dx {r['dx']!r} (known: {HAM10000_CLASSES})")
        path = _find_image(r["image_id"], dirs)
        if path is None:
            raise DatalistError(f"{csv_path} row {i + 2}: image '{r['image_id']}' not found in {dirs}")
        items.append({"image": path, "label": HAM10000_CLASSES.index(r["dx"]), "id": r["image_id"],
                      "group": r.get("lesion_id") or r["image_id"]})
    groups = sorted({it["group"] for it in items})
    keep = {g["group"] for g in split_items([{"group": g} for g in groups], split, seed=seed)}
    return [{k: v for k, v in it.items() if k != "group"} for it in items if it["group"] in keep]


def messidor2_csv(csv_path: str, image_dir: str, split: str = "training", seed: int = 0) -> list[dict]:
    """Messidor-2 adjudicated grades (``messidor_data.csv``: ``image_id``, ``adjudicated_dr_grade`` 0-4,
    ``adjudicated_gradable``); ungradable images (grade empty or gradable 0) are left out."""
    rows = _read_csv(csv_path, ["image_id", "adjudicated_dr_grade"])
    items = []
    for i, r in enumerate(rows):
        grade = (r["adjudicated_dr_grade"] or "").strip()
        if not grade or (r.get("adjudicated_gradable", "1").strip() == "0"):
            continue
        try:
            g = int(float(grade))
        except ValueError:
            raise DatalistError(f"{csv_path} row {i + 2}: 'adjudicated_dr_grade' is {grade!r}, expected 0-4") from None
        if not 0 <= g <= 4:
            raise DatalistError(f"{csv_path} row {i + 2}: 'adjudicated_dr_grade' {g} outside 0-4")
        stem = os.path.splitext(r["image_id"])[0]
        path = _find_image(r["image_id"], [image_dir]) or _find_image(stem, [image_dir])
        if path is None:
            raise DatalistError(f"{csv_path} row {i + 2}: image '{r['image_id']}' not found in {image_dir}")
        items.append({"image": path, "label": g, "id": r["image_id"]})
    return split_items(items, split, seed=seed)


def image_folder(root: str, split: str = "training", classes: list[str] | None = None, seed: int = 0) -> list[dict]:
    """One sub-folder per class (e.g. the brain-tumour MRI set: ``glioma/ meningioma/ notumor/ pituitary/``).
    If ``root`` has ``Training/`` and ``Testing/`` folders, ``Testing`` is the test split and ``validation`` a seeded
    15% of ``Training``."""
    if not os.path.isdir(root):
        raise DatalistError(f"image folder not found: {root}")
    sub = {d.lower(): d for d in os.listdir(root)}
    if "training" in sub and "testing" in sub:
        if split == "test":
            return image_folder(os.path.join(root, sub["testing"]), "all", classes, seed)
        items = image_folder(os.path.join(root, sub["training"]), "all", classes, seed)
        return split_items(items, split, 0.15, 0.0, seed)
    classes = classes or sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    if not classes:
        raise DatalistError(f"{root} has no class sub-folders")
    items = []
    for k, c in enumerate(classes):
        cdir = os.path.join(root, c)
        if not os.path.isdir(cdir):
            raise DatalistError(f"class folder not found: {cdir}")
        for f in sorted(os.listdir(cdir)):
            if f.lower().endswith(IMAGE_EXTS):
                items.append({"image": os.path.join(cdir, f), "label": k, "id": f"{c}/{f}"})
    if not items:
        raise DatalistError(f"no images ({', '.join(IMAGE_EXTS)}) under {root}")
    return items if split == "all" else split_items(items, split, seed=seed)


def classification_datalist(data_format: str, path: str, split: str = "training", **kwargs) -> list[dict]:
    """One entry point for the bundle configs: ``data_format`` is ``datalist`` (decathlon-style JSON with
    ``training``/``validation``/``test`` sections), ``medmnist`` (.npz), ``chestxray14``, ``ham10000``,
    ``messidor2`` or ``folder``; ``kwargs`` go to the reader."""
    readers = {
        "datalist": lambda: load_datalist(path, split, is_segmentation=False, **kwargs),
        "medmnist": lambda: load_medmnist_npz(path, split, **kwargs),
        "chestxray14": lambda: chestxray14_csv(path, split=split, **kwargs),
        "ham10000": lambda: ham10000_csv(path, split=split, **kwargs),
        "messidor2": lambda: messidor2_csv(path, split=split, **kwargs),
        "folder": lambda: image_folder(path, split, **kwargs),
    }
    if data_format not in readers:
        raise DatalistError(f"unknown data_format {data_format!r}: use one of {sorted(readers)}")
    return readers[data_format]()
