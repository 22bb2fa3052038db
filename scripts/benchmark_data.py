"""The data path of mae_pretrain on its own, per CPU core: what a GPU would wait for.

    python scripts/benchmark_data.py                          # 2D 28, 64, 224 px and 3D 96^3
    python scripts/benchmark_data.py --sizes "[28]" --sizes_3d "[]" --items 32   # quick

For each training size, the bundle's own ``train#dataset`` (its synthetic set, memory cache) is built in one
thread, then read item by item as the DataLoader does (``num_workers`` 0). Reported per size:

* cache build, ms per item: the deterministic transforms (load, orientation / spacing, intensity, resize);
* random transforms, images/s on one core: what each epoch costs per item after the cache is full (crop, flips);
* cache bytes per item, against the image as uint8 at training size (issue 28's target: <= 1.1x).

Process CPU time, not wall time, so a busy machine does not change the figures much.
"""

from __future__ import annotations

import os
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


def measure(config: list[str], size: list[int], items: int, reads: int) -> dict:
    from monai.bundle import ConfigParser

    p = ConfigParser()
    p.read_config([os.path.join(REPO, "bundles", "mae_pretrain", "configs", c) for c in config])
    with tempfile.TemporaryDirectory() as root:
        p["bundle_root"] = root
        p["img_size"], p["max_items"], p["num_workers"] = size, items, 0
        p.parse()
        data = p.get_parsed_content("train#datalist").data  # writes the synthetic set: not timed
        t0 = time.process_time()
        ds = p.get_parsed_content("train#dataset")
        build = (time.process_time() - t0) / len(data)
        cached = getattr(ds, "_cache", None) or []
        per_item = sum(_nbytes(c) for c in cached) / max(1, len(cached))
        t0, n = time.process_time(), 0
        while n < reads:
            for i in range(len(ds)):
                ds[i]
                n += 1
        rate = n / (time.process_time() - t0)
    channels = int(p.get_parsed_content("in_channels"))
    uint8 = channels * int(torch.tensor(size).prod())
    return {"build_ms": 1000 * build, "rate": rate, "bytes": per_item, "uint8": uint8}


def main(sizes=(28, 64, 224), sizes_3d=(96,), items: int = 64, reads: int = 256) -> None:
    torch.set_num_threads(1)
    rows = []
    for s in sizes:
        rows.append((f"2D {s}x{s}", measure(["train.json"], [s, s], items, reads)))
    for s in sizes_3d:
        rows.append((f"3D {s}^3", measure(["train.json", "train_3d.json"], [s, s, s], min(items, 8), min(reads, 32))))
    print(f"torch {torch.__version__}, 1 thread, process CPU time; mae_pretrain's synthetic set, memory cache\n")
    print("| size | cache build, ms/item | random transforms, images/s per core | cache bytes/item | uint8 image | "
          "cache / uint8 |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, m in rows:
        print(f"| {name} | {m['build_ms']:.2f} | {m['rate']:.0f} | {m['bytes']:,.0f} | {m['uint8']:,} | "
              f"{m['bytes'] / m['uint8']:.1f}x |")
    sys.stdout.flush()


if __name__ == "__main__":
    fire.Fire(main)
