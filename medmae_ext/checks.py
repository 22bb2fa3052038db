"""Checks of a run's settings made before training starts, so that a short run does not silently skip part of
its recipe. (MSMAE's attention start is checked by :class:`~medmae_ext.attention.AttentionRefresher`, which owns it.)"""

from __future__ import annotations

import logging

__all__ = ["warn_short_schedule"]

logger = logging.getLogger(__name__)

_WHAT = {
    "warmup_epochs": "the learning rate is still warming up when the run ends (the cosine decay never happens)",
    "val_interval": "no validation runs, so the best-model models/model.pt is never written",
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
