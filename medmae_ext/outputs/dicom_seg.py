"""Segmentations of DICOM series written back as DICOM SEG (with ``highdicom``), next to the NIfTI mask.

A PACS, a DICOM viewer or 3D Slicer's DICOM module takes a DICOM Segmentation object that references the series it
was made from; a NIfTI mask has to be imported by hand. :class:`SaveDicomSegd` (config id ``dicom_seg`` of
``unetr_segmentation/configs/inference.json``) writes ``<output_dir>/<series folder>_seg.dcm`` for every input that
is a DICOM series folder, from the same label map as the NIfTI file (after the inverse of the preprocessing, on the
series' own grid). Inputs that are not DICOM series are left to the NIfTI writer.

Frame correspondence is computed, not assumed: for every source slice, the voxel index of its first pixel and the
index steps along its rows and columns come from the mask's affine and the slice's ``ImagePositionPatient`` /
``ImageOrientationPatient`` / ``PixelSpacing``, so any storage order or flip of the mask maps to the right pixels;
a slice that does not fall on the mask's grid is an error naming the file.
"""

from __future__ import annotations

import logging
import os

import numpy as np
from monai.config import KeysCollection
from monai.transforms import MapTransform

from ..errors import InputError

__all__ = ["SaveDicomSegd", "write_dicom_seg", "series_frames"]

logger = logging.getLogger(__name__)
_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])  # RAS (MONAI / NIfTI) <-> LPS (DICOM patient coordinates)


def _require_highdicom():
    try:
        import highdicom  # noqa: F401
    except ImportError as e:  # pragma: no cover - highdicom is in requirements.txt
        raise ImportError(
            "dicom_seg needs the 'highdicom' package (pip install highdicom==0.28.2, as in "
            "requirements.txt), or set --dicom_seg False"
        ) from e


def _read_series(series_dir: str):
    import pydicom

    datasets = []
    for name in sorted(os.listdir(series_dir)):
        path = os.path.join(series_dir, name)
        if os.path.isfile(path):
            ds = pydicom.dcmread(path)
            if "ImagePositionPatient" in ds and "PixelData" in ds:
                datasets.append(ds)
    if not datasets:
        raise InputError(f"{series_dir}: no DICOM image slices with ImagePositionPatient found")
    for ds in datasets:  # anonymisers blank these in the data set but keep them in the file meta
        for key, meta_key in (
            ("SOPClassUID", "MediaStorageSOPClassUID"),
            ("SOPInstanceUID", "MediaStorageSOPInstanceUID"),
        ):
            if not ds.get(key) and getattr(ds, "file_meta", None) is not None and ds.file_meta.get(meta_key):
                setattr(ds, key, ds.file_meta[meta_key].value)
    missing = [
        k
        for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID", "FrameOfReferenceUID")
        if not datasets[0].get(k)
    ]
    if missing:
        raise InputError(
            f"{series_dir}: the series has no {', '.join(missing)} (anonymised?): a DICOM SEG must "
            "reference the study and series it segments. The NIfTI mask is written; run with "
            "--dicom_seg False for such series"
        )
    if len({ds.SeriesInstanceUID for ds in datasets}) != 1:
        raise InputError(
            f"{series_dir}: holds slices of {len({ds.SeriesInstanceUID for ds in datasets})} series; "
            "give one folder per series"
        )
    return datasets


def series_frames(mask: np.ndarray, affine_ras: np.ndarray, datasets) -> np.ndarray:
    """``[len(datasets), Rows, Columns]`` frames of the 3D ``mask`` (indexed as ``affine_ras`` says) at the pixels of
    each source slice. Raises :class:`InputError` naming the slice file when a slice is not on the mask's grid."""
    inv = np.linalg.inv(_LPS @ np.asarray(affine_ras, np.float64))
    frames = []
    for ds in datasets:
        rows, cols = int(ds.Rows), int(ds.Columns)
        row_dir, col_dir = np.asarray(ds.ImageOrientationPatient[:3], float), np.asarray(
            ds.ImageOrientationPatient[3:], float
        )
        d_row, d_col = (float(v) for v in ds.PixelSpacing)  # between rows, between columns
        origin = np.asarray(ds.ImagePositionPatient, float)

        def index(p):
            return (inv @ np.append(p, 1.0))[:3]

        i0 = index(origin)
        step_c = index(origin + d_col * row_dir) - i0  # next column: along the row direction
        step_r = index(origin + d_row * col_dir) - i0  # next row: along the column direction
        pts = [np.round(v) for v in (i0, step_c, step_r)]
        if any(not np.allclose(v, r, atol=1e-2) for v, r in zip((i0, step_c, step_r), pts, strict=False)):
            raise InputError(
                f"{getattr(ds, 'filename', '?')}: slice is not on the grid of the segmentation "
                f"(index of its first pixel {np.round(i0, 3).tolist()})"
            )
        r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
        idx = [(pts[0][a] + r * pts[2][a] + c * pts[1][a]).astype(np.int64) for a in range(3)]
        if any((ix.min() < 0 or ix.max() >= n) for ix, n in zip(idx, mask.shape, strict=False)):
            raise InputError(
                f"{getattr(ds, 'filename', '?')}: slice lies outside the segmentation's grid {tuple(mask.shape)}"
            )
        frames.append(mask[idx[0], idx[1], idx[2]])
    return np.stack(frames)


def _segment_description(number: int, name: str, algorithm):
    import highdicom as hd
    from pydicom.sr.codedict import codes

    key = "".join(w.capitalize() for w in str(name).replace("_", " ").split())
    try:
        prop = getattr(codes.SCT, key)  # e.g. liver, spleen, kidney, aorta: SNOMED CT codes
        category = codes.SCT.Organ
    except AttributeError:
        prop = hd.sr.CodedConcept(value=f"MEDMAE{number}", scheme_designator="99MEDMAE", meaning=str(name)[:64])
        category = codes.SCT.AnatomicalStructure
    return hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=str(name)[:64],
        segmented_property_category=category,
        segmented_property_type=prop,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
    )


def write_dicom_seg(
    mask: np.ndarray,
    affine_ras: np.ndarray,
    series_dir: str,
    out_path: str,
    label_names,
    algorithm_name: str = "medmae unetr_segmentation",
    version: str = "0.1.0",
) -> str:
    """Write the integer label ``mask`` (3D, on the grid of ``affine_ras``) of the DICOM series in ``series_dir`` as a
    DICOM SEG file referencing that series; one segment per non-background entry of ``label_names``."""
    _require_highdicom()
    import highdicom as hd
    from pydicom.sr.codedict import codes

    names = {int(k): v for k, v in dict(label_names).items()}
    datasets = _read_series(series_dir)
    frames = series_frames(np.asarray(mask), affine_ras, datasets).astype(np.uint8)
    algorithm = hd.AlgorithmIdentificationSequence(
        name=algorithm_name, version=version, family=codes.cid7162.ArtificialIntelligence
    )
    seg = hd.seg.Segmentation(
        source_images=datasets,
        pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[_segment_description(k, names[k], algorithm) for k in sorted(names) if k > 0],
        series_instance_uid=hd.UID(),
        series_number=int(getattr(datasets[0], "SeriesNumber", 0) or 0) + 1000,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="medmae",
        manufacturer_model_name=algorithm_name,
        software_versions=version,
        device_serial_number="0",
        series_description=f"{algorithm_name} segmentation",
        omit_empty_frames=False,
    )
    tmp = f"{out_path}.tmp"
    seg.save_as(tmp)
    os.replace(tmp, out_path)
    return out_path


class SaveDicomSegd(MapTransform):
    """Post-processing step: write ``data[key]`` (a label map on the input's own grid, e.g. after ``Invertd`` and
    argmax) as ``<output_dir>/<series folder>_seg.dcm`` when the input was a DICOM series folder (its MetaTensor's
    ``filename_or_obj``). ``enabled=False`` (config id ``dicom_seg``, default false) makes it a no-op."""

    def __init__(
        self,
        keys: KeysCollection,
        output_dir: str,
        label_names,
        enabled: bool = True,
        algorithm_name: str = "medmae unetr_segmentation",
        version: str = "0.1.0",
    ) -> None:
        super().__init__(keys)
        self.output_dir, self.label_names, self.enabled = output_dir, label_names, bool(enabled)
        self.algorithm_name, self.version = algorithm_name, version
        if self.enabled:
            _require_highdicom()

    def __call__(self, data):
        d = dict(data)
        if not self.enabled:
            return d
        for key in self.key_iterator(d):
            pred = d[key]
            src = str((getattr(pred, "meta", None) or {}).get("filename_or_obj", ""))
            if not os.path.isdir(src):
                continue  # not a DICOM series: the NIfTI mask is the output
            arr = np.asarray(pred.detach().cpu() if hasattr(pred, "detach") else pred)
            if arr.ndim == 4:
                arr = arr[0]
            os.makedirs(self.output_dir, exist_ok=True)
            out = os.path.join(self.output_dir, f"{os.path.basename(os.path.normpath(src))}_seg.dcm")
            write_dicom_seg(arr, np.asarray(pred.affine), src, out, self.label_names, self.algorithm_name, self.version)
            logger.info(f"DICOM SEG of {src}: {out}")
        return d
