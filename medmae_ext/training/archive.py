"""A run folder's files on disk: its training checkpoints (``checkpoint_<epoch>.pt``, and the mid-epoch
``checkpoint_<epochs>_<iterations>.pt`` of a stopped run) and the archive of an earlier run that a fresh start makes
(``<ckpt_dir>/previous/<time>/``, :func:`move_previous_outputs`). The decision to resume or start fresh is
:mod:`medmae_ext.training.resume`'s."""

from __future__ import annotations

import glob
import logging
import os
import re
import shutil
import time

__all__ = [
    "CHECKPOINT_RE",
    "PREVIOUS_OUTPUTS",
    "checkpoint_position",
    "latest_checkpoint",
    "list_checkpoints",
    "move_previous_outputs",
]

logger = logging.getLogger(__name__)

#: ``checkpoint_<epoch>.pt`` (end of an epoch) or ``checkpoint_<epochs done>_<iterations into the next>.pt`` (a run
#: stopped by SIGTERM / SIGINT, :mod:`medmae_ext.training.stopping`)
CHECKPOINT_RE = re.compile(r"checkpoint_(\d+)(?:_(\d+))?\.pt$")


def checkpoint_position(path: str) -> tuple[int, int] | None:
    """``(epochs done, iterations into the next epoch)`` of a checkpoint file name; None for other files."""
    m = CHECKPOINT_RE.search(os.path.basename(path))
    return (int(m.group(1)), int(m.group(2) or 0)) if m else None


def list_checkpoints(ckpt_dir: str) -> list[tuple[int, str]]:
    """``(epochs done, path)`` of every training checkpoint in ``ckpt_dir``, oldest first."""
    paths = glob.glob(os.path.join(ckpt_dir, "checkpoint_*.pt"))
    found = sorted((pos, p) for p in paths if (pos := checkpoint_position(p)) is not None)
    return [(pos[0], p) for pos, p in found]


def latest_checkpoint(ckpt_dir: str) -> str | None:
    """Newest ``checkpoint_<epoch>.pt`` in ``ckpt_dir``, or None (no identity check: see :func:`resume_checkpoint`)."""
    found = list_checkpoints(ckpt_dir)
    return found[-1][1] if found else None


#: what a fresh run (``--resume False``) moves aside with the checkpoints: the weights and their run record
PREVIOUS_OUTPUTS = ("model.pt", "metadata.json")


def _tensorboard_folder(path: str) -> bool:
    return os.path.isdir(path) and any(n.startswith("events.out.tfevents.") for n in os.listdir(path))


def _earlier_outputs(ckpt_dir: str, extra_files, outputs, keep=()) -> list[tuple[str, str]]:
    """``(source, name in the archive)`` of everything an earlier run of ``ckpt_dir`` left (``keep``: this run's
    own files already there, e.g. MONAI's executed config under ``--tracking``)."""
    skip = {os.path.abspath(k) for k in keep or () if isinstance(k, str)} | {os.path.abspath(ckpt_dir)}
    found = [(p, os.path.basename(p)) for _, p in list_checkpoints(ckpt_dir)]
    found += [(os.path.join(ckpt_dir, f), f) for f in extra_files if os.path.isfile(os.path.join(ckpt_dir, f))]
    for folder in outputs or ():
        folder = os.path.abspath(folder)
        if not os.path.isdir(folder):
            continue
        if os.path.commonpath([folder, os.path.abspath(ckpt_dir)]) == folder:  # a bundle root, not an output folder
            logger.warning(f"{folder} holds the checkpoint folder {ckpt_dir}: it is not archived as a run output")
            continue
        for name in sorted(os.listdir(folder)):
            p = os.path.join(folder, name)
            # a sub-folder with TensorBoard files of its own is another config's log folder (logs/3d), not ours
            if os.path.islink(p) or _tensorboard_folder(p) or os.path.abspath(p) in skip:
                continue
            found.append((p, os.path.join(os.path.basename(folder), name)))
    return found


def move_previous_outputs(
    ckpt_dir: str, extra_files=PREVIOUS_OUTPUTS, outputs=(), keep=(), discard_checkpoints: bool = False
) -> str | None:
    """Archive an earlier run whole: every ``checkpoint_*.pt`` and ``extra_files`` of ``ckpt_dir`` and the entries
    of each folder in ``outputs`` (its TensorBoard files, pictures, reports) move into ``ckpt_dir/previous/<time>/``
    (those of an output folder ``.../eval`` into ``previous/<time>/eval/``). Returns that folder, or None when there
    was nothing to move. Only the first process of a distributed run moves."""
    import ignite.distributed as idist

    files = _earlier_outputs(ckpt_dir, extra_files, outputs, keep)
    if not files or idist.get_rank() != 0:
        return None
    if discard_checkpoints:  # resume state of a run that is never resumed (a MONAI Label session)
        # the checkpoints _earlier_outputs listed: files of ckpt_dir itself with a checkpoint name
        resume_state = {src for src, name in files if name == os.path.basename(src) and checkpoint_position(src)}
        for p in sorted(resume_state):
            os.remove(p)
        if resume_state:
            logger.info(
                f"removed the {len(resume_state)} resume checkpoint(s) of the previous session in {ckpt_dir}: a "
                "session never resumes (the served model.pt carries its result)"
            )
        files = [(src, name) for src, name in files if src not in resume_state]
        if not files:
            return None
    dest = os.path.join(ckpt_dir, "previous", time.strftime("%Y%m%d-%H%M%S"))
    n = 0
    while os.path.exists(dest if not n else f"{dest}-{n}"):
        n += 1
    dest = dest if not n else f"{dest}-{n}"
    for src, name in files:
        os.makedirs(os.path.dirname(os.path.join(dest, name)), exist_ok=True)
        shutil.move(src, os.path.join(dest, name))
    logger.warning(
        f"starting a fresh run: the earlier run of {ckpt_dir} (weights, run record, logs, pictures, reports: "
        f"{len(files)} entries) was moved to {dest}"
    )
    return dest
