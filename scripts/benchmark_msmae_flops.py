"""MSMAE masked fine-tuning: FLOPs and time of the classifier's forward pass with all tokens vs the 25% it keeps.

    python scripts/benchmark_msmae_flops.py                     # ViT-B/16 at 224x224, the paper's setting
    python scripts/benchmark_msmae_flops.py --batch 32 --device cuda

FLOPs come from torch.utils.flop_counter (matmuls, convolutions, attention; 1 multiply-add = 2 FLOPs), counted on
the explicit-attention path (the counter does not see the CPU SDPA kernel; the arithmetic is the same). The paper
quotes multiply-adds ("16.86 G -> 4.36 G"), i.e. half these numbers. Masked fine-tuning embeds only the kept
patches; masked and thrown patches cost nothing.
"""

from __future__ import annotations

import os
import sys
import time

import fire
import torch
from torch.utils.flop_counter import FlopCounterMode

from medmae_ext.networks.masking import AttentionMasking
from medmae_ext.networks import ViTClassifier

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchmark_mae import explicit_attention  # noqa: E402


def count_flops(net, x, keep=None) -> int:
    with explicit_attention(net), FlopCounterMode(display=False) as counter:
        net(x, keep)
    return counter.get_total_flops()


def time_forward(net, x, keep, steps: int, device: str) -> float:
    with torch.no_grad():
        for _ in range(2):
            net(x, keep)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(steps):
            net(x, keep)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps * 1000


def main(img_size: int = 224, patch: int = 16, num_classes: int = 5, batch: int = 8, steps: int = 5,
         device: str | None = None, mask_ratio: float = 0.45, throw_ratio: float = 0.30):
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    net = ViTClassifier(num_classes, 3, img_size, patch).to(device).eval()  # ViT-B/16 defaults
    n = net.encoder.num_patches
    x1 = torch.randn(1, 3, img_size, img_size, device=device)
    plan = AttentionMasking(mask_ratio, throw_ratio)(1, n, device, torch.rand(1, n, device=device))
    full = count_flops(net, x1)
    masked = count_flops(net, x1, plan.visible)
    xb = torch.randn(batch, 3, img_size, img_size, device=device)
    planb = AttentionMasking(mask_ratio, throw_ratio)(batch, n, device, torch.rand(batch, n, device=device))
    t_full = time_forward(net, xb, None, steps, device)
    t_masked = time_forward(net, xb, planb.visible, steps, device)
    print(f"ViT-B/{patch} classifier at {img_size}x{img_size}, {n} patches; masked fine-tuning keeps "
          f"{plan.visible.shape[1]} (+CLS); device {device}, batch {batch} for timing")
    print("| forward pass | tokens | GFLOPs / image | GMACs / image | ms / batch |")
    print("| --- | --- | --- | --- | --- |")
    print(f"| all tokens (evaluation, inference) | {n + 1} | {full / 1e9:.2f} | {full / 2e9:.2f} | {t_full:.1f} |")
    print(f"| MSMAE masked fine-tuning | {plan.visible.shape[1] + 1} | {masked / 1e9:.2f} | {masked / 2e9:.2f} | "
          f"{t_masked:.1f} |")
    print(f"| reduction | | {1 - masked / full:.1%} | {1 - masked / full:.1%} | {1 - t_masked / t_full:.1%} |")


if __name__ == "__main__":
    fire.Fire(main)
