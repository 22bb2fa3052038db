"""Scratch vs MAE vs MSMAE on one classification dataset, several seeds, through the bundles' own configs.

For each seed, on the training split minus a label-stratified selection split (``--select_frac`` of it, seeded
by the seed; ``data_kwargs {"select_frac": ...}`` of the bundles):

1. pretrain ``mae_pretrain`` and ``msmae_pretrain`` (its supervised head sees the same training labels);
2. fine-tune ``vit_classification`` once per arm with the same epochs, batch, optimiser, lr, schedule, augmentation
   and ``--class_weighting`` / ``--balanced_sampling``:

   * ``scratch`` -- random initialisation, **no layer-wise lr decay** (the bundle applies layer decay only to a loaded
     encoder: a decay schedule is designed for pretrained encoders and would slow a random one down);
   * ``mae`` -- the mae_pretrain encoder, layer decay 0.75;
   * ``msmae`` -- the msmae_pretrain encoder, all tokens, layer decay 0.75;
   * ``msmae_masked`` -- the msmae_pretrain encoder with MSMAE masked fine-tuning, layer decay 0.75;
   * ``cnn`` -- MONAI's ResNet-18 from scratch (``architecture resnet18``): the anchor the MedMNIST v2 baselines
     use, at the same input, epochs, batch, optimiser, lr, schedule and augmentation;

3. keep each arm's checkpoint with the best AUC on the *selection* split and score it with ``evaluate.json`` on
   ``--eval_split`` of the reader without the carve (for the shared PneumoniaMNIST copy: its official validation
   split, never seen while training or selecting).

Writes ``<work_dir>/results.md`` (the table), ``summary.md`` (the README's short table), ``results.png``
(selection-split AUC per epoch, mean and spread over seeds, per arm; final metrics with error bars) and
``results.json`` (every number; paths relative to ``work_dir``).

    python scripts/compare_classification.py --data_format medmnist \\
        --data_path ../shared/data/pneumoniamnist_trainval.npz --class_names "['normal','pneumonia']" \\
        --img_size "[28,28]" --patch_size "[4,4]" --seeds "[0,1,2]"
"""

from __future__ import annotations

import json
import os
import statistics
import time

import fire

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

ARMS = {
    "scratch": ("scratch (no layer decay)", "random init, layer decay 1.0"),
    "mae": ("MAE", "mae_pretrain encoder, layer decay 0.75"),
    "msmae": ("MSMAE", "msmae_pretrain encoder, all tokens, layer decay 0.75"),
    "msmae_masked": ("MSMAE + masked fine-tune", "msmae_pretrain encoder, MSMAE token dropping, layer decay 0.75"),
    "cnn": ("ResNet-18 (CNN anchor)", "MONAI ResNet-18 from scratch, the same input, data, schedule and optimiser"),
}


def run(bundle: str, config: str, run_id: str, **override) -> float:
    from medmae_ext.bundle.workflow import run_bundle_config

    t0 = time.time()
    run_bundle_config(os.path.join(REPO, "bundles", bundle, "configs"), config, run_id, **override)
    return time.time() - t0


def _ci95(vals: list[float]) -> tuple[float, float] | None:
    """The 95% t-interval of the mean over seeds (None for one seed)."""
    if len(vals) < 2:
        return None
    from scipy import stats

    half = stats.t.ppf(0.975, len(vals) - 1) * statistics.stdev(vals) / len(vals) ** 0.5
    return statistics.mean(vals) - half, statistics.mean(vals) + half


def _mean_sd(vals: list[float]) -> str:
    sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return f"{statistics.mean(vals):.3f} ± {sd:.3f}"


def _cell(vals: list[float], ci: bool = False) -> str:
    interval = _ci95(vals) if ci else None
    inside = f" (95% CI {interval[0]:.3f}..{interval[1]:.3f})" if interval else ""
    return f"{_mean_sd(vals)}{inside} [{' / '.join(f'{v:.3f}' for v in vals)}]"


def paired(results: dict, metric: str, base: str = "scratch") -> list[str]:
    """Rows of "arm minus ``base``" per seed (the same seed: the same selection cut and fine-tuning order), with the
    mean and its 95% t-interval over seeds: a gain whose interval holds 0 is not shown by these seeds."""
    if base not in results:
        return []
    by_seed = {r["seed"]: r[metric] for r in results[base] if "seed" in r}
    rows = []
    for key, runs in results.items():
        if key == base:
            continue
        diffs = [r[metric] - by_seed[r["seed"]] for r in runs if r.get("seed") in by_seed]
        if not diffs:
            continue
        interval = _ci95(diffs)
        inside = f"{interval[0]:+.3f}..{interval[1]:+.3f}" if interval else "one seed"
        rows.append(f"| {ARMS[key][0]} - {ARMS[base][0]} | {statistics.mean(diffs):+.3f} | {inside} | "
                    + " / ".join(f"{d:+.3f}" for d in diffs) + " |")
    return rows


def _correct(path: str) -> dict:
    """id -> whether the decision was right, from an evaluation's predictions.csv."""
    import csv

    with open(path, newline="") as f:
        return {r["id"]: r["predicted"] == r["label"] for r in csv.DictReader(f)}


def mcnemar_rows(results: dict, base: str) -> list[str]:
    """Per seed, on the same evaluation samples: how many only the arm / only ``base`` got right, and the exact
    McNemar p-value (arms without ``predictions.csv`` are left out)."""
    from medmae_ext.outputs.statistics import mcnemar

    ref = {r["seed"]: r.get("predictions") for r in results.get(base, []) if "seed" in r}
    rows = []
    for key, runs in results.items():
        cells = []
        for r in runs if key != base else ():
            mine, theirs = r.get("predictions"), ref.get(r.get("seed"))
            if not (mine and theirs and os.path.isfile(mine) and os.path.isfile(theirs)):
                continue
            a, b = _correct(mine), _correct(theirs)
            ids = sorted(set(a) & set(b))
            only_a, only_b, p = mcnemar([a[i] for i in ids], [b[i] for i in ids])
            cells.append(f"seed {r['seed']}: {only_a} / {only_b}, p {p:.2g}")
        if cells:
            rows.append(f"| {ARMS[key][0]} vs {ARMS[base][0]} | " + "; ".join(cells) + " |")
    return rows


def summary(results: dict, setup: dict) -> str:
    """The README's results table: one row per arm, mean ± sd over seeds of AUC, accuracy and each class's recall;
    the best mean AUC and accuracy in bold; a recall cell says how many seeds' models never predict that class."""
    names, metrics = setup["class_names"], ("mean_auc", "accuracy")
    means = {key: {m: statistics.mean(r[m] for r in runs) for m in metrics} for key, runs in results.items()}
    best = {m: max(arm[m] for arm in means.values()) for m in metrics}
    lines = ["| arm | AUC | accuracy | " + " | ".join(f"recall {n}" for n in names) + " |",
             "| --- " * (3 + len(names)) + "|"]
    for key, runs in results.items():
        cells = [f"**{_mean_sd([r[m] for r in runs])}**" if means[key][m] == best[m] else _mean_sd([r[m] for r in runs])
                 for m in metrics]
        for n in names:
            recalls = [r["per_class"][n]["recall"] for r in runs]
            never = sum(v == 0 for v in recalls)
            cells.append(_mean_sd(recalls) + (f" ({never} of {len(recalls)} seeds never predict it)" if never else ""))
        lines.append(f"| {ARMS[key][0]} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def table(results: dict, setup: dict) -> str:
    """The Markdown report: a header saying what was compared and how, then one row per arm."""
    names = setup["class_names"]
    lines = [
        f"vit_classification scored on `{setup['eval_split']}` (checkpoint chosen on "
        f"{setup['selection']}); pretraining {setup['pretrain_epochs']} epochs, fine-tuning {setup['epochs']} epochs, "
        f"batch {setup['batch_size']}, class_weighting `{setup['class_weighting']}`, balanced_sampling "
        f"`{setup['balanced_sampling']}`; encoders pretrained in `{setup['pretrained_in']}`; seeds {setup['seeds']}: "
        "mean ± sd (AUC and accuracy: 95% t-interval of the mean over seeds) [per seed]."
        + (f" Fine-tuning options: {setup['finetune']}." if setup.get("finetune") else "")
        + (f" Pretraining options: {setup['pretrain']}." if setup.get("pretrain") else ""),
        "",
        "| arm | initialisation | AUC | accuracy | macro F1 | " + " | ".join(f"recall {n}" for n in names)
        + " | best epoch | fine-tune time |",
        "| --- " * (7 + len(names)) + "|",
    ]
    for key, runs in results.items():
        label, init = ARMS[key]
        recalls = [_cell([r["per_class"][n]["recall"] for r in runs]) for n in names]
        lines.append(
            f"| {label} | {init} | {_cell([r['mean_auc'] for r in runs], True)} | "
            f"{_cell([r['accuracy'] for r in runs], True)} | "
            f"{_cell([r['macro_f1'] for r in runs])} | " + " | ".join(recalls)
            + f" | {' / '.join(str(r['best_epoch']) for r in runs)} | {statistics.mean(r['time'] for r in runs):.0f} s |"
        )
    for base in ("scratch", "cnn"):  # against the ViT from scratch, and against the CNN anchor
        for metric, name in (("mean_auc", "AUC"), ("accuracy", "accuracy")):
            rows = paired(results, metric, base)
            if rows:
                lines += ["", f"Paired by seed, {name}: arm minus {ARMS[base][0]}", "",
                          "| arms | mean difference | 95% CI over seeds | per seed |", "| --- | --- | --- | --- |",
                          *rows]
        rows = mcnemar_rows(results, base)
        if rows:
            lines += ["", f"McNemar, the same {setup['eval_split']} images per seed: right only by the arm / only by "
                      f"{ARMS[base][0]}, exact p", "", "| arms | per seed |", "| --- | --- |", *rows]
    return "\n".join(lines) + "\n"


def plot(results: dict, setup: dict, path: str) -> str:
    """Left: selection-split AUC per epoch (mean over seeds, band = min..max) per arm. Right: the scored split's
    AUC / accuracy / macro F1 per arm, mean with sd error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for key, runs in results.items():
        epochs = sorted({h["epoch"] for r in runs for h in r["history"]})
        per_epoch = [[h["mean_auc"] for r in runs for h in r["history"] if h["epoch"] == e] for e in epochs]
        mean = [float(np.mean(v)) for v in per_epoch]
        ax1.plot(epochs, mean, marker="o", label=ARMS[key][0])
        ax1.fill_between(epochs, [min(v) for v in per_epoch], [max(v) for v in per_epoch], alpha=0.2)
    ax1.xaxis.get_major_locator().set_params(integer=True)
    ax1.set_xlabel("fine-tuning epoch")
    ax1.set_ylabel("AUC on the selection split")
    n = len(setup["seeds"])
    ax1.set_title(f"selection-split AUC ({n} seed{'s' if n > 1 else ''}: mean, band = min..max)")
    ax1.legend()
    ax1.grid(alpha=0.3)
    metrics = [("mean_auc", "AUC"), ("accuracy", "accuracy"), ("macro_f1", "macro F1")]
    width = 0.8 / max(1, len(results))
    for i, (key, runs) in enumerate(results.items()):
        vals = [[r[m] for r in runs] for m, _ in metrics]
        x = np.arange(len(metrics)) + i * width
        ax2.bar(x, [np.mean(v) for v in vals], width, yerr=[np.std(v, ddof=1) if len(v) > 1 else 0 for v in vals],
                capsize=3, label=ARMS[key][0])
    ax2.set_xticks(np.arange(len(metrics)) + width * (len(results) - 1) / 2)
    ax2.set_xticklabels([m for _, m in metrics])
    ax2.set_ylim(0.3, 1.0)
    ax2.set_title(f"scored on '{setup['eval_split']}' (mean ± sd over seeds; colours as left)")
    ax2.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(data_format: str = "datalist", data_path: str | None = None, class_names=None, img_size=(64, 64),
         patch_size=(8, 8), seeds=(0, 1, 2), pretrain_epochs: int = 10, epochs: int = 8, batch_size: int = 64,
         attention_start_epoch: int = 4, eval_split: str = "validation", select_frac: float = 0.1,
         class_weighting: str = "none", balanced_sampling: bool = False, arms: str = "scratch,mae,msmae,msmae_masked,cnn",
         work_dir: str = "runs/compare_cls", num_workers: int = 0, num_threads: int = 0, max_items: int | None = None,
         reuse_pretraining: bool = False, pretrain_dir: str | None = None, report_only: bool = False,
         pooling: str | None = None, reevaluate: bool = False, finetune: dict | None = None,
         pretrain: dict | None = None):
    """``select_frac 0`` selects the checkpoint on ``eval_split`` itself (optimistic for every arm; the table says so).
    ``reuse_pretraining``: keep a seed's pretrained ``models/model.pt`` already under ``work_dir`` (a rerun that only
    changes the fine-tuning). ``max_items`` keeps the first items of every split (quick checks). Each arm's numbers
    are also kept in ``<work_dir>/seed<N>/<arm>/compare_result.json``; ``report_only`` rebuilds the table and picture
    from those (seeds run by separate processes into one ``work_dir``) without training. ``pretrain_dir``: take (and
    with ``reuse_pretraining`` keep) the pretrained encoders from ``<pretrain_dir>/seed<N>/pretrain/{mae,msmae}`` instead of
    ``work_dir``, e.g. to fine-tune with other options on the same encoders. ``pooling``: the classifier's config id
    ``pooling`` for every arm ("cls" or "mean"; default: the bundle's). ``finetune``: more vit_classification config
    ids for every arm's fine-tuning, e.g. ``"{'label_smoothing': 0.1}"`` (a recipe option measured on the same
    encoders with ``--pretrain_dir``). ``pretrain``: more config ids for both pretraining runs, e.g.
    ``"{'augmentation#crop_scale': [0.45, 1.0]}"`` (a pretraining recipe option; give it its own ``work_dir``).
    Sizes (``img_size``, ``patch_size``) are given to the pretraining runs and the scratch arm only: the other arms
    and every evaluation read them from the run records. ``reevaluate`` (with ``report_only``): score each arm's kept
    checkpoint again with the current ``evaluate.json`` first (no training), e.g. for the per-sample predictions of
    runs made before they existed."""
    from medmae_ext.outputs.reports import read_history

    arm_keys = [a.strip() for a in (arms.split(",") if isinstance(arms, str) else arms)]
    unknown = [a for a in arm_keys if a not in ARMS]
    if unknown:
        raise SystemExit(f"--arms: unknown {unknown}; choose from {list(ARMS)}")
    seeds = [int(s) for s in (seeds if isinstance(seeds, (list, tuple)) else [seeds])]
    base_kwargs = {"max_items": int(max_items)} if max_items else {}
    common = {"data_format": data_format, "batch_size": batch_size, "num_workers": num_workers,
              "num_threads": num_threads}
    sizes = {"img_size": list(img_size), "patch_size": list(patch_size)}
    if data_path:
        common["data_path"] = os.path.abspath(data_path)
    cls = {"class_names": list(class_names)} if class_names else {}
    head = {"pooling": pooling} if pooling else {}
    head.update(dict(finetune or {}))
    need_mae, need_msmae = "mae" in arm_keys, any(a.startswith("msmae") for a in arm_keys)
    results: dict[str, list[dict]] = {}
    for seed in seeds if not report_only else ():
        select = {**base_kwargs, "select_frac": select_frac, "select_seed": seed} if select_frac else base_kwargs
        train = {**common, "data_kwargs": select, "resume": False, "seed": seed}
        root = os.path.abspath(os.path.join(work_dir, f"seed{seed}"))
        # pretraining folders apart from the arms' (an arm named like a pretraining bundle must never fine-tune into,
        # and so replace, the encoder a later arm loads)
        pre_root = os.path.abspath(os.path.join(pretrain_dir or work_dir, f"seed{seed}", "pretrain"))
        mae, msmae = os.path.join(pre_root, "mae"), os.path.join(pre_root, "msmae")
        # the pretraining configs have their own max_items config id
        pre = {**train, **sizes, "data_kwargs": {k: v for k, v in select.items() if k != "max_items"},
               "max_items": max_items, **dict(pretrain or {})}

        def pretrained(folder):
            return reuse_pretraining and os.path.isfile(os.path.join(folder, "models", "model.pt"))

        if need_mae and not pretrained(mae):
            t = run("mae_pretrain", "train.json", "training", bundle_root=mae, epochs=pretrain_epochs, **pre)
            print(f"seed {seed}: mae_pretrain {t:.0f} s", flush=True)
        if need_msmae and not pretrained(msmae):
            t = run("msmae_pretrain", "train.json", "training", bundle_root=msmae, epochs=pretrain_epochs,
                    **cls, attention_start_epoch=attention_start_epoch,
                    attention_interval=max(1, attention_start_epoch), class_weighting=class_weighting, **pre)
            print(f"seed {seed}: msmae_pretrain {t:.0f} s", flush=True)
        init = {
            "scratch": dict(pretrained_ckpt="scratch", **sizes),
            "mae": dict(pretrained_ckpt=os.path.join(mae, "models", "model.pt")),
            "msmae": dict(pretrained_ckpt=os.path.join(msmae, "models", "model.pt")),
            "msmae_masked": dict(pretrained_ckpt=os.path.join(msmae, "models", "model.pt"), msmae_finetune=True),
            "cnn": dict(pretrained_ckpt="scratch", architecture="resnet18", **sizes),
        }
        for key in arm_keys:
            arm_root = os.path.join(root, key)
            t = run("vit_classification", "train.json", "training", bundle_root=arm_root, epochs=epochs,
                    val_interval=1, class_weighting=class_weighting, balanced_sampling=balanced_sampling,
                    **train, **cls, **head, **init[key])
            ev = {k: v for k, v in train.items() if k not in ("resume", "seed")}
            ev["data_kwargs"] = base_kwargs
            run("vit_classification", "evaluate.json", "evaluating", bundle_root=arm_root, split=eval_split, **ev)
            m = json.load(open(os.path.join(arm_root, "eval", eval_split, "metrics.json")))
            m["predictions"] = os.path.join(arm_root, "eval", eval_split, "predictions.csv")
            chosen_on = "selection" if select_frac else "validation"
            history = read_history(os.path.join(arm_root, "eval", chosen_on, "history.csv"))
            m.update(seed=seed, time=t, history=history, best_epoch=max(history, key=lambda h: h["mean_auc"])["epoch"])
            json.dump(m, open(os.path.join(arm_root, "compare_result.json"), "w"), indent=1)
            results.setdefault(key, []).append(m)
            print(f"seed {seed}: {ARMS[key][0]}: AUC {m['mean_auc']:.3f} acc {m['accuracy']:.3f} F1 "
                  f"{m['macro_f1']:.3f} ({t:.0f} s)", flush=True)
    if report_only:
        for seed in seeds:
            for key in arm_keys:
                path = os.path.join(work_dir, f"seed{seed}", key, "compare_result.json")
                if not os.path.isfile(path):
                    raise SystemExit(f"--report_only: {path} is missing (run that seed first)")
                stored = json.load(open(path))
                if reevaluate:
                    arm_root = os.path.dirname(os.path.abspath(path))
                    ev = {**common, "data_kwargs": base_kwargs}
                    run("vit_classification", "evaluate.json", "evaluating", bundle_root=arm_root, split=eval_split,
                        **ev)
                    stored.update(json.load(open(os.path.join(arm_root, "eval", eval_split, "metrics.json"))))
                    stored["predictions"] = os.path.join(arm_root, "eval", eval_split, "predictions.csv")
                    json.dump(stored, open(path, "w"), indent=1)
                results.setdefault(key, []).append({"seed": seed, **stored})
    setup = {"eval_split": eval_split, "pretrain_epochs": pretrain_epochs, "epochs": epochs, "batch_size": batch_size,
             "class_weighting": class_weighting, "balanced_sampling": balanced_sampling, "seeds": seeds,
             "pretrained_in": os.path.abspath(pretrain_dir or work_dir), "select_frac": select_frac,
             "finetune": {**head} or None, "pretrain": dict(pretrain or {}) or None,
             "class_names": list(next(iter(results.values()))[0]["per_class"]),
             "selection": f"a {select_frac:g} label-stratified cut of the training split" if select_frac
             else f"`{eval_split}` itself (optimistic: the same split selects and scores)"}
    os.makedirs(work_dir, exist_ok=True)
    md, short = table(results, setup), summary(results, setup)
    open(os.path.join(work_dir, "results.md"), "w").write(md)
    open(os.path.join(work_dir, "summary.md"), "w").write(short)
    # paths relative to work_dir: the file can be kept elsewhere (docs/results/) and still says what it came from
    rel = {k: [{**r, **({"predictions": os.path.relpath(r["predictions"], work_dir)} if r.get("predictions") else {})}
               for r in runs] for k, runs in results.items()}
    setup_rel = {**setup, "pretrained_in": os.path.relpath(setup["pretrained_in"], os.path.abspath(work_dir))}
    json.dump({"setup": setup_rel, "results": rel}, open(os.path.join(work_dir, "results.json"), "w"), indent=1)
    png = plot(results, setup, os.path.join(work_dir, "results.png"))
    print("\n" + md + "\n" + short + f"\n-> {os.path.join(work_dir, 'results.md')}, summary.md, {png}", flush=True)


if __name__ == "__main__":
    fire.Fire(main)
