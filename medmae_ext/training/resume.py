"""Whether a training run resumes, starts fresh or stops: the run identity a checkpoint records, and the decision made
before training starts.

A training checkpoint ``checkpoint_<epoch>.pt`` holds, besides the training state, a :class:`RunIdentity` -- what
makes two runs the same run (network shapes, initialisation, training data, the model settings).
:func:`resume_checkpoint` (the bundles' ``resume_ckpt``) reads it before training starts:

* same run, not finished (killed, or ``--epochs`` raised): resume from it;
* same run, already finished: stop, saying so (re-running a finished run would end at once with the old model);
* another run: stop with a message naming each difference;
* ``--resume False``: start fresh; the earlier run is first archived whole -- checkpoints, ``model.pt`` and its run
  record ``metadata.json``, and its logs, pictures and reports (config id ``run_outputs``) -- in
  ``<ckpt_dir>/previous/<time>/``, so that nothing is lost, nothing of it is resumed or pruned later, and TensorBoard
  and the picture folder show one run.

Before deciding, it takes the folder's run lock (:mod:`medmae_ext.training.runlock`: a second run in the same folder
stops) and deletes temporary files of interrupted saves.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os

import torch

from ..errors import InputError
from ..networks.weights import unwrap
from .archive import (  # noqa: F401 -- the checkpoint files, re-exported where they were
    CHECKPOINT_RE,
    PREVIOUS_OUTPUTS,
    checkpoint_position,
    latest_checkpoint,
    list_checkpoints,
    move_previous_outputs,
)
from .runlock import acquire_run_lock, clean_stale_temp_files, release_run_lock

__all__ = [
    "CHECKPOINT_RE",
    "checkpoint_position",
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

RUN_KEY = "run"


class RunMismatchError(InputError):
    """The checkpoint folder holds another run's state (or a finished run, or only unreadable checkpoints) and the
    bundle was asked to resume (a usage error: exit 1 with this message)."""


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

    ``started_from`` (not compared): the weights a ``CheckpointLoader`` in the trainer's handlers loads over ``init``
    when training starts (MONAI Label's served ``model.pt``), set by
    :func:`~medmae_ext.training.serving.log_loaded_checkpoints`; None when the run starts from ``init``.
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
        self.started_from: str | None = None

    def state_dict(self) -> dict:
        state = {**{k: getattr(self, k) for k in self.FIELDS}, "epochs": self.epochs}
        return {**state, "started_from": self.started_from} if self.started_from else state

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


def _read_checkpoint(path: str, problems: dict) -> dict | None:
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # truncated (full disk, kill during a copy), newer torch, foreign: try an older one
        problems[path] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        logger.warning(f"checkpoint {path} cannot be read ({problems[path]}); trying an older one")
        return None


def resume_checkpoint(
    ckpt_dir: str,
    identity: RunIdentity,
    resume: bool = True,
    extra_files=PREVIOUS_OUTPUTS,
    outputs=(),
    keep=(),
    discard_checkpoints: bool = False,
) -> str | None:
    """The checkpoint to resume from, or None to start fresh; see the module docstring for the rules. ``outputs``:
    the run's output folders (config id ``run_outputs``: logs, pictures, reports), archived with the weights when
    the run starts fresh; ``keep``: files in them that this run wrote already (config id ``save_execute_config``:
    MONAI's executed config under ``--tracking``; ``true`` otherwise, which names no file); ``discard_checkpoints``:
    a fresh start deletes the earlier resume checkpoints instead of archiving them (MONAI Label sessions: each
    ``/train`` starts fresh, so they would only pile up, 51 MB each for UNETR).

    Raises :class:`RunMismatchError` naming both runs when ``ckpt_dir`` holds another run or a finished one.
    """
    import ignite.distributed as idist

    if idist.get_rank() != 0:
        return _resume_checkpoint(ckpt_dir, identity, resume, extra_files, outputs, keep, discard_checkpoints)
    acquire_run_lock(ckpt_dir)
    try:
        clean_stale_temp_files(ckpt_dir)
        return _resume_checkpoint(ckpt_dir, identity, resume, extra_files, outputs, keep, discard_checkpoints)
    except BaseException:
        release_run_lock(ckpt_dir)  # refused: this run never started
        raise


def _resume_checkpoint(
    ckpt_dir: str, identity: RunIdentity, resume: bool, extra_files, outputs, keep=(), discard_checkpoints=False
) -> str | None:
    if not resume:
        move_previous_outputs(ckpt_dir, extra_files, outputs, keep, discard_checkpoints)
        return None
    unreadable: dict[str, str] = {}
    for epoch, path in reversed(list_checkpoints(ckpt_dir)):
        ckpt = _read_checkpoint(path, unreadable)
        if ckpt is None:
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
                f"resuming from {path}, the newest intact checkpoint: {sorted(unreadable)} cannot be read "
                "(truncated or corrupt)"
            )
        logger.info(f"resuming from {path} (epoch {done_epoch} of {identity.epochs}); run: {identity.init}")
        return path
    if unreadable:  # starting fresh would silently throw the run away: the user decides
        raise RunMismatchError(
            f"no checkpoint in {ckpt_dir} can be read, so this run cannot resume:\n"
            + "\n".join(f"  {os.path.basename(p)}: {why}" for p, why in sorted(unreadable.items()))
            + "\nThey are truncated or corrupt, or were written by a newer torch than this one "
            f"({torch.__version__}). Nothing was changed. Resume with the torch that wrote them, or start fresh with "
            f"--resume False (they are moved to {os.path.join(ckpt_dir, 'previous')}/)."
        )
    move_previous_outputs(
        ckpt_dir, extra_files, outputs, keep, discard_checkpoints
    )  # a model.pt / run record with no checkpoint behind it
    return None
