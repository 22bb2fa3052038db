"""Parameter groups for AdamW: no weight decay on biases / norms / tokens / position embeddings, and optional
layer-wise learning-rate decay (BEiT / MAE fine-tuning recipe)."""

from __future__ import annotations

import re

import torch.nn as nn

__all__ = ["param_groups", "layer_id"]

_NO_DECAY = ("cls_token", "mask_token", "position_embeddings", "pos_embed")


def layer_id(name: str, num_layers: int) -> int:
    """0 for the patch embedding and tokens, i + 1 for ``blocks.i``, num_layers + 1 for everything after."""
    if any(t in name for t in ("cls_token", "mask_token", "patch_embedding")):
        return 0
    m = re.search(r"(?:^|\.)blocks\.(\d+)\.", name)
    if m and not name.startswith("decoder"):
        return int(m.group(1)) + 1
    return num_layers + 1


def param_groups(
    network: nn.Module, lr: float, weight_decay: float = 0.05, layer_decay: float | None = None
) -> list[dict]:
    """AdamW parameter groups; ``lr`` of a group is ``lr * layer_decay ** (num_layers + 1 - layer_id)``."""
    names = [n for n, p in network.named_parameters() if p.requires_grad]
    num_layers = 1 + max([int(m.group(1)) for n in names if (m := re.search(r"(?:^|\.)blocks\.(\d+)\.", n))] + [-1])
    groups: dict[tuple, dict] = {}
    for name, p in network.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = p.ndim == 1 or name.endswith(".bias") or any(t in name for t in _NO_DECAY)
        lid = layer_id(name, num_layers) if layer_decay else 0
        scale = layer_decay ** (num_layers + 1 - lid) if layer_decay else 1.0
        key = (no_decay, lid)
        if key not in groups:
            groups[key] = {"params": [], "weight_decay": 0.0 if no_decay else weight_decay, "lr": lr * scale}
        groups[key]["params"].append(p)
    return list(groups.values())
