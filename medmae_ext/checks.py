"""Checks of a run's settings made before training starts, so that a short run does not silently skip part of
its recipe. (MSMAE's attention start is checked by :class:`~medmae_ext.attention.AttentionRefresher`, which owns it.)"""

from __future__ import annotations

import logging

from .errors import InputError

__all__ = ["warn_short_schedule", "enough_items"]

logger = logging.getLogger(__name__)

_WHAT = {
    "warmup_epochs": "the learning rate is still warming up when the run ends (the cosine decay never happens)",
    "val_interval": "the model is validated only once, at the end of the run (serving.EndOfRunValidation), so "
                    "models/model.pt is the final model, never an earlier, better one",
}


def warn_short_schedule(epochs: int, **epoch_settings) -> list[str]:
    """Warn, naming the config id, about every setting counted in epochs that the run never reaches
    (``value >= epochs``; ``val_interval > epochs``). Returns the warnings (empty when the schedule fits)."""
    out = []
    for name, value in epoch_settings.items():
        if value is None:
            continue
        late = value > epochs if name == "val_interval" else value >= epochs
        if late:
            what = _WHAT.get(name, "this part of the schedule never happens")
            out.append(f"{name}={value} with epochs={epochs}: {what}. Lower --{name} or raise --epochs.")
    for msg in out:
        logger.warning(msg)
    return out


def enough_items(items, batch_size: int, drop_last: bool = True, split: str = "training") -> int:
    """Stop before training when the split has fewer items than one batch: with ``drop_last`` the epoch would have
    no iteration and the run would end at once with no model (exit code 0). Returns the item count."""
    n = len(items)
    if n == 0 or (drop_last and n < int(batch_size)):
        raise InputError(f"the {split} split has {n} item(s), fewer than one batch (--batch_size {batch_size}): "
                         "an epoch would have no iteration. Lower --batch_size or add data.")
    return n
