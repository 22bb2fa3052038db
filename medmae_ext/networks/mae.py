"""Masked autoencoder ViT for 2D and 3D images (SelfMedMAE recipe), with a pluggable masking strategy."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from monai.networks.blocks.pos_embed_utils import build_sincos_position_embedding
from monai.networks.layers import trunc_normal_

from .masking import RandomMasking, patch_counts
from .patching import quiet_meshgrid, scatter_patches
from .vit import Block, ViTEncoder, check_sincos_dim, init_mae_weights

__all__ = ["MaskedAutoencoder"]


class MaskedAutoencoder(nn.Module):
    """MAE: a :class:`ViTEncoder` that sees only the visible patches and a light transformer decoder.

    ``forward(image, weights=None)`` returns a dict:

    * ``pred_masked``  ``[B, n_masked, prod(patch) * C]``: reconstruction of the masked patches only, row ``k``
      being patch ``masked_index[:, k]`` (:meth:`dense_prediction` puts them on the full ``[B, N, P]`` grid);
    * ``masked_index`` ``[B, n_masked]``: the masked patches (token order of :func:`~.patching.patchify`);
    * ``mask``   ``[B, N]``: 1 where the patch was masked and must be reconstructed (the loss counts only these);
    * ``thrown`` ``[B, N]``: 1 where the patch was thrown (neither encoded nor reconstructed);
    * ``logits`` ``[B, num_classes]``: only when ``num_classes > 0`` (MSMAE's supervised CLS head).

    Compute goes where the loss needs it: only visible patches are embedded and encoded, the decoder sees
    CLS + visible + masked tokens (thrown ones are dropped), and only masked tokens are normalised and projected
    back to voxels. Attention runs through SDPA (see :class:`~.vit.Block`).

    ``weights`` (one per patch) are handed to the masking strategy; :class:`~medmae_ext.networks.masking.RandomMasking`
    ignores them, :class:`~medmae_ext.networks.masking.AttentionMasking` draws the mask from them.

    Defaults are ViT-B/16 with a 384-dim, 8-layer decoder (Zhou et al.). The encoder's keys are ``encoder.*``;
    :mod:`medmae_ext.networks.weights` maps them to ``monai.networks.nets.ViT`` and ``UNETR``.
    """

    def __init__(
        self,
        in_channels: int = 1,
        img_size: Sequence[int] | int = 224,
        patch_size: Sequence[int] | int = 16,
        spatial_dims: int = 2,
        hidden_size: int = 768,
        mlp_dim: int = 3072,
        num_layers: int = 12,
        num_heads: int = 12,
        decoder_hidden_size: int = 384,
        decoder_mlp_dim: int = 1536,
        decoder_num_layers: int = 8,
        decoder_num_heads: int = 12,
        qkv_bias: bool = True,
        masking=None,
        num_classes: int = 0,
    ) -> None:
        super().__init__()
        if decoder_hidden_size % decoder_num_heads:
            raise ValueError(
                f"decoder_hidden_size ({decoder_hidden_size}) must be divisible by decoder_num_heads "
                f"({decoder_num_heads})."
            )
        check_sincos_dim(decoder_hidden_size, spatial_dims, "decoder_hidden_size")
        self.encoder = ViTEncoder(
            in_channels,
            img_size,
            patch_size,
            hidden_size,
            mlp_dim,
            num_layers,
            num_heads,
            qkv_bias,
            pos_embed_type="sincos",
            spatial_dims=spatial_dims,
        )
        self.masking = masking if masking is not None else RandomMasking(0.75)
        ratio = getattr(self.masking, "mask_ratio", None)
        if (
            ratio is not None
            and patch_counts(self.encoder.num_patches, ratio, getattr(self.masking, "throw_ratio", 0.0))[0] < 1
        ):
            raise ValueError(
                f"mask_ratio={ratio} masks none of the {self.encoder.num_patches} patches: the MAE loss "
                "(on masked patches only) would be empty. Use a mask_ratio in (0, 1), e.g. 0.75."
            )
        self.in_channels = in_channels
        self.spatial_dims = spatial_dims
        self.patch_size = self.encoder.patch_size
        self.grid = self.encoder.grid
        self.num_patches = self.encoder.num_patches

        self.decoder_embed = nn.Linear(hidden_size, decoder_hidden_size)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_hidden_size))
        with quiet_meshgrid():
            self.decoder_pos_embed = build_sincos_position_embedding(list(self.grid), decoder_hidden_size, spatial_dims)
        self.decoder_blocks = nn.ModuleList(
            [
                Block(decoder_hidden_size, decoder_mlp_dim, decoder_num_heads, qkv_bias=qkv_bias)
                for _ in range(decoder_num_layers)
            ]
        )
        self.decoder_norm = nn.LayerNorm(decoder_hidden_size)
        self.decoder_pred = nn.Linear(decoder_hidden_size, int(torch.tensor(self.patch_size).prod()) * in_channels)
        self.cls_head = nn.Linear(hidden_size, num_classes) if num_classes > 0 else None
        for m in (self.decoder_embed, self.decoder_blocks, self.decoder_norm, self.decoder_pred):
            init_mae_weights(m)
        if self.cls_head is not None:
            init_mae_weights(self.cls_head)
        trunc_normal_(self.mask_token, mean=0.0, std=0.02, a=-2.0, b=2.0)

    def forward(self, image: torch.Tensor, weights: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        b, n = image.shape[0], self.num_patches
        plan = self.masking(b, n, image.device, weights)
        # only the visible patches are embedded and encoded
        latent = self.encoder(image, plan.visible)  # [B, 1 + n_visible, hidden]

        y = self.decoder_embed(latent)
        pos = self.decoder_pos_embed[0]  # [N, d]
        # decoder input: CLS, the encoded visible patches, one mask token per masked patch, each with its position.
        # Thrown patches are absent. (mask_token in y's dtype: under autocast decoder_embed's output is bf16/fp16.)
        x = torch.cat([y[:, :1], y[:, 1:] + pos[plan.visible], self.mask_token.to(y.dtype) + pos[plan.masked]], dim=1)
        for blk in self.decoder_blocks:
            x = blk(x)
        n_skip = 1 + plan.visible.shape[1]
        # the loss scores masked patches only, so only they are normalised and predicted
        pred_masked = self.decoder_pred(self.decoder_norm(x[:, n_skip:]))  # [B, n_masked, P]

        result = {
            "pred_masked": pred_masked,
            "masked_index": plan.masked,
            "mask": plan.indicator(n, "masked"),
            "thrown": plan.indicator(n, "thrown"),
        }
        if self.cls_head is not None:
            result["logits"] = self.cls_head(latent[:, 0])
        return result

    def dense_prediction(self, output: dict[str, torch.Tensor]) -> torch.Tensor:
        """``[B, N, P]`` from :meth:`forward`'s output: each masked patch's reconstruction at its position, zeros
        elsewhere (for pictures and evaluation; the training step does not need it)."""
        return scatter_patches(output["pred_masked"], output["masked_index"], self.num_patches)
