"""Segmentation items (image + label map) and the checks that run on them before training.

* :func:`segmentation_items` -- the datalist reader of the segmentation bundle (decathlon-style JSON; an ``image``
  may be a NIfTI/NRRD/... file or a DICOM series folder).
* :func:`~medmae_ext.data.label_maps.label_lookup` -- the config id ``label_map`` (a source atlas's ids -> the
  bundle's classes) as a lookup table, checked (:mod:`~medmae_ext.data.label_maps`, with the organ volumes).
* :func:`check_segmentation_items` -- reads every item's label (and its image's header) before the first
  iteration: the label must lie on its image's grid (same voxels in space, whatever the storage order) and hold
  integer values that are classes of ``label_names`` (after ``label_map``). Errors name the item, both files and
  the offending values, so that a raw atlas label map or a label drawn on another series stops the run in seconds
  instead of crashing mid-epoch (``index 5 is out of bounds``) or training on misaligned masks.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

import nibabel as nib
import numpy as np

from ..errors import ImageReadError, LabelError
from .geometry import max_position_difference
from .label_maps import label_lookup, map_label_ids, volume_warnings
from .readers import Datalist, DatalistError, load_datalist

__all__ = ["segmentation_items", "check_segmentation_items", "AFFINE_ATOL"]

logger = logging.getLogger(__name__)

#: two grids are the same when their voxel-to-world affines (in the same storage order) agree to this (mm)
AFFINE_ATOL = 1e-2


def segmentation_items(
    data_format: str,
    path: str,
    split: str = "training",
    max_items: int | None = None,
    synthetic: dict | None = None,
    **kwargs,
) -> list[dict]:
    """Image + label-map items for segmentation bundles: ``data_format`` must be ``datalist`` (a decathlon JSON whose
    items have ``image`` and ``label`` files, e.g. BTCV's ``dataset_0.json``; an ``image`` may be a DICOM series
    folder); the other formats carry no masks and are refused with that said."""
    if data_format != "datalist":
        raise DatalistError(
            f"data_format {data_format!r} carries no segmentation masks: a segmentation bundle reads data_format "
            "'datalist' (a decathlon-style JSON whose items have 'image' and 'label' files)"
        )
    from .synthetic import ensure_synthetic

    ensure_synthetic(data_format, path, synthetic)
    items = load_datalist(path, split, required_keys=("image", "label"), **kwargs)
    return Datalist(items[: int(max_items)] if max_items else items)


def _is_nifti(path: str) -> bool:
    return os.path.isfile(path) and path.lower().endswith((".nii", ".nii.gz"))


def _read(path: str, with_data: bool):
    """(spatial shape, channels, RAS affine, voxels or None) of an image/label file or DICOM series folder, as the
    bundles' ``LoadImaged`` sees it; NIfTI headers are read without the voxels unless ``with_data``."""
    try:
        if _is_nifti(path):
            img = nib.load(path)
            shape = tuple(int(s) for s in img.shape)
            spatial, channels = shape[:3], int(np.prod(shape[3:], dtype=np.int64))
            data = np.asanyarray(img.dataobj).reshape(spatial + (channels,)) if with_data else None
            return spatial, channels, np.asarray(img.affine, dtype=np.float64), data
        from monai.transforms import LoadImage

        arr = LoadImage(image_only=True, ensure_channel_first=True)(path)
        data = np.moveaxis(np.asarray(arr), 0, -1) if with_data else None
        return tuple(int(s) for s in arr.shape[1:]), int(arr.shape[0]), np.asarray(arr.affine, np.float64), data
    except Exception as e:
        raise ImageReadError.of(path, e) from e


def _canonical(shape, affine):
    """Shape and affine of the same voxels stored in RAS order, so that a label saved in another storage order (LPS
    from an ITK tool) still matches its image: the bundles' ``Orientationd`` makes them agree anyway."""
    ornt = nib.orientations.io_orientation(affine)
    new_aff = affine @ nib.orientations.inv_ornt_aff(ornt, shape)
    new_shape = [0] * len(shape)
    for i, (axis, _) in enumerate(ornt):
        new_shape[int(axis)] = shape[i]
    return tuple(new_shape), new_aff


def check_segmentation_items(
    items: list[dict],
    label_names,
    label_map: Mapping | None = None,
    in_channels: int | None = None,
    source: str = "datalist",
    require_all_classes: bool = True,
    image_key: str = "image",
    label_key: str = "label",
    organ_volumes: bool = True,
) -> list[dict]:
    """Check every item's label map against its image and the bundle's classes; returns ``items``.

    Per item (errors name the item, both files and the values): the label file and the image header can be read;
    the image has ``in_channels`` channels; the label has one; both are the same grid (equal shape and affine once
    stored in the same orientation, to :data:`AFFINE_ATOL` mm); label values are integers and, after
    ``label_map`` (see :func:`~medmae_ext.data.label_maps.label_lookup`), classes ``0 .. len(label_names) - 1``.
    Over the split: some foreground exists, and (``require_all_classes``, the training split) every class of
    ``label_names`` occurs in some label -- a class never seen cannot be learnt and usually means a ``label_map`` for
    another atlas version; otherwise a warning. A ``label_map`` source id found in no label is warned about.

    Each class's volume in mL per item (after ``label_map``) is logged as a min / median / max per class, and, with
    ``organ_volumes`` (the bundles turn it off for the synthetic phantom, a 10 cm toy), a class far outside the range
    its name implies (:data:`~medmae_ext.data.label_maps.ORGAN_VOLUMES_ML`) is warned about, naming the item; so is
    an item whose label is all background.
    """
    names = (
        {int(k): v for k, v in dict(label_names).items()}
        if isinstance(label_names, Mapping)
        else dict(enumerate(label_names))
    )
    num_classes = len(names)
    lut = label_lookup(label_map, num_classes)
    hint = (
        "set label_map to map the source ids to these classes (unetr_segmentation docs: 'Real CT')"
        if lut is None
        else "extend label_map or fix the label file"
    )
    present: set[int] = set()
    source_ids: set[int] = set()
    per_class_ml: dict[int, list[float]] = {}
    for i, it in enumerate(items):
        img_path, lab_path = it.get(image_key), it.get(label_key)
        where = f"{source}: item {i} (id={it.get('id', '?')})"
        if not isinstance(img_path, str) or not isinstance(lab_path, str):
            raise LabelError(
                f"{where}: {image_key!r} and {label_key!r} must be file paths, got "
                f"{type(img_path).__name__} / {type(lab_path).__name__}"
            )
        i_shape, i_ch, i_aff, _ = _read(img_path, with_data=False)
        l_shape, l_ch, l_aff, lab = _read(lab_path, with_data=True)
        if in_channels is not None and i_ch != in_channels:
            raise LabelError(
                f"{where}: image {img_path} has {i_ch} channel(s), the network expects {in_channels} "
                "(config id 'in_channels')"
            )
        if l_ch != 1:
            raise LabelError(
                f"{where}: label {lab_path} has {l_ch} channels (shape {l_shape + (l_ch,)}); a label map "
                "is one integer class per voxel"
            )
        ci, cl = _canonical(i_shape, i_aff), _canonical(l_shape, l_aff)
        if ci[0] != cl[0]:
            raise LabelError(
                f"{where}: label {lab_path} has spatial shape {l_shape} but its image {img_path} has "
                f"{i_shape}: the label must be drawn on (saved on the grid of) its own image"
            )
        if not np.allclose(ci[1], cl[1], atol=AFFINE_ATOL):
            diff = max_position_difference(ci[0], ci[1], cl[1])
            raise LabelError(
                f"{where}: label {lab_path} and image {img_path} have the same shape but different "
                f"positions in space (the same voxel lies up to {diff:.4g} mm apart in the two files, at a "
                f"corner of the volume):\nimage affine\n"
                f"{np.round(i_aff, 4)}\nlabel affine\n{np.round(l_aff, 4)}\nthe label must be saved on "
                "the grid of its own image"
            )
        values = np.unique(lab)
        if values.dtype.kind == "f":
            frac = values[values != np.round(values)]
            if frac.size:
                raise LabelError(
                    f"{where}: label {lab_path} has non-integer values {frac[:5].tolist()}: a label map "
                    "holds class ids (resampled with linear interpolation? use nearest)"
                )
        ids = values.astype(np.int64)
        if (ids < 0).any():
            raise LabelError(f"{where}: label {lab_path} has negative values {ids[ids < 0][:10].tolist()}")
        source_ids.update(ids.tolist())
        if lut is None:
            outside = ids[ids >= num_classes]
            if outside.size:
                raise LabelError(
                    f"{where}: label {lab_path} has values {outside[:20].tolist()}"
                    f"{' ...' if outside.size > 20 else ''} outside the classes 0..{num_classes - 1} of label_names "
                    f"{names}: {hint}"
                )
            present.update(ids.tolist())
            classes = np.asarray(lab).reshape(l_shape).astype(np.int64)
        else:
            present.update(map_label_ids(ids, lut).tolist())
            classes = map_label_ids(np.asarray(lab).reshape(l_shape).astype(np.int64), lut)
        voxel_ml = abs(float(np.linalg.det(l_aff[:3, :3]))) / 1000.0
        volumes, warnings = volume_warnings(where, lab_path, classes, names, voxel_ml)
        for c, ml in volumes.items():
            per_class_ml.setdefault(c, []).append(ml)
        if organ_volumes:
            for w in warnings:
                logger.warning(w)
        if not volumes and require_all_classes:
            logger.warning(
                f"{where}: label {lab_path} is all background after "
                f"{'label_map' if lut is not None else 'reading'}: this item teaches only background"
            )
    if items and not present - {0}:
        raise LabelError(
            f"{source}: every label is background only"
            f"{' after label_map ' + str(dict(label_map)) if lut is not None else ''} "
            f"(values found: {sorted(source_ids)[:30]}): {hint}"
        )
    missing = {c: names[c] for c in range(1, num_classes) if c not in present}
    if items and missing:
        msg = (
            f"{source}: classes {missing} of label_names occur in no label"
            f"{' after label_map' if lut is not None else ''} (values found: {sorted(source_ids)[:30]})"
        )
        if require_all_classes:
            raise LabelError(
                f"{msg}: the network cannot learn a class it never sees. Fix label_map (another atlas "
                "version?) or drop the class from label_names."
            )
        logger.warning(msg)
    if per_class_ml:
        logger.info(
            f"{source}: class volumes in mL over {len(items)} item(s) (min / median / max): "
            + "; ".join(
                f"{names.get(c, c)} {min(v):.1f} / {float(np.median(v)):.1f} / {max(v):.1f}"
                for c, v in sorted(per_class_ml.items())
            )
        )
    if lut is not None and items:
        unused = sorted(int(k) for k in np.flatnonzero(lut).tolist() if k not in source_ids)
        if unused:
            logger.warning(f"{source}: label_map source ids {unused} occur in no label of this split")
    return items
