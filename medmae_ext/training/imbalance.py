"""Class imbalance: class-weighted losses and class-balanced sampling, from the training datalist's labels.

Clinical sets are imbalanced (PneumoniaMNIST's training split is 10% normal). With an unweighted cross-entropy a
short schedule can settle on "always the majority class" while its AUC still reads well. Two documented remedies,
config ids of ``vit_classification`` and ``msmae_pretrain`` (its supervised CLS head):

* ``class_weighting: "balanced"`` -- cross-entropy weights ``N / (C * n_c)`` (each class weighs the same in the loss;
  scikit-learn's "balanced"); multi-label: ``pos_weight = negatives / positives`` per class of ``BCEWithLogitsLoss``.
* ``balanced_sampling: true`` -- a :class:`torch.utils.data.WeightedRandomSampler` that draws every class equally
  often (with replacement, one epoch = as many draws as training items). Single-label only.

Both are computed from the labels of the items actually trained on; a class with no training item is an error that
names the config id, since its weight would be infinite.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from ..data.readers import DatalistError
from ..errors import InputError

__all__ = ["WEIGHTINGS", "class_counts", "class_weights", "classification_loss", "balanced_sampler"]

logger = logging.getLogger(__name__)

WEIGHTINGS = ("none", "balanced")


def class_counts(
    items: list[dict], num_classes: int, label_key: str = "label", multi_label: bool = False
) -> np.ndarray:
    """Items per class (multi-label: positives per class)."""
    counts = np.zeros(num_classes, dtype=np.int64)
    for it in items:
        y = np.asarray(it[label_key]).reshape(-1)
        if multi_label:
            counts += (y > 0.5).astype(np.int64)
        else:
            counts[int(y[0])] += 1
    return counts


def _check_mode(mode: str | None, config_id: str) -> str:
    mode = "none" if mode in (None, False, "", "none") else mode
    if mode not in WEIGHTINGS:
        raise ValueError(f"config id {config_id!r} must be one of {WEIGHTINGS}, got {mode!r}")
    return mode


def class_weights(
    items: list[dict],
    num_classes: int,
    mode: str | None = "none",
    label_key: str = "label",
    multi_label: bool = False,
    class_names=None,
    config_id: str = "class_weighting",
) -> torch.Tensor | None:
    """``None`` for ``mode="none"``; else a float32 ``[num_classes]`` tensor: ``N / (C * n_c)`` per class
    (single-label) or ``(N - n_c) / n_c`` (multi-label ``pos_weight``)."""
    if _check_mode(mode, config_id) == "none":
        return None
    counts = class_counts(items, num_classes, label_key, multi_label)
    names = list(class_names) if class_names else [str(k) for k in range(num_classes)]
    empty = [names[k] for k in range(num_classes) if counts[k] == 0]
    if empty:
        raise DatalistError(
            f"{config_id}={mode!r}: classes {empty} have no training item, so their weight is "
            f"undefined (counts {dict(zip(names, counts.tolist(), strict=False))}); use {config_id}='none' or fix "
            "the data / class_names"
        )
    n = len(items)
    w = (n - counts) / counts if multi_label else n / (num_classes * counts)
    if multi_label and (counts == n).any():
        full = [names[k] for k in range(num_classes) if counts[k] == n]
        raise DatalistError(f"{config_id}={mode!r}: classes {full} are positive in every training item")
    logger.info(
        f"{config_id}={mode}: "
        + ", ".join(f"{a} {c} items -> weight {x:.3f}" for a, c, x in zip(names, counts, w, strict=False))
    )
    return torch.as_tensor(w, dtype=torch.float32)


def classification_loss(
    items: list[dict],
    num_classes: int,
    mode: str | None = "none",
    multi_label: bool = False,
    label_key: str = "label",
    class_names=None,
    device=None,
    label_smoothing: float = 0.0,
) -> torch.nn.Module:
    """``CrossEntropyLoss`` (``BCEWithLogitsLoss`` for multi-label) with :func:`class_weights` applied, on ``device``;
    ``label_smoothing`` (config id of the same name, single-label only): the target mixes that much of the uniform
    distribution into the one-hot label (MAE's fine-tuning recipe uses 0.1)."""
    smoothing = float(label_smoothing or 0.0)
    if not 0 <= smoothing < 1 or (multi_label and smoothing):
        raise InputError(
            f"config id 'label_smoothing' must be in [0, 1) and 0 for multi-label data, got {label_smoothing!r} "
            f"(multi_label {multi_label})"
        )
    w = class_weights(items, num_classes, mode, label_key, multi_label, class_names)
    if multi_label:
        loss = torch.nn.BCEWithLogitsLoss(pos_weight=w)
    else:
        loss = torch.nn.CrossEntropyLoss(weight=w, label_smoothing=smoothing)
    return loss.to(device) if device is not None else loss


def balanced_sampler(
    items: list[dict],
    num_classes: int,
    enabled: bool = True,
    label_key: str = "label",
    multi_label: bool = False,
    seed: int = 0,
    config_id: str = "balanced_sampling",
):
    """A :class:`~torch.utils.data.WeightedRandomSampler` drawing each class with equal probability, or ``None`` when
    not ``enabled`` (then the DataLoader shuffles). Seeded by ``seed`` so that a run is repeatable."""
    if not enabled:
        return None
    if multi_label:
        raise ValueError(
            f"config id {config_id!r} is for single-label data; for multi-label use "
            "class_weighting='balanced' (pos_weight)"
        )
    counts = class_counts(items, num_classes, label_key)
    if (counts == 0).any():
        logger.warning(f"{config_id}: classes {np.flatnonzero(counts == 0).tolist()} have no training item")
    per_item = [1.0 / counts[int(np.asarray(it[label_key]).reshape(-1)[0])] for it in items]
    gen = torch.Generator().manual_seed(int(seed))
    logger.info(f"{config_id}: each class drawn equally often (training counts {counts.tolist()})")
    return torch.utils.data.WeightedRandomSampler(per_item, num_samples=len(items), replacement=True, generator=gen)
