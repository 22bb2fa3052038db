"""One training run per checkpoint folder at a time.

Two runs writing ``checkpoint_<N>.pt`` and ``model.pt`` into the same ``models/`` folder overwrite and prune each
other's files. :func:`acquire_run_lock` (called by :func:`medmae_ext.training.resume.resume_checkpoint`, i.e. before
every training run starts) creates ``<ckpt_dir>/.medmae_run.lock`` holding the owner's pid, host and start time;
a second run stops with :class:`RunLockedError` naming them. The lock is removed when its process exits (and when
the trainer completes); a lock left by a process that died without cleaning up (SIGKILL, power loss) on this host
is detected (its pid no longer runs) and taken over with a warning. A lock from another host cannot be checked:
the message says to delete the file once that run is known to be gone.

Stale temporary files of interrupted atomic saves (ignite's ``DiskSaver`` writes ``tmpXXXXXXXX`` files next to the
checkpoints and renames them into place) are deleted once the lock is held: no other run can be writing them.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import re
import socket
import time

__all__ = ["RunLockedError", "acquire_run_lock", "release_run_lock", "clean_stale_temp_files", "LOCK_NAME"]

logger = logging.getLogger(__name__)
LOCK_NAME = ".medmae_run.lock"
_TMP_RE = re.compile(r"^tmp[a-z0-9_]{8}$")
_held: set[str] = set()


class RunLockedError(RuntimeError):
    """Another run is training in the same checkpoint folder."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def acquire_run_lock(ckpt_dir: str) -> str:
    """Take the run lock of ``ckpt_dir`` (created if missing); returns the lock path. Re-entrant within a process.
    Raises :class:`RunLockedError` naming the other run, or ``PermissionError`` naming ``ckpt_dir`` when the folder
    cannot be written (checked here, before the first epoch, instead of at the first save)."""
    try:
        os.makedirs(ckpt_dir, exist_ok=True)
    except OSError as e:
        raise PermissionError(
            f"checkpoint folder {ckpt_dir} cannot be created ({e}); set --ckpt_dir or "
            "--bundle_root to a writable place"
        ) from e
    path = os.path.abspath(os.path.join(ckpt_dir, LOCK_NAME))
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                with open(path) as f:
                    other = json.load(f)
            except (OSError, ValueError):
                other = {}
            pid, host = int(other.get("pid", -1)), other.get("host", "?")
            if pid == os.getpid() and host == me["host"]:
                _held.add(path)
                return path
            if host == me["host"] and not _alive(pid):
                logger.warning(
                    f"{path}: the run that held this lock (pid {pid}, started {other.get('started')}) "
                    "is gone; taking the lock over"
                )
                os.remove(path)
                continue
            raise RunLockedError(
                f"another run is training in {ckpt_dir}: pid {pid} on host {host}, started {other.get('started', '?')} "
                f"(lock file {path}). Wait for it, or use another --bundle_root / --ckpt_dir"
                + ("" if host == me["host"] else "; if that run is known to be gone, delete the lock file")
                + "."
            ) from None
        except OSError as e:
            raise PermissionError(
                f"checkpoint folder {ckpt_dir} is not writable ({e}); set --ckpt_dir or "
                "--bundle_root to a writable place"
            ) from e
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        if not _held:
            atexit.register(_release_all)
        _held.add(path)
        return path
    raise RunLockedError(f"could not take the lock {path}")


def release_run_lock(ckpt_dir: str) -> None:
    """Remove this process's lock of ``ckpt_dir`` (no-op when not held)."""
    path = os.path.abspath(os.path.join(ckpt_dir, LOCK_NAME))
    if path in _held:
        _held.discard(path)
        try:
            os.remove(path)
        except FileNotFoundError:
            pass


def _release_all() -> None:
    for path in list(_held):
        release_run_lock(os.path.dirname(path))


def clean_stale_temp_files(ckpt_dir: str) -> list[str]:
    """Delete the temporary files that interrupted atomic saves left in ``ckpt_dir``; returns their names. Call
    it only while holding the run lock."""
    removed = []
    for name in sorted(os.listdir(ckpt_dir)) if os.path.isdir(ckpt_dir) else []:
        p = os.path.join(ckpt_dir, name)
        if _TMP_RE.match(name) and os.path.isfile(p):
            os.remove(p)
            removed.append(name)
    if removed:
        logger.warning(f"{ckpt_dir}: removed {len(removed)} temporary file(s) of an interrupted save: {removed}")
    return removed
