"""Moving pretrained MAE/MSMAE encoder weights into ``monai.networks.nets.ViT``, ``UNETR`` and ViTClassifier.

Key map (checkpoint of :class:`~medmae_ext.networks.MaskedAutoencoder` -> target)::

    encoder.cls_token                   -> ViT: cls_token               UNETR: (dropped, UNETR has no CLS token)
    encoder.patch_embedding.*           -> ViT: patch_embedding.*        UNETR: vit.patch_embedding.*
    encoder.blocks.{i}.*                -> ViT: blocks.{i}.*             UNETR: vit.blocks.{i}.*
    encoder.norm.*                      -> ViT: norm.*                   UNETR: vit.norm.*
    decoder_*, mask_token, cls_head.*   -> dropped (pretraining only)

The fixed sin-cos position embedding becomes the initial value of the target's (learnable) one. A position
embedding of another grid size is interpolated (trilinear/bilinear) to the target's grid, and the change is
logged; any other shape mismatch is an error naming the key.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["read_state_dict", "encoder_state_dict", "map_encoder_keys", "load_pretrained_encoder", "resize_pos_embed"]

logger = logging.getLogger(__name__)

POS_KEY = "patch_embedding.position_embeddings"


def read_state_dict(path: str, key: str | None = None) -> dict[str, torch.Tensor]:
    """Read a state dict from a bundle ``model.pt`` (plain state dict) or a training checkpoint
    (``{"network": ..., "optimizer": ...}``); ``key`` picks the entry explicitly."""
    if not path or not os.path.isfile(path):
        raise FileNotFoundError(f"pretrained checkpoint not found: {path!r}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file: say which one
        raise ValueError(f"could not read checkpoint {path!r}: {e}") from e
    if key is not None:
        if key not in obj:
            raise KeyError(f"checkpoint {path!r} has no entry {key!r}; entries: {sorted(obj)[:10]}")
        obj = obj[key]
    elif isinstance(obj, Mapping) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        for k in ("network", "model", "state_dict"):
            if k in obj:
                obj = obj[k]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"checkpoint {path!r} does not hold a state dict of tensors.")
    return dict(obj)


def encoder_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The ``encoder.*`` entries of an MAE / MSMAE / classifier state dict, prefix removed."""
    enc = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
    if not enc:
        raise KeyError(
            "no 'encoder.*' keys in the checkpoint: it is not a medmae MaskedAutoencoder/ViTClassifier state dict "
            f"(first keys: {list(state)[:5]})."
        )
    return enc


def map_encoder_keys(encoder: Mapping[str, torch.Tensor], target: str) -> dict[str, torch.Tensor]:
    """Rename encoder keys for ``target`` in {"vit", "unetr", "classifier"}."""
    if target == "vit":
        return dict(encoder)
    if target == "unetr":
        return {f"vit.{k}": v for k, v in encoder.items() if k != "cls_token"}
    if target == "classifier":
        return {f"encoder.{k}": v for k, v in encoder.items()}
    raise ValueError(f"unknown target {target!r}: use 'vit', 'unetr' or 'classifier'.")


def resize_pos_embed(pos: torch.Tensor, src_grid, dst_grid) -> torch.Tensor:
    """Interpolate a ``[1, prod(src_grid), D]`` position embedding to ``dst_grid``."""
    d = pos.shape[-1]
    x = pos.reshape(1, *src_grid, d).movedim(-1, 1)
    mode = "bilinear" if len(src_grid) == 2 else "trilinear"
    x = F.interpolate(x, size=tuple(dst_grid), mode=mode, align_corners=False)
    return x.movedim(1, -1).reshape(1, -1, d)


def _grid_of(n: int, like) -> tuple[int, ...]:
    """Cube/square grid with ``n`` cells in ``len(like)`` dims, if one exists."""
    nd = len(like)
    side = round(n ** (1.0 / nd))
    if side**nd != n:
        raise ValueError(f"cannot infer the patch grid of a {n}-token position embedding")
    return (side,) * nd


def load_pretrained_encoder(
    network: nn.Module,
    ckpt_path: str,
    target: str | None = None,
    ckpt_key: str | None = None,
    src_grid=None,
) -> nn.Module:
    """Load the encoder of a medmae pretraining checkpoint into ``network`` (ViT, UNETR or ViTClassifier).

    Returns ``network`` so that it can be used inline in a bundle config::

        "network": "$medmae_ext.networks.load_pretrained_encoder(@network_def, @pretrained_ckpt)"

    Every encoder weight must find its place (a missing or misshapen key raises naming it); keys the target has
    beyond the encoder (decoder, head) keep their initial values. ``ckpt_path=None`` returns ``network`` as is.
    """
    if ckpt_path is None:
        return network
    if not os.path.isfile(ckpt_path):
        raise FileNotFoundError(
            f"pretrained checkpoint not found: {ckpt_path} (config id 'pretrained_ckpt': run mae_pretrain or "
            "msmae_pretrain first, point it at their models/model.pt, or set it to None to train from scratch)"
        )
    if target is None:
        target = "unetr" if hasattr(network, "vit") else "classifier" if hasattr(network, "encoder") else "vit"
    mapped = map_encoder_keys(encoder_state_dict(read_state_dict(ckpt_path, ckpt_key)), target)
    own = network.state_dict()
    missing = [k for k in mapped if k not in own]
    if missing:
        raise KeyError(f"{ckpt_path}: keys {missing[:5]} have no place in {type(network).__name__} (target={target}).")
    for k, v in mapped.items():
        if own[k].shape == v.shape:
            continue
        if k.endswith(POS_KEY) and own[k].shape[-1] == v.shape[-1]:
            dst_grid = _grid_from_network(network)
            grid = tuple(src_grid) if src_grid else _grid_of(v.shape[1], dst_grid)
            logger.warning(
                f"{ckpt_path}: position embedding {tuple(v.shape)} interpolated from grid {grid} to {dst_grid}."
            )
            mapped[k] = resize_pos_embed(v, grid, dst_grid)
            continue
        raise ValueError(
            f"{ckpt_path}: '{k}' has shape {tuple(v.shape)} in the checkpoint but {tuple(own[k].shape)} in "
            f"{type(network).__name__}: the encoder sizes (hidden_size, mlp_dim, in_channels, patch_size) differ."
        )
    result = network.load_state_dict(mapped, strict=False)
    logger.info(
        f"loaded {len(mapped)} encoder tensors from {ckpt_path} into {type(network).__name__}; "
        f"{len(result.missing_keys)} tensors keep their initial values."
    )
    return network


def _grid_from_network(network: nn.Module) -> tuple[int, ...]:
    """Patch grid of a ViTClassifier (``encoder.grid``) or UNETR (``feat_size``)."""
    if hasattr(network, "encoder") and hasattr(network.encoder, "grid"):
        return tuple(network.encoder.grid)
    if hasattr(network, "feat_size"):
        return tuple(network.feat_size)
    raise ValueError(f"cannot tell the patch grid of {type(network).__name__}: its position embedding must match.")
