"""Datalists for the classification bundle from the layouts public medical datasets ship in.

Every reader returns MONAI-style items ``{"image": path or array, "label": int or multi-hot float vector, "id"}``
and raises :class:`~medmae_ext.data.readers.DatalistError` naming the file, column or folder at fault. Datasets
without an official split are split deterministically by :func:`split_items`.
"""

from __future__ import annotations

import csv
import logging
import os

import numpy as np

from .readers import Datalist, DatalistError, check_files, image_list, load_datalist, load_medmnist_npz
from .splits import SPLITS, group_by, select_split, split_items, spread_items

__all__ = [
    "CHESTXRAY14_CLASSES",
    "HAM10000_CLASSES",
    "split_items",
    "select_split",
    "spread_items",
    "chestxray14_csv",
    "ham10000_csv",
    "messidor2_csv",
    "image_folder",
    "dataset_items",
    "folder_classes",
    "match_folders",
]

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
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm", ".nii", ".nii.gz")

logger = logging.getLogger(__name__)


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
            if f.lower().endswith(IMAGE_EXTS):
                items.append({"image": os.path.join(cdir, f), "label": k, "id": f"{c}/{f}"})
    if not items:
        raise DatalistError(f"no images ({', '.join(IMAGE_EXTS)}) under {root}")
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
    * ``chestxray14``, ``ham10000``, ``messidor2``, ``folder`` -- see their readers in this module;
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
