"""The pretrained encoder as a feature extractor: what mae_pretrain / msmae_pretrain export and serve.

A pretraining bundle's ``models/model.pt`` is a :class:`~.mae.MaskedAutoencoder` state dict (``encoder.*`` +
decoder). Its ``inference.json`` ``network_def`` is :class:`EncoderFeatures`: the same ``encoder`` (same keys, so
``model.pt`` loads into it as it is, e.g. in ``ckpt_export`` / ``verify_net_in_out`` / ``monai.bundle.load``) that
takes a whole image (no masking) and returns one tensor ``[B, hidden_size]``: an embedding per image.

:func:`load_weights` is the strict loader the configs use: every tensor of the target must come from the file with
its shape (extra file keys, e.g. the decoder when loading the encoder alone, are allowed only where ``ignore``
says so). A 3D checkpoint into the 2D network, or a ViTClassifier's file, stops naming the keys instead of loading
nothing.
"""

from __future__ import annotations

import logging
from typing import Sequence

import torch
from torch import nn

from .vit import ViTEncoder
from .weights import read_state_dict

__all__ = ["EncoderFeatures", "load_weights", "PRETRAINING_ONLY"]

# state-dict entries of a MaskedAutoencoder that are not part of its encoder (decoder, mask token, MSMAE class head)
PRETRAINING_ONLY = ("decoder", "mask_token", "cls_head")

logger = logging.getLogger(__name__)


class EncoderFeatures(nn.Module):
    """``forward(image [B, C, *img_size]) -> [B, hidden_size]``: the encoder's final-norm tokens of the whole image,
    pooled: ``pooling="mean"`` (default) averages the patch tokens, ``"cls"`` takes the CLS token. Mean pooling is
    the default because MAE pretraining gives the CLS token no loss of its own (He et al. fine-tune with global
    pooling for the same reason). Constructor arguments are those of the pretraining ``MaskedAutoencoder``'s
    encoder."""

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
        qkv_bias: bool = True,
        pooling: str = "mean",
    ) -> None:
        super().__init__()
        if pooling not in ("mean", "cls"):
            raise ValueError(f"pooling must be 'mean' or 'cls', got {pooling!r} (config id 'pooling').")
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
        self.use_cls = pooling == "cls"

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Accepts the pretraining ``MaskedAutoencoder`` state dict as it is (the zoo's ``ckpt_export`` and MONAI's
        ``CheckpointLoader`` load ``models/model.pt`` strictly): its decoder / mask token / class head entries
        (:data:`PRETRAINING_ONLY`) are set aside; every encoder tensor must still be there (``strict``)."""
        kept = {k: v for k, v in state_dict.items() if not k.startswith(PRETRAINING_ONLY)}
        return super().load_state_dict(kept, strict=strict, assign=assign)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.encoder(x)
        if self.use_cls:
            return tokens[:, 0]
        return tokens[:, 1:].mean(dim=1)


def load_weights(network: nn.Module, path: str, ignore: Sequence[str] = ()) -> nn.Module:
    """Load ``path`` (a bundle ``model.pt`` or a training checkpoint) into ``network`` strictly and return it.

    Every tensor of ``network`` must be in the file with the same shape; file keys that ``network`` lacks are an
    error unless they start with one of ``ignore`` (``["decoder", "mask_token"]``-style prefixes: the pretraining
    decoder when only the encoder is loaded). The error names the file and the first offending keys."""
    state = read_state_dict(path)
    own = network.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own and not any(k.startswith(p) for p in ignore)]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if missing or unexpected or shapes:
        raise ValueError(
            f"{path} does not fit {type(network).__name__} (config id 'ckpt_path'): "
            + "; ".join(
                x
                for x in (
                    f"{len(missing)} tensors missing, e.g. {missing[:3]}" if missing else "",
                    f"{len(unexpected)} unexpected, e.g. {unexpected[:3]}" if unexpected else "",
                    f"{len(shapes)} of another shape, e.g. {shapes[:2]}" if shapes else "",
                )
                if x
            )
            + " (a 3D checkpoint for the 2D config, or another network size? 3D: use configs/inference_3d.json)"
        )
    network.load_state_dict({k: state[k] for k in own})
    logger.info(f"loaded {len(own)} tensors of {type(network).__name__} from {path}")
    return network
