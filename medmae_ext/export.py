"""Export a bundle's trained network with ``torch.export`` (the path torch recommends now that TorchScript's
``torch.jit.script`` / ``torch.jit.load`` are deprecated); MONAI's ``ckpt_export`` (TorchScript) keeps working for
the model zoo and MONAI Label, which still load ``.ts`` files.

    python -m medmae_ext.export --config_file bundles/vit_classification/configs/inference.json \\
        --ckpt_file bundles/vit_classification/models/model.pt --filepath bundles/vit_classification/models/model.pt2

The program (``.pt2``, loaded with ``torch.export.load(path).module()``) takes ``[B, C, *spatial]`` with any
batch size ``B``; the input shape comes from ``--meta_file`` (``network_data_format.inputs.image``, e.g. the run's
``models/metadata.json``) or else from the config ids ``in_channels`` and ``img_size`` / ``roi_size``. The
metadata travels inside the file (``extra_files["metadata.json"]``), as ``ckpt_export`` does for TorchScript.
"""

from __future__ import annotations

import json
import os

import torch

__all__ = ["export_program", "load_program"]


def _input_shape(parser, meta: dict | None) -> tuple[int, ...]:
    if meta:
        image = meta.get("network_data_format", {}).get("inputs", {}).get("image", {})
        if image.get("num_channels") and image.get("spatial_shape"):
            return (int(image["num_channels"]), *(int(s) for s in image["spatial_shape"]))
    channels = parser.get_parsed_content("in_channels") if "in_channels" in parser else 1
    for key in ("img_size", "roi_size"):
        if key in parser:
            return (int(channels), *(int(s) for s in parser.get_parsed_content(key)))
    raise KeyError("cannot tell the input shape: pass --meta_file (network_data_format.inputs.image) or set the "
                   "config ids 'in_channels' and 'img_size' / 'roi_size'")


def export_program(config_file, ckpt_file: str, filepath: str, meta_file: str | None = None, net_id: str = "network_def",
                   bundle_root: str | None = None, **override) -> str:
    """Build ``net_id`` of the bundle config(s), load ``ckpt_file`` (a state dict, or a checkpoint holding one under
    ``network`` / ``model``), export it in eval mode with a dynamic batch dimension and save it to ``filepath``."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(config_file)
    if bundle_root is not None:
        parser["bundle_root"] = bundle_root
    parser.update(override)
    meta = None
    if meta_file:
        with open(meta_file) as f:
            meta = json.load(f)
    net = parser.get_parsed_content(net_id)
    state = torch.load(ckpt_file, map_location="cpu", weights_only=True)
    for key in ("network", "model"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    net.load_state_dict(state)
    net.eval()
    x = torch.rand(2, *_input_shape(parser, meta))
    batch = torch.export.Dim("batch", min=1, max=4096)
    with torch.no_grad():
        program = torch.export.export(net, (x,), dynamic_shapes=({0: batch},))
    os.makedirs(os.path.dirname(os.path.abspath(filepath)), exist_ok=True)
    extra = {"metadata.json": json.dumps(meta or {})}
    tmp = f"{filepath}.tmp.pt2"
    torch.export.save(program, tmp, extra_files=extra)
    os.replace(tmp, filepath)
    print(f"exported {type(net).__name__} ({ckpt_file}) for input [B, {', '.join(map(str, x.shape[1:]))}] to {filepath}")
    return filepath


def load_program(filepath: str):
    """``(module, metadata)`` of a program written by :func:`export_program`."""
    extra = {"metadata.json": ""}
    program = torch.export.load(filepath, extra_files=extra)
    return program.module(), json.loads(extra["metadata.json"] or "{}")


if __name__ == "__main__":
    import fire

    fire.Fire(export_program)
