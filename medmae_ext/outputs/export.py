"""Export a bundle's trained network with ``torch.export`` (the path torch recommends now that TorchScript's
``torch.jit.script`` / ``torch.jit.load`` are deprecated); MONAI's ``ckpt_export`` (TorchScript) keeps working for
the model zoo and MONAI Label, which still load ``.ts`` files.

    python -m medmae_ext.outputs.export --config_file bundles/vit_classification/configs/inference.json \\
        --ckpt_file bundles/vit_classification/models/model.pt --filepath bundles/vit_classification/models/model.pt2

The network is built from the run record beside ``--ckpt_file`` (``models/metadata.json``: sizes, classes,
preprocessing), so no training flag is repeated. The program takes ``[B, C, *spatial]`` with any batch size ``B``
at the trained size and **applies the intensity step itself** (per-image min-max, the CT window, or the MR
normalisation: :class:`WithIntensity`), so a caller cannot feed it a differently scaled image by mistake (a /255
image and a min-max one both lie in [0, 1], and gave different decisions). The metadata travels inside the file
(``extra_files["metadata.json"]``: the run's, with ``preprocessing`` naming every step and which ones the program
does).

A ``.pt2`` archive is code-equivalent: loading it (:func:`load_program`, ``torch.export.load``) unpickles parts of
it. Load only programs you made; share ``model.pt`` (loaded with ``weights_only=True``) and the configs instead.
"""

from __future__ import annotations

import json
import os

import torch

__all__ = ["WithIntensity", "export_program", "load_program"]


class WithIntensity(torch.nn.Module):
    """``network(intensity(x))``: the intensity step of the run's ``modality`` in torch ops, per image (and channel).

    ``"minmax"``: ``(x - min) / (max - min)`` over each image's voxels (MONAI ``ScaleIntensity``; unchanged by any
    prior linear scaling of the input, so 0-255 and /255 images give the same output); ``"window"``: clip to
    ``[a_min, a_max]`` HU and scale to [0, 1]; ``"normalize"``: z-score over each channel's non-zero voxels."""

    def __init__(self, network: torch.nn.Module, kind: str, a_min: float = -175.0, a_max: float = 250.0) -> None:
        super().__init__()
        if kind not in ("minmax", "window", "normalize"):
            raise ValueError(f"unknown intensity kind {kind!r}")
        self.network = network
        self.kind = kind
        self.a_min = float(a_min if a_min is not None else 0.0)
        self.a_max = float(a_max if a_max is not None else 1.0)

    def intensity(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(1)
        if self.kind == "window":
            return ((x.clamp(self.a_min, self.a_max) - self.a_min) / (self.a_max - self.a_min)).to(x.dtype)
        if self.kind == "normalize":
            c = x.flatten(2)  # [B, C, N]
            nz = (c != 0).to(x.dtype)
            n = nz.sum(-1, keepdim=True).clamp_min(1.0)
            mean = (c * nz).sum(-1, keepdim=True) / n
            std = (((c - mean) * nz) ** 2).sum(-1, keepdim=True).div(n).sqrt()
            std = torch.where(std > 0, std, torch.ones_like(std))
            return (((c - mean) / std) * nz).reshape(x.shape)
        lo = flat.amin(1).reshape(-1, *([1] * (x.dim() - 1)))
        hi = flat.amax(1).reshape(-1, *([1] * (x.dim() - 1)))
        return torch.where(hi > lo, (x - lo) / (hi - lo).clamp_min(1e-12), x - lo)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(self.intensity(x))


def _input_shape(parser, meta: dict | None) -> tuple[int, ...]:
    if meta:
        image = meta.get("network_data_format", {}).get("inputs", {}).get("image", {})
        if image.get("num_channels") and image.get("spatial_shape"):
            return (int(image["num_channels"]), *(int(s) for s in image["spatial_shape"]))
    channels = parser.get_parsed_content("in_channels") if "in_channels" in parser else 1
    for key in ("img_size", "roi_size"):
        if key in parser:
            return (int(channels), *(int(s) for s in parser.get_parsed_content(key)))
    raise KeyError(
        "cannot tell the input shape: pass --meta_file (network_data_format.inputs.image) or set the "
        "config ids 'in_channels' and 'img_size' / 'roi_size'"
    )


def export_program(
    config_file,
    ckpt_file: str,
    filepath: str,
    meta_file: str | None = None,
    net_id: str = "network_def",
    bundle_root: str | None = None,
    intensity: bool = True,
    **override,
) -> str:
    """Build ``net_id`` of the bundle config(s) with the run record of ``ckpt_file`` (config id ``ckpt_path`` is set to
    it), load ``ckpt_file`` (a state dict, or a checkpoint holding one under ``network`` / ``model``), wrap it in
    :class:`WithIntensity` (``intensity``), export it in eval mode with a dynamic batch dimension and save it to
    ``filepath``. ``meta_file``: default the record's ``metadata.json`` beside ``ckpt_file``."""
    from monai.bundle import ConfigParser

    from ..bundle.record import record_path
    from ..data.intensity import intensity_kind
    from ..networks.weights import read_state_dict

    parser = ConfigParser()
    parser.read_config(config_file)
    if bundle_root is not None:
        parser["bundle_root"] = bundle_root
    if "ckpt_path" in parser:
        parser["ckpt_path"] = os.path.abspath(ckpt_file)
    parser.update(override)
    meta_file = meta_file or (record_path(ckpt_file) if os.path.isfile(record_path(ckpt_file)) else None)
    meta = None
    if meta_file:
        with open(meta_file) as f:
            meta = json.load(f)
    net = parser.get_parsed_content(net_id)
    net.load_state_dict(read_state_dict(ckpt_file))
    net.eval()
    steps = list((meta or {}).get("preprocessing", []))
    if intensity:
        modality = parser.get_parsed_content("modality") if "modality" in parser else "other"
        kind = intensity_kind(modality)
        a_min = parser.get_parsed_content("a_min") if "a_min" in parser else None
        a_max = parser.get_parsed_content("a_max") if "a_max" in parser else None
        net = WithIntensity(net, kind, a_min, a_max).eval()
        steps.append(
            f"the exported program applies the intensity step itself ({kind}): give it the image as "
            "stored, after the geometric steps"
        )
    x = torch.rand(2, *_input_shape(parser, meta))
    batch = torch.export.Dim("batch", min=1, max=4096)
    with torch.no_grad():
        program = torch.export.export(net, (x,), dynamic_shapes=({0: batch},))
    os.makedirs(os.path.dirname(os.path.abspath(filepath)), exist_ok=True)
    extra = {"metadata.json": json.dumps({**(meta or {}), "preprocessing": steps})}
    tmp = f"{filepath}.tmp.pt2"
    torch.export.save(program, tmp, extra_files=extra)
    os.replace(tmp, filepath)
    print(
        f"exported {type(net).__name__} ({ckpt_file}) for input [B, {', '.join(map(str, x.shape[1:]))}] to {filepath}"
    )
    return filepath


def load_program(filepath: str):
    """``(module, metadata)`` of a program written by :func:`export_program`. Code-equivalent: load only your own."""
    extra = {"metadata.json": ""}
    program = torch.export.load(filepath, extra_files=extra)
    return program.module(), json.loads(extra["metadata.json"] or "{}")


if __name__ == "__main__":
    import fire

    fire.Fire(export_program)
