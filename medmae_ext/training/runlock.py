"""One training run per checkpoint folder at a time, and the temporary files of its atomic saves.

Two runs writing ``checkpoint_<N>.pt`` and ``model.pt`` into the same ``models/`` folder overwrite and prune each
other's files. :func:`acquire_run_lock` (called by :func:`medmae_ext.training.resume.resume_checkpoint`, i.e. before
every training run starts) holds an exclusive ``flock`` on ``<ckpt_dir>/.medmae_run.lock`` for the life of the run
and writes the owner's pid, host and start time into it; a second run stops with :class:`RunLockedError` naming
them. The kernel releases the ``flock`` when its process dies however it dies (SIGKILL, OOM), so taking over the lock
of a dead run is the same atomic ``flock`` call as taking a free one: of several processes started together exactly
one gets it. The lock file of a run on another host (shared file system) is not taken over: the message says to
delete it once that run is known to be gone.

Atomic saves write a temporary file next to their target and rename it into place. :class:`AtomicSaver` names those
files ``.medmae-tmp-*``; :func:`clean_stale_temp_files` deletes only files with that prefix (left by a run killed
mid-save), never another program's ``tmp*`` files, even when ``--ckpt_dir`` is a shared folder such as ``/tmp``.
"""

from __future__ import annotations

import atexit
import fcntl
import json
import logging
import os
import socket
import stat
import tempfile
import time

from ignite.handlers import DiskSaver

from ..errors import InputError

__all__ = [
    "LOCK_NAME",
    "TEMP_PREFIX",
    "AtomicSaver",
    "RunLockedError",
    "acquire_run_lock",
    "clean_stale_temp_files",
    "release_run_lock",
]

logger = logging.getLogger(__name__)
LOCK_NAME = ".medmae_run.lock"
#: the prefix of every temporary file this package writes next to a checkpoint or ``model.pt``
TEMP_PREFIX = ".medmae-tmp-"
_held: dict[str, int] = {}  # lock path -> open descriptor holding its flock


class RunLockedError(InputError):
    """Another run is training in the same checkpoint folder (a usage error: exit 1 with this message)."""


class AtomicSaver(DiskSaver):
    """ignite's ``DiskSaver(atomic=True)`` whose temporary files carry :data:`TEMP_PREFIX` (ignite's are Python's
    ``tmpXXXXXXXX`` names, which cannot be told apart from other programs' files)."""

    def __init__(self, dirname: str, **kwargs) -> None:
        super().__init__(dirname, atomic=True, require_empty=False, create_dir=True, **kwargs)

    def _save_func(self, checkpoint, path, func) -> None:
        fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=str(self.dirname))
        try:
            with os.fdopen(fd, "wb") as f:
                func(checkpoint, f, **self.kwargs)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise
        os.chmod(path, os.stat(path).st_mode | stat.S_IRGRP | stat.S_IROTH)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_owner(fd: int) -> dict:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 4096).decode()
        return json.loads(text) if text.strip() else {}
    except (OSError, ValueError):
        return {}


def _locked_message(ckpt_dir: str, path: str, other: dict, same_host: bool) -> str:
    return (
        f"another run is training in {ckpt_dir}: pid {other.get('pid', '?')} on host {other.get('host', '?')}, "
        f"started {other.get('started', '?')} (lock file {path}). Wait for it, or use another --bundle_root / "
        "--ckpt_dir" + ("." if same_host else "; if that run is known to be gone, delete the lock file.")
    )


def acquire_run_lock(ckpt_dir: str) -> str:
    """Take the run lock of ``ckpt_dir`` (created if missing); returns the lock path. Re-entrant within a process.
    Raises :class:`RunLockedError` naming the other run, or ``PermissionError`` naming ``ckpt_dir`` when the folder
    cannot be written (checked here, before the first epoch, instead of at the first save)."""
    try:
        os.makedirs(ckpt_dir, exist_ok=True)
    except OSError as e:
        raise PermissionError(
            f"checkpoint folder {ckpt_dir} cannot be created ({e}); set --ckpt_dir or --bundle_root to a writable place"
        ) from e
    path = os.path.abspath(os.path.join(ckpt_dir, LOCK_NAME))
    if path in _held:
        return path
    host = socket.gethostname()
    for _ in range(20):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise PermissionError(
                f"checkpoint folder {ckpt_dir} is not writable ({e}); set --ckpt_dir or --bundle_root to a writable "
                "place"
            ) from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # a live process holds it; give it a moment to write who it is
            time.sleep(0.2)
            other = _read_owner(fd)
            os.close(fd)
            raise RunLockedError(_locked_message(ckpt_dir, path, other, other.get("host") == host)) from None
        try:  # the file may have been released (unlinked) between our open and our flock: lock the current one
            same = os.path.exists(path) and os.stat(path).st_ino == os.fstat(fd).st_ino
        except OSError:
            same = False
        if not same:
            os.close(fd)
            continue
        other = _read_owner(fd)
        pid = int(other.get("pid", -1)) if str(other.get("pid", "")).lstrip("-").isdigit() else -1
        if other and other.get("host") != host:  # written by a run on another host: its flock may not reach us
            os.close(fd)
            raise RunLockedError(_locked_message(ckpt_dir, path, other, False))
        if other and pid != os.getpid() and _alive(pid):  # a live process that holds no flock (an older medmae)
            os.close(fd)
            raise RunLockedError(_locked_message(ckpt_dir, path, other, True))
        if other:
            logger.warning(
                f"{path}: the run that held this lock (pid {pid}, started {other.get('started')}) is gone; "
                "taking the lock over"
            )
        me = {"pid": os.getpid(), "host": host, "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps(me).encode())
        os.fsync(fd)
        if not _held:
            atexit.register(_release_all)
        _held[path] = fd
        return path
    raise RunLockedError(f"could not take the lock {path}: it is being created and removed by other runs")


def release_run_lock(ckpt_dir: str) -> None:
    """Remove this process's lock of ``ckpt_dir`` (no-op when not held)."""
    path = os.path.abspath(os.path.join(ckpt_dir, LOCK_NAME))
    fd = _held.pop(path, None)
    if fd is None:
        return
    try:
        os.remove(path)  # removed while still locked: a process waiting on the old file sees it is gone and retries
    except FileNotFoundError:
        pass
    os.close(fd)


def _release_all() -> None:
    for path in list(_held):
        release_run_lock(os.path.dirname(path))


def clean_stale_temp_files(ckpt_dir: str) -> list[str]:
    """Delete the ``.medmae-tmp-*`` files that interrupted atomic saves left in ``ckpt_dir``; returns their names.
    Call it only while holding the run lock."""
    removed = []
    for name in sorted(os.listdir(ckpt_dir)) if os.path.isdir(ckpt_dir) else []:
        p = os.path.join(ckpt_dir, name)
        if name.startswith(TEMP_PREFIX) and os.path.isfile(p):
            os.remove(p)
            removed.append(name)
    if removed:
        logger.warning(f"{ckpt_dir}: removed {len(removed)} temporary file(s) of an interrupted save: {removed}")
    return removed
