"""Errors about a user's input, and the line a user reads first when a bundle run stops on one.

MONAI wraps every exception raised while a config is resolved: a file that cannot be read inside ``CacheDataset``
reaches the terminal as ``RuntimeError: Failed to instantiate component 'monai.data.dataset.CacheDataset'`` on top
of ``RuntimeError: applying transform <...LoadImaged object at 0x...>``, and the file and the reason are buried in
the middle of three tracebacks. :func:`install_excepthook` (done when ``medmae_ext`` is imported, i.e. by every
medmae bundle config) prints, for an :class:`InputError` (bad data or settings), its message alone and the path of a
file holding the full traceback (:func:`error_report_dir`), and exits 1; for any other error (a bug) it keeps
Python's full traceback and prints the innermost cause as its first and last line.

Contract for the package: an error about the user's data or settings is an :class:`InputError` (or a subclass such
as :class:`~medmae_ext.data.DatalistError`) whose message names the file, item, key or config id at fault.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
import traceback

__all__ = [
    "InputError",
    "ImageReadError",
    "LabelError",
    "WeightsFileError",
    "error_report_dir",
    "headline",
    "install_excepthook",
]


class InputError(ValueError):
    """The user's data or settings are wrong; the message names the file / item / config id and what to change."""


class ImageReadError(InputError):
    """An image or label file (or DICOM series folder) cannot be read; the message names the file and the reason."""

    @classmethod
    def of(cls, path, cause: BaseException) -> "ImageReadError":
        """The error for ``path``, whose reader raised ``cause`` (raise it ``from cause``)."""
        return cls(f"cannot read {path}: {type(cause).__name__}: {cause}")


class WeightsFileError(InputError):
    """A weights file (``--pretrained_ckpt``, ``--ckpt_file``, a bundle's ``model.pt``) is missing or is not a file of
    tensors that ``torch.load(weights_only=True)`` reads; the message names it and what to give instead."""

    @classmethod
    def unreadable(cls, path, cause: BaseException) -> "WeightsFileError":
        first = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
        return cls(
            f"cannot read the weights file {path}: {type(cause).__name__}: {first}. It is not a file of tensors "
            "that torch.load(weights_only=True) reads: a truncated or corrupt copy, another format, a file from a "
            "newer torch, or a pickle holding code (never run: weights are loaded with weights_only=True). Give a "
            "model.pt written by a medmae bundle, or torch.save(model.state_dict(), path)."
        )


class LabelError(InputError):
    """A segmentation label map does not fit its image or the bundle's classes (config ids ``label_names`` /
    ``label_map``); the message names the item, both files and the offending values."""


def _chain(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    e: BaseException | None = exc
    while e is not None and all(e is not c for c in chain):
        chain.append(e)
        e = e.__cause__ if e.__cause__ is not None else (None if e.__suppress_context__ else e.__context__)
    return chain


def _cause(chain: list[BaseException]) -> BaseException:
    """The exception that says what is wrong: the innermost :class:`InputError` (it names the file and what to
    change; what it wraps is the library's own wording), else the innermost exception."""
    ours = [e for e in chain if isinstance(e, InputError)]
    return ours[-1] if ours else chain[-1]


def headline(exc: BaseException) -> str | None:
    """The one line a user should read first for ``exc``: the innermost cause of a chain of wrapper exceptions
    (MONAI's ``Failed to instantiate`` / ``Failed to evaluate`` / ``applying transform``), or the last line of the
    worker's traceback that a ``DataLoader`` worker error carries in its message. ``None`` when ``exc`` wraps
    nothing (Python's own last line already says it all)."""
    chain = _chain(exc)
    root = _cause(chain)
    text = str(root)
    if "Original Traceback" in text:  # re-raised from a DataLoader worker: the cause is the traceback's last line
        lines = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith((" ", "\t"))]
        return lines[-1] if lines else None
    if root is chain[0]:
        return None
    return f"{type(root).__qualname__}: {text}"


_previous_hook = None


def error_report_dir() -> str:
    """Where the full traceback of a stop on bad input is written: ``$MEDMAE_ERROR_DIR``, else
    ``<temp dir>/medmae-errors`` (never a folder of the user's data or run)."""
    return os.environ.get("MEDMAE_ERROR_DIR") or os.path.join(tempfile.gettempdir(), "medmae-errors")


def _write_traceback(etype, value, tb) -> str | None:
    try:
        folder = error_report_dir()
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.txt")
        with open(path, "w") as f:
            f.write(f"{' '.join(sys.argv)}\n\n")
            f.write("".join(traceback.format_exception(etype, value, tb)))
        return path
    except OSError:
        return None


def _excepthook(etype, value, tb):
    chain = _chain(value) if isinstance(value, BaseException) else []
    if any(isinstance(e, InputError) for e in chain):
        # the user's input or settings: the message names the file / key / config id and what to do; the
        # traceback (MONAI's config and transform wrappers, ~60 lines) goes to a file, for a bug report
        root = _cause(chain)
        message = headline(value) if "Original Traceback" in str(root) else f"{type(root).__name__}: {root}"
        path = _write_traceback(etype, value, tb)
        where = f"(full traceback: {path})" if path else ""
        print(f"ERROR: {message}\n{where}", file=sys.stderr, flush=True)
        # stopped before any work on bad input: exit now, without the interpreter tearing down native thread
        # pools (ITK, torch) that can abort with "terminate called without an active exception"
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)
    line = headline(value) if isinstance(value, Exception) else None
    if line:
        print(f"ERROR: {line}\n", file=sys.stderr, flush=True)
    (_previous_hook or sys.__excepthook__)(etype, value, tb)
    if line:
        print(f"\nERROR (the cause of the traceback above): {line}", file=sys.stderr, flush=True)


def install_excepthook() -> None:
    """Make uncaught exceptions start and end with their :func:`headline` (idempotent; chains to the previous
    hook). Only affects a Python process that dies of an uncaught exception, e.g. ``python -m monai.bundle run``."""
    global _previous_hook
    if sys.excepthook is _excepthook:
        return
    _previous_hook = sys.excepthook
    sys.excepthook = _excepthook
