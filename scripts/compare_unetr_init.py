"""UNETR from the MAE-pretrained 3D encoder vs from scratch, same steps and seeds, on the synthetic CT set.

    python scripts/compare_unetr_init.py                       # pretrains mae_pretrain/train_3d.json first
    python scripts/compare_unetr_init.py --seeds "[0,1,2]" --epochs 25

Every fine-tuning run is bundles/unetr_segmentation/configs/train.json with the same overrides for both arms
(``feature_size``, ``epochs``, ``seed``, ``batch_size``, ``num_samples``); the arms differ only in
``pretrained_ckpt``. One 64^3 crop per step by default: the synthetic volumes are 64^3, so a second crop of the same
volume would be the same voxels (CPU time halved, same information). Dice per organ is from evaluate.json on the
validation split (full volumes, sliding window) with the best checkpoint of each run (``metrics.json`` of its
``SegmentationReport``; the evaluation reads sizes and organs from the run record). Layer-wise lr decay applies to
the MAE arm only (a random encoder trains every layer at the full rate).
"""

from __future__ import annotations

import json
import os
import statistics
import time

import fire

from medmae_ext.data import ORGANS_3D
from medmae_ext.bundle.workflow import run_bundle_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ORGANS = [ORGANS_3D[k] for k in sorted(ORGANS_3D) if k]


def cfg(bundle: str) -> str:
    return os.path.join(REPO, "bundles", bundle, "configs")


def per_organ_dice(metrics_json: str) -> list[float]:
    """Mean Dice per organ (background excluded) from evaluate.json's ``metrics.json``."""
    with open(metrics_json) as f:
        per_organ = json.load(f)["dice_per_organ"]
    return [per_organ[o] for o in ORGANS]


def main(work_dir: str = "runs/unetr", epochs: int = 50, feature_size: int = 8, seeds=(0, 1), batch_size: int = 1,
         num_samples: int = 1, pretrain_epochs: int | None = 500):
    data = os.path.join(work_dir, "data")
    pre = {"epochs": pretrain_epochs} if pretrain_epochs else {}
    t0 = time.time()
    run_bundle_config(cfg("mae_pretrain"), "train_3d.json", bundle_root=os.path.join(work_dir, "mae"),
                      dataset_dir=data, resume=False, **pre)
    print(f"mae_pretrain 3D: {time.time() - t0:.0f} s")
    ckpt = os.path.join(work_dir, "mae", "models", "3d", "model.pt")
    arms = {"scratch": "scratch", "MAE self-pretrained": ckpt}
    results: dict[str, list[tuple[float, list[float], float]]] = {name: [] for name in arms}
    steps = 0
    for seed in seeds:
        for name, init in arms.items():
            root = os.path.join(work_dir, f"{name.split()[0].lower()}_seed{seed}")
            common = dict(bundle_root=root, dataset_dir=data)
            t0 = time.time()
            wf = run_bundle_config(cfg("unetr_segmentation"), "train.json", pretrained_ckpt=init, epochs=epochs,
                                   seed=seed, batch_size=batch_size, num_samples=num_samples, resume=False,
                                   feature_size=feature_size, **common)
            t = time.time() - t0
            steps = wf.parser.get_parsed_content("train#trainer").state.iteration
            best = wf.parser.get_parsed_content("validate#evaluator").state.best_metric
            run_bundle_config(cfg("unetr_segmentation"), "evaluate.json", "evaluating", **common)
            organs = per_organ_dice(os.path.join(root, "eval", "validation", "metrics.json"))
            results[name].append((best, organs, t))
            print(f"seed {seed} {name}: best validation mean Dice {best:.3f} "
                  f"({', '.join(f'{o} {d:.3f}' for o, d in zip(ORGANS, organs))}), {t:.0f} s", flush=True)

    print(f"\nunetr_segmentation, {steps} steps (feature_size {feature_size}), seeds {list(seeds)}, validation split;"
          " best mean Dice per seed, then the mean over seeds per organ:")
    print("| encoder initialisation | " + " | ".join(f"seed {s}" for s in seeds) + " | mean | "
          + " | ".join(ORGANS) + " | train time / run |")
    print("| --- " * (len(seeds) + len(ORGANS) + 3) + "|")
    for name, runs in results.items():
        bests = [r[0] for r in runs]
        organs = [statistics.mean(r[1][i] for r in runs) for i in range(len(ORGANS))]
        print(f"| {name} | " + " | ".join(f"{b:.3f}" for b in bests) + f" | {statistics.mean(bests):.3f} | "
              + " | ".join(f"{o:.3f}" for o in organs) + f" | {statistics.mean(r[2] for r in runs):.0f} s |")
    diffs = [m[0] - s[0] for s, m in zip(results["scratch"], results["MAE self-pretrained"])]
    print("\nMAE-initialised minus scratch, best mean Dice per seed: " + ", ".join(f"{d:+.3f}" for d in diffs))


if __name__ == "__main__":
    fire.Fire(main)
