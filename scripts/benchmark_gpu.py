"""GPU-path speed, one table per question; runs on CUDA when present, on the CPU otherwise (then it says so).

    python scripts/benchmark_gpu.py                      # everything below, sizes of the papers (ViT-B/16)
    python scripts/benchmark_gpu.py --parts step,bundle  # a subset: step, bundle, finetune, unetr, ddp
    python scripts/benchmark_gpu.py --compile True       # adds torch.compile arms to the step tables
    python scripts/benchmark_gpu.py --cpu_amp True       # AMP arms on a CPU too (bf16; emulated, slow, on most CPUs)

Parts:
  step      MAE pretraining step (forward + loss + backward + AdamW), ViT-B/16 2D 224x224 and 3D 96^3: medmae vs
            MONAI ``MaskedAutoEncoderViT`` at equal size, with and without AMP (bf16 on CPU, fp16 + GradScaler on
            CUDA) / SDPA / ``torch.compile`` -- ``scripts/benchmark_mae.py``'s interleaved rounds (per-round ratios)
  bundle    mae_pretrain as the bundle runs it (``SupervisedTrainer``, data loading, handlers) vs its own network,
            loss and optimizer stepped on one of its batches (model only): imgs/s over the same iterations, in
            ``--rounds`` interleaved rounds (one trainer epoch each; median ratio and range)
  finetune  MSMAE masked fine-tuning: FLOPs and time of the ViT-B classifier with all tokens vs the kept ones
  unetr     UNETR (the bundle's network, 64^3 window) sliding-window inference over a 128^3 volume, with/without AMP
  ddp       CPU only: mae_pretrain samples/s with 2 torchrun processes of 1 thread vs 1 process of 1 thread, the same
            per-process batch (a compute-bound network: the 2D default at 128x128)

Targets (issue 11; ratios are side by side in one run): pretraining step >= 1.3x MONAI on GPU (>= 1.1x on CPU);
bundle end-to-end >= 0.9x the model-only step; 2-process DDP on CPU >= 1.6x one process's samples/s.
"""

from __future__ import annotations

import itertools
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

import fire
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import benchmark_mae  # noqa: E402
import benchmark_msmae_flops  # noqa: E402

PARTS = ("step", "bundle", "finetune", "unetr", "ddp")


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def part_step(device: str, rounds: int, compile_: bool, presets=("vitb2d", "vitb3d96"), amp: bool = True) -> None:
    arms = ["medmae", "monai", "monai-sdpa"] + (["medmae+amp", "monai-sdpa+amp"] if amp else [])
    if compile_:
        arms += ["medmae+compile", "monai-sdpa+compile"]
    for preset in presets:
        print(f"\n### MAE pretraining step, {preset} (imgs/s; speed-up = arm time / medmae time, per round)\n")
        benchmark_mae.main(preset=preset, device=device, rounds=rounds, steps=1, warmup=1,
                          threads=0 if device.startswith("cuda") else 1, arms=",".join(arms))


def _mae_workflow(root: str, overrides: dict):
    from medmae_ext.bundle.workflow import run_bundle_config

    return run_bundle_config(os.path.join(REPO, "bundles", "mae_pretrain", "configs"), "train.json", "training",
                             bundle_root=root, **overrides)


def part_bundle(device: str, iterations: int, batch: int, img: int, workers: int | None = None,
                rounds: int = 1) -> None:
    """End-to-end trainer imgs/s (epochs after the first: caches filled, no start-up; iterations only, not the
    per-epoch checkpoint) vs the same network, loss and optimizer stepped on one batch of the bundle's own data, and
    the data pipeline alone; ``rounds`` interleaved rounds of the three (one trainer epoch each), so a change in the
    machine's load moves all of them: the ratio is the median of the rounds' ratios, with their range."""
    from ignite.engine import Events

    with tempfile.TemporaryDirectory() as root:
        overrides = dict(epochs=1, epoch_length=iterations, batch_size=batch, img_size=[img, img],
                         picture_interval=1000, warmup_epochs=0, max_items=max(4 * batch, 64))
        if workers is not None:
            overrides["num_workers"] = workers
        stamps: list[float] = []
        wf = _mae_workflow(root, overrides)  # builds everything and runs epoch 1 (warm-up)
        trainer = wf.parser.get_parsed_content("train#trainer")
        trainer.add_event_handler(Events.ITERATION_COMPLETED,
                                  lambda e: (_sync(device), stamps.append(time.perf_counter())))
        net, loss_fn, opt = (wf.parser.get_parsed_content(k) for k in ("network", "loss", "optimizer"))
        prep = wf.parser.get_parsed_content("train#prepare_batch")
        loader = wf.parser.get_parsed_content("train#dataloader")
        augment = wf.parser.get_parsed_content("augmentation")
        dev = wf.parser.get_parsed_content("device")
        amp = bool(wf.parser.get_parsed_content("amp")) and dev.type == "cuda"
        image, target, args, kwargs = prep(next(iter(loader)), dev)
        scaler = torch.amp.GradScaler("cuda") if amp else None

        def step():
            benchmark_mae.training_step(lambda: loss_fn(net(image, *args, **kwargs), target), opt, dev.type, amp,
                                        scaler)

        step()
        _sync(dev)
        e2e, model_only, data_only = [], [], []
        for _ in range(max(1, int(rounds))):
            # one more trainer epoch (ignite continues a finished state to the new max): iteration 1 -> N, N - 1
            # steps with their data loading and per-iteration handlers; the per-epoch checkpoint is not in it
            stamps.clear()
            trainer.state.max_epochs += 1
            trainer.run()
            e2e.append(batch * (iterations - 1) / (stamps[-1] - stamps[0]))
            t0 = time.perf_counter()
            for _ in range(iterations):
                step()
            _sync(dev)
            model_only.append(batch * iterations / (time.perf_counter() - t0))
            t0, n = time.perf_counter(), 0
            for b in itertools.islice(loader, iterations):  # cached items, collate, batch augmentation on the device
                b = augment({k: v.to(dev) if isinstance(v, torch.Tensor) else v for k, v in b.items()})
                _sync(dev)
                n += len(b["image"])
            data_only.append(n / (time.perf_counter() - t0))
    nw = wf.parser.get_parsed_content("num_workers")
    ratios = sorted(a / b for a, b in zip(e2e, model_only, strict=True))
    spread = f" [{ratios[0]:.2f}-{ratios[-1]:.2f}]" if len(ratios) > 1 else ""
    print(f"\n### mae_pretrain bundle end to end vs model only ({img}x{img}, batch {batch}, {iterations} iterations, "
          f"{len(ratios)} interleaved round(s), device {dev}, AMP {'on' if amp else 'off'}, {nw} DataLoader workers)\n")
    print("| path | imgs/s (median) | of model-only |\n| --- | --- | --- |")
    print(f"| model only (network + loss + AdamW on one batch) | {statistics.median(model_only):.1f} | 1 |")
    print(f"| bundle (SupervisedTrainer, data loading, handlers) | {statistics.median(e2e):.1f} | "
          f"{statistics.median(ratios):.2f}x{spread} |")
    print(f"| data pipeline alone (DataLoader + augmentation of the batch on the device) | "
          f"{statistics.median(data_only):.1f} | - |")


def part_unetr(device: str, size: int, repeats: int, amp: bool = True) -> None:
    from monai.bundle import ConfigParser
    from monai.inferers import SlidingWindowInferer

    p = ConfigParser()
    p.read_config(os.path.join(REPO, "bundles", "unetr_segmentation", "configs", "train.json"))
    p["bundle_root"] = "."
    net = p.get_parsed_content("network_def").to(device).eval()
    roi = p.get_parsed_content("roi_size")
    inferer = SlidingWindowInferer(roi, sw_batch_size=p.get_parsed_content("sw_batch_size"),
                                   overlap=p.get_parsed_content("sw_overlap"))
    x = torch.randn(1, 1, size, size, size, device=device)
    dev_type = torch.device(device).type
    rows = []
    dtype = torch.float16 if dev_type == "cuda" else torch.bfloat16
    for use_amp in (False, True) if amp else (False,):
        with torch.no_grad(), torch.autocast(dev_type, dtype=dtype, enabled=use_amp):
            inferer(x, net)
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(repeats):
                inferer(x, net)
            _sync(device)
        rows.append((use_amp, (time.perf_counter() - t0) / repeats))
    print(f"\n### UNETR sliding window over a {size}^3 volume (window {roi}, overlap "
          f"{p.get_parsed_content('sw_overlap')}, device {device})\n")
    print("| precision | seconds / volume |\n| --- | --- |")
    for amp, t in rows:
        print(f"| {'AMP (' + ('fp16' if dev_type == 'cuda' else 'bf16') + ')' if amp else 'fp32'} | {t:.2f} |")


def _ddp_run(nproc: int, root: str, overrides: list[str]) -> float:
    """samples/s of the second epoch of a mae_pretrain run with ``nproc`` processes (global batch / epoch time)."""
    cfg = "['bundles/mae_pretrain/configs/train.json','bundles/mae_pretrain/configs/multi_gpu_train.json']"
    cmd = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
           if nproc > 1 else [sys.executable])
    cmd += ["-m", "monai.bundle", "run", "training", "--config_file",
            cfg if nproc > 1 else "bundles/mae_pretrain/configs/train.json", "--bundle_root", root, *overrides]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    out = r.stdout + r.stderr
    if r.returncode:
        raise RuntimeError(out[-3000:])
    times = [float(h) * 3600 + float(m) * 60 + float(s)
             for h, m, s in re.findall(r"Epoch\[2\] Complete\. Time taken: (\d+):(\d+):([\d.]+)", out)]
    return max(times)  # every rank logs its epoch; the slowest one sets the pace


def part_ddp(iterations: int, batch: int, img: int) -> None:
    if torch.cuda.is_available():
        print("\n(ddp part: CPU-only measurement, skipped on a CUDA machine)")
        return
    overrides = ["--epochs", "2", "--epoch_length", str(iterations), "--batch_size", str(batch), "--img_size",
                 f"[{img},{img}]", "--num_workers", "0", "--num_threads", "1", "--warmup_epochs", "0",
                 "--picture_interval", "1000", "--max_items", str(4 * batch)]
    with tempfile.TemporaryDirectory() as d:
        one = _ddp_run(1, os.path.join(d, "one"), overrides)
        two = _ddp_run(2, os.path.join(d, "two"), overrides)
    s1, s2 = batch * iterations / one, 2 * batch * iterations / two
    print(f"\n### 2-process DDP on the CPU (gloo), mae_pretrain {img}x{img}, batch {batch} per process, "
          f"1 thread per process, {iterations} iterations (epoch 2)\n")
    print("| processes | samples/s | scaling |\n| --- | --- | --- |")
    print(f"| 1 | {s1:.1f} | 1 |")
    print(f"| 2 (torchrun, multi_gpu_train.json) | {s2:.1f} | {s2 / s1:.2f}x |")


def main(parts: str | tuple = PARTS, device: str | None = None, rounds: int = 3, compile: bool = False,
         step_presets: str | tuple = ("vitb2d", "vitb3d96"),
         bundle_iterations: int = 20, bundle_batch: int = 32, bundle_img: int = 64, unetr_size: int = 128,
         unetr_repeats: int = 2, ddp_iterations: int = 10, ddp_batch: int = 16, ddp_img: int = 128,
         bundle_workers: int | None = None, finetune_batch: int = 8, cpu_amp: bool = False) -> None:
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    amp = device.startswith("cuda") or cpu_amp  # bf16 autocast on a CPU without bf16 units is emulated: 14-140x slower
    parts = [p.strip() for p in (parts.split(",") if isinstance(parts, str) else parts)]
    unknown = set(parts) - set(PARTS)
    if unknown:
        raise ValueError(f"--parts: unknown {sorted(unknown)}; choose from {PARTS}")
    name = torch.cuda.get_device_name() if device.startswith("cuda") else f"CPU ({os.cpu_count()} cores)"
    print(f"device: {name}; torch {torch.__version__}"
          + ("" if device.startswith("cuda") else " -- no GPU here: CPU figures, GPU targets not measurable"))
    if "step" in parts:
        part_step(device, rounds, compile,
                  [p.strip() for p in (step_presets.split(",") if isinstance(step_presets, str) else step_presets)], amp)
    if "bundle" in parts:
        part_bundle(device, bundle_iterations, bundle_batch, bundle_img, bundle_workers, rounds)
    if "finetune" in parts:
        print("\n### MSMAE masked fine-tuning vs all tokens (ViT-B/16 classifier, 224x224)\n")
        benchmark_msmae_flops.main(batch=finetune_batch, device=device)
    if "unetr" in parts:
        part_unetr(device, unetr_size, unetr_repeats, amp)
    if "ddp" in parts:
        part_ddp(ddp_iterations, ddp_batch, ddp_img)


if __name__ == "__main__":
    fire.Fire(main)
