"""Random state that a resumed run replays exactly.

``set_determinism(seed)`` at start-up seeds a run once: after a resume, the data order, crops, flips, MAE masks and
drop-path draws of *epoch 1* came back, and a job preempted every epoch trained on one permutation and one set of
masks. :class:`EpochSeeder` re-seeds every random source a training epoch uses from ``(seed, epoch, rank)`` when the
epoch starts, so epoch ``e`` draws the same numbers whether the run got there in one go or was killed and resumed:
torch (shuffling, masking, dropout, DataLoader worker seeds), numpy, ``random``, and the MONAI random transforms of the
training dataset (their own generators, used in the main process when ``num_workers`` is 0; workers are re-seeded by
MONAI's DataLoader from torch).

With ``epoch_length`` shorter than the loader, ignite keeps one iterator across epochs, so the order within such an
iterator follows from the epoch at which it was created: a resumed run then re-creates it at the resume epoch.
"""

from __future__ import annotations

import hashlib
import random

import numpy as np
import torch
from ignite.engine import Engine, Events

__all__ = ["EpochSeeder", "epoch_seed"]


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """A 31-bit seed for ``epoch`` (1-based) of process ``rank`` of a run seeded with ``seed``."""
    digest = hashlib.sha256(f"{int(seed)}:{int(epoch)}:{int(rank)}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


class EpochSeeder:
    """Attach to the trainer first (before handlers that draw random numbers at ``EPOCH_STARTED``): re-seeds torch,
    numpy, ``random`` and the random transforms of the trainer's dataset at each ``EPOCH_STARTED``."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = int(seed)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> int:
        import ignite.distributed as idist

        s = epoch_seed(self.seed, engine.state.epoch, idist.get_rank())
        random.seed(s)
        np.random.seed(s)
        torch.manual_seed(s)
        dataset = getattr(engine.state.dataloader, "dataset", None)
        transform = getattr(dataset, "transform", None)
        if hasattr(transform, "set_random_state"):
            transform.set_random_state(seed=s)
        return s
