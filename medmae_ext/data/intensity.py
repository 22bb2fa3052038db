"""The intensity step, chosen by the config id ``modality`` and recorded with the model.

* ``CT`` -- Hounsfield units windowed to ``[a_min, a_max]`` and scaled to [0, 1], clipped (SelfMedMAE's BTCV recipe);
* ``MR`` -- z-score over the non-zero voxels of each volume (MONAI ``NormalizeIntensity(nonzero=True)``, the BraTS
  recipe): MR intensities have no absolute scale, a HU window would clip most of the body;
* anything else (``XR``, ``other``) -- min-max per image to [0, 1] (MONAI ``ScaleIntensity``).

:class:`IntensityForModalityd` also checks that each image looks like its modality before scaling it: a "CT" without
air near -1000 HU whose body lies mostly above the window (an MRI, a PNG) is stopped, naming the file, since the
window would turn it into a near-binary mask; a milder mismatch is warned about.
"""

from __future__ import annotations

import logging

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, NormalizeIntensity, ScaleIntensity, ScaleIntensityRange

from ..errors import InputError

__all__ = ["IntensityForModalityd", "intensity_kind", "intensity_description", "intensity_range", "nonzero"]

logger = logging.getLogger(__name__)

#: a CT has air: its lowest values are near -1000 HU. No value below this means "not HU".
CT_AIR_BELOW = -500.0
#: a "CT" without air whose voxels above a_min lie above a_max in a larger share than this is refused (the shared
#: TotalSegmentator MRI: 38%; real CTs here: 2-21%, and they have air)
CT_ABOVE_WINDOW_MAX = 0.3


def intensity_kind(modality) -> str:
    m = str(modality or "").upper()
    return "window" if m == "CT" else "normalize" if m in ("MR", "MRI") else "minmax"


def intensity_description(modality, a_min=None, a_max=None) -> str:
    """What the intensity step does, in words (run record, exported metadata)."""
    kind = intensity_kind(modality)
    if kind == "window":
        return (
            f"CT in Hounsfield units, windowed to [{a_min}, {a_max}] HU and scaled linearly to [0, 1], values "
            "outside clipped"
        )
    if kind == "normalize":
        return (
            "MR, z-score normalised per volume over its non-zero voxels (mean 0, std 1; zero background kept " "at 0)"
        )
    return (
        "min-max scaled per image to [0, 1] (MONAI ScaleIntensity: (x - min) / (max - min)); the network "
        "expects exactly this, whatever the stored range (a /255 scaling is not the same)"
    )


def intensity_range(modality) -> list:
    return [] if intensity_kind(modality) == "normalize" else [0, 1]


def nonzero(x):
    """``select_fn`` of ``CropForegroundd`` after the intensity step: everything that is not zero (CT below the
    window and MR background are exactly 0). A named function, so that the transform chain pickles (disk cache,
    DataLoader workers)."""
    return x != 0


class IntensityForModalityd(MapTransform):
    """The intensity step of ``modality`` (module docstring) on ``keys``, after checking each image looks like it.

    Args:
        modality: config id ``modality`` ("CT", "MR", or anything else for per-image min-max).
        a_min, a_max: the CT window in HU (config ids ``a_min`` / ``a_max``).
        check: check each image against the modality (stop / warn naming the file).
    """

    def __init__(
        self,
        keys: KeysCollection,
        modality: str = "CT",
        a_min: float | None = -175.0,
        a_max: float | None = 250.0,
        check: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.modality = str(modality)
        self.kind = intensity_kind(modality)
        if self.kind == "window":
            if a_min is None or a_max is None or not float(a_min) < float(a_max):
                raise InputError(
                    f"modality CT needs a window a_min < a_max (config ids 'a_min' / 'a_max'), got "
                    f"[{a_min}, {a_max}]"
                )
            self.scale = ScaleIntensityRange(float(a_min), float(a_max), 0.0, 1.0, clip=True)
        elif self.kind == "normalize":
            self.scale = NormalizeIntensity(nonzero=True, channel_wise=True)
        else:
            self.scale = ScaleIntensity()
        self.a_min, self.a_max = a_min, a_max
        self.check = check

    def _check(self, img, where: str) -> None:
        x = torch.as_tensor(img).float()
        if self.kind == "window":
            low = float(x.min())
            inside = x[x > float(self.a_min)]
            above = float((inside > float(self.a_max)).float().mean()) if inside.numel() else 0.0
            if low > CT_AIR_BELOW and above > CT_ABOVE_WINDOW_MAX:
                raise InputError(
                    f"{where} does not look like a CT in Hounsfield units: no air (lowest value {low:g}, a CT has "
                    f"values near -1000) and {above:.0%} of the voxels above {self.a_min} lie above the window's top "
                    f"{self.a_max}, so the HU window would clip them all to 1. An MRI? Set --modality MR (per-volume "
                    "normalisation); another modality: --modality other (min-max per image)."
                )
            if low > CT_AIR_BELOW:
                logger.warning(
                    f"{where}: modality CT but no value below {CT_AIR_BELOW:g} HU (lowest {low:g}): no air "
                    "in the field of view, or not Hounsfield units (check the file and --modality)"
                )
        elif self.kind == "normalize" and float(x.min()) < -900:
            logger.warning(
                f"{where}: modality MR but values reach {float(x.min()):g}, like air in Hounsfield units: "
                "a CT? Set --modality CT"
            )

    def __call__(self, data):
        from .transforms import source_of

        d = dict(data)
        for key in self.key_iterator(d):
            if self.check:
                self._check(d[key], source_of(d, key))
            d[key] = self.scale(d[key])
        return d

    def describe(self) -> str:
        return intensity_description(self.modality, self.a_min, self.a_max)
