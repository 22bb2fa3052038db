"""Process-level run settings the bundle configs expose: the number of CPU threads torch may use."""

from __future__ import annotations

import logging

import torch

__all__ = ["compiled", "set_num_threads"]

logger = logging.getLogger(__name__)


def set_num_threads(num_threads, config_id: str = "num_threads") -> int:
    """``torch.set_num_threads(num_threads)`` when ``num_threads > 0``; ``0`` keeps PyTorch's default (one thread
    per physical core). Returns the thread count in effect.

    On a machine other jobs share (a CI runner, a MONAI Label server, a second training), PyTorch's default makes
    every intra-op thread wait for a busy core: with one other busy process on a 2-core machine, 2 threads took
    2.2x-4.1x the time of 1 thread per MAE step (``scripts/benchmark_threads.py``). Set ``--num_threads`` to the
    cores this job may use there.
    """
    if isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 0:
        raise ValueError(
            f"config id {config_id!r} must be a whole number >= 0 (0 = PyTorch's default), got {num_threads!r}"
        )
    if num_threads > 0:
        torch.set_num_threads(num_threads)
        logger.info(f"torch uses {num_threads} CPU thread(s) ({config_id!r})")
    return torch.get_num_threads()


def compiled(
    network: torch.nn.Module, enabled: bool = False, backend: str = "inductor", config_id: str = "compile"
) -> torch.nn.Module:
    """``network`` with its forward compiled by ``torch.compile`` when ``enabled`` (``nn.Module.compile``: in place,
    so state-dict keys, checkpoints and ``model.pt`` stay those of the plain network). The first iterations pay the
    compilation; on CPU it needs a C++ compiler. ``backend`` is torch.compile's (``"inductor"``; ``"eager"`` checks
    that the model traces, without code generation)."""
    if not isinstance(enabled, bool):
        raise ValueError(f"config id {config_id!r} must be true or false, got {enabled!r}")
    if enabled:
        network.compile(backend=backend)
        logger.info(f"network forward compiled with torch.compile (backend {backend}): the first iterations are slow")
    return network
