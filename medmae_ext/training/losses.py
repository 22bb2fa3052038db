"""Losses for masked-image pretraining."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..networks.patching import gather_patches, patchify

__all__ = ["MaskedPatchMSELoss", "MAELoss"]


class MaskedPatchMSELoss(nn.Module):
    """MSE between predicted and true patches, averaged over the *masked* patches only.

    With ``norm_pix=True`` (SelfMedMAE / MAE default) each target patch is normalised by the mean and variance of
    its own voxels (all channels), so flat regions and intensity offsets do not dominate.

    Two entry points, same value: :meth:`forward` takes a dense ``[B, N, P]`` prediction and a ``[B, N]`` mask
    (any MAE, e.g. MONAI's ``MaskedAutoEncoderViT``); :meth:`masked` takes only the masked patches' predictions
    and their indices (:class:`~medmae_ext.networks.MaskedAutoencoder`) and builds targets for those patches only.
    """

    def __init__(self, patch_size: Sequence[int], norm_pix: bool = True, eps: float = 1e-6) -> None:
        super().__init__()
        self.patch_size = tuple(patch_size)
        self.norm_pix = norm_pix
        self.eps = eps

    def normalise(self, patches: torch.Tensor) -> torch.Tensor:
        """Per-patch (last dim) standardisation, ``(t - mean) / sqrt(var + eps)``: one fused layer norm."""
        return F.layer_norm(patches, patches.shape[-1:], eps=self.eps) if self.norm_pix else patches

    def target(self, image: torch.Tensor) -> torch.Tensor:
        return self.normalise(patchify(image.float(), self.patch_size))

    def forward(self, pred: torch.Tensor, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        per_patch = ((pred.float() - self.target(image)) ** 2).mean(dim=-1)  # [B, N]
        return (per_patch * mask).sum() / mask.sum().clamp_min(1.0)

    def masked(self, pred_masked: torch.Tensor, image: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """``pred_masked`` ``[B, K, P]`` are the predictions of patches ``index`` ``[B, K]`` (the same K per sample)."""
        if pred_masked.shape[:2] != index.shape:
            raise ValueError(f"pred_masked {tuple(pred_masked.shape)} and masked_index {tuple(index.shape)} disagree")
        target = self.normalise(gather_patches(image.float(), self.patch_size, index))
        return F.mse_loss(pred_masked.float(), target)


class MAELoss(nn.Module):
    """Pretraining loss on the dict returned by :class:`~medmae_ext.networks.MaskedAutoencoder`.

    ``loss = masked-patch MSE + ce_weight * cross_entropy(logits, label)``; the cross-entropy term (MSMAE's
    supervised attention) applies only when the network has a CLS head and labels are given. Cross-entropy takes
    the raw logits: softmax is applied once, inside it; ``class_weight`` (``[num_classes]``, e.g. from
    :func:`medmae_ext.training.imbalance.class_weights`) weights its classes.
    """

    def __init__(
        self,
        patch_size: Sequence[int],
        norm_pix: bool = True,
        ce_weight: float = 0.0,
        class_weight: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.mse = MaskedPatchMSELoss(patch_size, norm_pix)
        self.ce_weight = ce_weight
        self.class_weight = None if class_weight is None else torch.as_tensor(class_weight, dtype=torch.float32)

    def forward(self, output: dict, target) -> torch.Tensor:
        """``target``: the image tensor, or ``{"image": ..., "label": ...}`` as made by
        :class:`~medmae_ext.training.engines.MAEPrepareBatch`."""
        image, label = (target["image"], target.get("label")) if isinstance(target, dict) else (target, None)
        if "pred_masked" not in output or "masked_index" not in output:
            raise KeyError(
                f"MAELoss needs the network output keys 'pred_masked' and 'masked_index' "
                f"(MaskedAutoencoder); got {sorted(output)}"
            )
        loss = self.mse.masked(output["pred_masked"], image, output["masked_index"])
        if self.ce_weight > 0 and "logits" in output:
            if label is None:
                raise ValueError("ce_weight > 0 but the batch has no 'label': MSMAE pretraining needs class labels.")
            logits = output["logits"].float()
            w = None if self.class_weight is None else self.class_weight.to(logits.device)
            loss = loss + self.ce_weight * F.cross_entropy(logits, label.reshape(-1).long(), weight=w)
        return loss
