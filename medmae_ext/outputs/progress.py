"""What a person following a long job sees: one progress bar for the whole run with its ETA, one line per epoch
with the loss and the validation metrics, and a closing summary naming every file the job wrote.

:class:`Progress` is attached to a trainer (the bar spans every epoch left, starting at a resumed run's position)
or to an evaluator (evaluation, inference: the bar spans the data). In a terminal the bar is tqdm's, and the epoch
lines are written above it (``tqdm.write``) so neither overwrites the other; when the output is a file (SLURM,
Kubernetes, ``nohup``) a plain log line replaces the bar every ``log_every`` seconds. Only the first process of a
distributed run reports.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import sys
import time

from ignite.engine import Engine, Events

__all__ = ["Progress", "files_written"]

logger = logging.getLogger(__name__)


def _clock(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60:02d}:{rest % 60:02d}"


def _stamps(paths) -> dict[str, float]:
    out = {}
    for top in paths:
        if os.path.isfile(top):
            out[os.path.abspath(top)] = os.path.getmtime(top)
        for root, dirs, files in os.walk(top) if os.path.isdir(top) else ():
            dirs[:] = [d for d in dirs if d != "previous"]  # an earlier run archived by this one, not written
            for f in files:
                p = os.path.join(root, f)
                if not f.startswith("."):
                    out[os.path.abspath(p)] = os.path.getmtime(p)
    return out


def files_written(before: dict[str, float], paths) -> list[str]:
    """Files under ``paths`` that are new or changed since the :func:`_stamps` snapshot ``before``."""
    return sorted(p for p, t in _stamps(paths).items() if before.get(p) != t)


def _summary(written: list[str], root: str | None) -> list[str]:
    """``folder: n files (a, b, ...)`` lines, relative to ``root``."""
    by_folder: dict[str, list[str]] = {}
    for p in written:
        rel = os.path.relpath(p, root) if root else p
        by_folder.setdefault(os.path.dirname(rel) or ".", []).append(os.path.basename(rel))
    lines = []
    for folder, names in sorted(by_folder.items()):
        shown = ", ".join(names[:4]) + (f", ... ({len(names)} files)" if len(names) > 4 else "")
        lines.append(f"  {folder}/: {shown}")
    return lines


class Progress:
    """Progress, per-epoch lines and the closing summary of one engine (see the module docstring).

    Args:
        what: the job's name in the bar and the summary ("training", "evaluation", "inference").
        outputs: files and folders the job writes; the summary names what in them is new or changed.
        root: paths in the summary are relative to it (the bundle root).
        loss: ``output -> float`` for the bar and the epoch line (training).
        validator: the evaluator whose metrics (and best so far) the epoch line reports.
        log_every: seconds between progress lines when the output is not a terminal.
        enabled: False on the other processes of a distributed run.
    """

    def __init__(
        self,
        what: str = "training",
        outputs=(),
        root: str | None = None,
        loss=None,
        validator=None,
        log_every: float = 60.0,
        enabled: bool = True,
        stream=None,
    ) -> None:
        self.what, self.outputs, self.root, self.loss, self.validator = what, list(outputs or ()), root, loss, validator
        self.log_every, self.enabled = float(log_every), bool(enabled)
        self.stream = stream
        self._bar = None
        self._redirect = None
        self._losses: list[float] = []

    # ------------------------------------------------------------------------------------------------------------
    def attach(self, engine: Engine) -> None:
        if not self.enabled:
            return
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration)
        engine.add_event_handler(Events.TERMINATE, self._closed)
        engine.add_event_handler(Events.EXCEPTION_RAISED, self._failed)

    @property
    def _out(self):
        return self.stream or sys.stderr

    def _tty(self) -> bool:
        return bool(getattr(self._out, "isatty", lambda: False)())

    def _write(self, line: str) -> None:
        if self._bar is not None:
            self._bar.write(line, file=self._out)
        else:
            print(line, file=self._out, flush=True)

    def _started(self, engine: Engine) -> None:
        self._before = _stamps(self.outputs)
        self._t0 = self._last = time.time()
        st = engine.state
        length = st.epoch_length or (len(st.dataloader) if hasattr(st.dataloader, "__len__") else None)
        self._total = length * st.max_epochs if length else None
        self._start_iter = st.iteration
        self._losses = []
        # the epoch line and the summary come after every other handler (validation, checkpoints, reports): added now
        if st.max_epochs and st.max_epochs > 1 and not engine.has_event_handler(self._epoch, Events.EPOCH_COMPLETED):
            engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch)
        if not engine.has_event_handler(self._completed, Events.COMPLETED):
            engine.add_event_handler(Events.COMPLETED, self._completed)
        if self._tty():
            from tqdm import tqdm
            from tqdm.contrib.logging import logging_redirect_tqdm

            # log lines go above the bar, not through it: the root logger's console handler and those of loggers
            # with their own (MONAI's StatsHandler)
            own = [
                lg
                for lg in logging.root.manager.loggerDict.values()
                if isinstance(lg, logging.Logger) and any(type(h) is logging.StreamHandler for h in lg.handlers)
            ]
            self._redirect = logging_redirect_tqdm(loggers=[logging.root, *own])
            self._redirect.__enter__()
            # a terminal whose size is not set (0 x 0: some job runners' pseudo-terminals) would hide the bar
            size = shutil.get_terminal_size(fallback=(100, 24))
            self._bar = tqdm(
                total=self._total,
                initial=st.iteration,
                desc=self.what,
                unit="it",
                file=self._out,
                ncols=size.columns if size.columns >= 40 else 100,
                nrows=max(size.lines, 2),
                smoothing=0.1,
            )
        else:
            self._write(
                f"{self.what}: {self._total or '?'} iterations"
                + (f", resuming at {st.iteration}" if st.iteration else "")
            )

    def _iteration(self, engine: Engine) -> None:
        value = None
        if self.loss is not None:
            try:
                value = float(self.loss(engine.state.output))
                if math.isfinite(value):
                    self._losses.append(value)
            except (TypeError, ValueError, KeyError, IndexError):
                value = None
        if self._bar is not None:
            self._bar.update(1)
            if value is not None:
                self._bar.set_postfix(loss=f"{value:.4f}", refresh=False)
            return
        now = time.time()
        if now - self._last >= self.log_every:
            self._last = now
            self._write(self._position(engine))

    def _position(self, engine: Engine) -> str:
        done = engine.state.iteration
        elapsed = time.time() - self._t0
        rate = (done - self._start_iter) / elapsed if elapsed > 0 else 0.0
        if not self._total:
            return f"{self.what}: {done} iterations, {_clock(elapsed)} elapsed"
        left = (self._total - done) / rate if rate > 0 else float("nan")
        eta = _clock(left) if math.isfinite(left) else "?"
        return (
            f"{self.what}: {done}/{self._total} iterations ({100 * done / self._total:.0f}%), "
            f"{_clock(elapsed)} elapsed, ~{eta} left"
        )

    def _epoch(self, engine: Engine) -> None:
        st = engine.state
        parts = [f"epoch {st.epoch}/{st.max_epochs}"]
        if self._losses:
            parts.append(f"loss {sum(self._losses) / len(self._losses):.4f}")
        self._losses = []
        v = self.validator
        if v is not None and getattr(v.state, "epoch", None) == st.epoch and v.state.metrics:
            name = getattr(v.state, "key_metric_name", None) or next(iter(v.state.metrics))
            if name in v.state.metrics:
                parts.append(f"validation {name} {float(v.state.metrics[name]):.4f}")
            best_epoch = getattr(v.state, "best_metric_epoch", -1)
            if best_epoch is not None and best_epoch > 0:
                parts.append(f"best {float(v.state.best_metric):.4f} at epoch {best_epoch}")
        if self._bar is None:
            parts.append(self._position(engine).split(": ", 1)[1])
        self._write(" | ".join(p for p in parts if p))

    def _completed(self, engine: Engine) -> None:
        self._closed(engine)
        written = files_written(self._before, self.outputs)
        lines = [
            f"{self.what} finished in {_clock(time.time() - self._t0)}; "
            + (f"it wrote {len(written)} file(s):" if written else "it wrote no file.")
        ]
        lines += _summary(written, self.root)
        for line in lines:
            logger.info(line)

    def _failed(self, engine: Engine, e: BaseException) -> None:
        """Close the bar and re-raise: ignite re-raises an exception only while no EXCEPTION_RAISED handler exists."""
        self._closed(engine)
        raise e

    def _closed(self, engine: Engine, *_) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._redirect is not None:
            self._redirect.__exit__(None, None, None)
            self._redirect = None
