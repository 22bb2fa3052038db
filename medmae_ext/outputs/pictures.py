"""Pictures of MAE / MSMAE pretraining on a FIXED set of un-augmented images, so that epochs can be compared.

:func:`picture_items` picks the images once (evenly spread over the validation split, or over the training split
where there is none); :class:`ReconstructionSaver` runs the network being trained on them every ``interval``
epochs with the same random masking draw each time, and writes ``recon_epoch<N>.png`` and the TensorBoard image
``pictures/reconstruction``. Columns (labelled in the picture): the input; the input with masked patches in blue
and thrown patches (MSMAE) in red -- never black, which looks like lung; the reconstruction (masked patches
predicted, thrown ones red: they are not reconstructed); for MSMAE the attention map that drew the mask, overlaid
on the input. 3D volumes show their middle slice along the last axis. Arrays in MONAI's reader order (``[W, H]``)
are drawn upright (rows = H), as the source PNG looks.
"""

from __future__ import annotations

import logging
import math
import os

import numpy as np
import torch
from ignite.engine import Engine, Events

from ..networks.patching import patchify, unpatchify
from ..networks.weights import unwrap

__all__ = ["MASKED_RGB", "THROWN_RGB", "ReconstructionSaver", "picture_items", "reconstruction_panel"]

logger = logging.getLogger(__name__)

MASKED_RGB = (40, 110, 230)  # blue
THROWN_RGB = (225, 45, 45)  # red


def picture_items(
    data_format: str,
    data_path: str,
    data_kwargs: dict | None,
    fallback: list[dict],
    count: int = 4,
    split: str = "validation",
    synthetic: dict | None = None,
) -> list[dict]:
    """``count`` items evenly spread over ``split`` of the dataset (lists sorted by class then give every class a
    row), or over ``fallback`` (the training datalist) where that split is missing or empty."""
    from ..data import dataset_items, spread_items
    from ..data.readers import DatalistError

    if count < 1:
        raise ValueError(f"config id 'picture_count' must be at least 1, got {count}")

    kwargs = {k: v for k, v in (data_kwargs or {}).items() if k != "max_items"}
    try:
        items = dataset_items(data_format, data_path, split, synthetic=synthetic, **kwargs)
    except (DatalistError, KeyError, ValueError) as e:
        logger.info(f"pictures: no {split!r} split ({e}); using training images")
        items = []
    items = items or list(fallback)
    if not items:
        raise ValueError("pictures: no image to draw (empty validation and training lists)")
    return spread_items(items, count)


def _gray(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    g = np.clip((x - lo) / max(hi - lo, 1e-8), 0, 1)
    return np.repeat(g[..., None], 3, axis=-1)


def _paint(rgb: np.ndarray, where: np.ndarray, colour, alpha: float = 0.75) -> np.ndarray:
    c = np.asarray(colour, dtype=np.float64) / 255.0
    out = rgb.copy()
    out[where] = (1 - alpha) * rgb[where] + alpha * c
    return out


def _heat(a: np.ndarray) -> np.ndarray:
    """Black-red-yellow colour map of values in [0, 1]."""
    return np.stack([np.clip(2 * a, 0, 1), np.clip(2 * a - 1, 0, 1), np.zeros_like(a)], axis=-1)


def reconstruct(
    image: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor, patch_size, norm_pix: bool = True
) -> torch.Tensor:
    """The reconstructed image ``[B, C, *spatial]`` (CPU, float): visible patches from ``image``, masked ones from
    the dense prediction ``pred`` ``[B, N, P]``, de-normalised per patch with the input patch's mean and std when
    ``norm_pix`` (the loss's normalised-pixel target)."""
    image = image.detach().float().cpu()
    grid = [s // p for s, p in zip(image.shape[2:], patch_size, strict=False)]
    target = patchify(image, patch_size)
    pred = pred.detach().float().cpu()
    if norm_pix:
        mean = target.mean(-1, keepdim=True)
        std = (target.var(-1, keepdim=True, unbiased=False) + 1e-6).sqrt()
        pred = pred * std + mean
    m = mask.detach().float().cpu().unsqueeze(-1)
    return unpatchify(torch.where(m > 0, pred, target), patch_size, grid, image.shape[1])


def patch_values_to_voxels(values: torch.Tensor, image_shape, patch_size) -> torch.Tensor:
    """One value per patch ``[B, N]`` painted over its patch: ``[B, *spatial]``."""
    c = image_shape[1]
    grid = [s // p for s, p in zip(image_shape[2:], patch_size, strict=False)]
    per_patch = values.unsqueeze(-1).expand(-1, -1, c * math.prod(patch_size))
    return unpatchify(per_patch, patch_size, grid, c)[:, 0]


def reconstruction_panel(
    image: torch.Tensor,
    pred: torch.Tensor,
    mask: torch.Tensor,
    thrown: torch.Tensor | None,
    patch_size,
    norm_pix: bool = True,
    attention: torch.Tensor | None = None,
) -> np.ndarray:
    """uint8 RGB picture ``[H, W, 3]``, one row per sample: input | masked (blue) and thrown (red) patches over the
    input | reconstruction (visible patches from the input, masked ones predicted, thrown ones red) | with
    ``attention`` (``[B, N]`` in [0, 1]) that map over the input. ``pred`` is the dense ``[B, N, P]`` prediction
    (:meth:`~medmae_ext.networks.MaskedAutoencoder.dense_prediction`), de-normalised per patch when ``norm_pix``."""
    image = image.detach().float().cpu()
    recon = reconstruct(image, pred, mask, patch_size, norm_pix)
    m = mask.detach().float().cpu()
    mvox = patch_values_to_voxels(m, image.shape, patch_size)
    tvox = patch_values_to_voxels(
        thrown.detach().float().cpu() if thrown is not None else torch.zeros_like(m), image.shape, patch_size
    )
    avox = (
        patch_values_to_voxels(attention.detach().float().cpu(), image.shape, patch_size)
        if attention is not None
        else None
    )
    rows = []
    for i in range(image.shape[0]):
        views = [image[i, 0], recon[i, 0], mvox[i], tvox[i]] + ([avox[i]] if avox is not None else [])
        if views[0].ndim == 3:
            views = [v[..., v.shape[-1] // 2] for v in views]
        views = [v.T for v in views]  # MONAI's [W, H] -> rows = H: the image upright, as in its PNG
        inp, rec, mk, th = (v.numpy() for v in views[:4])
        lo, hi = float(inp.min()), float(inp.max())
        gray = _gray(inp, lo, hi)
        masked_view = _paint(_paint(gray, mk > 0, MASKED_RGB), th > 0, THROWN_RGB)
        recon_view = _paint(_gray(rec, lo, hi), th > 0, THROWN_RGB)
        cols = [gray, masked_view, recon_view]
        if avox is not None:
            a = np.clip(views[4].numpy(), 0, 1)[..., None]
            cols.append((1 - 0.6 * a) * gray + 0.6 * a * _heat(a[..., 0]))
        sep = np.ones((gray.shape[0], 1, 3))
        rows.append(np.concatenate([x for col in cols for x in (col, sep)][:-1], axis=1))
        rows.append(np.ones((1, rows[-1].shape[1], 3)))
    return (np.concatenate(rows[:-1], axis=0) * 255).round().astype(np.uint8)


LEGEND = "blue = masked, red = thrown (not reconstructed)"


def _with_header(panel: np.ndarray, labels: list[str], scale: int) -> np.ndarray:
    """Upscale ``panel`` by ``scale`` (nearest; more where a column is narrower than its label) and add a white strip
    with one label per column and the colour legend, each drawn whole (the canvas is widened for the legend)."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def width(text: str) -> int:
        return int(math.ceil(measure.textlength(text, font=font)))

    scale = max(scale, math.ceil((max(width(t) for t in labels) + 8) * len(labels) / panel.shape[1]))
    img = Image.fromarray(panel).resize((panel.shape[1] * scale, panel.shape[0] * scale), Image.NEAREST)
    header = 30
    out = Image.new("RGB", (max(img.width, width(LEGEND) + 8), img.height + header), "white")
    out.paste(img, (0, header))
    draw = ImageDraw.Draw(out)
    col_w = img.width / len(labels)
    for k, text in enumerate(labels):
        draw.text((int(k * col_w) + 3, 2), text, fill="black", font=font)
    draw.text((3, 15), LEGEND, fill=MASKED_RGB, font=font)
    return np.asarray(out)


@torch.no_grad()
def seeded_reconstruction(net: torch.nn.Module, image: torch.Tensor, seed: int, with_attention: bool = False):
    """``net`` (a :class:`~medmae_ext.networks.MaskedAutoencoder`) on ``image`` in eval mode, its mask drawn under
    ``seed`` without touching the global RNG: the same images and seed give the same mask. ``with_attention``
    (MSMAE): the mask is drawn from the encoder's CLS attention, as in training. Returns ``(output dict, dense
    prediction [B, N, P], attention [B, N] or None)``; the network's train/eval mode is restored."""
    was_training = net.training
    net.eval()
    try:
        attention = net.encoder.cls_attention(image) if with_attention else None
        with torch.random.fork_rng(devices=[image.device] if image.device.type == "cuda" else []):
            torch.manual_seed(seed)
            out = net(image, attention)
    finally:
        net.train(was_training)
    return out, net.dense_prediction(out), attention


def panel_labels(attention) -> list[str]:
    """Column labels of :func:`reconstruction_panel`."""
    return ["input", "masked / thrown", "reconstruction"] + (["attention"] if attention is not None else [])


class ReconstructionSaver:
    """Every ``interval`` epochs, reconstruct the fixed images of ``dataset`` (items with an ``image`` tensor of the
    network's input size, un-augmented) with the network being trained, in eval mode, with the same masking draw
    (``seed``) each time. Writes ``output_dir/recon_epoch<N>.png`` and, with ``log_dir``, the TensorBoard image
    ``pictures/reconstruction`` at step N.

    MSMAE (``attention_cache`` given): once the run has attention maps (the cache is filled), the masks are drawn
    from the current encoder's attention on these images (:meth:`~medmae_ext.networks.ViTEncoder.cls_attention`),
    as training draws them, and a fourth column shows that map; before that, the masking is random as in training.
    """

    def __init__(
        self,
        output_dir: str,
        dataset=None,
        interval: int = 1,
        max_images: int = 4,
        norm_pix: bool = True,
        log_dir: str | None = None,
        attention_cache=None,
        seed: int = 0,
        image_key: str = "image",
    ) -> None:
        if dataset is None:
            raise ValueError(
                "ReconstructionSaver needs 'dataset': the fixed images to reconstruct (config "
                "'pictures#dataset'); pictures of the last augmented training batch are no longer made"
            )
        self.output_dir = output_dir
        self.dataset = dataset
        self.interval = interval
        self.max_images = max_images
        self.norm_pix = norm_pix
        self.log_dir = log_dir
        self.attention_cache = attention_cache
        self.seed = seed
        self.image_key = image_key
        self._images = None
        self._writer = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval), self)

    def images(self) -> torch.Tensor:
        if self._images is None:
            n = min(self.max_images, len(self.dataset))
            self._images = torch.stack([torch.as_tensor(self.dataset[i][self.image_key]).float() for i in range(n)])
        return self._images

    def picture(self, network: torch.nn.Module, device) -> tuple[np.ndarray, list[str]]:
        """The labelled RGB picture of the fixed images under ``network``, and its column labels."""
        net = unwrap(network)
        image = self.images().to(device)
        with_attention = self.attention_cache is not None and len(self.attention_cache) > 0
        out, dense, attention = seeded_reconstruction(net, image, self.seed, with_attention)
        panel = reconstruction_panel(
            image, dense, out["mask"], out.get("thrown"), net.patch_size, self.norm_pix, attention
        )
        return panel, panel_labels(attention)

    def __call__(self, engine: Engine) -> str:
        from PIL import Image

        panel, labels = self.picture(engine.network, engine.state.device)
        scale = max(1, 512 // panel.shape[0])
        picture = _with_header(panel, labels, scale)
        os.makedirs(self.output_dir, exist_ok=True)
        path = os.path.join(self.output_dir, f"recon_epoch{engine.state.epoch:04d}.png")
        Image.fromarray(picture).save(path)
        if self.log_dir:
            if self._writer is None:
                from torch.utils.tensorboard import SummaryWriter

                self._writer = SummaryWriter(log_dir=self.log_dir)
            self._writer.add_image("pictures/reconstruction", picture, engine.state.epoch, dataformats="HWC")
            self._writer.flush()
        return path
