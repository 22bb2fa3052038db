"""Ignite handlers for the medmae bundles: atomic checkpoints and resume, best-model saving, reconstruction
pictures, MSMAE attention refresh, classification reports and prediction CSVs."""

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

__all__ = [
    "AtomicCheckpointSaver", "AttentionRefresher", "BestModelSaver", "ClassificationReport", "ProbabilityCSVSaver",
    "ReconstructionSaver", "ResumeCheckpointLoader", "latest_checkpoint", "reconstruction_panel",
]

logger = logging.getLogger(__name__)

_CKPT_RE = re.compile(r"checkpoint_(\d+)\.pt$")


def _checkpoints(ckpt_dir: str) -> list[tuple[int, str]]:
    """``(epoch, path)`` of every ``checkpoint_<epoch>.pt`` in ``ckpt_dir``, oldest first."""
    paths = glob.glob(os.path.join(ckpt_dir, "checkpoint_*.pt"))
    return sorted((int(m.group(1)), p) for p in paths if (m := _CKPT_RE.search(p)))


def latest_checkpoint(ckpt_dir: str) -> str | None:
    """Newest ``checkpoint_<epoch>.pt`` in ``ckpt_dir`` (written by :class:`AtomicCheckpointSaver`), or None."""
    found = _checkpoints(ckpt_dir)
    if not found:
        return None
    path = found[-1][1]
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
        model_filename: str | None = "model.pt",
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
        if not self.model_filename:
            return
        state = _unwrap(self.save_dict[self.model_key]).state_dict()
        self._disk(state, self.model_filename)

    def __call__(self, engine: Engine) -> None:
        self._checkpoint(engine)
        self.save_model(engine)
        self.prune()

    def prune(self) -> None:
        import ignite.distributed as idist

        if idist.get_rank() != 0:  # only rank 0 writes (ignite's DiskSaver), so only rank 0 prunes
            return
        found = _checkpoints(self.save_dir)
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


class BestModelSaver:
    """Attach to an evaluator: whenever its key metric improves, write ``network``'s weights atomically to
    ``save_dir/filename`` (the bundle's ``models/model.pt`` = best validation checkpoint, as in the model zoo)."""

    def __init__(self, save_dir: str, network, filename: str = "model.pt") -> None:
        self.save_dir = save_dir
        self.network = network
        self.filename = filename

    def attach(self, engine: Engine) -> None:
        self._disk = DiskSaver(self.save_dir, require_empty=False, atomic=True, create_dir=True)
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        import ignite.distributed as idist

        if engine.state.best_metric_epoch == engine.state.epoch:
            self._disk(_unwrap(self.network).state_dict(), self.filename)  # DiskSaver writes on rank 0 only
            if idist.get_rank() == 0:
                logger.info(f"new best {engine.state.key_metric_name}={engine.state.best_metric:.4f} at epoch "
                            f"{engine.state.epoch}: saved {os.path.join(self.save_dir, self.filename)}")


class ClassificationReport:
    """Attach to an evaluator whose decollated outputs hold class probabilities ``pred`` and one-hot / multi-hot
    ``label``. At the end of the run it writes to ``output_dir``:

    * ``metrics.json`` -- accuracy, macro F1, per-class and mean ROC AUC (multi-label: per-class AUC and F1 at 0.5);
    * ``per_class.csv`` -- per-class AUC, F1, support;
    * ``confusion_matrix.png`` and ``confusion_matrix.csv`` (multi-class only; rows = truth, columns = prediction).

    The numbers are also put in ``engine.state.metrics``.
    """

    def __init__(self, output_dir: str, class_names=None, multi_label: bool = False, threshold: float = 0.5) -> None:
        self.output_dir = output_dir
        self.class_names = list(class_names) if class_names else None
        self.multi_label = multi_label
        self.threshold = threshold

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self)

    def _reset(self, engine: Engine) -> None:
        self._pred, self._label = [], []

    def _collect(self, engine: Engine) -> None:
        for item in engine.state.output:
            self._pred.append(torch.as_tensor(item["pred"]).detach().float().cpu().reshape(-1))
            self._label.append(torch.as_tensor(item["label"]).detach().float().cpu().reshape(-1))

    def compute(self) -> dict:
        from monai.metrics import compute_roc_auc

        prob, y = torch.stack(self._pred), torch.stack(self._label)
        c = prob.shape[1]
        names = self.class_names or [str(i) for i in range(c)]
        if len(names) != c:
            raise ValueError(f"{len(names)} class names given for {c} network outputs")
        auc = []
        for k in range(c):
            has_both = 0 < y[:, k].sum() < len(y)
            auc.append(float(compute_roc_auc(prob[:, k], y[:, k])) if has_both else float("nan"))
        if self.multi_label:
            hard = (prob >= self.threshold).float()
        else:
            hard = torch.nn.functional.one_hot(prob.argmax(1), c).float()
        tp = (hard * y).sum(0)
        f1 = (2 * tp / (hard.sum(0) + y.sum(0)).clamp_min(1e-8)).tolist()
        support = y.sum(0).tolist()
        valid_auc = [a for a in auc if a == a]
        metrics = {
            "num_samples": len(y),
            "accuracy": float((hard == y).all(1).float().mean()),
            "macro_f1": float(np.mean(f1)),
            "mean_auc": float(np.mean(valid_auc)) if valid_auc else float("nan"),
            "per_class": {n: {"auc": a, "f1": f, "support": int(s)} for n, a, f, s in zip(names, auc, f1, support)},
        }
        if not self.multi_label:
            cm = np.zeros((c, c), np.int64)
            np.add.at(cm, (y.argmax(1).numpy(), prob.argmax(1).numpy()), 1)
            metrics["confusion_matrix"] = cm.tolist()
        return metrics

    def __call__(self, engine: Engine) -> dict:
        import json

        metrics = self.compute()
        os.makedirs(self.output_dir, exist_ok=True)
        with open(os.path.join(self.output_dir, "metrics.json"), "w") as f:
            json.dump(metrics, f, indent=2)
        with open(os.path.join(self.output_dir, "per_class.csv"), "w") as f:
            f.write("class,auc,f1,support\n")
            for n, v in metrics["per_class"].items():
                f.write(f"{n},{v['auc']:.4f},{v['f1']:.4f},{v['support']}\n")
        if "confusion_matrix" in metrics:
            cm = np.asarray(metrics["confusion_matrix"])
            names = list(metrics["per_class"])
            np.savetxt(os.path.join(self.output_dir, "confusion_matrix.csv"), cm, fmt="%d", delimiter=",",
                       header=",".join(names), comments="")
            confusion_matrix_png(cm, names, os.path.join(self.output_dir, "confusion_matrix.png"))
        engine.state.metrics.update({k: metrics[k] for k in ("accuracy", "macro_f1", "mean_auc")})
        logger.info(f"accuracy {metrics['accuracy']:.4f}, macro F1 {metrics['macro_f1']:.4f}, "
                    f"mean AUC {metrics['mean_auc']:.4f} on {metrics['num_samples']} samples -> {self.output_dir}")
        return metrics


def confusion_matrix_png(cm: np.ndarray, names: list[str], path: str, cell: int = 64) -> None:
    """A plain confusion-matrix picture: rows = truth, columns = prediction, darker = more, counts written in."""
    from PIL import Image, ImageDraw

    c = len(names)
    margin = 110
    img = Image.new("RGB", (margin + c * cell + 10, margin + c * cell + 10), "white")
    draw = ImageDraw.Draw(img)
    row_sums = cm.sum(1, keepdims=True).clip(min=1)
    for i in range(c):
        for j in range(c):
            v = cm[i, j] / row_sums[i, 0]
            shade = int(255 * (1 - 0.85 * v))
            x0, y0 = margin + j * cell, margin + i * cell
            draw.rectangle([x0, y0, x0 + cell, y0 + cell], fill=(shade, shade, 255), outline="grey")
            draw.text((x0 + cell // 3, y0 + cell // 3), str(int(cm[i, j])), fill="black" if v < 0.6 else "white")
        draw.text((4, margin + i * cell + cell // 3), names[i][:16], fill="black")
        draw.text((margin + i * cell + 4, margin - 20), names[i][:9], fill="black")
    draw.text((margin, 8), "prediction ->", fill="black")
    draw.text((4, margin - 40), "truth", fill="black")
    img.save(path)


class ProbabilityCSVSaver:
    """Attach to an inference evaluator: write ``predictions.csv`` with one row per image --
    ``image,<class 1>,...,<class K>,predicted`` (probabilities, then the most likely class name). Written once at
    the end, to a temporary file renamed into place."""

    def __init__(self, output_dir: str, class_names, filename: str = "predictions.csv") -> None:
        self.output_dir = output_dir
        self.class_names = list(class_names)
        self.filename = filename

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, lambda e: setattr(self, "_rows", []))
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self)

    def _collect(self, engine: Engine) -> None:
        for item in engine.state.output:
            prob = torch.as_tensor(item["pred"]).detach().float().cpu().reshape(-1)
            if len(prob) != len(self.class_names):
                raise ValueError(f"network gives {len(prob)} outputs but {len(self.class_names)} class_names are set")
            meta = getattr(item.get("image"), "meta", {}) or {}
            self._rows.append((str(meta.get("filename_or_obj", len(self._rows))), prob.tolist()))

    def __call__(self, engine: Engine) -> str:
        import csv

        os.makedirs(self.output_dir, exist_ok=True)
        path = os.path.join(self.output_dir, self.filename)
        with open(path + ".tmp", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["image", *self.class_names, "predicted"])
            for name, prob in self._rows:
                w.writerow([name, *[f"{p:.6f}" for p in prob], self.class_names[int(np.argmax(prob))]])
        os.replace(path + ".tmp", path)
        logger.info(f"wrote {len(self._rows)} predictions to {path}")
        return path
