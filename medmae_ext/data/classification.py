"""Datalists for the classification bundle from the layouts public medical datasets ship in.

Every reader returns MONAI-style items ``{"image": path or array, "label": int or multi-hot float vector, "id"}``
and raises :class:`~medmae_ext.data.readers.DatalistError` naming the file, column or folder at fault. Datasets
without an official split are split deterministically by :func:`split_items`.
"""

from __future__ import annotations

import csv
import logging
import os
import random
import re

import numpy as np

from .readers import Datalist, DatalistError, check_files, image_list, load_datalist, load_medmnist_npz

__all__ = [
    "CHESTXRAY14_CLASSES", "HAM10000_CLASSES", "split_items", "select_split", "spread_items", "chestxray14_csv", "ham10000_csv", "messidor2_csv",
    "image_folder", "dataset_items", "check_labels", "folder_classes", "match_folders", "class_names_for", "label_source",
]

CHESTXRAY14_CLASSES = [
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia", "Pneumothorax",
    "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia",
]
HAM10000_CLASSES = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm", ".nii", ".nii.gz")
SPLITS = ("training", "validation", "test")

logger = logging.getLogger(__name__)


def split_items(items: list[dict], split: str, val_frac: float = 0.15, test_frac: float = 0.15, seed: int = 0,
                group_key: str | None = None):
    """Deterministic shuffle-and-cut of ``items`` into training / validation / test.

    With ``group_key`` the *groups* (patients, lesions) are shuffled and cut, so that all items of one patient land
    in one split; the fractions then count groups. Items keep their input order within a split.
    """
    if split not in SPLITS:
        raise DatalistError(f"unknown split {split!r}: use one of {SPLITS}")
    groups = [str(it[group_key]) for it in items] if group_key else [str(i) for i in range(len(items))]
    unique = list(dict.fromkeys(groups))  # first-seen order: deterministic for a given file
    order = list(range(len(unique)))
    random.Random(seed).shuffle(order)
    n_val, n_test = int(round(len(unique) * val_frac)), int(round(len(unique) * test_frac))
    where = {}
    for rank, g in enumerate(order):
        where[unique[g]] = "validation" if rank < n_val else "test" if rank < n_val + n_test else "training"
    return [it for it, g in zip(items, groups) if where[g] == split]


def _group_by(items: list[dict], source: str, group_column: str | None, group_pattern: str | None,
              split_by: str | None, rows: list[dict] | None = None) -> str | None:
    """Give every item a ``patient`` entry (from a CSV column or a file-name pattern) and return the key to split
    on, or None where the user chose image-level splits (``split_by="image"``). Without any of these a clear error:
    splitting the images of one patient across training and test inflates every test figure."""
    if split_by == "image":
        logger.warning(f"{source}: split per image (split_by='image'): images of one patient may be in several splits")
        return None
    if split_by not in (None, "patient"):
        raise DatalistError(f"{source}: split_by must be 'patient' or 'image', got {split_by!r}")
    if group_column:
        if rows is None or group_column not in rows[0]:
            raise DatalistError(f"{source} has no column {group_column!r} (data_kwargs 'group_column')")
        for it, r in zip(items, rows):
            it["patient"] = r[group_column].strip()
        return "patient"
    if group_pattern:
        pat = re.compile(group_pattern)
        for it in items:
            m = pat.search(os.path.basename(str(it["image"])))
            if not m:
                raise DatalistError(
                    f"{source}: file name {os.path.basename(str(it['image']))!r} does not match group_pattern "
                    f"{group_pattern!r} (data_kwargs 'group_pattern')"
                )
            it["patient"] = m.group(1) if m.groups() else m.group(0)
        return "patient"
    raise DatalistError(
        f"{source}: cannot split by patient -- no patient id. Pass data_kwargs {{'group_column': '<CSV column>'}} or "
        "{'group_pattern': '<regex whose first group is the patient id in the file name>'}, or "
        "{'split_by': 'image'} to accept image-level splits (images of one patient may then be in training and test)."
    )


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
        items.append({"image": os.path.join(image_dir, r["Image Index"]), "label": label, "id": r["Image Index"],
                      "patient": patient})
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
            parts = {"validation": split_items(tv, "validation", val_frac, 0.0, seed, "patient"),
                     "training": split_items(tv, "training", val_frac, 0.0, seed, "patient")}
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
            raise DatalistError(f"{csv_path} row {i + 2}: image '{r['image_id']}' not found in {dirs}")
        items.append({"image": path, "label": HAM10000_CLASSES.index(r["dx"]), "id": r["image_id"],
                      "group": r.get("lesion_id") or r["image_id"]})
    groups = sorted({it["group"] for it in items})
    keep = {g["group"] for g in split_items([{"group": g} for g in groups], split, seed=seed)}
    return [{k: v for k, v in it.items() if k != "group"} for it in items if it["group"] in keep]


def messidor2_csv(csv_path: str, image_dir: str, split: str = "training", seed: int = 0,
                  group_column: str | None = None, group_pattern: str | None = None,
                  split_by: str | None = None) -> list[dict]:
    """Messidor-2 adjudicated grades (``messidor_data.csv``: ``image_id``, ``adjudicated_dr_grade`` 0-4,
    ``adjudicated_gradable``); ungradable images (grade empty or gradable 0) are left out.

    Messidor-2 has two images (eyes) per examination; the split is by patient: a ``patient_id`` column when the CSV
    has one, else ``group_column`` / ``group_pattern`` (see :func:`_group_by`), else an error -- or
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
            raise DatalistError(f"{csv_path} row {i + 2}: image '{r['image_id']}' not found in {image_dir}")
        items.append({"image": path, "label": g, "id": r["image_id"]})
        kept.append(r)
    key = _group_by(items, csv_path, group_column, group_pattern, split_by, kept)
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
            + (f" (no folder for {missing})" if missing else "") + (f" (folders not in class_names: {extra})" if extra
                                                                    else "")
            + (f" (folders differing only in case: {clash})" if clash else "")
            + ". With data_format 'folder' the labels are the folders: leave --class_names out to use the folder "
              "names, or give one name per folder (any order: label k is the folder named class_names[k]).")
    return [by_lower[n.lower()][0] for n in names]


def image_folder(root: str, split: str = "training", classes: list[str] | None = None, seed: int = 0,
                 group_pattern: str | None = None, split_by: str | None = None) -> list[dict]:
    """One sub-folder per class (e.g. the brain-tumour MRI set: ``glioma/ meningioma/ notumor/ pituitary/``).
    If ``root`` has ``Training/`` and ``Testing/`` folders, ``Testing`` is the test split and ``validation`` a seeded
    15% of ``Training``'s patients.

    ``classes`` (the config id ``class_names``): label ``k`` is the folder named ``classes[k]`` (case-insensitive);
    names that are not exactly the folders stop the run (:func:`match_folders`). Without it, the sorted folder
    names. Splits are by patient: ``group_pattern`` is a regex whose first group finds the patient id in a file name
    (e.g. ``"^(\\w+?)_"`` for ``P001_left.png``); a folder set without patient ids needs ``split_by="image"``, said
    explicitly, or it stops with an error (see :func:`_group_by`)."""
    if not os.path.isdir(root):
        raise DatalistError(f"image folder not found: {root}")
    sub = {d.lower(): d for d in os.listdir(root)}
    if "training" in sub and "testing" in sub:
        if split == "test":
            return image_folder(os.path.join(root, sub["testing"]), "all", classes, seed)
        items = image_folder(os.path.join(root, sub["training"]), "all", classes, seed)
        key = _group_by(items, root, None, group_pattern, split_by)
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
    key = _group_by(items, root, None, group_pattern, split_by)
    return split_items(items, split, seed=seed, group_key=key)


def class_names_for(data_format: str, data_path: str, settings) -> list[str]:
    """Default ``class_names``: the recorded ones when ``settings`` (a :class:`~medmae_ext.bundle.record.Settings`)
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
            f"{f}/ -> {k} {n}" for k, (f, n) in enumerate(zip(folders, names)))
    return (f"label values of data_format '{data_format}' ({os.path.abspath(str(data_path))}); names from config id "
            "class_names: " + ", ".join(f"{k} = {n}" for k, n in enumerate(names)))


def dataset_items(data_format: str, path: str, split: str = "training", max_items: int | None = None,
                  class_names=None, **kwargs) -> list[dict]:
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
    """
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


def spread_items(items: list[dict], max_items: int | None) -> list[dict]:
    """``max_items`` items at evenly spaced positions of ``items`` (all of them when ``max_items`` is None / 0), so
    that a list sorted by class still gives every class."""
    if not max_items or int(max_items) >= len(items):
        return items
    idx = np.linspace(0, len(items) - 1, int(max_items)).round().astype(int)
    return [items[i] for i in idx]


def select_split(items: list[dict], split: str, frac: float, seed: int = 0, label_key: str = "label",
                 group_key: str = "patient", source: str = "datalist") -> list[dict]:
    """Cut ``items`` into ``training`` (the rest) and ``validation`` (``frac`` of them), stratified by label: each class
    (the label, or the multi-hot vector as a whole) contributes ``round(frac * count)`` items (at least one where it has
    two or more), so a 10%-minority class is 10% of both parts. Items sharing ``group_key`` (a patient) go to one side
    together; the group's first label decides its stratum. Deterministic for a given list and seed."""
    if split not in ("training", "validation"):
        raise DatalistError(f"select_split: split must be 'training' or 'validation', got {split!r}")
    if not items:
        raise DatalistError(f"{source}: the training split is empty, nothing to carve a selection split from")
    groups: dict[str, list[int]] = {}
    for i, it in enumerate(items):
        g = str(it[group_key]) if group_key in it else f"#{i}"
        groups.setdefault(g, []).append(i)
    strata: dict[str, list[str]] = {}
    for g, idx in groups.items():
        y = items[idx[0]].get(label_key)
        key = str(np.asarray(y).reshape(-1).tolist()) if y is not None else "unlabelled"
        strata.setdefault(key, []).append(g)
    rng = random.Random(seed)
    chosen = set()
    for key in sorted(strata):
        gs = strata[key][:]
        rng.shuffle(gs)
        n = int(round(frac * len(gs)))
        if len(gs) >= 2:
            n = min(max(n, 1), len(gs) - 1)
        chosen.update(gs[:n])
    if not chosen:
        raise DatalistError(f"{source}: select_frac={frac} leaves no item for the selection split")
    in_val = {i for g in chosen for i in groups[g]}
    if len(in_val) == len(items):
        raise DatalistError(f"{source}: select_frac={frac} leaves no item for training")
    keep = (lambda i: i in in_val) if split == "validation" else (lambda i: i not in in_val)
    return [it for i, it in enumerate(items) if keep(i)]


def check_labels(items: list[dict], num_classes: int, label_key: str = "label", multi_label: bool = False,
                 class_names=None, source: str = "datalist") -> list[dict]:
    """Check every item's class label before training; returns ``items``.

    Errors name the item (id and image file) and the config ids to change: a missing or non-integer label, a label
    outside ``0 .. num_classes - 1``, a multi-hot vector of the wrong length -- and a head larger than the labels
    (the highest class never occurs: e.g. binary data with the default three ``class_names``), which trains fine
    and scores nonsense (AUC NaN for the class that never occurs).
    """
    names = f" {list(class_names)}" if class_names is not None else ""
    seen = set()
    for i, it in enumerate(items):
        where = f"{source}: item {i} (id={it.get('id', '?')}, image={it.get('image') if isinstance(it.get('image'), str) else 'in memory'})"
        if label_key not in it:
            raise DatalistError(f"{where} has no '{label_key}' (config id 'label_key'; keys: {sorted(it)})")
        y = it[label_key]
        if multi_label:
            v = np.asarray(y, dtype=np.float32).reshape(-1)
            if v.size != num_classes or not np.isin(v, (0.0, 1.0)).all():
                raise DatalistError(f"{where}: multi-hot label {v.tolist()} does not have {num_classes} 0/1 entries "
                                    f"(config ids 'class_names'{names} / 'num_classes')")
            seen.update(np.flatnonzero(v).tolist())
            continue
        arr = np.asarray(y)
        if arr.size != 1 or not (np.issubdtype(arr.dtype, np.integer) or
                                 (np.issubdtype(arr.dtype, np.floating) and float(arr) == int(arr))):
            raise DatalistError(f"{where}: label {y!r} is not a class index (an integer 0..{num_classes - 1})")
        k = int(arr)
        if not 0 <= k < num_classes:
            raise DatalistError(f"{where}: label {k} is outside 0..{num_classes - 1} (num_classes={num_classes}"
                                f"{', class_names' + names if names else ''}); fix the label or pass --class_names "
                                f"with one name per class")
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
