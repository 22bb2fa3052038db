"""MAE training-step speed: medmae vs the pre-rewrite medmae step vs MONAI's MaskedAutoEncoderViT, interleaved.

One training step = forward + masked-patch loss (norm-pix) + backward + AdamW step, on random data, at equal size.
The arms run in interleaved rounds (A B C A B C ...) in one process and each round's time of an arm is divided by
medmae's time in the same round, so a machine that gets slower or busier during the run still gives a fair ratio;
the table shows the median and the range of those per-round ratios. On the CPU the clock is the process CPU time
(default 1 torch thread), on CUDA the wall time between synchronisations.

Arms:
  medmae          ``MaskedAutoencoder`` as the bundles run it (visible-only embedding, masked-only prediction and
                  loss, SDPA attention) with ``AdamW(fused=True)``
  medmae-before   the same network and weights computed the way medmae did before (``tests/reference_mae.py``:
                  conv over all patches, explicit attention with the last block's matrix kept, dense scatter /
                  prediction / loss) with the default (foreach) AdamW, as the bundles had it
  monai           ``monai.networks.nets.MaskedAutoEncoderViT`` as MONAI ships it, ``AdamW(fused=True)``
  monai-sdpa      the same MONAI network with SDPA switched on in its blocks (what SDPA alone buys)
  medmae-foreach  (only with --arms) medmae with the for-each AdamW instead of the fused one
  <arm>+amp       (only with --arms) the arm under autocast: bf16 on CPU, fp16 on CUDA with a GradScaler
  <arm>+compile   (only with --arms) the arm's network through ``torch.compile`` (compiled before timing)

MFU = the arm's model FLOPs per step (counted with ``torch.utils.flop_counter`` on the explicit-attention path, so
attention is counted) / time per step / the FLOP/s of a 1024x1024 fp32 matmul timed in the same round, on the same
threads and clock (median over rounds).

    python scripts/benchmark_mae.py                       # the mae_pretrain 2D default (64x64, patch 8, 192x6)
    python scripts/benchmark_mae.py --preset tiny3d       # the 3D default (64^3, patch 16, 96x12)
    python scripts/benchmark_mae.py --preset tiny3d96     # the 3D default network at 96^3
    python scripts/benchmark_mae.py --preset vitb2d       # ViT-B/16 at 224x224
    python scripts/benchmark_mae.py --preset tiny2d --rounds 3 --steps 1 --arms medmae,monai   # quick look
    python scripts/benchmark_mae.py --preset tiny3d --arms medmae,medmae-foreach              # fused AdamW
"""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import time

import fire
import torch
from monai.networks.nets import MaskedAutoEncoderViT
from torch.utils.flop_counter import FlopCounterMode

from medmae_ext.training.losses import MAELoss, MaskedPatchMSELoss
from medmae_ext.networks import MaskedAutoencoder

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
import reference_mae  # noqa: E402  (the pre-rewrite step, kept as the test reference)

PRESETS = {
    "tiny2d": dict(spatial_dims=2, img=64, patch=8, hidden=192, mlp=768, layers=6, heads=3,
                   dec=128, dec_mlp=512, dec_layers=2, dec_heads=4, batch=32),
    "tiny3d": dict(spatial_dims=3, img=64, patch=16, hidden=96, mlp=384, layers=12, heads=4,
                   dec=48, dec_mlp=192, dec_layers=2, dec_heads=4, batch=4),
    "tiny3d96": dict(spatial_dims=3, img=96, patch=16, hidden=96, mlp=384, layers=12, heads=4,
                     dec=48, dec_mlp=192, dec_layers=2, dec_heads=4, batch=2),
    "vitb2d": dict(spatial_dims=2, img=224, patch=16, hidden=768, mlp=3072, layers=12, heads=12,
                   dec=384, dec_mlp=1536, dec_layers=8, dec_heads=12, batch=8),
    "vitb3d96": dict(spatial_dims=3, img=96, patch=16, hidden=768, mlp=3072, layers=12, heads=12,
                     dec=384, dec_mlp=1536, dec_layers=8, dec_heads=12, batch=2),
}
ARMS = ("medmae", "medmae-before", "monai", "monai-sdpa")
EXTRA_ARMS = ("medmae-foreach",)  # on request (--arms): what fused AdamW buys


def _common(p: dict) -> dict:
    return dict(in_channels=1, img_size=p["img"], patch_size=p["patch"], spatial_dims=p["spatial_dims"],
                hidden_size=p["hidden"], mlp_dim=p["mlp"], num_layers=p["layers"], num_heads=p["heads"],
                decoder_hidden_size=p["dec"], decoder_mlp_dim=p["dec_mlp"], decoder_num_layers=p["dec_layers"],
                decoder_num_heads=p["dec_heads"], qkv_bias=True)


def _attention_blocks(net: torch.nn.Module) -> list[torch.nn.Module]:
    """MONAI's self-attention blocks (``SABlock``) inside ``net``."""
    return [m for m in net.modules() if hasattr(m, "use_flash_attention") and hasattr(m, "save_attn")]


def set_sdpa(net: torch.nn.Module, on: bool) -> None:
    """Switch MONAI's attention blocks in ``net`` between SDPA and the explicit softmax path."""
    for m in _attention_blocks(net):
        m.use_flash_attention = on


@contextlib.contextmanager
def explicit_attention(net: torch.nn.Module):
    """Run ``net``'s attention on the explicit path inside the block, restoring each block's setting after. torch's
    FLOP counter does not see the CPU SDPA kernel; the arithmetic is the same, so FLOPs are counted this way."""
    saved = [(m, m.use_flash_attention) for m in _attention_blocks(net)]
    try:
        set_sdpa(net, False)
        yield net
    finally:
        for m, flag in saved:
            m.use_flash_attention = flag


def training_step(compute_loss, opt, device_type: str, amp: bool = False, scaler=None) -> None:
    """One optimizer step on ``compute_loss()``: under autocast when ``amp`` (fp16 on CUDA, bf16 elsewhere), through
    ``scaler`` (a CUDA ``GradScaler``) when given."""
    with torch.autocast(device_type, dtype=torch.float16 if device_type == "cuda" else torch.bfloat16, enabled=amp):
        loss = compute_loss()
    opt.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    else:
        loss.backward()
        opt.step()


class Arm:
    """One implementation: its network, optimizer and a ``step()`` closure over a fixed random batch."""

    def __init__(self, spec: str, p: dict, device: str, fused: bool) -> None:
        torch.manual_seed(0)
        self.name = spec
        name, *mods = spec.split("+")
        self.amp, self.compiled = "amp" in mods, "compile" in mods
        self.device_type = torch.device(device).type
        self.scaler = torch.amp.GradScaler(self.device_type) if self.amp and self.device_type == "cuda" else None
        patch = (p["patch"],) * p["spatial_dims"]
        self.x = torch.randn((p["batch"], 1) + (p["img"],) * p["spatial_dims"], device=device)
        if name.startswith("medmae"):
            self.net = MaskedAutoencoder(**_common(p)).to(device)
        else:
            self.net = MaskedAutoEncoderViT(**_common(p), masking_ratio=0.75).to(device)
            set_sdpa(self.net, name == "monai-sdpa")
        self.opt = torch.optim.AdamW(self.net.parameters(), lr=1e-4,
                                     fused=fused and name not in ("medmae-before", "medmae-foreach"))
        mae_loss, dense_loss = MAELoss(patch), MaskedPatchMSELoss(patch)
        net, x = (torch.compile(self.net) if self.compiled else self.net), self.x

        if name in ("medmae", "medmae-foreach"):
            def loss():
                return mae_loss(net(x), x)
        elif name == "medmae-before":
            def loss():
                out = reference_mae.mae_forward(net, x, net.masking(x.shape[0], net.num_patches, x.device))
                return reference_mae.masked_mse(out["pred"], x, out["mask"], patch)
        else:
            def loss():
                pred, mask = net(x)
                return dense_loss(pred, x, mask.float())
        self.loss = loss

    def step(self) -> None:
        training_step(self.loss, self.opt, self.device_type, self.amp, self.scaler)

    def flops(self) -> int:
        """Forward + backward FLOPs of one step, attention counted on the explicit path (0 for a compiled arm)."""
        if self.compiled:
            return 0
        with explicit_attention(self.net), FlopCounterMode(display=False) as counter:
            self.loss().backward()
        self.net.zero_grad(set_to_none=True)
        return counter.get_total_flops()


def _clock(device: str) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        return time.perf_counter()
    return time.process_time()


class MatmulPeak:
    """FLOP/s of an n x n fp32 matmul on this device, threads and clock; timed in every round beside the arms, so
    that MFU compares a step with the peak of the same moment (a shared machine's speed drifts)."""

    def __init__(self, device: str, n: int = 1024) -> None:
        self.a, self.b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
        self.flops = 2 * n**3
        self.device = device
        self.a @ self.b

    def measure(self, reps: int = 3) -> float:
        best = 0.0
        for _ in range(reps):
            t0 = _clock(self.device)
            for _ in range(2):
                self.a @ self.b
            best = max(best, 2 * self.flops / max(_clock(self.device) - t0, 1e-9))
        return best


def main(preset: str = "tiny2d", device: str | None = None, rounds: int = 7, steps: int = 3, warmup: int = 2,
         threads: int = 1, arms: str | tuple = ARMS, fused: bool = True) -> None:
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if threads:
        torch.set_num_threads(threads)
    arms = [a.strip() for a in (arms.split(",") if isinstance(arms, str) else arms)]
    unknown = {a.split("+")[0] for a in arms} - set(ARMS) - set(EXTRA_ARMS)
    unknown |= {m for a in arms for m in a.split("+")[1:]} - {"amp", "compile"}
    if unknown or "medmae" not in arms:
        raise ValueError(f"--arms must include 'medmae' and name only {ARMS + EXTRA_ARMS}, each optionally with "
                         f"+amp and/or +compile; got {arms}")
    p = PRESETS[preset]
    runners, failed = [], {}
    for a in arms:
        try:
            r = Arm(a, p, device, fused)
            r.step()  # an arm that cannot run (e.g. MONAI's MAE under autocast) is reported, not timed
            runners.append(r)
        except RuntimeError as e:
            failed[a] = str(e).splitlines()[0][:120]
    peak = MatmulPeak(device)
    flops = {r.name: r.flops() for r in runners}
    memory: dict[str, float | None] = {}
    for r in runners:
        if device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        for _ in range(warmup):
            r.step()
        memory[r.name] = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else None
    times: dict[str, list[float]] = {r.name: [] for r in runners}
    peaks: list[float] = []
    for i in range(rounds):
        peaks.append(peak.measure())
        order = runners if i % 2 == 0 else runners[::-1]  # alternate the order: no arm always runs first
        for r in order:
            t0 = _clock(device)
            for _ in range(steps):
                r.step()
            times[r.name].append((_clock(device) - t0) / steps)
    clock = "wall time" if device.startswith("cuda") else "process CPU time"
    print(f"preset {preset}: {p}")
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} thread(s), {clock}; "
          f"{rounds} interleaved rounds x {steps} steps after {warmup} warm-up; matmul peak per round "
          f"{min(peaks) / 1e9:.1f}-{max(peaks) / 1e9:.1f} GFLOP/s")
    print("| arm | imgs/s (median) | medmae speed-up, median [min-max] of per-round ratios | GFLOP/step | "
          "MFU, median of rounds | peak GPU memory |")
    print("| --- | --- | --- | --- | --- | --- |")
    base = times["medmae"]
    for r in runners:
        t = times[r.name]
        ratios = [a / b for a, b in zip(t, base)]
        med = statistics.median(t)
        speed = "1 (reference)" if r.name == "medmae" else (
            f"{statistics.median(ratios):.2f}x [{min(ratios):.2f}-{max(ratios):.2f}]")
        mfu = statistics.median(flops[r.name] / dt / pk for dt, pk in zip(t, peaks)) if flops[r.name] else None
        mem = memory[r.name]
        print(f"| {r.name} | {p['batch'] / med:.1f} | {speed} | "
              + (f"{flops[r.name] / 1e9:.2f} | {mfu:.0%}" if mfu is not None else "- | -")
              + f" | {f'{mem:.0f} MiB' if mem is not None else '- (CUDA only)'} |")
    for name, why in failed.items():
        print(f"| {name} | fails: {why} | - | - | - | - |")


if __name__ == "__main__":
    fire.Fire(main)
