"""Multi-process (torchrun) training: process group, per-rank data shards, rank-0 writers, learning-rate scaling.

The bundles' ``configs/multi_gpu_train.json`` are overrides merged on ``train.json`` (or ``train_3d.json``), as in
the MONAI model zoo, and are launched by ``torchrun`` (NCCL on CUDA, gloo on CPU); nothing here launches processes.

Contract of a multi-process run:

* **data** -- :func:`shard_items` gives each rank a fixed, disjoint, equally long shard of the training items
  (MONAI ``partition_dataset``, shuffled with the run's seed); each rank caches and augments only its shard, and
  shuffles it every epoch. Equal shards keep every rank at the same number of iterations (DDP would hang
  otherwise); up to ``world_size - 1`` items are left out, logged. MSMAE's attention maps are computed by each rank
  for its own shard only: every sample a rank draws has its map, and no map is computed twice or sent anywhere.
* **writers** -- checkpoints, ``model.pt``, pictures, TensorBoard, the progress bar and the loss log are written by
  rank 0 only: the writing handlers of ``train.json`` carry ``"_disabled_": "$not
  medmae_ext.training.distributed.is_main_process()"`` (always enabled in one process), so other ranks never construct them.
* **learning rate** -- ``base_lr`` is per 256 samples of the *global* batch (``batch_size`` per process x
  processes), as in MAE; :func:`world_size` is 1 in a single process.
* **metrics** -- validation shards (:func:`shard_items` with ``equal=False``: every item in exactly one shard) are
  reduced by MONAI's cumulative metrics (``MeanDice`` all-gathers its buffers), so every rank reports the metric of
  the whole validation split.
"""

from __future__ import annotations

import logging
import os

import torch

from ..errors import InputError
from .resume import items_digest

__all__ = ["init_process_group", "is_main_process", "rank", "shard_items", "world_size"]

logger = logging.getLogger(__name__)


def _initialized() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return torch.distributed.get_rank() if _initialized() else 0


def world_size() -> int:
    """Number of training processes (1 without a process group)."""
    return torch.distributed.get_world_size() if _initialized() else 1


def is_main_process() -> bool:
    """True in a single process and on rank 0 of a process group: the process that writes files."""
    return rank() == 0


def init_process_group(device: torch.device | str, backend: str | None = None) -> int:
    """Join the process group torchrun describes (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``... in the environment)
    and pin CUDA devices to ``LOCAL_RANK``; ``backend`` defaults to NCCL on CUDA, gloo otherwise. Returns the
    world size. A clear error when the environment is not torchrun's (the config run with plain ``python``)."""
    if _initialized():
        return world_size()
    missing = [k for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise InputError(
            f"multi_gpu_train.json needs a torchrun launch (environment lacks {', '.join(missing)}): run "
            "`torchrun --nproc_per_node <N> -m monai.bundle run training --config_file \"['configs/train.json',"
            "'configs/multi_gpu_train.json']\"`, or drop multi_gpu_train.json for one process."
        )
    device = torch.device(device)
    backend = backend or ("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    torch.distributed.init_process_group(backend=backend)
    if is_main_process():
        logger.info(f"process group: {world_size()} processes, backend {backend}")
    return world_size()


def shard_items(
    items,
    seed: int = 0,
    split: str = "training",
    equal: bool = True,
    config_id: str = "train#dataset#data",
    rank_world: tuple[int, int] | None = None,
) -> list:
    """This rank's shard of ``items``, disjoint from every other rank's. In one process: ``items`` unchanged.

    ``equal=True`` (training): a seeded shuffle, then shards of the same length -- the remainder, fewer than
    ``world_size`` items, is left out this run. ``equal=False`` (validation): every item in exactly one shard, in
    order, shard lengths differing by at most one; the metrics gather them back. Logs the shard's size and a digest
    of its item ids on every rank; fewer items than processes is an error naming ``config_id``. ``rank_world``
    overrides ``(rank, world_size)`` of the process group (to list every rank's shard from one process)."""
    from monai.data import partition_dataset

    items = list(items)
    me, world = rank_world or (rank(), world_size())
    n = len(items)
    if world == 1:
        return items
    if n < world:
        raise InputError(
            f"{config_id!r}: the {split} split has {n} item(s) for {world} processes; every process "
            "needs at least one. Use fewer processes or add data."
        )
    shard = partition_dataset(
        items, num_partitions=world, shuffle=equal, seed=seed, even_divisible=equal, drop_last=equal
    )[me]
    left = n - world * len(shard) if equal else 0
    logger.info(
        f"rank {me}/{world}: {len(shard)} of {n} {split} items (ids #{items_digest(shard)})"
        + (f"; {left} left out to keep the shards equal" if left else "")
    )
    return shard
