"""Batch preparation that lets MONAI's own ``SupervisedTrainer`` drive MAE / MSMAE training.

``SupervisedTrainer`` calls ``prepare_batch(batch) -> (inputs, targets, args, kwargs)``, then
``network(inputs, *args, **kwargs)`` and ``loss_function(pred, targets)``. The classes here fill ``kwargs`` with
MSMAE's per-patch attention weights (pretraining) or the indices of the tokens to keep (masked fine-tuning), so no
trainer subclass is needed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from monai.engines import PrepareBatch

from ..networks.patching import grid_shape, patch_weights

__all__ = ["MAEPrepareBatch", "TokenDropPrepareBatch", "autocast_iteration"]


def _to(x, device, non_blocking, **kwargs):
    return x.to(device=device, non_blocking=non_blocking, **kwargs) if isinstance(x, torch.Tensor) else x


class MAEPrepareBatch(PrepareBatch):
    """``(image, {"image", "label"?}, (), {"weights"?})`` for :class:`~medmae_ext.networks.MaskedAutoencoder`.

    Args:
        patch_size: the network's patch size (to pool the attention map to one weight per patch).
        image_key: the image key of the batch.
        label_key: class label key (MSMAE's supervised CLS head); ignored when absent from the batch.
        attention_key: image-resolution attention map key (added by
            :class:`~medmae_ext.data.transforms.AttachAttentiond`); ignored when absent.
    """

    def __init__(
        self,
        patch_size: Sequence[int],
        image_key: str = "image",
        label_key: str | None = None,
        attention_key: str | None = "attn",
    ) -> None:
        self.patch_size = tuple(patch_size)
        self.image_key = image_key
        self.label_key = label_key
        self.attention_key = attention_key

    def weights(self, batchdata, device, non_blocking, **kwargs):
        if self.attention_key and self.attention_key in batchdata:
            return patch_weights(_to(batchdata[self.attention_key], device, non_blocking, **kwargs), self.patch_size)
        return None

    def __call__(self, batchdata, device=None, non_blocking: bool = False, **kwargs):
        if self.image_key not in batchdata:
            raise KeyError(f"batch has no {self.image_key!r} (keys: {sorted(batchdata)}); check the datalist keys.")
        image = _to(batchdata[self.image_key], device, non_blocking, **kwargs)
        target = {"image": image}
        if self.label_key and self.label_key in batchdata:
            target["label"] = _to(torch.as_tensor(batchdata[self.label_key]), device, non_blocking, **kwargs)
        w = self.weights(batchdata, device, non_blocking, **kwargs)
        return image, target, (), ({"weights": w} if w is not None else {})


class TokenDropPrepareBatch(MAEPrepareBatch):
    """MSMAE masked fine-tuning: ``(image, label, (), {"keep": visible token indices})``.

    ``masking`` (an :class:`~medmae_ext.networks.masking.AttentionMasking`) draws masked + thrown patches from the attention
    weights; both are dropped and the classifier encodes only the visible ones. Without an attention map in the
    batch the masking strategy's warm-up is used. ``masking=None`` keeps every token.
    """

    def __init__(self, patch_size, masking=None, image_key="image", label_key="label", attention_key="attn"):
        super().__init__(patch_size, image_key, label_key, attention_key)
        self.masking = masking

    def __call__(self, batchdata, device=None, non_blocking: bool = False, **kwargs):
        image, target, _, extra = super().__call__(batchdata, device, non_blocking, **kwargs)
        label = target.get("label")
        if self.masking is None:
            return image, label, (), {}
        n = math.prod(grid_shape(image.shape[2:], self.patch_size))
        plan = self.masking(image.shape[0], n, image.device, extra.get("weights"))
        return image, label, (), {"keep": plan.visible}


def autocast_iteration(device, amp: bool, dtype: str = "bfloat16"):
    """``iteration_update`` for MONAI's ``SupervisedTrainer`` / ``SupervisedEvaluator`` that gives ``amp`` a meaning
    off CUDA.

    MONAI's engines implement ``amp=True`` as ``torch.autocast("cuda")`` + a CUDA ``GradScaler``, which does nothing
    on another device. Returns ``None`` (the engine's own iteration, MONAI's AMP) when ``amp`` is off or the device is
    CUDA; otherwise an iteration function that runs the engine's own ``_iteration`` under
    ``torch.autocast(device.type, dtype)`` -- CPU bf16, the path the tests use to exercise mixed precision without a
    GPU. Bundle configs pass ``amp`` to the engine only on CUDA and this function everywhere else.
    """
    device = torch.device(device)
    if not amp or device.type == "cuda":
        return None
    cast = getattr(torch, dtype) if isinstance(dtype, str) else dtype

    def iteration(engine, batchdata):
        with torch.autocast(device.type, dtype=cast):
            return engine._iteration(engine, batchdata)

    return iteration
