"""A source atlas's label ids as the bundle's classes (the config id ``label_map``), and the organ volumes that tell a
map written for another atlas (version): a class far outside its organ's plausible volume is warned about.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ..errors import LabelError

__all__ = ["label_lookup", "map_label_ids", "ORGAN_VOLUMES_ML", "organ_range", "volume_warnings"]

#: plausible volume (mL) of a whole adult organ, by a word in its label name: a class far outside its range after
#: ``label_map`` (an adrenal gland trained as "aorta", the stomach as "liver") is warned about. Above 2x the top is
#: always suspect; below half the bottom only when the organ does not reach the edge of the volume (a field of view
#: that cuts an organ leaves a part of it). Sources: adult CT volumetry ranges, rounded outward.
ORGAN_VOLUMES_ML = {
    "liver": (800, 3000),
    "spleen": (40, 1000),
    "kidney": (50, 400),
    "kidneys": (100, 800),
    "aorta": (10, 400),
    "pancreas": (30, 200),
    "stomach": (50, 2000),
    "gallbladder": (5, 200),
    "adrenal": (1, 25),
    "esophagus": (5, 100),
    "lung": (500, 4000),
    "heart": (300, 1500),
    "bladder": (20, 800),
    "prostate": (10, 120),
}


def _as_int(v, what: str) -> int:
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise LabelError(f"label_map: {what} {v!r} is not an integer") from None
    if f != int(f):
        raise LabelError(f"label_map: {what} {v!r} is not an integer")
    return int(f)


def label_lookup(label_map: Mapping | None, num_classes: int) -> np.ndarray | None:
    """``label_map`` ``{source_id: class_index}`` as a lookup table ``lut[source_id] = class_index`` (ids it does not
    name -> 0, background); ``None`` for no mapping. Errors name the config id ``label_map``."""
    if label_map is None:
        return None
    if not isinstance(label_map, Mapping) or not label_map:
        raise LabelError(
            f"label_map must be a non-empty mapping {{source_id: class_index}}, got {label_map!r} "
            '(e.g. --label_map "{5: 1, 1: 2, 2: 3, 3: 3, 52: 4}")'
        )
    pairs = {_as_int(k, "source id"): _as_int(v, f"class for source id {k!r}") for k, v in label_map.items()}
    bad = {k: v for k, v in pairs.items() if k < 0 or not 0 <= v < num_classes}
    if bad:
        raise LabelError(
            f"label_map entries {bad}: source ids must be >= 0 and classes within 0..{num_classes - 1} "
            "(the indices of label_names)"
        )
    lut = np.zeros(max(pairs) + 1, dtype=np.int64)
    for k, v in pairs.items():
        lut[k] = v
    return lut


def map_label_ids(ids: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """Integer source ids -> classes through ``lut`` (from :func:`label_lookup`); ids outside it -> 0."""
    inside = (ids >= 0) & (ids < len(lut))
    return np.where(inside, lut[np.clip(ids, 0, len(lut) - 1)], 0)


def organ_range(name: str) -> tuple[float, float] | None:
    """The :data:`ORGAN_VOLUMES_ML` range for a label name (``"kidney_left"`` -> kidney), or None."""
    words = str(name).lower().replace("-", "_").replace(" ", "_").split("_")
    for w in words:
        if w in ORGAN_VOLUMES_ML:
            return ORGAN_VOLUMES_ML[w]
    return None


def _touches_border(mask: np.ndarray) -> bool:
    return any(mask.take(i, axis=a).any() for a in range(mask.ndim) for i in (0, -1))


def volume_warnings(where: str, path: str, classes: np.ndarray, names: dict, voxel_ml: float) -> tuple[dict, list]:
    """Per-class volume (mL) of one mapped label array, and the warnings for implausible ones."""
    ids, counts = np.unique(classes, return_counts=True)
    volumes = {int(c): float(n) * voxel_ml for c, n in zip(ids, counts, strict=False) if c != 0}
    out = []
    for c, ml in volumes.items():
        rng = organ_range(names.get(c, ""))
        if rng is None:
            continue
        lo, hi = rng
        if ml > 2 * hi or (ml < lo / 2 and not _touches_border(classes == c)):
            out.append(
                f"{where}: class {c} {names[c]!r} is {ml:.1f} mL in {path}, far outside {lo}-{hi} mL for a "
                f"whole {names[c]}{' (and it does not reach the edge of the volume)' if ml < lo else ''}: is "
                "label_map written for this atlas (version)? Check the map against the atlas's id table."
            )
    return volumes, out
