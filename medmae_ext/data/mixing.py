"""Mixup and CutMix of a classification batch on the training device (the MAE fine-tuning recipe's, arXiv 2111.06377
after DeiT: mixup alpha 0.8, cutmix alpha 1.0, one of the two per batch).

Each image is paired with the batch in reverse order (the batch is shuffled already). Mixup blends the pair with a
weight ``lam ~ Beta(alpha, alpha)``; CutMix pastes a box of the partner whose volume is ``1 - lam`` of the image
(each side ``(1 - lam) ** (1 / d)`` of the image's, centred uniformly, clipped), and ``lam`` becomes the share really
kept. The labels are mixed with the same ``lam`` (single-label: one-hot, so the loss is the soft-target
cross-entropy; multi-label: the multi-hot vectors). An MSMAE attention map in the batch gets the same blend or box.
Draws come from torch's global generator (seeded per epoch). Config ids ``mixup`` and ``cutmix`` (the alphas, 0 = off)
of vit_classification; applied after :class:`~medmae_ext.data.augment.BatchAugment` by the same trainer handler.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import InputError

__all__ = ["MixCut", "mixing"]


class MixCut:
    """Mixup / CutMix of ``batch[image_key]`` (and ``attention_key``) with ``batch[label_key]`` (module doc).

    Args:
        num_classes: classes of the labels.
        mixup_alpha, cutmix_alpha: Beta parameters; 0 turns that one off.
        switch_prob: with both on, the probability that a batch gets CutMix rather than mixup.
        prob: probability that a batch is mixed at all.
    """

    def __init__(
        self,
        num_classes: int,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        switch_prob: float = 0.5,
        prob: float = 1.0,
        multi_label: bool = False,
        image_key: str = "image",
        label_key: str = "label",
        attention_key: str = "attn",
    ) -> None:
        for name, v in (("mixup", mixup_alpha), ("cutmix", cutmix_alpha)):
            if float(v) < 0:
                raise InputError(f"config id {name!r} (a Beta alpha) must be >= 0, got {v}")
        self.num_classes = int(num_classes)
        self.mixup_alpha, self.cutmix_alpha = float(mixup_alpha), float(cutmix_alpha)
        self.switch_prob, self.prob = float(switch_prob), float(prob)
        self.multi_label = bool(multi_label)
        self.keys = [image_key, attention_key, label_key]
        self.image_key, self.label_key, self.attention_key = image_key, label_key, attention_key

    def soft_labels(self, label: torch.Tensor, device) -> torch.Tensor:
        label = torch.as_tensor(label, device=device)
        if self.multi_label:
            return label.float().reshape(label.shape[0], -1)
        return F.one_hot(label.long().reshape(-1), self.num_classes).float()

    def box(self, spatial, lam: float) -> tuple[tuple[slice, ...], float]:
        """The CutMix box (slices) for ``lam`` and the share of the image it leaves."""
        side = (1 - lam) ** (1 / len(spatial))
        slices, kept = [], 1.0
        for s in spatial:
            length = int(round(s * side))
            centre = int(torch.randint(0, s, ()).item())
            lo, hi = max(centre - length // 2, 0), min(centre + length - length // 2, s)
            slices.append(slice(lo, hi))
            kept *= (hi - lo) / s
        return tuple(slices), 1 - kept

    def __call__(self, batch: dict, inplace: bool = False) -> dict:
        if self.label_key not in batch:
            raise KeyError(
                f"mixup / cutmix need the class labels {self.label_key!r} in the batch (keys: {sorted(batch)})"
            )
        x = batch[self.image_key]
        out = dict(batch)
        y = self.soft_labels(batch[self.label_key], x.device)
        out[self.label_key] = y
        if not (self.mixup_alpha or self.cutmix_alpha) or float(torch.rand(())) >= self.prob:
            return out
        cutmix = self.cutmix_alpha > 0 and (self.mixup_alpha == 0 or float(torch.rand(())) < self.switch_prob)
        alpha = self.cutmix_alpha if cutmix else self.mixup_alpha
        lam = float(torch.distributions.Beta(alpha, alpha).sample())
        keys = [k for k in (self.image_key, self.attention_key) if isinstance(batch.get(k), torch.Tensor)]
        if cutmix:
            box, lam = self.box(tuple(x.shape[2:]), lam)
            where = (slice(None), slice(None)) + box
            for k in keys:
                v = batch[k] if inplace else batch[k].clone()
                v[where] = batch[k][where].flip(0)  # the partner's box: only the box is copied
                out[k] = v
        else:
            for k in keys:
                out[k] = lam * batch[k] + (1 - lam) * batch[k].flip(0)
        out[self.label_key] = lam * y + (1 - lam) * y.flip(0)
        return out


def mixing(num_classes: int, mixup: float = 0.0, cutmix: float = 0.0, multi_label: bool = False) -> MixCut | None:
    """The config's ``mixing``: a :class:`MixCut`, or None when both alphas are 0 (the default)."""
    if not math.isfinite(float(mixup)) or not math.isfinite(float(cutmix)):
        raise InputError(f"config ids 'mixup' / 'cutmix' must be finite, got {mixup} / {cutmix}")
    mix = MixCut(num_classes, mixup, cutmix, multi_label=multi_label)  # checks the values
    return mix if (mix.mixup_alpha or mix.cutmix_alpha) else None
