"""ViT encoder and classifier built from MONAI blocks, with state-dict keys that match ``monai.networks.nets.ViT``.

Key layout of :class:`ViTEncoder` (identical to ``ViT(classification=True)`` minus its head)::

    cls_token
    patch_embedding.patch_embeddings.{weight,bias}
    patch_embedding.position_embeddings
    blocks.{i}.{norm1,attn.qkv,attn.out_proj,norm2,mlp.linear1,mlp.linear2,norm_cross_attn}.*
    norm.{weight,bias}
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.blocks import PatchEmbeddingBlock, TransformerBlock
from monai.networks.layers import DropPath, trunc_normal_
from monai.utils import ensure_tuple_rep

from .patching import gather_patches, grid_shape, quiet_meshgrid

__all__ = ["Block", "ViTEncoder", "ViTClassifier", "gather_tokens", "init_mae_weights", "check_sincos_dim"]


def check_sincos_dim(dim: int, spatial_dims: int, name: str) -> None:
    """A sin-cos position embedding needs ``dim`` divisible by 4 (2D) or 6 (3D)."""
    k = 4 if spatial_dims == 2 else 6
    if dim % k:
        raise ValueError(f"{name}={dim} must be divisible by {k} for a {spatial_dims}D sin-cos position embedding.")


def init_mae_weights(module: nn.Module) -> None:
    """MAE initialisation: xavier-uniform linear layers (and the patch projection seen as one), unit LayerNorms."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.Conv2d, nn.Conv3d)):
            nn.init.xavier_uniform_(m.weight.view(m.weight.shape[0], -1))
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def gather_tokens(tokens: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``tokens[b, index[b, k], :]`` for every ``b, k``."""
    return torch.gather(tokens, 1, index.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))


class Block(TransformerBlock):
    """MONAI ``TransformerBlock`` plus stochastic depth (drop path). Same parameters, same state-dict keys.

    Attention runs through ``torch.nn.functional.scaled_dot_product_attention`` (MONAI's ``use_flash_attention``)
    whenever ``dropout_rate == 0``, the MAE and fine-tuning default: no ``[B, heads, L, L]`` matrix is stored and
    the fused kernel is used on CPU and GPU. MONAI's SDPA path applies its attention dropout in eval mode too, so
    with ``dropout_rate > 0`` the block keeps MONAI's explicit softmax instead. The attention weights are never
    saved during a forward pass; :meth:`cls_attention` computes the only row MSMAE needs, when asked.
    """

    def __init__(
        self,
        hidden_size: int,
        mlp_dim: int,
        num_heads: int,
        dropout_rate: float = 0.0,
        qkv_bias: bool = True,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__(
            hidden_size, mlp_dim, num_heads, dropout_rate, qkv_bias, use_flash_attention=dropout_rate == 0.0
        )
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        # MONAI always builds this LayerNorm; without cross-attention it is unused. Frozen, so that optimizers and
        # DistributedDataParallel skip it; kept so that state dicts match monai.networks.nets.ViT.
        self.norm_cross_attn.requires_grad_(False)

    def forward(
        self, x: torch.Tensor, context: Optional[torch.Tensor] = None, attn_mask: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), attn_mask=attn_mask))
        return x + self.drop_path(self.mlp(self.norm2(x)))

    def cls_attention(self, x: torch.Tensor) -> torch.Tensor:
        """Softmax attention of the first (CLS) query over every token of this block's input ``x`` ``[B, L, hidden]``:
        ``[B, heads, L]``, rows summing to 1 (what MONAI's ``save_attn`` would store as ``att_mat[:, :, 0]``), at the
        cost of one query row instead of ``L``."""
        attn = self.attn
        if not attn.use_combined_linear:
            raise NotImplementedError("cls_attention expects the combined qkv projection of MONAI's SABlock")
        q, k, _ = attn.input_rearrange(attn.qkv(self.norm1(x)))  # each [B, heads, L, dim_head]
        logits = torch.einsum("bhd,bhld->bhl", q[:, :, 0], k) * attn.scale
        return logits.float().softmax(dim=-1)


class ViTEncoder(nn.Module):
    """ViT encoder with a CLS token that can run on a subset of its patch tokens.

    Args:
        in_channels: image channels.
        img_size / patch_size: spatial size of the input and of a patch (int or one per spatial dim).
        hidden_size, mlp_dim, num_layers, num_heads, qkv_bias: transformer size (ViT-B: 768, 3072, 12, 12, True).
        pos_embed_type: "sincos" (fixed, as in MAE) or "learnable".
        dropout_rate: dropout inside the blocks; drop_path_rate: stochastic depth, linearly increasing per block.
        spatial_dims: 2 or 3.
    """

    def __init__(
        self,
        in_channels: int,
        img_size: Sequence[int] | int,
        patch_size: Sequence[int] | int = 16,
        hidden_size: int = 768,
        mlp_dim: int = 3072,
        num_layers: int = 12,
        num_heads: int = 12,
        qkv_bias: bool = True,
        pos_embed_type: str = "sincos",
        dropout_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        spatial_dims: int = 2,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size ({hidden_size}) must be divisible by num_heads ({num_heads}).")
        if pos_embed_type == "sincos":
            check_sincos_dim(hidden_size, spatial_dims, "hidden_size")
        self.in_channels = int(in_channels)
        self.img_size = tuple(int(s) for s in ensure_tuple_rep(img_size, spatial_dims))
        self.patch_size = tuple(int(p) for p in ensure_tuple_rep(patch_size, spatial_dims))
        self.grid = grid_shape(self.img_size, self.patch_size)
        self.num_patches = int(torch.tensor(self.grid).prod())
        self.hidden_size = hidden_size
        self.spatial_dims = spatial_dims
        with quiet_meshgrid():
            self.patch_embedding = PatchEmbeddingBlock(
                in_channels=in_channels,
                img_size=self.img_size,
                patch_size=self.patch_size,
                hidden_size=hidden_size,
                num_heads=num_heads,
                proj_type="conv",
                pos_embed_type=pos_embed_type,
                dropout_rate=dropout_rate,
                spatial_dims=spatial_dims,
            )
        self.cls_token = nn.Parameter(torch.zeros(1, 1, hidden_size))
        trunc_normal_(self.cls_token, mean=0.0, std=0.02, a=-2.0, b=2.0)
        rates = torch.linspace(0, drop_path_rate, num_layers).tolist() if num_layers > 1 else [drop_path_rate]
        self.blocks = nn.ModuleList(
            [Block(hidden_size, mlp_dim, num_heads, dropout_rate, qkv_bias, rates[i]) for i in range(num_layers)]
        )
        self.norm = nn.LayerNorm(hidden_size)
        init_mae_weights(self)

    def check_input(self, x: torch.Tensor) -> None:
        expected = [self.in_channels] + list(self.img_size)
        if x.dim() != self.spatial_dims + 2 or list(x.shape[1:]) != expected:
            raise ValueError(
                "network input has shape "
                + str(list(x.shape))
                + " but the network expects [batch, "
                + str(self.in_channels)
                + " channel(s), "
                + str(list(self.img_size))
                + "]: check the channel count and the resize/crop size against in_channels and img_size."
            )

    def embed(self, x: torch.Tensor, keep: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Patch tokens with position embedding: ``[B, N, hidden]``, or ``[B, K, hidden]`` for the patches listed in
        ``keep`` ``[B, K]`` (no CLS token).

        With ``keep`` only those patches are embedded: the patch-embedding convolution (kernel = stride = patch) is
        applied as one matrix product to the gathered patches, so a masked patch costs nothing. Same weights,
        same result as embedding all patches and selecting ``keep`` afterwards.
        """
        self.check_input(x)
        if keep is None:
            return self.patch_embedding(x)
        return self._embed_kept(x, keep)

    @torch.jit.unused
    def _embed_kept(self, x, keep):  # untyped: TorchScript cannot resolve string annotations of an unused method
        # a training-time path: a TorchScript export (inference, all tokens) does not carry it
        pe = self.patch_embedding
        conv = pe.patch_embeddings
        # conv weight [hidden, C, *patch] -> [hidden, prod(patch) * C] in patchify's order (voxel-major, channel last)
        weight = conv.weight.flatten(2).transpose(1, 2).reshape(conv.weight.shape[0], -1)
        patches = gather_patches(x, self.patch_size, keep)
        tokens = F.linear(patches, weight, conv.bias) + pe.position_embeddings[0][keep]
        return pe.dropout(tokens)

    def with_cls(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[B, K, hidden]`` -> ``[B, 1 + K, hidden]`` with the CLS token first."""
        return torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)

    def encode_tokens(self, tokens: torch.Tensor, final_norm: bool = True) -> torch.Tensor:
        """Prepend the CLS token to ``tokens`` ``[B, K, hidden]`` and run the transformer; ``[B, 1 + K, hidden]``
        (after the final LayerNorm unless ``final_norm`` is False)."""
        x = self.with_cls(tokens)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x) if final_norm else x

    def forward(self, x: torch.Tensor, keep: Optional[torch.Tensor] = None, final_norm: bool = True) -> torch.Tensor:
        """``[B, 1 + K, hidden]``: CLS + the patches in ``keep`` (all patches when ``keep`` is None)."""
        return self.encode_tokens(self.embed(x, keep), final_norm)

    @torch.no_grad()
    def cls_attention(self, x: torch.Tensor) -> torch.Tensor:
        """MSMAE attention map: last block's CLS->patch softmax attention, each head min-max normalised to [0, 1],
        heads averaged. Uses all tokens; returns ``[B, N]`` (float32).

        The first ``num_layers - 1`` blocks run as usual (SDPA); of the last block only the CLS query row of the
        attention is computed (:meth:`Block.cls_attention`), its value/MLP half is skipped.
        """
        h = self.with_cls(self.embed(x))
        for blk in self.blocks[:-1]:
            h = blk(h)
        att = self.blocks[-1].cls_attention(h)[:, :, 1:]  # [B, heads, N]
        lo = att.amin(dim=-1, keepdim=True)
        hi = att.amax(dim=-1, keepdim=True)
        return ((att - lo) / (hi - lo).clamp_min(1e-12)).mean(dim=1)


class ViTClassifier(nn.Module):
    """ViT classifier: :class:`ViTEncoder` + a linear head.

    ``pooling`` (config id ``pooling``): ``"cls"`` -- the head reads the CLS token after the encoder's final norm;
    ``"mean"`` -- global average of the patch tokens before the final norm, then a new LayerNorm ``fc_norm``, then
    the head (MAE's and MSMAE's fine-tuning recipe: MAE pretraining gives the CLS token no loss). With ``"mean"`` the
    encoder's final norm is unused, so it is frozen (DDP and the optimiser skip it).

    ``forward(x, keep)`` encodes only the patch tokens listed in ``keep`` (MSMAE masked fine-tuning); evaluation
    and inference call ``forward(x)`` and use every token. Keys: ``encoder.*`` (as in the MAE checkpoints),
    ``fc_norm.*`` (mean pooling) and ``head.*``.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        img_size: Sequence[int] | int,
        patch_size: Sequence[int] | int = 16,
        hidden_size: int = 768,
        mlp_dim: int = 3072,
        num_layers: int = 12,
        num_heads: int = 12,
        qkv_bias: bool = True,
        pos_embed_type: str = "sincos",
        dropout_rate: float = 0.0,
        drop_path_rate: float = 0.1,
        head_dropout: float = 0.0,
        spatial_dims: int = 2,
        pooling: str = "cls",
    ) -> None:
        super().__init__()
        if pooling not in ("cls", "mean"):
            raise ValueError(f"pooling must be 'cls' or 'mean', got {pooling!r} (config id 'pooling')")
        self.pooling = pooling
        self.use_mean = pooling == "mean"
        self.encoder = ViTEncoder(
            in_channels,
            img_size,
            patch_size,
            hidden_size,
            mlp_dim,
            num_layers,
            num_heads,
            qkv_bias,
            pos_embed_type,
            dropout_rate,
            drop_path_rate,
            spatial_dims,
        )
        self.fc_norm = nn.LayerNorm(hidden_size) if self.use_mean else nn.Identity()
        if self.use_mean:
            self.encoder.norm.requires_grad_(False)
        self.head_drop = nn.Dropout(head_dropout)
        self.head = nn.Linear(hidden_size, num_classes)
        trunc_normal_(self.head.weight, mean=0.0, std=2e-5, a=-2.0, b=2.0)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor, keep: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.use_mean:
            feature = self.fc_norm(self.encoder(x, keep, final_norm=False)[:, 1:].mean(dim=1))
        else:
            feature = self.encoder(x, keep)[:, 0]
        return self.head(self.head_drop(feature))
