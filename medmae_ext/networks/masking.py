"""Masking strategies: which patches an MAE encoder sees, which it must reconstruct, which are thrown away.

A strategy is called with the batch size, the number of patches and (optionally) one non-negative weight per
patch, and returns a :class:`MaskPlan` of three index tensors that partition ``range(num_patches)`` per sample:

* ``masked``  -- hidden from the encoder, reconstructed by the decoder and scored by the loss;
* ``thrown``  -- neither encoded nor reconstructed (MSMAE / AMT "throw" tokens);
* ``visible`` -- fed to the encoder.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["MaskPlan", "RandomMasking", "AttentionMasking", "patch_counts"]


@dataclass
class MaskPlan:
    visible: torch.Tensor  # [B, n_visible] long
    masked: torch.Tensor  # [B, n_masked] long
    thrown: torch.Tensor  # [B, n_thrown] long

    def indicator(self, num_patches: int, which: str = "masked") -> torch.Tensor:
        """``[B, num_patches]`` float tensor, 1 at the patches of ``which`` ("masked", "thrown" or "visible")."""
        idx = getattr(self, which)
        out = torch.zeros(idx.shape[0], num_patches, device=idx.device)
        return out.scatter_(1, idx, 1.0)


def patch_counts(num_patches: int, mask_ratio: float, throw_ratio: float = 0.0) -> tuple[int, int, int]:
    """(n_masked, n_thrown, n_visible) for ``num_patches``; at least one patch always stays visible."""
    if not 0.0 <= mask_ratio < 1.0 or not 0.0 <= throw_ratio < 1.0:
        raise ValueError(f"mask_ratio ({mask_ratio}) and throw_ratio ({throw_ratio}) must lie in [0, 1).")
    n_masked = int(round(num_patches * mask_ratio))
    n_thrown = int(round(num_patches * throw_ratio))
    n_visible = num_patches - n_masked - n_thrown
    if n_visible < 1:
        raise ValueError(
            f"mask_ratio={mask_ratio} + throw_ratio={throw_ratio} leave no visible patch out of {num_patches}."
        )
    return n_masked, n_thrown, n_visible


class RandomMasking:
    """Uniform random masking (MAE): ``mask_ratio`` of the patches are masked, optionally ``throw_ratio`` thrown."""

    def __init__(self, mask_ratio: float = 0.75, throw_ratio: float = 0.0) -> None:
        patch_counts(100, mask_ratio, throw_ratio)  # validate early, with a clear message
        self.mask_ratio = float(mask_ratio)
        self.throw_ratio = float(throw_ratio)

    def draw_order(self, batch_size: int, num_patches: int, device, weights: torch.Tensor | None) -> torch.Tensor:
        """A random permutation of the patches per sample; the first drawn are masked, then thrown, then visible."""
        return torch.rand(batch_size, num_patches, device=device).argsort(dim=1)

    def __call__(self, batch_size: int, num_patches: int, device=None, weights: torch.Tensor | None = None) -> MaskPlan:
        n_masked, n_thrown, _ = patch_counts(num_patches, self.mask_ratio, self.throw_ratio)
        order = self.draw_order(batch_size, num_patches, device, weights)
        return MaskPlan(
            masked=order[:, :n_masked],
            thrown=order[:, n_masked : n_masked + n_thrown],
            visible=order[:, n_masked + n_thrown :],
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mask_ratio={self.mask_ratio}, throw_ratio={self.throw_ratio})"


class AttentionMasking(RandomMasking):
    """MSMAE / AMT attention-driven masking.

    All patches are drawn with ``torch.multinomial(weights + eps, num_patches, replacement=False)``: the first
    ``mask_ratio`` drawn are masked, the next ``throw_ratio`` thrown, the rest visible -- so a patch with high
    attention is likely to be masked. Without weights (before the first attention map exists) the ``warmup``
    strategy is used; with ``warmup=None`` weights are required.
    """

    def __init__(
        self,
        mask_ratio: float = 0.45,
        throw_ratio: float = 0.30,
        eps: float = 1e-6,
        warmup: RandomMasking | None = None,
    ) -> None:
        super().__init__(mask_ratio, throw_ratio)
        self.eps = float(eps)
        self.warmup = warmup

    def __call__(self, batch_size, num_patches, device=None, weights=None) -> MaskPlan:
        if weights is None:
            if self.warmup is None:
                raise ValueError("AttentionMasking needs one attention weight per patch (weights=None given).")
            return self.warmup(batch_size, num_patches, device)
        if tuple(weights.shape) != (batch_size, num_patches):
            raise ValueError(
                f"attention weights have shape {tuple(weights.shape)}, expected ({batch_size}, {num_patches})."
            )
        return super().__call__(batch_size, num_patches, device, weights)

    def draw_order(self, batch_size, num_patches, device, weights):
        w = weights.detach().float().clamp_min(0.0) + self.eps
        return torch.multinomial(w, num_patches, replacement=False).to(device)
