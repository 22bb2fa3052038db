"""The straightforward MAE step that medmae ran before the compute-floor rewrite, kept as the reference.

Same parameters as :class:`medmae_ext.networks.MaskedAutoencoder` (it reads them from a built network), computed
the plain way: the patch-embedding convolution over every patch, explicit softmax attention (``q k^T``, the
``[B, heads, L, L]`` matrix stored by the last encoder block as MONAI's ``save_attn`` did), the visible latents
scattered into a full ``[B, N, d]`` sequence of mask tokens and gathered back, ``decoder_pred`` on every kept
token, a dense ``[B, N, P]`` prediction, and a norm-pix target over all patches with the loss masked afterwards.

``tests/test_mae_compute.py`` checks the fast path against it (loss, gradients, attention maps);
``scripts/benchmark_mae.py`` times it as the "before" arm.
"""

from __future__ import annotations

import torch

from medmae_ext.networks.masking import MaskPlan
from medmae_ext.networks.patching import patchify
from medmae_ext.networks.vit import gather_tokens


def attention(blk, x: torch.Tensor, keep_weights: bool = False):
    """MONAI SABlock's explicit attention with ``blk``'s weights; also returns the softmax matrix when asked."""
    a = blk.attn
    b, L, _ = x.shape
    qkv = a.qkv(x).reshape(b, L, 3, a.num_heads, a.dim_head).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    att = (torch.einsum("bhxd,bhyd->bhxy", q, k) * a.scale).softmax(dim=-1)
    out = torch.einsum("bhxy,bhyd->bhxd", att, v).transpose(1, 2).reshape(b, L, -1)
    return a.out_proj(out), (att.detach() if keep_weights else None)


def block(blk, x: torch.Tensor, keep_weights: bool = False):
    h, att = attention(blk, blk.norm1(x), keep_weights)
    x = x + h
    return x + blk.mlp(blk.norm2(x)), att


def encoder_forward(encoder, image: torch.Tensor, visible: torch.Tensor | None = None):
    """Conv embedding of every patch, then the visible ones kept; returns (latent, last block's attention)."""
    tokens = encoder.patch_embedding(image)
    if visible is not None:
        tokens = gather_tokens(tokens, visible)
    x = torch.cat([encoder.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
    att = None
    for i, blk in enumerate(encoder.blocks):
        x, att = block(blk, x, keep_weights=i == len(encoder.blocks) - 1)
    return encoder.norm(x), att


def cls_attention(encoder, image: torch.Tensor) -> torch.Tensor:
    """The MSMAE map as it was computed: ``att_mat[:, :, 0, 1:]`` of the last block, per-head min-max, mean."""
    with torch.no_grad():
        _, att = encoder_forward(encoder, image)
    att = att[:, :, 0, 1:]
    lo, hi = att.amin(-1, keepdim=True), att.amax(-1, keepdim=True)
    return ((att - lo) / (hi - lo).clamp_min(1e-12)).mean(1)


def mae_forward(net, image: torch.Tensor, plan: MaskPlan) -> dict:
    """``{"pred": [B, N, P] (zeros at visible/thrown patches), "mask", "thrown", "logits"?}``."""
    b, n = image.shape[0], net.num_patches
    latent, _ = encoder_forward(net.encoder, image, plan.visible)
    y = net.decoder_embed(latent)
    d = y.shape[-1]
    full = net.mask_token.to(y.dtype).expand(b, n, d).clone()
    full = full.scatter(1, plan.visible.unsqueeze(-1).expand(-1, -1, d), y[:, 1:])
    full = full + net.decoder_pos_embed
    kept = torch.cat([plan.visible, plan.masked], dim=1)
    x = torch.cat([y[:, :1], gather_tokens(full, kept)], dim=1)
    for blk in net.decoder_blocks:
        x, _ = block(blk, x)
    out = net.decoder_pred(net.decoder_norm(x)[:, 1:])
    pred = out.new_zeros(b, n, out.shape[-1]).scatter(1, kept.unsqueeze(-1).expand(-1, -1, out.shape[-1]), out)
    result = {"pred": pred, "mask": plan.indicator(n, "masked"), "thrown": plan.indicator(n, "thrown")}
    if net.cls_head is not None:
        result["logits"] = net.cls_head(latent[:, 0])
    return result


def masked_mse(pred: torch.Tensor, image: torch.Tensor, mask: torch.Tensor, patch_size, norm_pix: bool = True,
               eps: float = 1e-6) -> torch.Tensor:
    """Norm-pix target over every patch (mean / unbiased=False variance), squared error masked afterwards."""
    t = patchify(image.float(), patch_size)
    if norm_pix:
        t = (t - t.mean(-1, keepdim=True)) / (t.var(-1, keepdim=True, unbiased=False) + eps).sqrt()
    per_patch = ((pred.float() - t) ** 2).mean(-1)
    return (per_patch * mask).sum() / mask.sum().clamp_min(1.0)
