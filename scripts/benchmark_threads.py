"""Why the bundles have a ``num_threads`` knob: the MAE step's wall time per torch thread count, on an idle machine
and with ``busy`` other processes each keeping one core busy (a shared CI runner, a second job, a server).

    python scripts/benchmark_threads.py                      # 3D default preset, 1 busy process
    python scripts/benchmark_threads.py --preset tiny2d --busy 1 --steps 3
"""

from __future__ import annotations

import multiprocessing as mp
import os
import statistics
import sys
import time

import fire
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchmark_mae import PRESETS, Arm  # noqa: E402


def _spin(stop) -> None:
    x = 0
    while not stop.is_set():
        for _ in range(10000):
            x += 1


def _time(arm: Arm, steps: int, rounds: int) -> float:
    arm.step()
    per_round = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(steps):
            arm.step()
        per_round.append((time.perf_counter() - t0) / steps)
    return statistics.median(per_round)


def main(preset: str = "tiny3d", busy: int = 1, steps: int = 2, rounds: int = 3, max_threads: int = 0):
    cores = os.cpu_count() or 1
    counts = list(range(1, (max_threads or cores) + 1))
    arm = Arm("medmae", PRESETS[preset], "cpu", fused=True)
    rows = []
    for load in (0, busy):
        stop = mp.Event()
        procs = [mp.Process(target=_spin, args=(stop,), daemon=True) for _ in range(load)]
        for p in procs:
            p.start()
        try:
            for n in counts:
                torch.set_num_threads(n)
                rows.append((load, n, _time(arm, steps, rounds)))
        finally:
            stop.set()
            for p in procs:
                p.join()
    print(f"preset {preset}, {cores} cores, wall time per training step (median of {rounds} rounds x {steps} steps)")
    print("| other busy processes | torch threads | s/step | vs 1 thread, same load |")
    print("| --- | --- | --- | --- |")
    for load, n, t in rows:
        one = next(t1 for l1, n1, t1 in rows if l1 == load and n1 == 1)
        print(f"| {load} | {n} | {t:.3f} | {t / one:.2f}x |")


if __name__ == "__main__":
    fire.Fire(main)
