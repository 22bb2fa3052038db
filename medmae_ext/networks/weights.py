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

import functools
import logging
import os
from collections.abc import Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import InputError, WeightsFileError

__all__ = [
    "read_state_dict",
    "encoder_state_dict",
    "map_encoder_keys",
    "load_pretrained_encoder",
    "resize_pos_embed",
    "is_scratch",
    "init_description",
    "SCRATCH_VALUES",
    "resolve_pretrained",
    "AUTO",
    "file_sha256",
    "unwrap",
    "check_unetr_encoder",
]

logger = logging.getLogger(__name__)

POS_KEY = "patch_embedding.position_embeddings"

# ``pretrained_ckpt`` values meaning "no pretrained weights". MONAI's command line drops a bare ``None`` override (the
# default checkpoint would then be loaded), so the documented spelling is ``--pretrained_ckpt scratch``.
SCRATCH_VALUES = ("", "none", "null", "scratch", "random")


def is_scratch(ckpt_path) -> bool:
    """True when ``pretrained_ckpt`` asks for random initialisation (None, "", "none", "null", "scratch", "random")."""
    return ckpt_path is None or (isinstance(ckpt_path, str) and ckpt_path.strip().lower() in SCRATCH_VALUES)


# ``pretrained_ckpt`` default of the fine-tuning bundles: the sibling pretraining bundle's ``models/model.pt`` when it
# exists (the zoo layout ``<dir>/mae_pretrain`` next to ``<dir>/vit_classification``), random weights otherwise.
AUTO = "auto"


def resolve_pretrained(ckpt_path, sibling: str):
    """The checkpoint a fine-tuning run starts from (config id ``pretrained``).

    ``pretrained_ckpt`` "auto" (the default) means ``sibling`` (config id ``sibling_pretrained_ckpt``: the pretraining
    bundle next to this one) when that file exists, else random weights: a bundle copied alone (model zoo, MONAI
    Label) trains from scratch, and says so in the log and in the run identity of every checkpoint. Any other value
    is an explicit request: a path that does not exist stops the run (:func:`load_pretrained_encoder`), "scratch"
    (see :func:`is_scratch`) means random weights.
    """
    if not (isinstance(ckpt_path, str) and ckpt_path.strip().lower() == AUTO):
        return ckpt_path
    # normalised first: "<bundle_root>/../mae_pretrain/..." must not need bundle_root to exist yet
    sibling = os.path.normpath(os.path.abspath(sibling))
    if os.path.isfile(sibling):
        logger.info(f"pretrained_ckpt 'auto': the sibling pretraining bundle's {os.path.abspath(sibling)}")
        return sibling
    logger.warning(
        f"pretrained_ckpt 'auto': {os.path.abspath(sibling)} does not exist, so this run starts from RANDOM weights "
        "(run the pretraining bundle first, or pass --pretrained_ckpt <path to its models/model.pt>)"
    )
    return "scratch"


def init_description(ckpt_path) -> str:
    """How a fine-tuning run is initialised, for logs and the run identity: ``"scratch"`` or
    ``"encoder of <absolute path> (sha256 <12 hex>)"``."""
    if is_scratch(ckpt_path):
        return "scratch"
    if not os.path.isfile(ckpt_path):
        return f"encoder of {os.path.abspath(ckpt_path)} (missing)"
    st = os.stat(ckpt_path)
    return f"encoder of {os.path.abspath(ckpt_path)} (sha256 {_digest(os.path.abspath(ckpt_path), st.st_mtime_ns, st.st_size)})"


@functools.lru_cache(maxsize=16)
def _digest(path: str, mtime_ns: int, size: int) -> str:
    """sha256 prefix of a file, computed once per (path, modification time, size): the run identity and the
    initialisation log line both ask for it."""
    return file_sha256(path)


def file_sha256(path: str, length: int | None = 12) -> str:
    """sha256 of a file's bytes (hex; the first ``length`` characters, all with None)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:length] if length else h.hexdigest()


def unwrap(network: nn.Module) -> nn.Module:
    """The network inside a ``DistributedDataParallel`` (``.module``); the network itself otherwise. (An
    ``nn.Module.compile``-d network is compiled in place and needs no unwrapping.)"""
    return getattr(network, "module", network)


def read_state_dict(path: str, key: str | None = None) -> dict[str, torch.Tensor]:
    """Read a state dict from a bundle ``model.pt`` (plain state dict) or a training checkpoint
    (``{"network": ..., "optimizer": ...}``); ``key`` picks the entry explicitly."""
    if not path or not os.path.isfile(path):
        raise WeightsFileError(f"weights file not found: {path!r}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file: say which one
        raise WeightsFileError.unreadable(path, e) from e
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
        raise WeightsFileError(f"checkpoint {path!r} does not hold a state dict of tensors.")
    return dict(obj)


def encoder_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The ``encoder.*`` entries of an MAE / MSMAE / classifier state dict, prefix removed."""
    enc = {k[len("encoder.") :]: v for k, v in state.items() if k.startswith("encoder.")}
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


def _has_vit_encoder(network: nn.Module) -> bool:
    """Whether ``network`` holds a ViT encoder (medmae's or MONAI's ViT, as in UNETR), told by module type."""
    from monai.networks.nets import ViT

    from .vit import ViTEncoder

    return any(isinstance(m, (ViTEncoder, ViT)) for m in network.modules())


def load_pretrained_encoder(
    network: nn.Module,
    ckpt_path: str,
    target: str | None = None,
    ckpt_key: str | None = None,
    src_grid=None,
    allow_partial: bool = False,
) -> nn.Module:
    """Load the encoder of a medmae pretraining checkpoint into ``network`` (ViT, UNETR or ViTClassifier).

    Returns ``network`` so that it can be used inline in a bundle config::

        "network": "$medmae_ext.networks.load_pretrained_encoder(@network_def, @pretrained_ckpt)"

    Every checkpoint encoder weight must find its place (a missing or misshapen key raises naming it), and every
    encoder tensor of the target must be filled: a 6-layer checkpoint in a 12-layer UNETR raises, naming the
    tensors left random, unless ``allow_partial`` (config id ``allow_partial_encoder``). Keys outside the
    target's encoder (decoder, head) keep their initial values. ``ckpt_path`` None / "scratch" (see
    :func:`is_scratch`) returns ``network`` as is; either way the initialisation is logged.
    """
    if is_scratch(ckpt_path):
        logger.warning(
            f"initialisation: {type(network).__name__} starts from RANDOM weights (pretrained_ckpt={ckpt_path!r}: "
            "training from scratch)"
        )
        return network
    if not os.path.isfile(ckpt_path):
        raise WeightsFileError(
            f"pretrained checkpoint not found: {ckpt_path} (config id 'pretrained_ckpt': run mae_pretrain or "
            "msmae_pretrain first, point it at their models/model.pt, or pass --pretrained_ckpt scratch to train "
            "from scratch; a bare None is dropped by MONAI's command line)"
        )
    if not _has_vit_encoder(network):
        raise InputError(
            f"{type(network).__name__} has no ViT encoder to load the pretrained encoder {ckpt_path} into (config id "
            "'architecture' other than 'vit' trains from scratch): pass --pretrained_ckpt scratch"
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
            f"{ckpt_path}: {k!r} has shape {tuple(v.shape)} in the checkpoint but {tuple(own[k].shape)} in "
            f"{type(network).__name__}: the encoder sizes (hidden_size, mlp_dim, in_channels, patch_size) differ."
        )
    prefix = {"vit": "", "unetr": "vit.", "classifier": "encoder."}[target]
    unfilled = [k for k in own if k.startswith(prefix) and k not in mapped and _is_encoder_key(k[len(prefix) :])]
    if unfilled and not allow_partial:
        raise ValueError(
            f"{ckpt_path} fills only part of the encoder of {type(network).__name__}: {len(unfilled)} encoder "
            f"tensors would stay random, e.g. {unfilled[:4]} (a checkpoint with fewer layers or another layout?). "
            "Match num_layers/hidden_size to the pretraining run, or set allow_partial_encoder to true to accept it."
        )
    result = network.load_state_dict(mapped, strict=False)
    logger.info(
        f"initialisation: {len(mapped)} encoder tensors loaded from {init_description(ckpt_path)} into "
        f"{type(network).__name__}; {len(result.missing_keys)} tensors keep their initial values"
        + (f", {len(unfilled)} of them encoder tensors (allow_partial_encoder)" if unfilled else " (decoder/head)")
    )
    return network


def _is_encoder_key(key: str) -> bool:
    """A ViT-encoder key (the part a pretraining checkpoint provides), as opposed to a head or a UNETR decoder."""
    return key.startswith(("patch_embedding.", "blocks.", "norm.", "cls_token"))


def _grid_from_network(network: nn.Module) -> tuple[int, ...]:
    """Patch grid of a ViTClassifier (``encoder.grid``) or UNETR (``feat_size``)."""
    if hasattr(network, "encoder") and hasattr(network.encoder, "grid"):
        return tuple(network.encoder.grid)
    if hasattr(network, "feat_size"):
        return tuple(network.feat_size)
    raise ValueError(f"cannot tell the patch grid of {type(network).__name__}: its position embedding must match.")


def check_unetr_encoder(settings) -> None:
    """MONAI's UNETR has a 3D ViT of 12 layers with 16^3 patches: stop, naming the values and where they came from,
    when the settings (a pretraining record's, or flags) ask for another encoder (its weights would not fit)."""
    from ..errors import InputError

    s = dict(settings)
    wrong = {
        k: s[k]
        for k, v in (("spatial_dims", 3), ("num_layers", 12), ("patch_size", [16, 16, 16]))
        if k in s and s[k] is not None and (list(s[k]) if isinstance(s[k], (list, tuple)) else s[k]) != v
    }
    if wrong:
        raise InputError(
            f"UNETR (MONAI) has a 3D encoder of 12 layers with 16x16x16 patches, but this run's settings "
            f"have {wrong} (from the pretraining run record, or flags): pretrain the 3D encoder with "
            "mae_pretrain's train_3d.json defaults for these, or fine-tune from scratch"
        )
