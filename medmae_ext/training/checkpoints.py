"""Training checkpoints: atomic saving, the resume loader and the best-validation ``model.pt``.

:class:`AtomicCheckpointSaver` saves the full training state every epoch as ``checkpoint_<epoch>.pt`` (with the run's
:class:`~medmae_ext.training.resume.RunIdentity`, which decides resume or refusal) and the network as ``model.pt``.
On resume, :class:`ResumeCheckpointLoader` keeps the *new* LR schedule length (``--epochs`` raised = a cosine over
the new total, continued at the saved iteration) and refuses a checkpoint whose epochs had another number of
iterations (batch size or data changed). The savers refuse to write non-finite weights, and :class:`BestModelSaver`'s
best metric travels in the checkpoint, so a restart never replaces ``model.pt`` with a worse model.
"""

from __future__ import annotations

import logging
import math
import os

from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint
from monai.handlers import CheckpointLoader

from ..networks.weights import unwrap
from .guards import NonFiniteError, non_finite_tensors
from .resume import RunMismatchError, checkpoint_position
from .runlock import AtomicSaver, release_run_lock
from .stopping import SignalStop, SkipFirst, random_state

__all__ = ["AtomicCheckpointSaver", "BestModelSaver", "ResumeCheckpointLoader", "finite_greater"]

logger = logging.getLogger(__name__)


class ResumeCheckpointLoader(CheckpointLoader):
    """MONAI ``CheckpointLoader`` that also restores the engine it is attached to (stored under ``"trainer"`` by
    :class:`AtomicCheckpointSaver`), so training continues at the saved epoch. The engine is added at attach time,
    which keeps bundle configs free of the trainer -> handlers -> trainer reference cycle."""

    #: LR-scheduler attributes that describe *this* run's schedule (MONAI's WarmupCosineSchedule and kin); a
    #: checkpoint's values are replaced by the configured ones after loading
    SCHEDULE_ATTRS = ("t_total", "warmup_steps", "cycles", "warmup_multiplier", "end_lr", "base_lrs")

    def attach(self, engine: Engine) -> None:
        self.load_dict = {**self.load_dict, "trainer": engine}
        self._schedules = [
            (
                obj,
                {
                    a: list(v) if isinstance(v, list) else v
                    for a in self.SCHEDULE_ATTRS
                    if (v := getattr(obj, a, None)) is not None
                },
            )
            for obj in self.load_dict.values()
            if hasattr(obj, "lr_lambdas")
        ]
        if self.load_path:  # ignite announces the position before this loader restores it ("iteration 0, epoch 0")
            engine.logger.addFilter(_NotTheStartPosition())
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
            for group, base, fn in zip(sched.optimizer.param_groups, sched.base_lrs, sched.lr_lambdas, strict=False):
                group["initial_lr"] = base
                group["lr"] = base * fn(sched.last_epoch)
        logger.info(
            f"resumed from {self.load_path}: epoch {engine.state.epoch}, iteration {engine.state.iteration} done; "
            f"training until epoch {engine.state.max_epochs}"
        )
        import torch

        stopped = torch.load(self.load_path, map_location="cpu", weights_only=True, mmap=True).get("interrupted")
        if stopped and stopped.get("iterations_into_epoch"):  # stopped mid-epoch: replay that epoch's order
            engine.state.dataloader = SkipFirst(
                engine.state.dataloader, stopped["iterations_into_epoch"], stopped.get("random")
            )


class _NotTheStartPosition(logging.Filter):
    """Drops ignite's ``Engine run resuming from iteration 0, epoch 0`` line, logged before the checkpoint is loaded
    (the loader logs the true position)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Engine run resuming from iteration 0, epoch 0 ")


class AtomicCheckpointSaver:
    """Save the full training state every ``save_interval`` epochs as ``checkpoint_<epoch>.pt`` (for resume) and
    the network weights alone as ``model_filename`` (the bundle's ``models/model.pt``). The engine it is attached
    to is saved too, as ``"trainer"``; put the run's :class:`RunIdentity` in ``save_dict`` under ``"run"``.

    Every file is written to a temporary file (``.medmae-tmp-*``) in the same folder and renamed into place
    (:class:`~medmae_ext.training.runlock.AtomicSaver`), so an interrupted run never leaves a truncated checkpoint. Only the newest
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
        stop_on_signals: bool = True,
    ) -> None:
        if model_key not in save_dict:
            raise KeyError(f"model_key {model_key!r} is not in save_dict (keys: {sorted(save_dict)})")
        self.save_dir = save_dir
        self.save_dict = save_dict
        self.model_key = model_key
        self.model_filename = model_filename
        self.save_interval = save_interval
        self.n_saved = n_saved
        self.own: list[str] = [os.path.abspath(resumed_from)] if resumed_from else []
        self.stop_on_signals = stop_on_signals

    def attach(self, engine: Engine) -> None:
        os.makedirs(self.save_dir, exist_ok=True)
        self._disk = AtomicSaver(self.save_dir)
        self._checkpoint = Checkpoint(
            {**self.save_dict, "trainer": engine},
            self._disk,
            n_saved=None,
            global_step_transform=lambda e, _: e.state.epoch,
        )
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.save_interval), self)
        engine.add_event_handler(Events.COMPLETED, self.save_model)
        engine.add_event_handler(Events.COMPLETED, lambda _: release_run_lock(self.save_dir))
        if self.stop_on_signals:
            SignalStop(self.save_interrupted, lambda: release_run_lock(self.save_dir)).attach(engine)

    def save_interrupted(self, engine: Engine) -> str:
        """Write ``checkpoint_<epochs done>_<iterations into the next>.pt``: the training state mid-epoch and the
        random state of this moment (:mod:`medmae_ext.training.stopping`); returns its path."""
        self._check_finite(engine)
        length = engine.state.epoch_length
        into = engine.state.iteration % length if length else 0
        done = engine.state.iteration // length if length else engine.state.epoch
        name = f"checkpoint_{done}_{into}.pt" if into else f"checkpoint_{done}.pt"
        state = {k: unwrap(v).state_dict() for k, v in {**self.save_dict, "trainer": engine}.items()}
        state["interrupted"] = {"iterations_into_epoch": into, "random": random_state()}
        self._disk(state, name)
        path = os.path.abspath(os.path.join(self.save_dir, name))
        if path not in self.own:
            self.own.append(path)
        self._write_model()
        return path

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

        if idist.get_rank() != 0:  # only rank 0 writes (AtomicSaver, an ignite DiskSaver), so only rank 0 prunes
            return
        own = sorted((pos, p) for p in self.own if (pos := checkpoint_position(p)) is not None)
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
    A non-finite key metric (e.g. AUC of a validation set with one class) never writes the model.
    ``operating_point`` (vit: an :class:`~medmae_ext.outputs.operating_point.OperatingPointChooser`, which keeps the
    decision rule of the best epoch) travels in this object's state, so a resumed run keeps the one of its model."""

    def __init__(self, save_dir: str, network, filename: str = "model.pt", operating_point=None) -> None:
        self.save_dir = save_dir
        self.network = network
        self.filename = filename
        self.operating_point = operating_point
        self._engine: Engine | None = None
        self._restored: dict | None = None
        self.paused = False  # set by serving.ServedModelBaseline while it validates the served model

    def attach(self, engine: Engine) -> None:
        self._disk = AtomicSaver(self.save_dir)
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
            state = dict(self._restored or {"best_metric": -1.0, "best_metric_epoch": -1})
        else:
            state = {"best_metric": float(st.best_metric), "best_metric_epoch": int(st.best_metric_epoch)}
        if self.operating_point is not None:
            state["operating_point"] = self.operating_point.state_dict()
        return state

    def best(self) -> dict | None:
        """``{"name", "value", "epoch"}`` of the best validation so far (None before a finite one)."""
        st = self._engine.state if self._engine is not None else None
        if st is None or getattr(st, "best_metric_epoch", -1) is None or st.best_metric_epoch < 0:
            return None
        return {"name": st.key_metric_name, "value": float(st.best_metric), "epoch": int(st.best_metric_epoch)}

    def load_state_dict(self, state: dict) -> None:
        self._restored = {
            "best_metric": float(state["best_metric"]),
            "best_metric_epoch": int(state["best_metric_epoch"]),
        }
        if self.operating_point is not None:
            self.operating_point.load_state_dict(state.get("operating_point"))
        if self._engine is not None:
            self._engine.state.best_metric = self._restored["best_metric"]
            self._engine.state.best_metric_epoch = self._restored["best_metric_epoch"]
            if self._restored["best_metric_epoch"] >= 0:
                logger.info(
                    f"best validation metric so far: {self._restored['best_metric']:.4f} at epoch "
                    f"{self._restored['best_metric_epoch']} (restored from the checkpoint)"
                )

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
                raise NonFiniteError(
                    f"{len(bad)} weight tensor(s) are NaN/Inf (e.g. {bad[:3]}): "
                    f"{os.path.join(self.save_dir, self.filename)} is not overwritten"
                )
            self._disk(unwrap(self.network).state_dict(), self.filename)  # DiskSaver writes on rank 0 only
            if idist.get_rank() == 0:
                logger.info(
                    f"new best {name}={engine.state.best_metric:.4f} at epoch "
                    f"{engine.state.epoch}: saved {os.path.join(self.save_dir, self.filename)}"
                )
