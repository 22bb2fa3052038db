"""The deterministic preprocessing of every bundle, built from a run's settings.

Training, validation, evaluation, inference, the MSMAE attention refresh and the pictures all call
:func:`preprocessing` with the same settings (the run record's, :mod:`medmae_ext.bundle.record`), so a model is
always fed exactly what it was trained on, and the record describes it (:func:`~medmae_ext.bundle.metadata.
preprocessing_steps`). The steps are MONAI transforms (dictionary versions, so a label map or an attention map moves
with its image):

* 2D: load -> check channels / dims / NaN -> intensity of ``modality`` -> ``Resized`` to ``img_size``;
* 3D: load (a DICOM folder is checked first) -> ``label_map`` on the label -> check -> ``Orientationd`` ->
  ``SafeSpacingd`` to ``pixdim`` (refuses impossible sizes) -> intensity of ``modality`` -> with ``crop``: crop to the
  foreground, then per the setting ``fit``: ``"crop"`` pads to at least ``img_size`` (training draws ``img_size``
  windows, evaluation slides them), ``"resize"`` resizes the foreground to exactly ``img_size`` (MSMAE 3D: one
  attention map per volume). Inference of a segmentation keeps the whole volume (no ``crop``), so its mask can be
  inverted onto the input grid.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from monai.transforms import CropForegroundd, EnsureTyped, Orientationd, Resized, SpatialPadd

from .geometry import MAX_VOXELS, SafeSpacingd
from .intensity import IntensityForModalityd, nonzero
from .transforms import LoadImaged, RemapLabeld, ValidateImaged

__all__ = ["preprocessing", "ORIENTATION_LABELS"]

#: MONAI's axis labels for ``Orientationd`` ("RAS" means what NIfTI means by it)
ORIENTATION_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))


def preprocessing(
    settings: Mapping,
    keys: Sequence[str] = ("image",),
    label_map=None,
    num_classes: int | None = None,
    crop: bool = False,
    ensure: bool = False,
    max_voxels: int = MAX_VOXELS,
) -> list:
    """The deterministic transforms for ``settings`` (``spatial_dims``, ``in_channels``, ``img_size``, ``modality``,
    ``a_min``/``a_max``; 3D: ``orientation``, ``pixdim``). ``keys``: the image first, then a label map if any (3D).
    ``ensure``: end with ``EnsureTyped`` (evaluation / inference batches)."""
    keys = list(keys)
    image, labels = keys[0], keys[1:]
    s = dict(settings)
    dims = int(s.get("spatial_dims", 2))
    out = [LoadImaged(keys, image_only=True, ensure_channel_first=True)]
    if labels and label_map is not None:
        out.append(RemapLabeld(labels, label_map, num_classes))
    out.append(ValidateImaged(image, channels=int(s["in_channels"]), spatial_dims=dims))
    intensity = IntensityForModalityd(image, s.get("modality", "other"), s.get("a_min"), s.get("a_max"))
    if dims == 3:
        out.append(Orientationd(keys, axcodes=s.get("orientation", "RAS"), labels=ORIENTATION_LABELS))
        out.append(
            SafeSpacingd(keys, pixdim=s["pixdim"], mode=["bilinear"] + ["nearest"] * len(labels), max_voxels=max_voxels)
        )
        out.append(intensity)
        if crop:
            out.append(CropForegroundd(keys, source_key=image, select_fn=nonzero, allow_smaller=True))
            if s.get("fit", "crop") == "resize":
                out.append(Resized(keys, spatial_size=s["img_size"], mode=["area"] + ["nearest"] * len(labels)))
            else:
                out.append(SpatialPadd(keys, spatial_size=s["img_size"]))
    else:
        out.append(intensity)
        out.append(Resized(image, spatial_size=s["img_size"]))
    if ensure:
        out.append(EnsureTyped(keys))
    return out
