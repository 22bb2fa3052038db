"""Throughput of medmae's MaskedAutoencoder vs MONAI's MaskedAutoEncoderViT at the same size.

Times one training step (forward + masked-patch loss + backward + AdamW step) on random data and prints a table.

    python scripts/benchmark_mae.py                       # the mae_pretrain default (2D, 64x64, tiny ViT)
    python scripts/benchmark_mae.py --preset vitb2d       # ViT-B/16 at 224x224
    python scripts/benchmark_mae.py --preset tiny3d       # the 3D default (64^3, patch 16)
"""

from __future__ import annotations

import time

import fire
import torch
from monai.networks.nets import MaskedAutoEncoderViT

from medmae_ext.losses import MaskedPatchMSELoss
from medmae_ext.networks import MaskedAutoencoder

PRESETS = {
    "tiny2d": dict(spatial_dims=2, img=64, patch=8, hidden=192, mlp=768, layers=6, heads=3,
                   dec=128, dec_mlp=512, dec_layers=2, dec_heads=4, batch=32),
    "tiny3d": dict(spatial_dims=3, img=64, patch=16, hidden=96, mlp=384, layers=12, heads=4,
                   dec=48, dec_mlp=192, dec_layers=2, dec_heads=4, batch=4),
    "vitb2d": dict(spatial_dims=2, img=224, patch=16, hidden=768, mlp=3072, layers=12, heads=12,
                   dec=384, dec_mlp=1536, dec_layers=8, dec_heads=12, batch=8),
}


def build(impl: str, p: dict):
    common = dict(in_channels=1, img_size=p["img"], patch_size=p["patch"], spatial_dims=p["spatial_dims"],
                  hidden_size=p["hidden"], mlp_dim=p["mlp"], num_layers=p["layers"], num_heads=p["heads"],
                  decoder_hidden_size=p["dec"], decoder_mlp_dim=p["dec_mlp"], decoder_num_layers=p["dec_layers"],
                  decoder_num_heads=p["dec_heads"], qkv_bias=True)
    if impl == "medmae":
        return MaskedAutoencoder(**common)
    return MaskedAutoEncoderViT(**common, masking_ratio=0.75)


def time_steps(impl: str, p: dict, device: str, steps: int, warmup: int) -> tuple[float, float]:
    torch.manual_seed(0)
    net = build(impl, p).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    shape = (p["batch"], 1) + (p["img"],) * p["spatial_dims"]
    x = torch.randn(shape, device=device)
    loss_fn = MaskedPatchMSELoss((p["patch"],) * p["spatial_dims"])
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()

    def step():
        if impl == "medmae":
            out = net(x)
            pred, mask = out["pred"], out["mask"]
        else:
            pred, mask = net(x)
        loss = loss_fn(pred, x, mask.float())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / steps
    mem = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else float("nan")
    return p["batch"] / dt, mem


def main(preset: str = "tiny2d", device: str | None = None, steps: int = 10, warmup: int = 2, threads: int = 0):
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if threads:
        torch.set_num_threads(threads)
    p = PRESETS[preset]
    print(f"preset {preset}: {p}; device {device}, torch threads {torch.get_num_threads()}, {steps} timed steps")
    print("| implementation | imgs/s (train step) | peak GPU MiB |")
    print("| --- | --- | --- |")
    for impl in ("medmae", "monai"):
        ips, mem = time_steps(impl, p, device, steps, warmup)
        print(f"| {'medmae MaskedAutoencoder' if impl == 'medmae' else 'MONAI MaskedAutoEncoderViT'} | {ips:.1f} | {mem:.0f} |")


if __name__ == "__main__":
    fire.Fire(main)
