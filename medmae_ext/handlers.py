"""Former home of the medmae ignite handlers, kept so that configs written for earlier versions still resolve.

Each concern now has its own module: :mod:`medmae_ext.checkpoints` (checkpoints, resume, run identity, best model),
:mod:`medmae_ext.pictures` (reconstructions), :mod:`medmae_ext.attention` (MSMAE attention refresh) and
:mod:`medmae_ext.reports` (classification report, prediction CSV).
"""

from .attention import AttentionRefresher
from .checkpoints import AtomicCheckpointSaver, BestModelSaver, ResumeCheckpointLoader, latest_checkpoint
from .pictures import ReconstructionSaver, reconstruction_panel
from .reports import ClassificationReport, ProbabilityCSVSaver, confusion_matrix_png

__all__ = [
    "AtomicCheckpointSaver", "AttentionRefresher", "BestModelSaver", "ClassificationReport", "ProbabilityCSVSaver",
    "ReconstructionSaver", "ResumeCheckpointLoader", "confusion_matrix_png", "latest_checkpoint", "reconstruction_panel",
]
