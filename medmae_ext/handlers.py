"""Ignite handlers for the medmae bundles: atomic checkpoints with resume, and reconstruction pictures."""

from __future__ import annotations

import glob
import logging
import os
import re

import numpy as np
import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint, DiskSaver
from monai.handlers import CheckpointLoader

from .networks.patching import patchify, unpatchify

__all__ = ["AttentionRefresher", "AtomicCheckpointSaver", "ResumeCheckpointLoader", "latest_checkpoint", "ReconstructionSaver", "reconstruction_panel"]

logger = logging.getLogger(__name__)

_CKPT_RE = re.compile(r"checkpoint_(\d+)\.pt$")


def latest_checkpoint(ckpt_dir: str) -> str | None:
    """Newest ``checkpoint_<epoch>.pt`` in ``ckpt_dir`` (written by :class:`AtomicCheckpointSaver`), or None."""
    found = [(int(m.group(1)), p) for p in glob.glob(os.path.join(ckpt_dir, "checkpoint_*.pt")) if (m := _CKPT_RE.search(p))]
    if not found:
        return None
    path = max(found)[1]
    logger.info(f"resuming from {path}")
    return path


def _unwrap(net):
    return getattr(net, "module", net)


class ResumeCheckpointLoader(CheckpointLoader):
    """MONAI ``CheckpointLoader`` that also restores the engine it is attached to (stored under ``"trainer"`` by
    :class:`AtomicCheckpointSaver`), so training continues at the saved epoch. The engine is added at attach time,
    which keeps bundle configs free of the trainer -> handlers -> trainer reference cycle."""

    def attach(self, engine: Engine) -> None:
        self.load_dict = {**self.load_dict, "trainer": engine}
        super().attach(engine)


class AtomicCheckpointSaver:
    """Save the full training state every ``save_interval`` epochs as ``checkpoint_<epoch>.pt`` (for resume) and
    the network weights alone as ``model_filename`` (the bundle's ``models/model.pt``). The engine it is attached
    to is saved too, as ``"trainer"``.

    Every file is written to a temporary file in the same folder and renamed into place (ignite's
    ``DiskSaver(atomic=True)``), so an interrupted run never leaves a truncated checkpoint; only the newest
    ``n_saved`` training checkpoints are kept, older ones from earlier runs included.
    """

    def __init__(
        self,
        save_dir: str,
        save_dict: dict,
        model_key: str = "network",
        model_filename: str = "model.pt",
        save_interval: int = 1,
        n_saved: int = 2,
    ) -> None:
        if model_key not in save_dict:
            raise KeyError(f"model_key '{model_key}' is not in save_dict (keys: {sorted(save_dict)})")
        self.save_dir = save_dir
        self.save_dict = save_dict
        self.model_key = model_key
        self.model_filename = model_filename
        self.save_interval = save_interval
        self.n_saved = n_saved

    def attach(self, engine: Engine) -> None:
        os.makedirs(self.save_dir, exist_ok=True)
        self._disk = DiskSaver(self.save_dir, require_empty=False, atomic=True, create_dir=True)
        self._checkpoint = Checkpoint(
            {**self.save_dict, "trainer": engine},
            self._disk,
            n_saved=None,
            global_step_transform=lambda e, _: e.state.epoch,
        )
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.save_interval), self)
        engine.add_event_handler(Events.COMPLETED, self.save_model)

    def save_model(self, engine: Engine) -> None:
        state = _unwrap(self.save_dict[self.model_key]).state_dict()
        self._disk(state, self.model_filename)

    def __call__(self, engine: Engine) -> None:
        self._checkpoint(engine)
        self.save_model(engine)
        self.prune()

    def prune(self) -> None:
        found = sorted(
            (int(m.group(1)), p)
            for p in glob.glob(os.path.join(self.save_dir, "checkpoint_*.pt"))
            if (m := _CKPT_RE.search(p))
        )
        for _, p in found[: max(0, len(found) - self.n_saved)]:
            os.remove(p)


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
            out["image"][:k], result["pred"][:k], result["mask"][:k], None if thrown is None else thrown[:k],
            net.patch_size, self.norm_pix,
        )
        os.makedirs(self.output_dir, exist_ok=True)
        path = os.path.join(self.output_dir, f"recon_epoch{engine.state.epoch:04d}.png")
        scale = max(1, 512 // panel.shape[0])
        Image.fromarray(panel).resize((panel.shape[1] * scale, panel.shape[0] * scale), Image.NEAREST).save(path)
        return path


class AttentionRefresher:
    """MSMAE: recompute the per-sample attention maps of ``cache`` with the network being trained.

    At the start of epoch ``e`` (0-based) the maps are refreshed when ``e >= start_epoch`` and
    ``(e - start_epoch) % interval == 0`` -- and at the first epoch of a resumed run past ``start_epoch``, since
    the cache is not checkpointed. Before ``start_epoch`` the cache stays empty and masking is random.
    Paper values: start 40, interval 40 (pretraining); start 0, interval 20 (fine-tuning).
    """

    def __init__(self, cache, dataloader, start_epoch: int = 40, interval: int = 40, image_key: str = "image",
                 id_key: str = "id") -> None:
        if interval < 1:
            raise ValueError(f"interval must be >= 1, got {interval}")
        self.cache = cache
        self.dataloader = dataloader
        self.start_epoch = start_epoch
        self.interval = interval
        self.image_key = image_key
        self.id_key = id_key

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def due(self, epoch0: int) -> bool:
        if epoch0 < self.start_epoch:
            return False
        return (epoch0 - self.start_epoch) % self.interval == 0 or not len(self.cache)

    def __call__(self, engine: Engine) -> None:
        epoch0 = engine.state.epoch - 1  # ignite has already counted the epoch that is starting
        if self.due(epoch0):
            self.cache.refresh(engine.network, self.dataloader, engine.state.device, self.image_key, self.id_key,
                               epoch=epoch0)
