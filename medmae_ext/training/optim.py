"""Parameter groups for AdamW: no weight decay on biases / norms / tokens / position embeddings, and optional
layer-wise learning-rate decay (BEiT / MAE fine-tuning recipe) over the pretrained ViT encoder.

Layers are assigned by module membership, never by parameter-name patterns: the ViT encoder inside the network is
found by its type (:class:`~medmae_ext.networks.ViTEncoder`, or MONAI's ``ViT`` inside ``UNETR``); its patch
embedding and CLS token are layer 0, its ``blocks[i]`` layer ``i + 1``, and every other parameter -- the encoder's
final norm, a classification head, UNETR's whole convolutional decoder (``encoder2.blocks.*`` included) -- is layer
``num_layers + 1`` and trains at the full learning rate.
"""

from __future__ import annotations

import logging

import torch.nn as nn

__all__ = ["param_groups", "layer_ids", "find_vit_encoder"]

logger = logging.getLogger(__name__)


def find_vit_encoder(network: nn.Module) -> nn.Module | None:
    """The ViT encoder of ``network`` (itself, a ``DistributedDataParallel``/compiled wrapper's module, the
    ``encoder`` of a medmae network, the ``vit`` of MONAI's UNETR): the first sub-module that is a medmae
    ``ViTEncoder`` or a MONAI ``ViT``. None when there is none."""
    from monai.networks.nets import ViT

    from ..networks.vit import ViTEncoder

    for m in network.modules():
        if isinstance(m, (ViTEncoder, ViT)):
            return m
    return None


def layer_ids(network: nn.Module) -> tuple[dict[int, int], int]:
    """``({id(parameter): layer}, num_layers)`` of every parameter of ``network`` (see the module docstring)."""
    enc = find_vit_encoder(network)
    if enc is None:
        raise ValueError(
            f"{type(network).__name__} has no ViT encoder (medmae ViTEncoder or MONAI ViT): layer-wise "
            "lr decay needs one; set layer_decay to null"
        )
    num_layers = len(enc.blocks)
    ids = {id(p): num_layers + 1 for p in network.parameters()}
    for p in enc.patch_embedding.parameters():
        ids[id(p)] = 0
    if getattr(enc, "cls_token", None) is not None:
        ids[id(enc.cls_token)] = 0
    for i, blk in enumerate(enc.blocks):
        for p in blk.parameters():
            ids[id(p)] = i + 1
    return ids, num_layers


def _no_decay(name: str, p) -> bool:
    return (
        p.ndim <= 1
        or name.endswith(".bias")
        or name.split(".")[-1] in ("cls_token", "mask_token", "position_embeddings", "pos_embed")
    )


def param_groups(
    network: nn.Module, lr: float, weight_decay: float = 0.05, layer_decay: float | None = None, pretrained=None
) -> list[dict]:
    """AdamW parameter groups; ``lr`` of a group is ``lr * layer_decay ** (num_layers + 1 - layer)``.

    ``pretrained`` (the fine-tuning configs pass their ``pretrained`` id): layer decay is a schedule for a *loaded*
    encoder; with ``"scratch"`` (random weights) it is switched off and said so, since it would train the random
    patch embedding at ``layer_decay ** (num_layers + 1)`` of the learning rate."""
    if layer_decay is not None and pretrained is not None:
        from ..networks.weights import is_scratch

        if is_scratch(pretrained):
            logger.info(
                f"layer_decay {layer_decay} not applied: the encoder starts from random weights, so every "
                "layer trains at the full learning rate"
            )
            layer_decay = None
    ids, num_layers = layer_ids(network) if layer_decay else ({}, 0)
    groups: dict[tuple, dict] = {}
    for name, p in network.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = _no_decay(name, p)
        lid = ids.get(id(p), 0)
        scale = layer_decay ** (num_layers + 1 - lid) if layer_decay else 1.0
        key = (no_decay, lid)
        if key not in groups:
            groups[key] = {"params": [], "weight_decay": 0.0 if no_decay else weight_decay, "lr": lr * scale}
        groups[key]["params"].append(p)
    return list(groups.values())
