"""Fine-tune vit_classification from the mae_pretrain encoder and from scratch with the same budget, evaluate
both on the test split, print a table. Uses the bundles' own configs (and writes under --work_dir).

    python scripts/compare_pretrained_vs_scratch.py                       # synthetic 2D default
    python scripts/compare_pretrained_vs_scratch.py --epochs 30 --msmae   # adds MSMAE pretraining + masked fine-tune
"""

from __future__ import annotations

import json
import os
import time

import fire
from medmae_ext.bundle.workflow import run_bundle_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(bundle: str, config: str, run_id: str, **override) -> float:
    t0 = time.time()
    run_bundle_config(os.path.join(REPO, "bundles", bundle, "configs"), config, run_id, **override)
    return time.time() - t0


def main(work_dir: str = "runs/compare", epochs: int = 30, pretrain_epochs: int | None = None, msmae: bool = False):
    data = os.path.join(work_dir, "data")
    common = dict(dataset_dir=data, resume=False)
    rows = []
    pre = dict(common, **({"epochs": pretrain_epochs} if pretrain_epochs else {}))
    t = run("mae_pretrain", "train.json", "training", bundle_root=os.path.join(work_dir, "mae"), **pre)
    print(f"mae_pretrain: {t:.0f} s")
    variants = {
        "scratch": dict(pretrained_ckpt=None),
        "MAE self-pretrained": dict(pretrained_ckpt=os.path.join(work_dir, "mae", "models", "model.pt")),
    }
    if msmae:
        t = run("msmae_pretrain", "train.json", "training", bundle_root=os.path.join(work_dir, "msmae"), **pre)
        print(f"msmae_pretrain: {t:.0f} s")
        variants["MSMAE pretrained + masked fine-tune"] = dict(
            pretrained_ckpt=os.path.join(work_dir, "msmae", "models", "model.pt"), msmae_finetune=True)
    for name, kw in variants.items():
        root = os.path.join(work_dir, name.split()[0].lower())
        t = run("vit_classification", "train.json", "training", bundle_root=root, epochs=epochs, **common, **kw)
        run("vit_classification", "evaluate.json", "evaluating", bundle_root=root, dataset_dir=data)
        m = json.load(open(os.path.join(root, "eval", "test", "metrics.json")))
        rows.append((name, m, t))
    print(f"\nvit_classification, {epochs} epochs each, test split ({rows[0][1]['num_samples']} images):")
    print("| initialisation | accuracy | macro F1 | mean AUC | fine-tune time |")
    print("| --- | --- | --- | --- | --- |")
    for name, m, t in rows:
        print(f"| {name} | {m['accuracy']:.3f} | {m['macro_f1']:.3f} | {m['mean_auc']:.3f} | {t:.0f} s |")


if __name__ == "__main__":
    fire.Fire(main)
