"""Resident memory of the training data path on a large 2D set (issue 28: a 20k-item 224 px set within 1.2 GB).

    python scripts/benchmark_memory.py                                   # 20,000 items at 224 px, memory and disk
    python scripts/benchmark_memory.py --items 2000 --size 64 --caches "['memory']"   # quick
    python scripts/benchmark_memory.py --source png          # the same images as PNG files (a folder, --data_format images)
    python scripts/benchmark_memory.py --source png --caches "['mapped', 'mapped']"   # built once, then mapped

A MedMNIST-style ``.npz`` of ``items`` uint8 images at ``size`` px (stored at the training size, as ChestX-ray14
prepared at 224 px would be) is written to a temporary folder; with ``--source png`` the same images are written as
PNG files instead (``--data_format images``: the datalist holds file names, the cache holds the pixels). For each
cache kind, a fresh process builds mae_pretrain's own ``train#dataset`` and ``train#dataloader`` on it
(``--data_format medmnist`` or ``images``), reads one epoch
with the batch augmentation applied (on the CPU, as ``AugmentOnDevice`` applies it on the training device) and reports
its resident set size (``VmRSS``, ``VmHWM`` of ``/proc/self/status``) after the imports, after the datalist is read,
after the cache is built and after the epoch. The growth is counted from after the imports (torch and MONAI
themselves take ~0.5 GB in any run), with the part of it that is file pages (``RssFile``: a mapped cache's file,
which the kernel shares between processes and can evict), and the wall time until the cache is ready. A kind named
twice runs twice on the same ``cache_dir``: the second run of ``mapped`` maps the file the first one built. Linux
only.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

import fire
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _status(key: str) -> int:
    """Bytes of ``key`` (``VmRSS``, ``VmHWM``) of this process."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def write_npz(path: str, items: int, size: int, seed: int = 0) -> None:
    """``items`` training images (smooth shapes plus noise, uint8, full range) and 64 validation ones."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    base = (127 * (1 + np.sin(6 * xx) * np.cos(4 * yy))).astype(np.int16)
    images = np.empty((items, size, size), np.uint8)
    for start in range(0, items, 1000):
        n = min(1000, items - start)
        noise = rng.integers(-60, 60, (n, size, size), dtype=np.int16)
        images[start : start + n] = np.clip(base + noise, 0, 255)
    labels = rng.integers(0, 2, (items, 1)).astype(np.uint8)
    np.savez(path, train_images=images, train_labels=labels, val_images=images[:64], val_labels=labels[:64])


def write_pngs(npz: str, folder: str) -> None:
    from PIL import Image

    os.makedirs(folder)
    with np.load(npz) as f:
        for i, image in enumerate(f["train_images"]):
            Image.fromarray(image).save(os.path.join(folder, f"{i:06d}.png"), compress_level=1)


def child(data_path: str, size: int, cache: str, cache_dir: str, batch: int, data_format: str = "medmnist") -> dict:
    import torch
    from monai.bundle import ConfigParser

    torch.set_num_threads(1)
    out = {"imports": _status("VmRSS"), "imports_file": _status("RssFile")}
    p = ConfigParser()
    p.read_config([os.path.join(REPO, "bundles", "mae_pretrain", "configs", "train.json")])
    p["bundle_root"] = cache_dir
    p["data_format"], p["data_path"] = data_format, data_path
    p["img_size"], p["patch_size"] = [size, size], [16, 16] if size % 16 == 0 else [4, 4]
    p["num_workers"], p["batch_size"], p["dataset_cache"], p["cache_dir"] = 0, batch, cache, cache_dir
    p.parse()
    data = p.get_parsed_content("train#datalist").data
    out["items"] = len(data)
    out["datalist"] = _status("VmRSS")
    t0 = time.perf_counter()
    p.get_parsed_content("train#dataset")
    out["ready_s"] = time.perf_counter() - t0
    out["cache"] = _status("VmRSS")
    loader = p.get_parsed_content("train#dataloader")
    aug = p.get_parsed_content("augmentation")
    seen = 0
    for b in loader:
        seen += len(aug(b, inplace=True)["image"])
    out["read"] = seen
    out["epoch"] = _status("VmRSS")
    out["epoch_file"] = _status("RssFile")
    out["peak"] = _status("VmHWM")
    return out


def main(items: int = 20000, size: int = 224, caches=("memory", "disk"), batch: int = 32, source: str = "npz",
         _child: str = "") -> None:
    if _child:  # the measured process
        args = json.loads(_child) if isinstance(_child, str) else dict(_child)
        print(json.dumps(child(**args)), flush=True)
        return
    mib = 1 << 20
    with tempfile.TemporaryDirectory() as tmp:
        npz = os.path.join(tmp, "set.npz")
        write_npz(npz, int(items), int(size))
        data, data_format = npz, "medmnist"
        if source == "png":
            data, data_format = os.path.join(tmp, "png"), "images"
            write_pngs(npz, data)
        elif source != "npz":
            raise SystemExit(f"--source: 'npz' or 'png', got {source!r}")
        rows = []
        for i, cache in enumerate(caches):
            args = {"data_path": data, "size": int(size), "cache": cache, "cache_dir": os.path.join(tmp, cache),
                    "batch": int(batch), "data_format": data_format}
            done = subprocess.run([sys.executable, os.path.abspath(__file__), "--_child", json.dumps(args)],
                                  capture_output=True, text=True, cwd=REPO)
            if done.returncode:
                raise SystemExit(f"{cache}: the measured process failed:\n{done.stderr[-3000:]}")
            rows.append((f"{cache}, again" if cache in caches[:i] else cache,
                         json.loads(done.stdout.strip().splitlines()[-1])))
    uint8 = items * size * size
    kind = "PNG files in a folder" if source == "png" else "a .npz"
    print(f"{items:,} training images at {size}x{size} px, uint8 in {kind} ({uint8 / mib:,.0f} MiB of pixels); "
          f"mae_pretrain's train#dataset / train#dataloader, one epoch with the batch augmentation on the CPU; "
          f"growth from after the imports\n")
    print("| cache | after imports, MiB | + datalist, MiB | + cache built, MiB | + one epoch, MiB | growth, MiB | "
          "of it file pages, MiB | peak growth, MiB | growth / uint8 pixels | cache ready, s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, m in rows:
        base = m["imports"]
        print(f"| {name} | {base / mib:,.0f} | {(m['datalist'] - base) / mib:+,.0f} | "
              f"{(m['cache'] - m['datalist']) / mib:+,.0f} | {(m['epoch'] - m['cache']) / mib:+,.0f} | "
              f"**{(m['epoch'] - base) / mib:,.0f}** | {(m['epoch_file'] - m['imports_file']) / mib:,.0f} | "
              f"{(m['peak'] - base) / mib:,.0f} | {(m['epoch'] - base) / uint8:.2f}x | {m['ready_s']:.1f} |")
    sys.stdout.flush()


if __name__ == "__main__":
    fire.Fire(main)
