"""What the pretraining bundles' ``inference.json`` writes for a folder of images.

:class:`PretrainOutputWriter` is attached to the inference evaluator, whose network is
:class:`~medmae_ext.networks.EncoderFeatures` (its ``pred`` is one embedding per image). It writes to
``output_dir``:

* ``embeddings.csv``: one row per image, ``image`` (the input file) then ``f0 .. f<hidden-1>``; written once, at the
  end, atomically (a killed run leaves the previous file or none, never half of one);
* with ``mae`` (the full pretrained :class:`~medmae_ext.networks.MaskedAutoencoder`): the reconstruction of every
  image under a seeded mask (the same images and seed give the same mask): 2D ``<stem>_recon.png`` (input | masked
  / thrown patches | reconstruction | MSMAE attention), 3D ``<stem>_recon.nii.gz`` in the network's grid with the
  preprocessed image's affine;
* with ``attention`` (MSMAE): the mask is drawn from the encoder's CLS attention, as in training, and 3D also gets
  ``<stem>_attention.nii.gz`` (the per-patch map in [0, 1], painted over each patch).

Two inputs with the same file stem would overwrite each other's pictures: that stops naming both files.
"""

from __future__ import annotations

import csv
import os

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.data import decollate_batch
from monai.utils import CommonKeys

from .pictures import (
    _with_header,
    panel_labels,
    patch_values_to_voxels,
    reconstruct,
    reconstruction_panel,
    seeded_reconstruction,
)

__all__ = ["PretrainOutputWriter", "file_stem"]


def file_stem(path: str) -> str:
    name = os.path.basename(str(path))
    for ext in (".nii.gz", ".nii", ".nrrd", ".png", ".jpg", ".jpeg", ".dcm", ".mha", ".tif", ".tiff"):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return os.path.splitext(name)[0]


class PretrainOutputWriter:
    def __init__(
        self,
        output_dir: str,
        mae: torch.nn.Module | None = None,
        attention: bool = False,
        norm_pix: bool = True,
        seed: int = 0,
        image_key: str = CommonKeys.IMAGE,
    ) -> None:
        self.output_dir = output_dir
        self.mae = mae
        self.attention = attention
        self.norm_pix = norm_pix
        self.seed = seed
        self.image_key = image_key
        self.rows: list[tuple[str, list[float]]] = []
        self._stems: dict[str, str] = {}

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._start)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration)
        engine.add_event_handler(Events.COMPLETED, self._finish)

    def _start(self, engine: Engine) -> None:
        self.rows, self._stems = [], {}
        os.makedirs(self.output_dir, exist_ok=True)

    def _items(self, engine: Engine) -> tuple[torch.Tensor, list[str], list, torch.Tensor]:
        """(images [B, C, *spatial], input file names, affines or None, embeddings [B, hidden]) of this iteration,
        whether MONAI decollated the batch (the default) or not."""
        batch, out = engine.state.batch, engine.state.output
        if isinstance(batch, dict):
            batch = decollate_batch(batch)
        if isinstance(out, dict):
            out = decollate_batch(out)
        images = [b[self.image_key] for b in batch]
        names, affines = [], []
        for im in images:
            name = (getattr(im, "meta", None) or {}).get("filename_or_obj")
            if name is None:
                raise KeyError(f"{self.image_key!r} carries no 'filename_or_obj': load the images with LoadImaged")
            names.append(str(name))
            affines.append(getattr(im, "affine", None))
        pred = torch.stack([torch.as_tensor(o[CommonKeys.PRED]).detach().float().cpu() for o in out])
        if pred.ndim != 2 or pred.shape[0] != len(names):
            raise ValueError(f"expected one embedding per image ([{len(names)}, hidden]), got {tuple(pred.shape)}")
        return torch.stack([torch.as_tensor(im) for im in images]), names, affines, pred

    def _iteration(self, engine: Engine) -> None:
        images, names, affines, pred = self._items(engine)
        for name, e in zip(names, pred, strict=False):
            stem = file_stem(name)
            if stem in self._stems:
                raise ValueError(
                    f"{name} and {self._stems[stem]} share the file stem {stem!r}: their outputs would "
                    "overwrite each other (config id 'input_dir' / 'input_glob')"
                )
            self._stems[stem] = name
            self.rows.append((name, e.tolist()))
        if self.mae is not None:
            self._reconstruct(images, names, affines, engine.state.device, engine.state.iteration)

    @torch.no_grad()
    def _reconstruct(self, images, names: list[str], affines: list, device, iteration: int) -> None:
        from PIL import Image

        net = self.mae
        x = torch.as_tensor(images).to(device).float()
        out, dense, attn = seeded_reconstruction(net, x, self.seed + iteration, self.attention)
        if x.ndim == 4:
            for i, name in enumerate(names):
                sl = slice(i, i + 1)
                panel = reconstruction_panel(
                    x[sl],
                    dense[sl],
                    out["mask"][sl],
                    out["thrown"][sl] if out.get("thrown") is not None else None,
                    net.patch_size,
                    self.norm_pix,
                    attn[sl] if attn is not None else None,
                )
                picture = _with_header(panel, panel_labels(attn), max(1, 256 // panel.shape[0]))
                Image.fromarray(picture).save(os.path.join(self.output_dir, f"{file_stem(name)}_recon.png"))
            return
        import nibabel as nib

        recon = reconstruct(x, dense, out["mask"], net.patch_size, self.norm_pix)
        amap = patch_values_to_voxels(attn.float().cpu(), x.shape, net.patch_size) if attn is not None else None
        for i, name in enumerate(names):
            affine = np.eye(4) if affines[i] is None else torch.as_tensor(affines[i]).double().cpu().numpy()
            stem = file_stem(name)
            nib.save(
                nib.Nifti1Image(recon[i, 0].numpy().astype(np.float32), affine),
                os.path.join(self.output_dir, f"{stem}_recon.nii.gz"),
            )
            if amap is not None:
                nib.save(
                    nib.Nifti1Image(amap[i].numpy().astype(np.float32), affine),
                    os.path.join(self.output_dir, f"{stem}_attention.nii.gz"),
                )

    def _finish(self, engine: Engine) -> None:
        if not self.rows:
            return
        path = os.path.join(self.output_dir, "embeddings.csv")
        tmp = path + ".tmp"
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["image"] + [f"f{j}" for j in range(len(self.rows[0][1]))])
            for name, e in self.rows:
                w.writerow([name] + [f"{v:.6g}" for v in e])
        os.replace(tmp, path)
