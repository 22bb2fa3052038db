"""UNETR from the MAE-pretrained 3D encoder vs from scratch, same steps, on the synthetic CT set; prints mean Dice.

    python scripts/compare_unetr_init.py                     # pretrains mae_pretrain/train_3d.json first
    python scripts/compare_unetr_init.py --epochs 20 --feature_size 8

Both runs use bundles/unetr_segmentation/configs/train.json unchanged except ``pretrained_ckpt``; Dice is from
evaluate.json on the validation split (full volumes, sliding window).
"""

from __future__ import annotations

import json
import os
import time

import fire

from medmae_ext.workflow import run_bundle_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cfg(bundle: str) -> str:
    return os.path.join(REPO, "bundles", bundle, "configs")


def main(work_dir: str = "runs/unetr", epochs: int = 20, feature_size: int = 16, pretrain_epochs: int | None = None):
    data = os.path.join(work_dir, "data")
    pre = {"epochs": pretrain_epochs} if pretrain_epochs else {}
    t0 = time.time()
    run_bundle_config(cfg("mae_pretrain"), "train_3d.json", bundle_root=os.path.join(work_dir, "mae"),
                      dataset_dir=data, resume=False, **pre)
    print(f"mae_pretrain 3D: {time.time() - t0:.0f} s")
    ckpt = os.path.join(work_dir, "mae", "models", "3d", "model.pt")
    rows = []
    for name, init in (("scratch", None), ("MAE self-pretrained", ckpt)):
        root = os.path.join(work_dir, name.split()[0].lower())
        t0 = time.time()
        wf = run_bundle_config(cfg("unetr_segmentation"), "train.json", bundle_root=root, dataset_dir=data,
                               pretrained_ckpt=init, epochs=epochs, resume=False,
                               **{"network_def#feature_size": feature_size})
        t = time.time() - t0
        steps = wf.parser.get_parsed_content("train#trainer").state.iteration
        best = wf.parser.get_parsed_content("validate#evaluator").state.best_metric
        run_bundle_config(cfg("unetr_segmentation"), "evaluate.json", "evaluating", bundle_root=root,
                          dataset_dir=data, use_synthetic=False, **{"network_def#feature_size": feature_size})
        per_case = os.path.join(root, "eval", "validation", "mean_dice_raw.csv")
        rows.append((name, steps, best, t, per_case))
    print(f"\nunetr_segmentation, {epochs} epochs (feature_size {feature_size}), validation split, mean Dice over "
          "liver/spleen/kidney/aorta:")
    print("| encoder initialisation | steps | best validation mean Dice | train time |")
    print("| --- | --- | --- | --- |")
    for name, steps, best, t, _ in rows:
        print(f"| {name} | {steps} | {best:.3f} | {t:.0f} s |")


if __name__ == "__main__":
    fire.Fire(main)
