"""What a training run needs beside MONAI's ``SupervisedTrainer``: batch preparation (``engines``), losses, optimiser
groups (``optim``), checkpoints / resume / run identity (``checkpoints``), one run per folder (``runlock``), the NaN
stop (``guards``), MSMAE attention refresh (``attention``), class imbalance (``imbalance``), torchrun (``distributed``),
the served model across runs (``serving``), MONAI's experiment tracking (``tracking``)."""

from . import (  # noqa: F401
    archive,
    attention,
    checkpoints,
    distributed,
    engines,
    guards,
    imbalance,
    losses,
    optim,
    resume,
    runlock,
    seeding,
    serving,
    tracking,
)
