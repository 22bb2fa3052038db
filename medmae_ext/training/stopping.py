"""Stopping a training run on SIGTERM / SIGINT so that the same command resumes exactly where it stopped.

SLURM, Kubernetes and ``docker stop`` send SIGTERM (then SIGKILL after a grace period); a person at a terminal
presses Ctrl-C (SIGINT). :class:`SignalStop` (attached by
:class:`~medmae_ext.training.checkpoints.AtomicCheckpointSaver`) turns either into: finish the current iteration,
save a resumable checkpoint ``checkpoint_<epochs done>_<iterations into the next>.pt`` holding the training state and
the random state of that moment, release the folder's lock and stop the trainer without marking the run finished;
:func:`exit_if_stopped` (the configs' ``run`` list) then exits 143 (SIGTERM) or 130 (SIGINT). A second Ctrl-C stops at
once (Python's ``KeyboardInterrupt``).

On resume, :class:`SkipFirst` replays the interrupted epoch's data order -- the epoch is re-seeded as it was
(:class:`~medmae_ext.training.seeding.EpochSeeder`), its first batches are drawn and dropped -- and then restores
the saved random state, so the batches, crops, flips, MAE masks and learning rates that follow are those of a run
that was never stopped. Under torchrun the processes agree (one ``all_reduce`` per iteration) to stop at the same
iteration. Not exact: MSMAE's attention maps are recomputed at the start of the resumed epoch from the weights at
the stop, and with ``--epoch_length`` shorter than the data loader the order follows the resume epoch.
"""

from __future__ import annotations

import logging
import random
import signal
import threading

import numpy as np
import torch
from ignite.engine import Engine, Events

__all__ = ["SignalStop", "SkipFirst", "exit_if_stopped", "random_state", "set_random_state"]

logger = logging.getLogger(__name__)

EXIT_CODES = {"SIGTERM": 143, "SIGINT": 130}


def random_state() -> dict:
    """torch (CPU and CUDA), numpy and ``random`` global states, as tensors and plain numbers (``weights_only``)."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "python": {"version": int(version), "internal": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_random_state(state: dict) -> None:
    """Restore what :func:`random_state` returned."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["internal"].tolist()), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class SkipFirst:
    """A data loader whose next iteration (once) drops its first ``skip`` batches and then restores ``state``
    (:func:`set_random_state`); every later iteration is the loader's own. Attribute access goes to the loader."""

    def __init__(self, loader, skip: int, state: dict | None) -> None:
        self.loader, self.skip, self.state, self._used = loader, int(skip), state, False

    def __getattr__(self, name):
        return getattr(self.loader, name)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        if self._used:
            return iter(self.loader)
        self._used = True
        return self._replay()

    def _replay(self):
        it = iter(self.loader)
        for _ in range(self.skip):
            next(it)
        if self.state is not None:
            set_random_state(self.state)
        logger.info(f"resumed mid-epoch: the epoch's first {self.skip} batches were replayed and skipped")
        yield from it


class SignalStop:
    """On SIGTERM / SIGINT, stop at the end of the current iteration after ``save(engine)`` wrote a resumable
    checkpoint (see the module docstring). Signal handlers are installed while the trainer runs (main thread
    only) and the previous ones restored after."""

    def __init__(self, save, release=None) -> None:
        self.save, self.release = save, release
        self.received: str | None = None
        self._stopping = False
        self._previous: dict = {}

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._install)
        for event in (Events.COMPLETED, Events.TERMINATE):
            engine.add_event_handler(event, self._uninstall)
        engine.add_event_handler(Events.EXCEPTION_RAISED, self._failed)

    def _failed(self, engine: Engine, e: BaseException) -> None:
        """Restore the signal handlers and re-raise (ignite re-raises only while no EXCEPTION_RAISED handler exists)."""
        self._uninstall(engine)
        raise e

    def _install(self, engine: Engine) -> None:
        engine.state.stopped_by = None
        # added now, after every other handler: runs when the iteration's logging, LR step and checks are done
        if not engine.has_event_handler(self._check, Events.ITERATION_COMPLETED):
            engine.add_event_handler(Events.ITERATION_COMPLETED, self._check)
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._on_signal)

    def _uninstall(self, engine: Engine, *_) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _on_signal(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.received == "SIGINT" and name == "SIGINT":  # Ctrl-C twice: stop now
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        self.received = name
        logger.warning(
            f"{name} received: stopping after this iteration with a resumable checkpoint"
            + (" (Ctrl-C again to stop at once)" if name == "SIGINT" else "")
        )

    def _check(self, engine: Engine) -> None:
        import ignite.distributed as idist

        stop = self.received is not None
        if idist.get_world_size() > 1:  # every process stops at the same iteration
            flag = torch.tensor([1.0 if stop else 0.0], device=idist.device())
            stop = bool(idist.all_reduce(flag, op="MAX").item() > 0)
        if not stop or self._stopping:
            return
        self._stopping = True
        length = engine.state.epoch_length
        if length and engine.state.iteration % length == 0:  # the epoch's last iteration: let the epoch complete
            if engine.state.epoch >= engine.state.max_epochs:
                logger.warning(f"{self.received}: this was the last iteration; the run finishes normally")
                return
            engine.add_event_handler(Events.EPOCH_COMPLETED(once=engine.state.epoch), self._stop)
            return
        self._stop(engine)

    def _stop(self, engine: Engine) -> None:
        import ignite.distributed as idist

        path = self.save(engine)
        if self.release is not None:
            self.release()
        engine.state.stopped_by = self.received or "SIGTERM"
        if idist.get_rank() == 0:
            logger.warning(
                f"stopped by {engine.state.stopped_by} at epoch {engine.state.epoch}, iteration "
                f"{engine.state.iteration}: {path} holds the run; run the same command to resume exactly there"
            )
        engine.terminate(skip_completed=True)


def exit_if_stopped(engine: Engine) -> None:
    """Exit 143 (SIGTERM) / 130 (SIGINT) when :class:`SignalStop` stopped ``engine``: the job did not finish."""
    stopped = getattr(engine.state, "stopped_by", None)
    if stopped:
        raise SystemExit(EXIT_CODES.get(stopped, 1))
