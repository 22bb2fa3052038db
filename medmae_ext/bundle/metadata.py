"""Bundle metadata that describes the model a run actually trained.

``configs/metadata.json`` describes the bundle's default network. :func:`run_metadata` makes the metadata of a run
from the run's own settings (:mod:`medmae_ext.bundle.record`): ``network_data_format`` with the input size, channels
and modality, the exact intensity transform the network expects, the output classes / organs / embedding size, and a
``preprocessing`` list of every step between a file and the network. Training writes it, with the run record, to
``models/metadata.json``; ``ckpt_export --meta_file models/metadata.json``, ``medmae_ext.outputs.export`` and
``scripts/pack_bundle.py`` carry it on.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

__all__ = ["run_metadata", "preprocessing_steps", "KINDS"]

KINDS = ("classification", "segmentation", "embedding")


def preprocessing_steps(settings: Mapping) -> list[str]:
    """Every step from an image file to the network input, in order, from the run's settings."""
    from ..data.intensity import intensity_description

    s = dict(settings)
    steps = [
        "load the image channel first (PNG/JPEG/NIfTI/DICOM series via MONAI LoadImage; a MedMNIST .npz as "
        "stored, spatial axes in MONAI reader order)"
    ]
    if int(s.get("spatial_dims", 2)) == 3:
        steps.append(f"reorient to {s.get('orientation', 'RAS')}")
        steps.append(f"resample to spacing {s.get('pixdim')} mm (bilinear; labels nearest)")
        steps.append("intensity: " + intensity_description(s.get("modality"), s.get("a_min"), s.get("a_max")))
        if s.get("fit", "crop") == "resize":
            steps.append(
                f"crop to the foreground (non-zero voxels after the intensity step) and resize it to "
                f"{s.get('img_size')}: the network sees the whole volume"
            )
        else:
            steps.append(
                "crop to the foreground (non-zero voxels after the intensity step); pad to at least "
                f"{s.get('img_size')}"
            )
            steps.append(
                f"network input: {s.get('img_size')} crops (training), sliding windows of that size with "
                "overlap (evaluation / segmentation inference)"
            )
    else:
        steps.append("intensity: " + intensity_description(s.get("modality"), s.get("a_min"), s.get("a_max")))
        steps.append(f"resize to {s.get('img_size')} (MONAI Resized, mode 'area')")
    return steps


def run_metadata(meta: Mapping, settings: Mapping, kind: str, trained_on: str | None = None) -> dict:
    """A copy of the bundle metadata ``meta`` whose ``network_data_format`` describes the network of ``settings``
    (``in_channels``, ``img_size``, ``modality``, intensity, and per ``kind``: ``class_names``, ``label_names`` or
    ``hidden_size``), with ``preprocessing`` and ``trained_on`` (``"synthetic"`` or the data source:
    ``scripts/pack_bundle.py`` states the weights' data licence from it)."""
    from ..data.intensity import intensity_description, intensity_range

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    s = dict(settings)
    m = copy.deepcopy(dict(meta))
    m.pop("_meta_", None)
    if trained_on is not None:
        m["trained_on"] = str(trained_on)
    fmt = m["network_data_format"]
    inp = fmt["inputs"]["image"]
    channels = int(s["in_channels"])
    inp["num_channels"] = channels
    inp["spatial_shape"] = [int(v) for v in s["img_size"]]
    modality = s.get("modality")
    if modality:
        inp["modality"] = str(modality)
        inp["format"] = "hounsfield" if str(modality).upper() == "CT" else "magnitude"
    what = intensity_description(modality, s.get("a_min"), s.get("a_max"))
    inp["channel_def"] = {str(i): f"image channel {i}: {what}" for i in range(channels)}
    inp["value_range"] = intensity_range(modality)
    m["preprocessing"] = preprocessing_steps(s)
    outputs = [fmt[k]["pred"] for k in ("outputs", "post_processed_outputs") if "pred" in fmt.get(k, {})]
    if kind == "classification":
        names = list(s["class_names"])
        for out in outputs:
            out["num_channels"] = len(names)
            out["channel_def"] = {str(i): n for i, n in enumerate(names)}
        m["pred_classes"] = ", ".join(f"{i} {n}" for i, n in enumerate(names))
        m["label_classes"] = m["pred_classes"]
    elif kind == "segmentation":
        names = {str(k): v for k, v in dict(s["label_names"]).items()}
        for out in outputs:
            out["num_channels"] = len(names)
            out["channel_def"] = names
        m["label_classes"] = ", ".join(f"{k} {v}" for k, v in names.items())
    else:
        for out in outputs:
            out["num_channels"] = int(s["hidden_size"])
    return m
