"""Deterministic splits of a dataset's items: by patient (or lesion) where the data names one, a label-stratified
selection cut of training for checkpoint choice, and an even spread for quick runs."""

from __future__ import annotations

import logging
import os
import random
import re

import numpy as np

from .readers import DatalistError

__all__ = ["SPLITS", "group_by", "select_split", "split_items", "spread_items"]

SPLITS = ("training", "validation", "test")

logger = logging.getLogger(__name__)


def split_items(
    items: list[dict],
    split: str,
    val_frac: float = 0.15,
    test_frac: float = 0.15,
    seed: int = 0,
    group_key: str | None = None,
):
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
    return [it for it, g in zip(items, groups, strict=False) if where[g] == split]


def group_by(
    items: list[dict],
    source: str,
    group_column: str | None,
    group_pattern: str | None,
    split_by: str | None,
    rows: list[dict] | None = None,
) -> str | None:
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
        for it, r in zip(items, rows, strict=False):
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


def spread_items(items: list[dict], max_items: int | None) -> list[dict]:
    """``max_items`` items at evenly spaced positions of ``items`` (all of them when ``max_items`` is None / 0), so
    that a list sorted by class still gives every class."""
    if not max_items or int(max_items) >= len(items):
        return items
    idx = np.linspace(0, len(items) - 1, int(max_items)).round().astype(int)
    return [items[i] for i in idx]


def select_split(
    items: list[dict],
    split: str,
    frac: float,
    seed: int = 0,
    label_key: str = "label",
    group_key: str = "patient",
    source: str = "datalist",
) -> list[dict]:
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
