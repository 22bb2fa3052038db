"""Bundle metadata that describes the model a run actually trained.

``configs/metadata.json`` describes the bundle's default network. A run with overrides (another ``class_names``,
``img_size`` or ``in_channels``) trains another network, and a TorchScript exported with the default metadata would
carry the wrong classes, size and output type. :func:`write_run_metadata` writes ``models/metadata.json`` next to
``models/model.pt`` at the end of every training run, from the run's own values; export with
``--meta_file <bundle>/models/metadata.json`` (the bundle READMEs show it).
"""

from __future__ import annotations

import copy
import json
import os

__all__ = ["run_metadata", "write_run_metadata"]


def run_metadata(meta: dict, in_channels: int, img_size, class_names=None, output_type: str | None = None,
                 trained_on: str | None = None, overrides: dict | None = None) -> dict:
    """A copy of ``meta`` whose ``network_data_format`` has the run's input channels and size, output classes
    (channel names) and output type. ``overrides``: MONAI-style ``"a#b#c": value`` pairs applied first (the
    pretraining configs' ``run_metadata_overrides``: embedding size, and the 3D input of ``train_3d.json``).
    ``trained_on`` (``"synthetic"``, ``"<data_format>:<path>"``, or under MONAI Label ``"monailabel:<folder>"``) is
    recorded under ``trained_on``: ``scripts/pack_bundle.py`` states the weights' data licence from it."""
    m = copy.deepcopy(dict(meta))
    m.pop("_meta_", None)
    if overrides:
        from monai.bundle import ConfigParser

        parser = ConfigParser(m)
        for k, v in overrides.items():
            parser[k] = copy.deepcopy(v)
        m = parser.get()
    if trained_on is not None:
        m["trained_on"] = str(trained_on)
    fmt = m["network_data_format"]
    inp = fmt["inputs"]["image"]
    inp["num_channels"] = int(in_channels)
    inp["spatial_shape"] = [int(s) for s in img_size]
    inp["channel_def"] = {str(i): "image" for i in range(int(in_channels))}
    if class_names is not None:
        names = list(class_names.values()) if isinstance(class_names, dict) else list(class_names)
        for key in ("outputs", "post_processed_outputs"):
            if "pred" in fmt.get(key, {}):
                fmt[key]["pred"]["num_channels"] = len(names)
                fmt[key]["pred"]["channel_def"] = {str(i): n for i, n in enumerate(names)}
        if "pred_classes" in m or "label_classes" in m:
            classes = {str(i): n for i, n in enumerate(names)}
            m["pred_classes"] = classes
            if "label_classes" in m and isinstance(m["label_classes"], dict):
                m["label_classes"] = classes
    if output_type is not None:
        fmt["outputs"]["pred"]["type"] = output_type
    return m


def write_run_metadata(meta: dict, path: str, in_channels: int, img_size, class_names=None,
                       output_type: str | None = None, trained_on: str | None = None,
                       overrides: dict | None = None) -> str | None:
    """Write :func:`run_metadata` to ``path`` atomically (first process only, under DDP); returns ``path``."""
    import ignite.distributed as idist

    if idist.get_rank() != 0:
        return None
    m = run_metadata(meta, in_channels, img_size, class_names, output_type, trained_on, overrides)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(m, f, indent=4)
    os.replace(path + ".tmp", path)
    return path
