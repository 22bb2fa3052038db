"""A segmentation datalist on real CT whose label maps use an atlas's ids, to show ``label_map`` end to end.

    python scripts/make_atlas_demo.py --ct_dir ../shared/data/ct --out_dir atlas_demo

The shared CT files (TotalSegmentator's public test files) come without labels, so this writes STAND-IN label
maps: Hounsfield-unit bands inside the body stored under TotalSegmentator v2 ids (5 liver, 1 spleen, 2 / 3 right /
left kidney, 52 aorta, plus ids the bundle does not use: 117 costal cartilages for bone, 6 stomach for low soft
tissue). They are not anatomy -- a model trained on them learns intensity bands -- but they have what real atlas
output has: ids far above the bundle's class count, ids to drop, and two source ids (the kidneys) that merge into
one class. ``<out_dir>/datalist.json`` lists ``example_ct.nii.gz`` and the DICOM series folder ``example_ct_dicom``
(its label saved on the series' grid as ITK reads it) for training and ``ct_cropped.nii.gz`` for validation.
"""

from __future__ import annotations

import json
import os

import fire
import nibabel as nib
import numpy as np

#: TotalSegmentator v2 ("total" task) ids used by the stand-in labels
TS_IDS = {"spleen": 1, "kidney_right": 2, "kidney_left": 3, "liver": 5, "stomach": 6, "aorta": 52,
          "costal_cartilages": 117}


def atlas_labels(hu: np.ndarray) -> np.ndarray:
    """Stand-in atlas label map of a CT volume (HU) indexed ``[x, y, z]`` in RAS order: intensity bands, and the
    first array axis split in two halves for 'left' / 'right' kidney."""
    lab = np.zeros(hu.shape, np.uint8)
    lab[(hu > -10) & (hu <= 30)] = TS_IDS["stomach"]
    lab[(hu > 30) & (hu <= 60)] = TS_IDS["liver"]
    lab[(hu > 60) & (hu <= 90)] = TS_IDS["spleen"]
    kidney = (hu > 90) & (hu <= 160)
    half = np.zeros(hu.shape, bool)
    half[: hu.shape[0] // 2] = True
    lab[kidney & half] = TS_IDS["kidney_right"]
    lab[kidney & ~half] = TS_IDS["kidney_left"]
    lab[(hu > 160) & (hu <= 300)] = TS_IDS["aorta"]
    lab[hu > 300] = TS_IDS["costal_cartilages"]
    return lab


def _as_ras(path: str):
    """(voxels, RAS affine) of a NIfTI file or DICOM series folder, as the bundles' loader reads it."""
    from monai.transforms import LoadImage

    img = LoadImage(image_only=True)(path)
    return np.asarray(img), np.asarray(img.affine, np.float64)


def main(ct_dir: str = "../shared/data/ct", out_dir: str = "atlas_demo") -> None:
    os.makedirs(out_dir, exist_ok=True)
    sections = {"training": ["example_ct.nii.gz", "example_ct_dicom"], "validation": ["ct_cropped.nii.gz"]}
    datalist = {}
    for section, names in sections.items():
        datalist[section] = []
        for name in names:
            src = os.path.abspath(os.path.join(ct_dir, name))
            if not os.path.exists(src):
                raise FileNotFoundError(f"{src} not found (--ct_dir should hold the shared CT files)")
            hu, affine = _as_ras(src)
            stem = name.split(".")[0]
            label = os.path.join(out_dir, f"{stem}_atlas.nii.gz")
            nib.save(nib.Nifti1Image(atlas_labels(hu), affine), label)
            datalist[section].append({"image": src, "label": os.path.abspath(label), "id": stem})
    path = os.path.join(out_dir, "datalist.json")
    with open(path, "w") as f:
        json.dump(datalist, f, indent=2)
    print(f"wrote {path}: {sum(map(len, datalist.values()))} items with TotalSegmentator v2 ids {sorted(TS_IDS.values())}")


if __name__ == "__main__":
    fire.Fire(main)
