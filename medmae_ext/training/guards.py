"""Guards that stop a training run as soon as its state stops being trustworthy, instead of training (and saving)
NaN weights to the end with exit code 0.

* :class:`NonFiniteLossGuard` -- attach to a trainer: a NaN/Inf loss stops the run at that iteration with
  :class:`NonFiniteError` naming the epoch, the iteration and the batch's samples (ids or files), before the
  optimizer state reaches any checkpoint.
* :func:`non_finite_tensors` -- names of the non-finite tensors of a module (the savers refuse to write them).
"""

from __future__ import annotations

import math

import torch
from ignite.engine import Engine, Events

__all__ = ["NonFiniteError", "NonFiniteLossGuard", "non_finite_tensors", "batch_sources"]


class NonFiniteError(RuntimeError):
    """The loss or the weights became NaN/Inf: training stops; checkpoints written before stay as they were."""


def non_finite_tensors(module) -> list[str]:
    """Names of the parameters/buffers of ``module`` (or of a state dict) holding NaN or Inf."""
    state = module.state_dict() if hasattr(module, "state_dict") else module
    return [
        k
        for k, v in state.items()
        if isinstance(v, torch.Tensor) and v.is_floating_point() and not torch.isfinite(v).all()
    ]


def batch_sources(batch, id_key: str = "id", image_key: str = "image", most: int = 8) -> list[str]:
    """The samples of a collated batch: their ``id`` entries, else the image files, else ``[]``."""
    if not isinstance(batch, dict):
        return []
    ids = batch.get(id_key)
    if ids is None:
        meta = getattr(batch.get(image_key), "meta", None) or {}
        ids = meta.get("filename_or_obj")
    if ids is None:
        return []
    ids = list(ids) if isinstance(ids, (list, tuple)) else [ids]
    return [str(i) for i in ids[:most]] + ([f"... {len(ids) - most} more"] if len(ids) > most else [])


class NonFiniteLossGuard:
    """Stop training on the first non-finite loss (``engine.state.output[loss_key]``).

    The run ends with :class:`NonFiniteError` (exit code 1): the message names epoch, iteration and the batch's
    samples, so that a bad image can be found; nothing is saved after it, so the last checkpoint and ``model.pt``
    are the last good state.
    """

    def __init__(self, loss_key: str = "loss", id_key: str = "id", image_key: str = "image") -> None:
        self.loss_key, self.id_key, self.image_key = loss_key, id_key, image_key

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        out = engine.state.output
        if isinstance(out, (list, tuple)) and out:
            out = out[0]
        loss = out.get(self.loss_key) if isinstance(out, dict) else out
        if loss is None:
            return
        value = float(loss.detach().float().mean()) if isinstance(loss, torch.Tensor) else float(loss)
        if math.isfinite(value):
            return
        samples = batch_sources(engine.state.batch, self.id_key, self.image_key)
        raise NonFiniteError(
            f"loss is {value} at epoch {engine.state.epoch}, iteration {engine.state.iteration}; batch samples: "
            f"{samples or 'unknown'}. Training stopped; the last checkpoint and model.pt are from before this "
            "iteration. Check these images for NaN/Inf or extreme values, or lower --lr."
        )
