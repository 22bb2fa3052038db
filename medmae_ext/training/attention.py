"""MSMAE attention maps: computed by the encoder being trained, cached per sample, refreshed every N epochs.

The map of a sample is the last encoder block's CLS->patch softmax attention (each head min-max normalised to
[0, 1], heads averaged; :meth:`~medmae_ext.networks.ViTEncoder.cls_attention`), computed in eval mode on the
un-augmented image and stored on the patch grid. :class:`~medmae_ext.data.transforms.AttachAttentiond` turns it into
an image-sized map *before* the random crop/flip, so the same dictionary transforms move image and map together,
and :class:`~medmae_ext.training.engines.MAEPrepareBatch` averages the transformed map back to one weight per patch.
"""

from __future__ import annotations

import logging

import torch
from ignite.engine import Engine, Events

from ..networks.patching import patch_weights

__all__ = ["AttentionCache", "AttentionRefresher", "lesion_coverage"]

logger = logging.getLogger(__name__)


class AttentionCache:
    """``{sample id: attention map on the patch grid}`` (float tensors), plus the epoch it was computed at.

    With ``ids`` (every training item's ``id``) and ``grid`` (the patch grid) the maps live in one tensor in shared
    memory, allocated here, before any ``DataLoader`` worker is forked: a refresh writes into it in place, so every
    worker -- persistent ones, and those of an iterator that ignite keeps across epochs when ``epoch_length`` is
    shorter than the loader -- reads the new maps. (A plain dict would stay, in each worker, the copy it was forked
    with: MSMAE would silently fall back to random masking.) Without ``ids``/``grid`` (tests, one process) the table
    is allocated at the first refresh.
    """

    def __init__(self, ids=None, grid=None) -> None:
        self.index: dict[str, int] = {}
        self.table: torch.Tensor | None = None
        self.filled: torch.Tensor | None = None
        self._epoch = torch.full((1,), -1, dtype=torch.int64).share_memory_()
        if ids is not None and grid is not None:
            self._allocate([str(i) for i in ids], tuple(int(g) for g in grid))

    def _allocate(self, ids: list[str], grid: tuple[int, ...]) -> None:
        self.index = {k: i for i, k in enumerate(dict.fromkeys(ids))}
        self.table = torch.zeros(len(self.index), *grid).share_memory_()
        self.filled = torch.zeros(len(self.index), dtype=torch.bool).share_memory_()

    @property
    def epoch(self) -> int | None:
        e = int(self._epoch[0])
        return None if e < 0 else e

    def __len__(self) -> int:
        return 0 if self.filled is None else int(self.filled.sum())

    def __contains__(self, key) -> bool:
        return self.get(key) is not None

    def get(self, key) -> torch.Tensor | None:
        i = self.index.get(str(key))
        if i is None or not bool(self.filled[i]):
            return None
        return self.table[i].clone()

    def store(self, maps: dict[str, torch.Tensor], epoch: int | None = None) -> None:
        """Write ``maps`` in place (shared memory); a sample id the table was not allocated for is an error."""
        if self.table is None:
            first = next(iter(maps.values()))
            self._allocate(list(maps), tuple(first.shape))
        unknown = [k for k in maps if k not in self.index]
        if unknown:
            raise KeyError(
                f"attention maps for samples {unknown[:3]} that are not training items of this run "
                f"(the cache was allocated for {len(self.index)} ids)"
            )
        for k, m in maps.items():
            self.table[self.index[k]].copy_(m.reshape(self.table.shape[1:]))
            self.filled[self.index[k]] = True
        self._epoch[0] = -1 if epoch is None else int(epoch)

    def refresh(
        self,
        network: torch.nn.Module,
        dataloader,
        device,
        image_key: str = "image",
        id_key: str = "id",
        epoch: int | None = None,
        amp: bool = False,
    ) -> None:
        """Recompute every map with ``network.encoder`` (a MaskedAutoencoder or ViTClassifier) in eval mode, under
        ``torch.inference_mode`` and, with ``amp``, autocast (bfloat16 where the device supports it, else float16):
        the training step's precision, at a fraction of its cost. The maps are stored as float32."""
        net = getattr(network, "module", network)
        encoder = net.encoder
        was_training = net.training
        device = torch.device(device)
        half = torch.bfloat16 if device.type != "cuda" or torch.cuda.is_bf16_supported() else torch.float16
        maps: dict[str, torch.Tensor] = {}
        net.eval()
        try:
            with torch.inference_mode(), torch.autocast(device.type, dtype=half, enabled=bool(amp)):
                for batch in dataloader:
                    if id_key not in batch:
                        raise KeyError(
                            f"attention dataloader batches need an {id_key!r} per sample (keys: {sorted(batch)})"
                        )
                    att = encoder.cls_attention(batch[image_key].to(device))  # [B, N]
                    for sid, a in zip(batch[id_key], att.float().cpu(), strict=False):
                        maps[str(sid)] = a.reshape(encoder.grid)
        finally:
            net.train(was_training)
        self.store(maps, epoch)
        logger.info(f"attention maps refreshed for {len(maps)} samples (epoch {epoch})")


@torch.no_grad()
def lesion_coverage(
    encoder, images: torch.Tensor, lesions: torch.Tensor, masking, repeats: int = 20, use_attention: bool = True
) -> float:
    """Mean fraction of lesion pixels that fall inside *masked* patches.

    ``lesions`` is a binary map shaped like ``images`` (one channel); samples without lesion are skipped.
    With ``use_attention`` the masking draws from ``encoder.cls_attention(images)``, otherwise it gets no
    weights (random masking)."""
    keep = lesions.flatten(1).sum(1) > 0
    images, lesions = images[keep], lesions[keep]
    if not len(images):
        raise ValueError("no sample with a lesion: lesion coverage is undefined")
    per_patch = patch_weights(lesions.float(), encoder.patch_size)  # lesion fraction of each patch
    weights = encoder.cls_attention(images) if use_attention else None
    b, n = per_patch.shape
    covered = [
        (per_patch * masking(b, n, images.device, weights).indicator(n)).sum(1) / per_patch.sum(1)
        for _ in range(repeats)
    ]
    return float(torch.stack(covered).mean())


class AttentionRefresher:
    """MSMAE: recompute the per-sample attention maps of ``cache`` with the network being trained.

    At the start of epoch ``e`` (0-based) the maps are refreshed when ``e >= start_epoch`` and
    ``(e - start_epoch) % interval == 0`` -- and at the first epoch of a resumed run past ``start_epoch``, since
    the cache is not checkpointed. Before ``start_epoch`` the cache stays empty and masking is random.
    Paper values: start 40, interval 40 (pretraining); start 0, interval 20 (fine-tuning).
    """

    def __init__(
        self,
        cache,
        dataloader,
        start_epoch: int = 40,
        interval: int = 40,
        image_key: str = "image",
        id_key: str = "id",
        amp: bool = False,
    ) -> None:
        if interval < 1:
            raise ValueError(f"interval must be >= 1, got {interval}")
        self.cache = cache
        self.dataloader = dataloader
        self.start_epoch = start_epoch
        self.interval = interval
        self.image_key = image_key
        self.id_key = id_key
        self.amp = amp

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self)
        engine.add_event_handler(Events.STARTED, self._check_reachable)

    def _check_reachable(self, engine: Engine) -> None:
        if self.start_epoch >= engine.state.max_epochs:
            logger.warning(
                f"attention_start_epoch={self.start_epoch} but the run has only {engine.state.max_epochs} epochs: "
                "attention masking never starts and every batch is masked at random (plain MAE). Lower "
                "--attention_start_epoch or raise --epochs."
            )

    def due(self, epoch0: int) -> bool:
        if epoch0 < self.start_epoch:
            return False
        return (epoch0 - self.start_epoch) % self.interval == 0 or not len(self.cache)

    def __call__(self, engine: Engine) -> None:
        epoch0 = engine.state.epoch - 1  # ignite has already counted the epoch that is starting
        if self.due(epoch0):
            self.cache.refresh(
                engine.network,
                self.dataloader,
                engine.state.device,
                self.image_key,
                self.id_key,
                epoch=epoch0,
                amp=self.amp,
            )
