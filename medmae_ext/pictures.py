"""Reconstruction pictures of MAE / MSMAE pretraining."""

from __future__ import annotations

import os

import numpy as np
import torch
from ignite.engine import Engine, Events

from .checkpoints import _unwrap
from .networks.patching import patchify, unpatchify

__all__ = ["ReconstructionSaver", "reconstruction_panel"]


def _to_uint8(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return (np.clip((x - lo) / max(hi - lo, 1e-8), 0, 1) * 255).astype(np.uint8)


def reconstruction_panel(
    image: torch.Tensor,
    pred: torch.Tensor,
    mask: torch.Tensor,
    thrown: torch.Tensor | None,
    patch_size,
    norm_pix: bool = True,
) -> np.ndarray:
    """uint8 picture, one row per sample: input | input with masked (and thrown) patches blanked | reconstruction
    (visible patches from the input, masked ones predicted). 3D volumes show their middle slice (last axis)."""
    image = image.detach().float().cpu()
    c = image.shape[1]
    grid = [s // p for s, p in zip(image.shape[2:], patch_size)]
    target = patchify(image, patch_size)
    pred = pred.detach().float().cpu()
    if norm_pix:
        mean = target.mean(-1, keepdim=True)
        std = (target.var(-1, keepdim=True, unbiased=False) + 1e-6).sqrt()
        pred = pred * std + mean
    m = mask.detach().float().cpu().unsqueeze(-1)
    t = thrown.detach().float().cpu().unsqueeze(-1) if thrown is not None else torch.zeros_like(m)
    lo_val = float(image.min())
    blank = torch.full_like(target, lo_val)
    masked_in = torch.where((m + t) > 0, blank, target)
    recon = torch.where(m > 0, pred, torch.where(t > 0, blank, target))
    rows = []
    for i in range(image.shape[0]):
        views = [image[i : i + 1], unpatchify(masked_in[i : i + 1], patch_size, grid, c), unpatchify(recon[i : i + 1], patch_size, grid, c)]
        views = [v[0, 0] for v in views]  # first channel
        if views[0].ndim == 3:
            views = [v[..., v.shape[-1] // 2] for v in views]
        lo, hi = float(views[0].min()), float(views[0].max())
        rows.append(np.concatenate([_to_uint8(v.numpy(), lo, hi) for v in views], axis=1))
    return np.concatenate(rows, axis=0)


class ReconstructionSaver:
    """Every ``interval`` epochs, write ``recon_epoch<N>.png`` (see :func:`reconstruction_panel`) from the last
    training batch, so the user can watch what the MAE learns. Needs ``decollate=False`` in the trainer."""

    def __init__(self, output_dir: str, interval: int = 1, max_images: int = 4, norm_pix: bool = True) -> None:
        self.output_dir = output_dir
        self.interval = interval
        self.max_images = max_images
        self.norm_pix = norm_pix

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval), self)

    def __call__(self, engine: Engine) -> str:
        from PIL import Image

        out = engine.state.output
        result = out["pred"]
        k = self.max_images
        net = _unwrap(engine.network)
        thrown = result.get("thrown")
        panel = reconstruction_panel(
            out["image"][:k], net.dense_prediction(result)[:k], result["mask"][:k], None if thrown is None else thrown[:k],
            net.patch_size, self.norm_pix,
        )
        os.makedirs(self.output_dir, exist_ok=True)
        path = os.path.join(self.output_dir, f"recon_epoch{engine.state.epoch:04d}.png")
        scale = max(1, 512 // panel.shape[0])
        Image.fromarray(panel).resize((panel.shape[1] * scale, panel.shape[0] * scale), Image.NEAREST).save(path)
        return path
