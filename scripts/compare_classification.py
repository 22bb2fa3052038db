"""Scratch vs MAE vs MSMAE on one classification dataset, several seeds, through the bundles' own configs.

For each seed: pretrain ``mae_pretrain`` and ``msmae_pretrain`` on the training split, then fine-tune
``vit_classification`` three ways with the same epochs, batch, optimiser, schedule and augmentation:

* scratch -- random initialisation, no layer-wise lr decay (a decay schedule is designed for pretrained encoders
  and would slow the scratch encoder down: ``layer_decay 1.0``);
* MAE -- the mae_pretrain encoder, layer decay 0.75;
* MSMAE -- the msmae_pretrain encoder with MSMAE masked fine-tuning, layer decay 0.75.

Each fine-tune keeps the model with the best validation AUC (``models/model.pt``), which ``evaluate.json`` then scores
on ``--eval_split``. Note: with the PneumoniaMNIST copy in ../shared the validation split both selects the epoch and
scores it, which flatters every arm alike (its test split is withheld).

    python scripts/compare_classification.py --data_format medmnist \\
        --data_path ../shared/data/pneumoniamnist_trainval.npz --class_names "['normal','pneumonia']" \\
        --img_size "[28,28]" --patch_size "[4,4]" --seeds "[0,1]"
"""

from __future__ import annotations

import json
import os
import statistics
import time

import fire
from medmae_ext.workflow import run_bundle_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(bundle: str, config: str, run_id: str, **override) -> float:
    t0 = time.time()
    run_bundle_config(os.path.join(REPO, "bundles", bundle, "configs"), config, run_id, **override)
    return time.time() - t0


def main(data_format: str = "datalist", data_path: str | None = None, class_names=None, img_size=(64, 64),
         patch_size=(8, 8), seeds=(0, 1), pretrain_epochs: int = 30, epochs: int = 15, batch_size: int = 64,
         attention_start_epoch: int = 10, eval_split: str = "validation", work_dir: str = "runs/compare_cls",
         num_workers: int = 0, reuse_pretraining: bool = False):
    """``reuse_pretraining``: keep a seed's pretrained ``models/model.pt`` already under ``work_dir`` (a rerun that
    only changes the fine-tuning) instead of pretraining again."""
    data = {"data_format": data_format, "img_size": list(img_size), "patch_size": list(patch_size),
            "batch_size": batch_size, "num_workers": num_workers, "resume": False}
    if data_path:
        data["data_path"] = os.path.abspath(data_path)
    cls = {"class_names": list(class_names)} if class_names else {}
    results: dict[str, list[dict]] = {}
    for seed in seeds:
        root = os.path.join(work_dir, f"seed{seed}")
        mae = os.path.join(root, "mae")
        msmae = os.path.join(root, "msmae")
        def done(folder):
            return reuse_pretraining and os.path.isfile(os.path.join(folder, "models", "model.pt"))

        if not done(mae):
            t = run("mae_pretrain", "train.json", "training", bundle_root=mae, seed=seed, epochs=pretrain_epochs, **data)
            print(f"seed {seed}: mae_pretrain {t:.0f} s", flush=True)
        if not done(msmae):
            t = run("msmae_pretrain", "train.json", "training", bundle_root=msmae, seed=seed, epochs=pretrain_epochs,
                    num_classes=len(class_names) if class_names else 3, attention_start_epoch=attention_start_epoch,
                    attention_interval=max(1, attention_start_epoch), **data)
            print(f"seed {seed}: msmae_pretrain {t:.0f} s", flush=True)
        arms = {
            "scratch (no layer decay)": dict(pretrained_ckpt="scratch", layer_decay=1.0),
            "MAE": dict(pretrained_ckpt=os.path.join(mae, "models", "model.pt")),
            "MSMAE + masked fine-tune": dict(pretrained_ckpt=os.path.join(msmae, "models", "model.pt"),
                                             msmae_finetune=True),
        }
        for name, kw in arms.items():
            arm_root = os.path.join(root, name.split()[0].lower())
            t = run("vit_classification", "train.json", "training", bundle_root=arm_root, seed=seed, epochs=epochs,
                    val_interval=1, **data, **cls, **kw)
            ev = {k: v for k, v in data.items() if k not in ("resume",)}
            run("vit_classification", "evaluate.json", "evaluating", bundle_root=arm_root, split=eval_split, **ev, **cls)
            m = json.load(open(os.path.join(arm_root, "eval", eval_split, "metrics.json")))
            m["time"] = t
            results.setdefault(name, []).append(m)
            print(f"seed {seed}: {name}: AUC {m['mean_auc']:.3f} acc {m['accuracy']:.3f} F1 {m['macro_f1']:.3f} "
                  f"({t:.0f} s)", flush=True)
    names = list(next(iter(results.values()))[0]["per_class"])
    print(f"\nvit_classification on '{eval_split}', {epochs} fine-tuning epochs, pretraining {pretrain_epochs} epochs, "
          f"seeds {list(seeds)} (mean ± sd; per seed in brackets):")
    print("| arm | AUC | accuracy | macro F1 | " + " | ".join(f"recall {n}" for n in names) + " | fine-tune time |")
    print("| --- " * (5 + len(names)) + "|")

    def cell(vals):
        sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
        return f"{statistics.mean(vals):.3f} ± {sd:.3f} [{' / '.join(f'{v:.3f}' for v in vals)}]"

    for name, ms in results.items():
        recalls = [cell([m["per_class"][n]["recall"] for m in ms]) for n in names]
        print(f"| {name} | {cell([m['mean_auc'] for m in ms])} | {cell([m['accuracy'] for m in ms])} | "
              f"{cell([m['macro_f1'] for m in ms])} | " + " | ".join(recalls)
              + f" | {statistics.mean(m['time'] for m in ms):.0f} s |")



if __name__ == "__main__":
    fire.Fire(main)
