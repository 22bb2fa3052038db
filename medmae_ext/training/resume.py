"""Whether a training run resumes, starts fresh or stops: the run identity a checkpoint records, and the decision made
before training starts.

A training checkpoint ``checkpoint_<epoch>.pt`` holds, besides the training state, a :class:`RunIdentity` -- what
makes two runs the same run (network shapes, initialisation, training data, the model settings).
:func:`resume_checkpoint` (the bundles' ``resume_ckpt``) reads it before training starts:

* same run, not finished (killed, or ``--epochs`` raised): resume from it;
* same run, already finished: stop, saying so (re-running a finished run would end at once with the old model);
* another run: stop with a message naming each difference;
* ``--resume False``: start fresh; every earlier output of the folder (checkpoints, ``model.pt`` and its run record
  ``metadata.json``) is first moved to ``<ckpt_dir>/previous/<time>/`` so that nothing is lost and nothing of it is
  resumed or pruned later.

Before deciding, it takes the folder's run lock (:mod:`medmae_ext.training.runlock`: a second run in the same folder
stops) and deletes temporary files of interrupted saves.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import re
import shutil
import time

import torch

from ..networks.weights import unwrap
from .runlock import acquire_run_lock, clean_stale_temp_files, release_run_lock

__all__ = [
    "CHECKPOINT_RE",
    "PREVIOUS_OUTPUTS",
    "RUN_KEY",
    "RunIdentity",
    "RunMismatchError",
    "items_digest",
    "latest_checkpoint",
    "list_checkpoints",
    "move_previous_outputs",
    "resume_checkpoint",
]

logger = logging.getLogger(__name__)

CHECKPOINT_RE = re.compile(r"checkpoint_(\d+)\.pt$")
RUN_KEY = "run"


class RunMismatchError(RuntimeError):
    """The checkpoint folder holds another run's state (or a finished run) and the bundle was asked to resume."""


def list_checkpoints(ckpt_dir: str) -> list[tuple[int, str]]:
    """``(epoch, path)`` of every ``checkpoint_<epoch>.pt`` in ``ckpt_dir``, oldest first."""
    paths = glob.glob(os.path.join(ckpt_dir, "checkpoint_*.pt"))
    return sorted((int(m.group(1)), p) for p in paths if (m := CHECKPOINT_RE.search(p)))


def latest_checkpoint(ckpt_dir: str) -> str | None:
    """Newest ``checkpoint_<epoch>.pt`` in ``ckpt_dir``, or None (no identity check: see :func:`resume_checkpoint`)."""
    found = list_checkpoints(ckpt_dir)
    return found[-1][1] if found else None


def items_digest(items) -> str:
    """Order-independent 12-hex digest of datalist items by their ``id`` (else ``image``) entries: what identifies a
    run's training data (:class:`RunIdentity`) and a rank's shard (:func:`medmae_ext.training.distributed.shard_items`).
    """
    keys = sorted(str(it.get("id", it.get("image"))) if isinstance(it, dict) else str(it) for it in items)
    return hashlib.sha256("\n".join(keys).encode()).hexdigest()[:12]


class RunIdentity:
    """What identifies a training run, stored in every training checkpoint (``state_dict`` of plain strings).

    Args:
        network: the network being trained (DDP-wrapped or not): its class and every tensor's name and shape.
        init: how the network was initialised (see :func:`medmae_ext.networks.init_description`).
        data: the training items (their ``id`` or ``image`` entries are hashed, order-independent).
        data_source: a readable description of where they came from (data format and path).
        epochs: the run's planned length; a different value is not a different run (``--epochs`` may be raised to
            train further), it only tells whether the stored run had finished.
        settings: the run's model settings (config id ``run_settings``: sizes, classes, modality, spacing, window...),
            compared value by value, so a refusal names what differs.
    """

    FIELDS = ("network", "init", "data", "settings")

    def __init__(
        self,
        network,
        init: str = "random",
        data=None,
        data_source: str = "",
        epochs: int | None = None,
        settings: dict | None = None,
    ):
        net = unwrap(network)
        state = net.state_dict()
        shapes = ";".join(f"{k}:{tuple(v.shape)}" for k, v in state.items())
        n_params = sum(v.numel() for v in state.values())
        self.network = (
            f"{type(net).__name__} ({n_params} values, shapes #{hashlib.sha256(shapes.encode()).hexdigest()[:12]})"
        )
        self.init = str(init)
        items = list(data or [])
        self.data = f"{data_source} ({len(items)} training items #{items_digest(items)})"
        self.epochs = None if epochs is None else int(epochs)
        from ..bundle.record import as_json

        self.settings = json.dumps(as_json(dict(settings or {})), sort_keys=True)

    def state_dict(self) -> dict:
        return {**{k: getattr(self, k) for k in self.FIELDS}, "epochs": self.epochs}

    def differences(self, stored: dict) -> list[str]:
        """Readable ``field: stored -> this run`` lines for every identity field that differs."""
        out = []
        for k in self.FIELDS:
            if stored.get(k) == getattr(self, k):
                continue
            if k == "settings" and isinstance(stored.get(k), str):
                old, new = json.loads(stored[k]), json.loads(self.settings)
                out += [
                    f"  {key}: checkpoint has {old.get(key)!r}, this run has {new.get(key)!r}"
                    for key in sorted(set(old) | set(new))
                    if old.get(key) != new.get(key)
                ]
            else:
                out.append(f"  {k}: checkpoint has {stored.get(k)!r}, this run has {getattr(self, k)!r}")
        return out

    def load_state_dict(self, stored: dict) -> None:
        """Called by the resume loader: a checkpoint of another run is refused (defence in depth; the bundles
        check with :func:`resume_checkpoint` before training starts)."""
        diff = self.differences(stored)
        if diff:
            raise RunMismatchError("the checkpoint being resumed belongs to another run:\n" + "\n".join(diff))

    def __repr__(self) -> str:
        return f"RunIdentity({self.state_dict()})"


def _read_checkpoint(path: str) -> dict | None:
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # truncated (full disk, kill during a copy) or foreign: fall back to an older one
        logger.warning(f"checkpoint {path} cannot be read ({type(e).__name__}: {e}); trying an older one")
        return None


#: what a fresh run (``--resume False``) moves aside with the checkpoints: the weights and their run record
PREVIOUS_OUTPUTS = ("model.pt", "metadata.json")


def move_previous_outputs(ckpt_dir: str, extra_files=PREVIOUS_OUTPUTS) -> str | None:
    """Move every ``checkpoint_*.pt`` and ``extra_files`` of ``ckpt_dir`` into ``ckpt_dir/previous/<time>/``;
    returns that folder, or None when there was nothing to move. Only the first process of a distributed run moves."""
    import ignite.distributed as idist

    files = [p for _, p in list_checkpoints(ckpt_dir)]
    files += [os.path.join(ckpt_dir, f) for f in extra_files if os.path.isfile(os.path.join(ckpt_dir, f))]
    if not files or idist.get_rank() != 0:
        return None
    dest = os.path.join(ckpt_dir, "previous", time.strftime("%Y%m%d-%H%M%S"))
    n = 0
    while os.path.exists(dest if not n else f"{dest}-{n}"):
        n += 1
    dest = dest if not n else f"{dest}-{n}"
    os.makedirs(dest)
    for f in files:
        shutil.move(f, os.path.join(dest, os.path.basename(f)))
    logger.warning(f"starting a fresh run: the earlier outputs of {ckpt_dir} ({len(files)} files) were moved to {dest}")
    return dest


def resume_checkpoint(
    ckpt_dir: str, identity: RunIdentity, resume: bool = True, extra_files=PREVIOUS_OUTPUTS
) -> str | None:
    """The checkpoint to resume from, or None to start fresh; see the module docstring for the rules.

    Raises :class:`RunMismatchError` naming both runs when ``ckpt_dir`` holds another run or a finished one.
    """
    import ignite.distributed as idist

    if idist.get_rank() != 0:
        return _resume_checkpoint(ckpt_dir, identity, resume, extra_files)
    acquire_run_lock(ckpt_dir)
    try:
        clean_stale_temp_files(ckpt_dir)
        return _resume_checkpoint(ckpt_dir, identity, resume, extra_files)
    except BaseException:
        release_run_lock(ckpt_dir)  # refused: this run never started
        raise


def _resume_checkpoint(ckpt_dir: str, identity: RunIdentity, resume: bool, extra_files) -> str | None:
    if not resume:
        move_previous_outputs(ckpt_dir, extra_files)
        return None
    unreadable = []
    for epoch, path in reversed(list_checkpoints(ckpt_dir)):
        ckpt = _read_checkpoint(path)
        if ckpt is None:
            unreadable.append(path)
            continue
        stored = ckpt.get(RUN_KEY)
        if not isinstance(stored, dict):
            raise RunMismatchError(
                f"{path} records no run identity (written by an older medmae or another tool), so it cannot be told "
                f"whether it is this run. Start fresh with --resume False (earlier outputs are moved to "
                f"{os.path.join(ckpt_dir, 'previous')}/), or use another --bundle_root / --ckpt_dir."
            )
        diff = identity.differences(stored)
        if diff:
            raise RunMismatchError(
                f"{ckpt_dir} holds another run's checkpoint ({os.path.basename(path)}); resuming it would continue "
                "that run, not this one:\n" + "\n".join(diff) + "\nStart fresh with --resume False (its outputs are "
                f"moved to {os.path.join(ckpt_dir, 'previous')}/), or use another --bundle_root / --ckpt_dir."
            )
        trainer = ckpt.get("trainer", {})
        done_epoch = int(trainer.get("epoch", epoch))
        if identity.epochs is not None and done_epoch >= identity.epochs:
            raise RunMismatchError(
                f"{path}: this run already finished {done_epoch} epochs (--epochs {identity.epochs}); running it "
                "again would end at once with the old model. Raise --epochs to train further, or start fresh with "
                f"--resume False (earlier outputs are moved to {os.path.join(ckpt_dir, 'previous')}/)."
            )
        if unreadable:
            logger.warning(
                f"resuming from {path}, the newest intact checkpoint: {unreadable} cannot be read "
                "(truncated or corrupt)"
            )
        logger.info(f"resuming from {path} (epoch {done_epoch} of {identity.epochs}); run: {identity.init}")
        return path
    move_previous_outputs(ckpt_dir, extra_files)  # unreadable checkpoints or a model.pt with no run behind it
    return None
