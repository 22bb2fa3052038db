"""Checks of a DICOM series folder before it is read as one volume.

ITK reads whatever slices it can: a series with an unreadable slice became a 19-slice volume with a 2.11 mm spacing
that no longer lined up with its 20 source slices (a mask written on it is misplaced), without a word. Every file of
the folder must be a readable DICOM slice of one series, and the slices must be evenly spaced along the slice normal
(no slice missing)."""

from __future__ import annotations

import os

import numpy as np

from ..errors import ImageReadError, InputError

__all__ = ["check_dicom_series", "SPACING_TOLERANCE"]

#: slice positions may differ from even spacing by this fraction of the median spacing
SPACING_TOLERANCE = 0.1


def check_dicom_series(folder: str) -> int:
    """Raise naming the series and the slice when ``folder`` is not one complete, evenly spaced series; returns the
    number of slices."""
    import pydicom

    files = sorted(os.path.join(folder, f) for f in os.listdir(folder) if os.path.isfile(os.path.join(folder, f)))
    positions, series = [], {}
    for f in files:
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
            ipp = [float(v) for v in ds.ImagePositionPatient]
            iop = np.asarray([float(v) for v in ds.ImageOrientationPatient])
        except Exception as e:
            raise ImageReadError(
                f"DICOM series {folder}: slice {os.path.basename(f)} cannot be read "
                f"({type(e).__name__}: {e}); the volume would be built without it. Replace or "
                "remove the file (and check that no slice is missing)."
            ) from e
        series.setdefault(str(getattr(ds, "SeriesInstanceUID", "?")), []).append(os.path.basename(f))
        normal = np.cross(iop[:3], iop[3:])
        positions.append((float(np.dot(normal, ipp)), os.path.basename(f)))
    if len(series) > 1:
        raise InputError(
            f"DICOM folder {folder} holds {len(series)} series ("
            + "; ".join(f"{uid}: {len(v)} files, e.g. {v[0]}" for uid, v in series.items())
            + "): give each series a folder of its own"
        )
    if len(positions) < 2:
        return len(positions)
    positions.sort()
    z = np.array([p for p, _ in positions])
    gaps = np.diff(z)
    step = float(np.median(gaps))
    if step <= 0:
        dup = [positions[i][1] for i in np.flatnonzero(gaps <= 0)[:1] for i in (i, i + 1)]
        raise InputError(f"DICOM series {folder}: slices {dup} lie at the same position: a duplicated slice?")
    bad = np.flatnonzero(np.abs(gaps - step) > SPACING_TOLERANCE * step)
    if bad.size:
        i = int(bad[0])
        raise InputError(
            f"DICOM series {folder}: the slices are not evenly spaced: {gaps[i]:.3g} mm between "
            f"{positions[i][1]} and {positions[i + 1][1]} where the series' spacing is {step:.3g} mm"
            f"{' (about ' + str(round(gaps[i] / step) - 1) + ' slice(s) missing)' if gaps[i] > step else ''}: a "
            "volume built from them would be stretched and misplaced. Complete the series."
        )
    return len(positions)
