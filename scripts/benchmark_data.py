"""The data path of mae_pretrain on its own, per CPU core: what a GPU would wait for.

    python scripts/benchmark_data.py                          # 2D 28, 64, 224 px and 3D 96^3
    python scripts/benchmark_data.py --sizes "[28]" --sizes_3d "[]" --items 32   # quick
    python scripts/benchmark_data.py --sizes "[28]" --sizes_3d "[]" --items 256 --reads 1024 \\
        --data_format medmnist --data_path ../shared/data/pneumoniamnist_trainval.npz   # real X-rays, 28 px
    python scripts/benchmark_data.py --cache_quantize true    # the 8-bit cache of images resized when read

For each training size, the bundle's own ``train#dataset`` (its synthetic set, memory cache) is built in one
thread, then read through the bundle's ``train#dataloader`` (``num_workers`` 0). Reported per size:

* cache build, ms per item: the deterministic transforms (load, orientation / spacing, intensity, resize);
* cache bytes per item, against the image as uint8 at training size (issue 28's target: <= 1.1x);
* images/s on one core of the whole data path after the cache is full, in interleaved rounds (median):
  - *per item (MONAI)*: what the bundles ran until now -- MONAI's ``RandScaleCropd`` -> ``Resized`` ->
    ``RandFlipd`` on every item (3D: the crops, then the flips), then collate;
  - *on the batch*: the bundles' path now -- the per-item part that is left (3D: the crops), collate, then
    ``BatchAugment`` on the whole batch (here on the CPU; on a GPU it runs there, after the copy);
  - *DataLoader part alone*: the same without ``BatchAugment``: what stays on the CPU when a GPU augments.

Process CPU time, not wall time, so a busy machine does not change the figures much.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time

import fire
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _nbytes(value) -> int:
    if isinstance(value, torch.Tensor):
        return value.element_size() * value.numel()
    if isinstance(value, dict):
        return sum(_nbytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_nbytes(v) for v in value)
    return getattr(value, "nbytes", 0)


def monai_chain(aug, img_size) -> list:
    """MONAI's per-item transforms that draw what ``aug`` (a ``BatchAugment``) draws: the bundles' old chain."""
    from monai.transforms import RandFlipd, RandScaleCropd, Resized

    out = []
    if aug.crop_scale is not None:
        lo, hi = aug.crop_scale
        out += [RandScaleCropd(aug.keys, roi_scale=lo, max_roi_scale=hi, random_size=True, allow_missing_keys=True),
                Resized(aug.keys, spatial_size=img_size, allow_missing_keys=True)]
    return out + [RandFlipd(aug.keys, prob=aug.flip_prob, spatial_axis=a, allow_missing_keys=True) for a in aug.flip_axes]


def _rate(batches, reads: int, augment=None) -> float:
    t0, n = time.process_time(), 0
    while n < reads:
        before = n
        for b in batches():
            if augment is not None:
                b = augment(b, inplace=True)  # as the bundles' trainer handler applies it
            n += len(b["image"])
            if n >= reads:
                break
        if n == before:
            raise ValueError("the loader gives no batch: --items must be at least --batch")
    return n / (time.process_time() - t0)


def measure(config: list[str], size: list[int], items: int, reads: int, batch: int, rounds: int,
            data: dict | None = None) -> dict:
    from monai.bundle import ConfigParser
    from monai.data import DataLoader
    from monai.transforms import Compose

    from medmae_ext.data.compact import expand

    batch = min(batch, items)
    p = ConfigParser()
    p.read_config([os.path.join(REPO, "bundles", "mae_pretrain", "configs", c) for c in config])
    with tempfile.TemporaryDirectory() as root:
        p["bundle_root"] = root
        p["img_size"], p["max_items"], p["num_workers"], p["batch_size"] = size, items, 0, batch
        for k, v in (data or {}).items():
            p[k] = v
        p.parse()
        data = p.get_parsed_content("train#datalist").data  # writes the synthetic set: not timed
        t0 = time.process_time()
        ds = p.get_parsed_content("train#dataset")
        build = (time.process_time() - t0) / len(data)
        cached = getattr(ds, "_cache", None) or []
        per_item = sum(_nbytes(c) for c in cached) / max(1, len(cached))
        loader = p.get_parsed_content("train#dataloader")
        aug = p.get_parsed_content("augmentation")
        old = Compose(list(p.get_parsed_content("random_transforms")) + monai_chain(aug, size))
        old_ds = [expand(c) for c in cached]  # the cache's entries (as floats), through the old per-item chain

        class _Old(torch.utils.data.Dataset):
            def __len__(self):
                return len(old_ds)

            def __getitem__(self, i):
                return old(dict(old_ds[i]))

        old_loader = DataLoader(_Old(), batch_size=batch, shuffle=True, num_workers=0, drop_last=True)
        old_rates, new_rates, loader_rates = [], [], []
        for _ in range(rounds):
            old_rates.append(_rate(lambda: old_loader, reads))
            new_rates.append(_rate(lambda: loader, reads, aug))
            loader_rates.append(_rate(lambda: loader, reads))
    channels = int(p.get_parsed_content("in_channels"))
    uint8 = channels * int(torch.tensor(size).prod())
    old_rate, new_rate = statistics.median(old_rates), statistics.median(new_rates)
    return {"build_ms": 1000 * build, "old": old_rate, "new": new_rate, "bytes": per_item, "uint8": uint8,
            "loader": statistics.median(loader_rates),
            "ratios": sorted(n / o for n, o in zip(new_rates, old_rates, strict=True))}


def main(sizes=(28, 64, 224), sizes_3d=(96,), items: int = 64, reads: int = 256, batch: int = 32,
         rounds: int = 3, data_format: str | None = None, data_path: str | None = None,
         cache_quantize: bool = False) -> None:
    """``data_format`` / ``data_path``: the 2D rows read these images instead of the synthetic set (e.g. a MedMNIST
    ``.npz`` at its own size, whose pixels the cache keeps in one byte). ``cache_quantize``: the bundles' config id
    of that name (every image cached in one byte, those resized when read too)."""
    quantize = {"cache_quantize": True} if cache_quantize else {}
    data = {"data_format": data_format, "data_path": os.path.abspath(data_path), **quantize} if data_path else quantize
    torch.set_num_threads(1)
    rows = []
    for s in sizes:
        rows.append((f"2D {s}x{s}", measure(["train.json"], [s, s], items, reads, batch, rounds, data)))
    for s in sizes_3d:
        rows.append((f"3D {s}^3", measure(["train.json", "train_3d.json"], [s, s, s], min(items, 8), min(reads, 32),
                                          2, rounds, quantize)))
    source = f"2D: {data_format} {data_path}" if data_path else "mae_pretrain's synthetic set"
    cache = "memory cache, cache_quantize" if cache_quantize else "memory cache"
    print(f"torch {torch.__version__}, 1 thread, process CPU time; {source}, {cache}; "
          f"median of {rounds} interleaved rounds\n")
    print("| size | cache build, ms/item | cache bytes/item | cache / uint8 | per item (MONAI), images/s per core | "
          "on the batch, images/s per core | on the batch / per item [rounds] | DataLoader part alone | "
          "DataLoader part / per item |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, m in rows:
        lo, hi = m["ratios"][0], m["ratios"][-1]
        print(f"| {name} | {m['build_ms']:.2f} | {m['bytes']:,.0f} | {m['bytes'] / m['uint8']:.1f}x | {m['old']:.0f} | "
              f"{m['new']:.0f} | **{m['new'] / m['old']:.1f}x** [{lo:.1f}-{hi:.1f}] | {m['loader']:.0f} | "
              f"{m['loader'] / m['old']:.1f}x |")
    sys.stdout.flush()


if __name__ == "__main__":
    fire.Fire(main)
