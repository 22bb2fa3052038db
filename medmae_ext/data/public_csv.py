"""Datalists from the CSV layouts public medical datasets ship in: NIH ChestX-ray14, HAM10000, Messidor-2.

Every reader returns MONAI-style items ``{"image": path, "label": int or multi-hot float vector, "id"}`` split by
patient (or lesion), and raises :class:`~medmae_ext.data.readers.DatalistError` naming the file, row and column at
fault. :func:`~medmae_ext.data.classification.dataset_items` reaches them as ``data_format`` ``chestxray14``,
``ham10000`` and ``messidor2``.
"""

from __future__ import annotations

import csv
import os

import numpy as np

from .readers import IMAGE_SUFFIXES, DatalistError, check_files
from .splits import SPLITS, group_by, split_items

__all__ = ["CHESTXRAY14_CLASSES", "HAM10000_CLASSES", "chestxray14_csv", "ham10000_csv", "messidor2_csv"]

CHESTXRAY14_CLASSES = [
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
]
HAM10000_CLASSES = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]


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
        for ext in ("",) + IMAGE_SUFFIXES + tuple(e.upper() for e in IMAGE_SUFFIXES):
            p = os.path.join(d, stem + ext)
            if os.path.isfile(p):
                return p
    return None


def chestxray14_csv(
    csv_path: str,
    image_dir: str,
    split: str = "training",
    split_dir: str | None = None,
    val_frac: float = 0.1,
    seed: int = 0,
) -> list[dict]:
    """NIH ChestX-ray14 ``Data_Entry_2017.csv`` (``Image Index``, ``Finding Labels`` = ``A|B`` or ``No Finding``):
    multi-label items with a 14-dim multi-hot ``label``. With ``split_dir`` holding the official
    ``train_val_list.txt`` / ``test_list.txt``, ``test`` is the official test list and ``validation`` a seeded
    ``val_frac`` of train_val's *patients*; otherwise everything is split by patient with :func:`split_items`.
    The patient is the ``Patient ID`` column, or the 8-digit prefix of ``Image Index`` (NIH's naming)."""
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
        patient = (r.get("Patient ID") or "").strip() or r["Image Index"].split("_")[0]
        items.append(
            {
                "image": os.path.join(image_dir, r["Image Index"]),
                "label": label,
                "id": r["Image Index"],
                "patient": patient,
            }
        )
    if split_dir:
        lists = {}
        for name in ("train_val_list.txt", "test_list.txt"):
            p = os.path.join(split_dir, name)
            if not os.path.isfile(p):
                raise DatalistError(f"official split file not found: {p}")
            with open(p) as f:
                lists[name] = {ln.strip() for ln in f if ln.strip()}
        if split == "test":
            chosen = [it for it in items if it["id"] in lists["test_list.txt"]]
        else:
            tv = [it for it in items if it["id"] in lists["train_val_list.txt"]]
            parts = {
                "validation": split_items(tv, "validation", val_frac, 0.0, seed, "patient"),
                "training": split_items(tv, "training", val_frac, 0.0, seed, "patient"),
            }
            if split not in parts:
                raise DatalistError(f"unknown split {split!r}: use one of {SPLITS}")
            chosen = parts[split]
    else:
        chosen = split_items(items, split, val_frac, 0.2, seed, "patient")
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
            raise DatalistError(f"{csv_path} row {i + 2}: image {r['image_id']!r} not found in {dirs}")
        items.append(
            {
                "image": path,
                "label": HAM10000_CLASSES.index(r["dx"]),
                "id": r["image_id"],
                "group": r.get("lesion_id") or r["image_id"],
            }
        )
    groups = sorted({it["group"] for it in items})
    keep = {g["group"] for g in split_items([{"group": g} for g in groups], split, seed=seed)}
    return [{k: v for k, v in it.items() if k != "group"} for it in items if it["group"] in keep]


def messidor2_csv(
    csv_path: str,
    image_dir: str,
    split: str = "training",
    seed: int = 0,
    group_column: str | None = None,
    group_pattern: str | None = None,
    split_by: str | None = None,
) -> list[dict]:
    """Messidor-2 adjudicated grades (``messidor_data.csv``: ``image_id``, ``adjudicated_dr_grade`` 0-4,
    ``adjudicated_gradable``); ungradable images (grade empty or gradable 0) are left out.

    Messidor-2 has two images (eyes) per examination; the split is by patient: a ``patient_id`` column when the CSV
    has one, else ``group_column`` / ``group_pattern`` (see :func:`~medmae_ext.data.splits.group_by`), else an error -- or
    ``split_by="image"`` to accept image-level splits knowingly."""
    rows = _read_csv(csv_path, ["image_id", "adjudicated_dr_grade"])
    if group_column is None and group_pattern is None and "patient_id" in rows[0]:
        group_column = "patient_id"
    items, kept = [], []
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
            raise DatalistError(f"{csv_path} row {i + 2}: image {r['image_id']!r} not found in {image_dir}")
        items.append({"image": path, "label": g, "id": r["image_id"]})
        kept.append(r)
    key = group_by(items, csv_path, group_column, group_pattern, split_by, kept)
    return split_items(items, split, seed=seed, group_key=key)
