"""Training checkpoints: atomic saving, run identity, resume that never picks up another run's state, and the
best-validation ``model.pt``.

A training checkpoint ``checkpoint_<epoch>.pt`` holds the network, optimizer, LR schedule, the ignite trainer state
and a :class:`RunIdentity` -- what makes two runs the same run (network shapes, initialisation, training data,
epochs). :func:`resume_checkpoint` (the bundles' ``resume_ckpt``) reads it before training starts:

* same run, not finished (killed, or ``--epochs`` raised): resume from it;
* same run, already finished: stop, saying so (re-running a finished run would end at once with the old model);
* another run: stop with a message naming both identities;
* ``--resume False``: start fresh; every earlier output of the folder (checkpoints, ``model.pt``) is first moved to
  ``<ckpt_dir>/previous/<time>/`` so that nothing is lost and nothing of it is resumed or pruned later.

Before deciding, it takes the folder's run lock (:mod:`medmae_ext.training.runlock`: a second run in the same folder stops)
and deletes temporary files of interrupted saves. On resume, :class:`ResumeCheckpointLoader` keeps the *new* LR
schedule length (``--epochs`` raised = a cosine over the new total, continued at the saved iteration) and refuses a
checkpoint whose epochs had another number of iterations (batch size or data changed). The savers refuse to write
non-finite weights, and :class:`BestModelSaver`'s best metric travels in the checkpoint, so a restart never replaces
``model.pt`` with a worse model.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import math
import os
import re
import shutil
import time

import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint, DiskSaver
from monai.handlers import CheckpointLoader

from .guards import NonFiniteError, non_finite_tensors
from ..networks.weights import unwrap
from .runlock import acquire_run_lock, clean_stale_temp_files, release_run_lock

__all__ = [
    "AtomicCheckpointSaver", "BestModelSaver", "ResumeCheckpointLoader", "RunIdentity", "RunMismatchError",
    "finite_greater", "items_digest", "latest_checkpoint", "list_checkpoints", "resume_checkpoint",
]

logger = logging.getLogger(__name__)

_CKPT_RE = re.compile(r"checkpoint_(\d+)\.pt$")
RUN_KEY = "run"


class RunMismatchError(RuntimeError):
    """The checkpoint folder holds another run's state (or a finished run) and the bundle was asked to resume."""


def list_checkpoints(ckpt_dir: str) -> list[tuple[int, str]]:
    """``(epoch, path)`` of every ``checkpoint_<epoch>.pt`` in ``ckpt_dir``, oldest first."""
    paths = glob.glob(os.path.join(ckpt_dir, "checkpoint_*.pt"))
    return sorted((int(m.group(1)), p) for p in paths if (m := _CKPT_RE.search(p)))


def latest_checkpoint(ckpt_dir: str) -> str | None:
    """Newest ``checkpoint_<epoch>.pt`` in ``ckpt_dir``, or None (no identity check: see :func:`resume_checkpoint`)."""
    found = list_checkpoints(ckpt_dir)
    return found[-1][1] if found else None


def items_digest(items) -> str:
    """Order-independent 12-hex digest of datalist items by their ``id`` (else ``image``) entries: what identifies a
    run's training data (:class:`RunIdentity`) and a rank's shard (:func:`medmae_ext.training.distributed.shard_items`)."""
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

    def __init__(self, network, init: str = "random", data=None, data_source: str = "", epochs: int | None = None,
                 settings: dict | None = None):
        net = unwrap(network)
        state = net.state_dict()
        shapes = ";".join(f"{k}:{tuple(v.shape)}" for k, v in state.items())
        n_params = sum(v.numel() for v in state.values())
        self.network = f"{type(net).__name__} ({n_params} values, shapes #{hashlib.sha256(shapes.encode()).hexdigest()[:12]})"
        self.init = str(init)
        items = list(data or [])
        self.data = f"{data_source} ({len(items)} training items #{items_digest(items)})"
        self.epochs = None if epochs is None else int(epochs)
        from ..bundle.record import plain

        self.settings = json.dumps(plain(dict(settings or {})), sort_keys=True)

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
                out += [f"  {key}: checkpoint has {old.get(key)!r}, this run has {new.get(key)!r}"
                        for key in sorted(set(old) | set(new)) if old.get(key) != new.get(key)]
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


def resume_checkpoint(ckpt_dir: str, identity: RunIdentity, resume: bool = True,
                      extra_files=PREVIOUS_OUTPUTS) -> str | None:
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
            logger.warning(f"resuming from {path}, the newest intact checkpoint: {unreadable} cannot be read "
                           "(truncated or corrupt)")
        logger.info(f"resuming from {path} (epoch {done_epoch} of {identity.epochs}); run: {identity.init}")
        return path
    move_previous_outputs(ckpt_dir, extra_files)  # unreadable checkpoints or a model.pt with no run behind it
    return None


class ResumeCheckpointLoader(CheckpointLoader):
    """MONAI ``CheckpointLoader`` that also restores the engine it is attached to (stored under ``"trainer"`` by
    :class:`AtomicCheckpointSaver`), so training continues at the saved epoch. The engine is added at attach time,
    which keeps bundle configs free of the trainer -> handlers -> trainer reference cycle."""

    #: LR-scheduler attributes that describe *this* run's schedule (MONAI's WarmupCosineSchedule and kin); a
    #: checkpoint's values are replaced by the configured ones after loading
    SCHEDULE_ATTRS = ("t_total", "warmup_steps", "cycles", "warmup_multiplier", "end_lr", "base_lrs")

    def attach(self, engine: Engine) -> None:
        self.load_dict = {**self.load_dict, "trainer": engine}
        self._schedules = [(obj, {a: list(v) if isinstance(v, list) else v for a in self.SCHEDULE_ATTRS
                                  if (v := getattr(obj, a, None)) is not None})
                           for obj in self.load_dict.values() if hasattr(obj, "lr_lambdas")]
        super().attach(engine)

    def __call__(self, engine: Engine) -> None:
        epoch_length = engine.state.epoch_length
        super().__call__(engine)
        if epoch_length is not None and engine.state.epoch_length != epoch_length:
            raise RunMismatchError(
                f"{self.load_path}: its epochs were {engine.state.epoch_length} iterations long, this run's are "
                f"{epoch_length} (--batch_size, --epoch_length or the data changed), so its epoch count and LR "
                "schedule cannot continue. Restore the old settings, or start fresh with --resume False."
            )
        for sched, configured in self._schedules:  # the new run's schedule, continued at the saved iteration
            for a, v in configured.items():
                setattr(sched, a, v)
            for group, base, fn in zip(sched.optimizer.param_groups, sched.base_lrs, sched.lr_lambdas):
                group["initial_lr"] = base
                group["lr"] = base * fn(sched.last_epoch)


class AtomicCheckpointSaver:
    """Save the full training state every ``save_interval`` epochs as ``checkpoint_<epoch>.pt`` (for resume) and
    the network weights alone as ``model_filename`` (the bundle's ``models/model.pt``). The engine it is attached
    to is saved too, as ``"trainer"``; put the run's :class:`RunIdentity` in ``save_dict`` under ``"run"``.

    Every file is written to a temporary file in the same folder and renamed into place (ignite's
    ``DiskSaver(atomic=True)``), so an interrupted run never leaves a truncated checkpoint. Only the newest
    ``n_saved`` checkpoints *of this run* are kept: the ones it wrote and the one it resumed from. Other files in the
    folder are never deleted (:func:`resume_checkpoint` has moved any earlier run's files aside).
    """

    def __init__(
        self,
        save_dir: str,
        save_dict: dict,
        model_key: str = "network",
        model_filename: str | None = "model.pt",
        save_interval: int = 1,
        n_saved: int = 2,
        resumed_from: str | None = None,
    ) -> None:
        if model_key not in save_dict:
            raise KeyError(f"model_key '{model_key}' is not in save_dict (keys: {sorted(save_dict)})")
        self.save_dir = save_dir
        self.save_dict = save_dict
        self.model_key = model_key
        self.model_filename = model_filename
        self.save_interval = save_interval
        self.n_saved = n_saved
        self.own: list[str] = [os.path.abspath(resumed_from)] if resumed_from else []

    def attach(self, engine: Engine) -> None:
        os.makedirs(self.save_dir, exist_ok=True)
        self._disk = DiskSaver(self.save_dir, require_empty=False, atomic=True, create_dir=True)
        self._checkpoint = Checkpoint(
            {**self.save_dict, "trainer": engine},
            self._disk,
            n_saved=None,
            global_step_transform=lambda e, _: e.state.epoch,
        )
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.save_interval), self)
        engine.add_event_handler(Events.COMPLETED, self.save_model)
        engine.add_event_handler(Events.COMPLETED, lambda _: release_run_lock(self.save_dir))

    def _check_finite(self, engine: Engine) -> None:
        bad = non_finite_tensors(unwrap(self.save_dict[self.model_key]))
        if bad:
            raise NonFiniteError(
                f"epoch {engine.state.epoch}: {len(bad)} weight tensor(s) are NaN/Inf (e.g. {bad[:3]}); nothing is "
                f"saved, the checkpoints in {self.save_dir} stay as they were. Check the data for NaN/Inf or lower --lr."
            )

    def _write_model(self) -> None:
        if self.model_filename:
            self._disk(unwrap(self.save_dict[self.model_key]).state_dict(), self.model_filename)

    def save_model(self, engine: Engine) -> None:
        if self.model_filename:
            self._check_finite(engine)
            self._write_model()

    def __call__(self, engine: Engine) -> None:
        self._check_finite(engine)  # once for both files
        self._checkpoint(engine)
        if self._checkpoint.last_checkpoint:
            path = os.path.abspath(os.path.join(self.save_dir, os.path.basename(str(self._checkpoint.last_checkpoint))))
            if path not in self.own:
                self.own.append(path)
        self._write_model()
        self.prune()

    def prune(self) -> None:
        import ignite.distributed as idist

        if idist.get_rank() != 0:  # only rank 0 writes (ignite's DiskSaver), so only rank 0 prunes
            return
        own = sorted((int(m.group(1)), p) for p in self.own if (m := _CKPT_RE.search(p)))
        for _, p in own[: max(0, len(own) - self.n_saved)]:
            if os.path.exists(p):
                os.remove(p)
            self.own.remove(p)


def finite_greater(current: float, previous: float) -> bool:
    """``metric_cmp_fn`` for MONAI evaluators: a NaN/inf metric never counts as an improvement, and any finite
    metric improves on a non-finite best."""
    if not math.isfinite(float(current)):
        return False
    return not math.isfinite(float(previous)) or current > previous


class BestModelSaver:
    """Attach to an evaluator: whenever its key metric improves, write ``network``'s weights atomically to
    ``save_dir/filename`` (the bundle's ``models/model.pt`` = best validation checkpoint, as in the model zoo).
    A non-finite key metric (e.g. AUC of a validation set with one class) never writes the model."""

    def __init__(self, save_dir: str, network, filename: str = "model.pt") -> None:
        self.save_dir = save_dir
        self.network = network
        self.filename = filename
        self._engine: Engine | None = None
        self._restored: dict | None = None
        self.paused = False  # set by serving.ServedModelBaseline while it validates the served model

    def attach(self, engine: Engine) -> None:
        self._disk = DiskSaver(self.save_dir, require_empty=False, atomic=True, create_dir=True)
        self._engine = engine
        engine.add_event_handler(Events.COMPLETED, self)
        if self._restored is not None:
            self.load_state_dict(self._restored)

    def state_dict(self) -> dict:
        """The evaluator's best key metric so far and its epoch: put this object in the training checkpoint
        (``save_dict``/``load_dict`` key ``"best_model"``) so that a resumed run only replaces ``model.pt`` with a
        better model."""
        st = self._engine.state if self._engine is not None else None
        if st is None:
            return dict(self._restored or {"best_metric": -1.0, "best_metric_epoch": -1})
        return {"best_metric": float(st.best_metric), "best_metric_epoch": int(st.best_metric_epoch)}

    def best(self) -> dict | None:
        """``{"name", "value", "epoch"}`` of the best validation so far (None before a finite one)."""
        st = self._engine.state if self._engine is not None else None
        if st is None or getattr(st, "best_metric_epoch", -1) is None or st.best_metric_epoch < 0:
            return None
        return {"name": st.key_metric_name, "value": float(st.best_metric), "epoch": int(st.best_metric_epoch)}

    def load_state_dict(self, state: dict) -> None:
        self._restored = {"best_metric": float(state["best_metric"]), "best_metric_epoch": int(state["best_metric_epoch"])}
        if self._engine is not None:
            self._engine.state.best_metric = self._restored["best_metric"]
            self._engine.state.best_metric_epoch = self._restored["best_metric_epoch"]
            if self._restored["best_metric_epoch"] >= 0:
                logger.info(f"best validation metric so far: {self._restored['best_metric']:.4f} at epoch "
                            f"{self._restored['best_metric_epoch']} (restored from the checkpoint)")

    def __call__(self, engine: Engine) -> None:
        import ignite.distributed as idist

        if self.paused:
            return
        name = engine.state.key_metric_name
        value = engine.state.metrics.get(name, float("nan"))
        if not math.isfinite(float(value)):
            logger.warning(f"validation {name}={value} is not finite: {self.filename} is not written")
            return
        if engine.state.best_metric_epoch == engine.state.epoch:
            bad = non_finite_tensors(unwrap(self.network))
            if bad:
                raise NonFiniteError(f"{len(bad)} weight tensor(s) are NaN/Inf (e.g. {bad[:3]}): "
                                     f"{os.path.join(self.save_dir, self.filename)} is not overwritten")
            self._disk(unwrap(self.network).state_dict(), self.filename)  # DiskSaver writes on rank 0 only
            if idist.get_rank() == 0:
                logger.info(f"new best {name}={engine.state.best_metric:.4f} at epoch "
                            f"{engine.state.epoch}: saved {os.path.join(self.save_dir, self.filename)}")
