"""Checks of a run's item lists made before training: every item has the keys its neighbours have, no item is
there twice, and validation does not repeat training.

* An item without a key the others have (a ``mask`` missing on one image) used to fail in the collate function,
  mid-epoch, with ``KeyError: 'mask'`` and no item named: :func:`check_item_keys` names it before training.
* The same file, or the same image content under another name, listed twice trains on it twice; a validation item
  that is also a training item inflates every validation figure. :func:`check_splits` warns with the counts and
  examples, and stops when the validation split *is* the training split.

Content is compared by a digest: arrays (MedMNIST) by their bytes; files first by size and then, only among files of
equal size, by their bytes (so a 112k-image set is not read in full); a DICOM series folder by its files.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import Counter, defaultdict

import numpy as np

from .readers import DatalistError

__all__ = ["check_item_keys", "check_splits", "content_digests"]

logger = logging.getLogger(__name__)


def _name(it: dict, i: int) -> str:
    img = it.get("image")
    return f"item {i} (id={it.get('id', '?')}{', image=' + img if isinstance(img, str) else ''})"


def check_item_keys(items, source: str = "datalist") -> list:
    """Stop, naming the first item and key, when an item lacks a key that other items of the list have."""
    counts = Counter(k for it in items for k in it)
    partial = sorted(k for k, n in counts.items() if n < len(items))
    if partial:
        k = partial[0]
        i, it = next((i, it) for i, it in enumerate(items) if k not in it)
        raise DatalistError(
            f"{source}: {_name(it, i)} has no {k!r}, which {counts[k]} of the {len(items)} items have "
            f"(keys of this item: {sorted(it)}): give every item the same keys"
        )
    return items


def _file_digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _folder_files(path: str) -> list[str]:
    return sorted(os.path.join(path, f) for f in os.listdir(path) if os.path.isfile(os.path.join(path, f)))


def content_digests(items, key: str = "image") -> list[str | None]:
    """A digest of each item's ``key`` content: equal digests mean equal content (None: not comparable)."""
    out: list[str | None] = [None] * len(items)
    by_size: dict[tuple, list[int]] = defaultdict(list)
    for i, it in enumerate(items):
        v = it.get(key)
        if isinstance(v, (np.ndarray,)) or hasattr(v, "numpy"):
            a = np.ascontiguousarray(np.asarray(v))
            out[i] = "array:" + hashlib.sha256(str(a.shape).encode() + str(a.dtype).encode() + a.tobytes()).hexdigest()
        elif isinstance(v, str) and os.path.isfile(v):
            by_size[("file", os.path.getsize(v))].append(i)
        elif isinstance(v, str) and os.path.isdir(v):
            files = _folder_files(v)
            by_size[("folder", tuple(os.path.getsize(f) for f in files))].append(i)
    for (kind, _), idx in by_size.items():
        if len(idx) < 2:
            continue  # a size no other item has: content unique
        for i in idx:
            v = items[i][key]
            out[i] = _file_digest(v) if kind == "file" else "|".join(_file_digest(f) for f in _folder_files(v))
    return out


def _duplicates(items, digests) -> list[list[int]]:
    groups: dict[str, list[int]] = defaultdict(list)
    for i, (it, d) in enumerate(zip(items, digests, strict=False)):
        path = it.get("image")
        groups["path:" + os.path.abspath(path) if isinstance(path, str) else f"#{i}"].append(i)
        if d is not None:
            groups["content:" + d].append(i)
    seen, out = set(), []
    for idx in groups.values():
        idx = sorted(set(idx))
        if len(idx) > 1 and tuple(idx) not in seen:
            seen.add(tuple(idx))
            out.append(idx)
    return out


def check_splits(train, validation=None, source: str = "datalist", key: str = "image") -> list:
    """Before training: keys (:func:`check_item_keys`) of each split; duplicated items within a split and validation
    items that repeat training items (same file or same content) are warned about with counts and examples; a
    validation split equal to the training split stops the run. Returns ``train``."""
    train = list(train or [])
    validation = list(validation or [])
    check_item_keys(train, f"{source} [training]")
    if validation:
        check_item_keys(validation, f"{source} [validation]")
    both = train + validation
    digests = content_digests(both, key)
    dt, dv = digests[: len(train)], digests[len(train) :]
    for name, items, d in (("training", train, dt), ("validation", validation, dv)):
        dup = _duplicates(items, d)
        if dup:
            extra = sum(len(g) - 1 for g in dup)
            examples = "; ".join(" = ".join(str(items[i].get("id", i)) for i in g[:3]) for g in dup[:3])
            logger.warning(
                f"{source} [{name}]: {extra} item(s) repeat another item of the split (same file or same "
                f"image content; {len(dup)} group(s), e.g. {examples}): each is trained / scored more than "
                "once"
            )
    if not validation:
        return train

    def keys_of(items, d):
        return [("path:" + os.path.abspath(it[key])) if isinstance(it.get(key), str) else None for it in items], d

    tp, tc = keys_of(train, dt)
    vp, vc = keys_of(validation, dv)
    train_keys = {k for k in tp + tc if k is not None}
    shared = [
        i for i, (p, c) in enumerate(zip(vp, vc, strict=False)) if (p and p in train_keys) or (c and c in train_keys)
    ]
    if shared and len(shared) == len(validation) and len(validation) == len(train):
        raise DatalistError(
            f"{source}: the validation split is the training split ({len(train)} items, every one in both): the "
            "validation metric and the best model chosen by it would measure memorisation. Give a validation "
            "section / split of its own."
        )
    if shared:
        examples = ", ".join(str(validation[i].get("id", i)) for i in shared[:5])
        logger.warning(
            f"{source}: {len(shared)} of the {len(validation)} validation items are also training items "
            f"(same file or same image content, e.g. {examples}): validation figures are inflated"
        )
    return train
