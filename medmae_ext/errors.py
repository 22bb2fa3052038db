"""Errors about a user's input, and the line a user reads first when a bundle run stops on one.

MONAI wraps every exception raised while a config is resolved: a file that cannot be read inside ``CacheDataset``
reaches the terminal as ``RuntimeError: Failed to instantiate component 'monai.data.dataset.CacheDataset'`` on top
of ``RuntimeError: applying transform <...LoadImaged object at 0x...>``, and the file and the reason are buried in
the middle of three tracebacks. :func:`install_excepthook` (done when ``medmae_ext`` is imported, i.e. by every
medmae bundle config) keeps Python's full traceback but prints the innermost cause -- the file and the reason --
as the first line and again as the last line of the report.

Contract for the package: an error about the user's data or settings is an :class:`InputError` (or a subclass such
as :class:`~medmae_ext.data.DatalistError`) whose message names the file, item, key or config id at fault.
"""

from __future__ import annotations

import logging
import os
import sys

__all__ = ["InputError", "ImageReadError", "LabelError", "headline", "install_excepthook"]


class InputError(ValueError):
    """The user's data or settings are wrong; the message names the file / item / config id and what to change."""


class ImageReadError(InputError):
    """An image or label file (or DICOM series folder) cannot be read; the message names the file and the reason."""

    @classmethod
    def of(cls, path, cause: BaseException) -> "ImageReadError":
        """The error for ``path``, whose reader raised ``cause`` (raise it ``from cause``)."""
        return cls(f"cannot read {path}: {type(cause).__name__}: {cause}")


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


def _excepthook(etype, value, tb):
    line = headline(value) if isinstance(value, Exception) else None
    if line:
        print(f"ERROR: {line}\n", file=sys.stderr, flush=True)
    (_previous_hook or sys.__excepthook__)(etype, value, tb)
    if line:
        print(f"\nERROR (the cause of the traceback above): {line}", file=sys.stderr, flush=True)
    if any(isinstance(e, InputError) for e in _chain(value)):
        # stopped before any work on bad input: exit now, without the interpreter tearing down native thread
        # pools (ITK, torch) that can abort with "terminate called without an active exception"
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)


def install_excepthook() -> None:
    """Make uncaught exceptions start and end with their :func:`headline` (idempotent; chains to the previous
    hook). Only affects a Python process that dies of an uncaught exception, e.g. ``python -m monai.bundle run``."""
    global _previous_hook
    if sys.excepthook is _excepthook:
        return
    _previous_hook = sys.excepthook
    sys.excepthook = _excepthook
