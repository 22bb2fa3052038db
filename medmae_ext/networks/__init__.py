from . import masking  # noqa: F401
from .classifiers import ARCHITECTURES, classifier
from .features import EncoderFeatures, load_weights
from .mae import MaskedAutoencoder
from .patching import grid_shape, patch_weights, patchify, unpatchify
from .vit import Block, ViTClassifier, ViTEncoder
from .weights import (
    encoder_state_dict,
    file_sha256,
    init_description,
    is_scratch,
    load_pretrained_encoder,
    map_encoder_keys,
    read_state_dict,
    resolve_pretrained,
    unwrap,
)

__all__ = [
    "classifier",
    "ARCHITECTURES",
    "MaskedAutoencoder",
    "EncoderFeatures",
    "load_weights",
    "ViTEncoder",
    "ViTClassifier",
    "Block",
    "patchify",
    "unpatchify",
    "patch_weights",
    "grid_shape",
    "load_pretrained_encoder",
    "init_description",
    "is_scratch",
    "read_state_dict",
    "encoder_state_dict",
    "map_encoder_keys",
    "resolve_pretrained",
    "file_sha256",
    "unwrap",
]
