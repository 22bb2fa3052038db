"""scripts/compare_classification.py: the README's command, run as written with a shrunken budget appended (fire
takes the last value of a repeated flag), on the real PneumoniaMNIST copy. Skipped where ../shared is absent."""

import glob
import json
import os
import re
import subprocess
import sys

import pytest
import torch
from conftest import REPO
from PIL import Image

sys.path.insert(0, os.path.join(REPO, "scripts"))
from readme_commands import readme_commands  # noqa: E402

NPZ = os.path.join(os.path.dirname(REPO), "shared", "data", "pneumoniamnist_trainval.npz")


@pytest.mark.skipif(not os.path.isfile(NPZ), reason="../shared/data is not present")
def test_readme_comparison_command_runs_and_reports_every_arm(tmp_path):
    cmds = readme_commands("## Real chest X-rays", "docs/evidence.md")
    assert len(cmds) == 1 and cmds[0].startswith("python scripts/compare_classification.py")
    work = tmp_path / "cmp"
    shrink = (f' --seeds "[0]" --pretrain_epochs 1 --epochs 2 --max_items 96 --batch_size 16 --attention_start_epoch 0'
              f" --num_threads 1 --work_dir {work}")
    r = subprocess.run(["bash", "-c", cmds[0] + shrink], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    md = open(work / "results.md").read()
    assert "checkpoint chosen on a 0.1 label-stratified cut of the training split" in md
    main_table = md.split("\n\nPaired by seed")[0]
    assert "Paired by seed, AUC: arm minus ResNet-18 (CNN anchor)" in md  # where ViT + MAE stands against the anchor
    assert "| MAE vs scratch (no layer decay) | seed 0: " in md  # McNemar on the same images
    rows = [ln for ln in main_table.splitlines() if ln.startswith("| ") and "---" not in ln][1:]
    assert [r.split("|")[1].strip() for r in rows] == [
        "scratch (no layer decay)", "MAE", "MSMAE", "MSMAE + masked fine-tune", "ResNet-18 (CNN anchor)"]
    res = json.load(open(work / "results.json"))
    for runs in res["results"].values():
        (run,) = runs
        assert run["num_samples"] == 96  # scored on the file's own validation split (96 of 524 spread over it)
        assert [h["epoch"] for h in run["history"]] == [1, 2]  # the selection split's curve
        assert run["split"] == "validation"  # what the evaluation scored, named in its metrics
        assert set(run["per_class"]) == {"normal", "pneumonia"}
        assert not os.path.isabs(run["predictions"]) and (work / run["predictions"]).is_file()  # kept with the file
    short = open(work / "summary.md").read().splitlines()  # the README's table
    assert short[0] == "| arm | AUC | accuracy | recall normal | recall pneumonia |" and len(short) == 2 + 5
    # scratch trains every layer at one lr (no layer decay); the pretrained arms decay it towards the input
    def lrs(arm):
        ckpt = sorted(glob.glob(str(work / "seed0" / arm / "models" / "checkpoint_*.pt")))[-1]
        return {round(g["lr"], 12) for g in torch.load(ckpt, weights_only=False)["optimizer"]["param_groups"]}

    assert len(lrs("scratch")) == 1 and len(lrs("mae")) > 3 and len(lrs("msmae_masked")) > 3
    # the CNN anchor: a ResNet-18, recorded as such, at the same input size, one lr (no encoder, no layer decay)
    record = json.load(open(work / "seed0" / "cnn" / "models" / "metadata.json"))["medmae_run"]["settings"]
    assert record["architecture"] == "resnet18" and record["img_size"] == [28, 28] and len(lrs("cnn")) == 1
    # the encoders stay pretraining checkpoints after every arm ran (no arm fine-tunes into a pretraining folder)
    for b in ("mae", "msmae"):
        assert "decoder_pred.weight" in torch.load(work / "seed0" / "pretrain" / b / "models" / "model.pt",
                                                   weights_only=True)
    with Image.open(work / "results.png") as im:
        assert im.size[0] > 800 and im.size[1] > 300
    # the same table from the per-arm files, without training
    again = subprocess.run(["bash", "-c", cmds[0] + shrink + " --report_only True"], cwd=REPO, capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 0 and open(work / "results.md").read() == md
    # the CNN anchor's table (evidence.md): the arms it is compared with, their kept checkpoints scored again by the
    # current evaluate.json (the same numbers: nothing trained), rebuilt from the per-arm files
    (cnn,) = readme_commands("### CNN anchor", "docs/evidence.md")
    before = {k: res["results"][k][0]["mean_auc"] for k in ("scratch", "mae", "cnn")}
    report = subprocess.run(["bash", "-c", cnn + shrink], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stdout[-3000:] + report.stderr[-3000:]
    md = open(work / "results.md").read()
    rows = [ln.split("|")[1].strip() for ln in md.split("\n\nPaired")[0].splitlines()
            if ln.startswith("| ") and "---" not in ln][1:]
    assert rows == ["scratch (no layer decay)", "MAE", "ResNet-18 (CNN anchor)"]
    after = json.load(open(work / "results.json"))["results"]
    assert {k: after[k][0]["mean_auc"] for k in before} == before
    assert "| MAE vs ResNet-18 (CNN anchor) | seed 0: " in md
    # the MSMAE diagnosis of the README, on this run's fine-tuned models and MSMAE encoder (fire: last value wins)
    (diag,) = readme_commands("### Why MSMAE masked fine-tuning trails", "docs/evidence.md")
    roots = [str(work / "seed0" / a) for a in ("msmae_masked", "msmae")]
    r = subprocess.run(["bash", "-c", diag + f' --arm_roots "{roots}" --repeats 1'], cwd=REPO, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [ln.split("|")[1:-1] for ln in r.stdout.splitlines() if ln.startswith("| seed0/")]
    assert [(x[0].strip(), x[1].strip()) for x in rows if "border" not in x[1]] == [
        (a, w) for a in ("seed0/msmae_masked", "seed0/msmae") for w in ("all tokens", "attention drop", "random drop")]
    assert [int(x[2]) for x in rows if "border" not in x[1]] == [49, 12, 12] * 2  # 28 px, patch 4: 25% of 49 kept
    # the pooling comparison: the same encoders (reused, not pretrained again), only the pooling differs
    (pool,) = readme_commands("### Pooling", "docs/evidence.md")
    pooled = tmp_path / "pool"
    r = subprocess.run(["bash", "-c", pool + shrink.replace(str(work), str(pooled)) + f" --pretrain_dir {work} --arms mae"],
                       cwd=REPO, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    record = json.load(open(pooled / "seed0" / "mae" / "models" / "metadata.json"))
    assert record["medmae_run"]["settings"]["pooling"] == "mean", record["medmae_run"]["settings"]
    assert not (pooled / "seed0" / "pretrain").exists()  # the encoders came from --pretrain_dir

    def shrunk(cmd: str, name: str, extra: str = "", log: list | None = None) -> str:
        """``cmd`` as written, shrunk, into ``tmp_path / name``: its results.md (its output appended to ``log``)"""
        out = tmp_path / name
        done = subprocess.run(["bash", "-c", cmd + shrink.replace(str(work), str(out)) + extra], cwd=REPO,
                              capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        if log is not None:
            log.append(done.stdout + done.stderr)
        return open(out / "results.md").read()

    # a fine-tuning recipe option, measured the same way (label smoothing; the bundle test checks the loss it builds)
    (smooth,) = readme_commands("### Label smoothing", "docs/evidence.md")
    assert "Fine-tuning options: {'label_smoothing': 0.1}" in shrunk(smooth, "smooth", f" --pretrain_dir {work}")
    # class weighting on the README run's MAE encoders: the option reaches the fine-tuning's loss (the weights it logs)
    (weighting,) = readme_commands("### Class weighting", "docs/evidence.md")
    assert weighting == cmds[0].replace("--work_dir runs/compare_pneumonia", "--arms mae --class_weighting balanced "
                                        "--work_dir runs/cw_balanced --pretrain_dir runs/compare_pneumonia "
                                        "--reuse_pretraining True")
    log = []
    assert "class_weighting `balanced`" in shrunk(weighting, "cw", f" --pretrain_dir {work}", log)
    assert re.search(r"class_weighting=balanced: normal \d+ items -> weight [\d.]+, pneumonia \d+ items", log[0])
    # the batch augmentation and the recipe's batch options (mixup / CutMix, random erasing), on the same encoders
    batch_cmds = readme_commands("### Augmentation on the batch", "docs/evidence.md")
    assert len(batch_cmds) == 4  # the fourth: the MSMAE arm on the same encoders, nothing else changed
    assert batch_cmds[3] == batch_cmds[0].replace("--arms scratch,mae,cnn", "--arms msmae").replace(
        "runs/batchaug", "runs/msmae_batch")
    assert "Fine-tuning options" not in shrunk(batch_cmds[0], "batch0", f" --pretrain_dir {work} --arms mae")
    # mixup / CutMix and random erasing: the first command's MAE arm with one --finetune option each (the option reaches
    # the run as label smoothing's and RandAugment's do, run here; the bundle tests check what each option builds)
    for cmd, (option, name) in zip(batch_cmds[1:3], (("{'mixup': 0.8, 'cutmix': 1.0}", "mixcut"),
                                                     ("{'random_erasing': 0.25}", "erasing"))):
        assert cmd == batch_cmds[0].replace("--arms scratch,mae,cnn", f'--arms mae --finetune "{option}"').replace(
            "runs/batchaug", f"runs/{name}")
    # RandAugment on the same encoders; the pretraining crop scale (the option reaches both pretraining runs)
    (ra,) = readme_commands("### RandAugment", "docs/evidence.md")
    assert "Fine-tuning options: {'rand_augment': 2}." in shrunk(ra, "randaug", f" --pretrain_dir {work}")
    crop, base = readme_commands("### Pretraining crop scale", "docs/evidence.md")
    assert base == crop.replace("[0.45, 1.0]", "[0.6, 1.0]").replace("runs/crop045", "runs/crop060")
    assert "Pretraining options: {'augmentation#crop_scale': [0.45, 1.0]}." in shrunk(crop, "crop")
    assert (tmp_path / "crop" / "seed0" / "pretrain" / "mae" / "models" / "model.pt").is_file()
    # the budget curve: the default MAE command with only the epochs (and, for fine-tuning, the reused encoders of
    # the crop table's default row) changed; shrunk, they would run what the commands above ran
    pre30, pre60, pre200, ft24 = readme_commands("### Budget", "docs/evidence.md")
    assert pre200 == pre30.replace("30", "200")
    default_crop = "--pretrain \"{'augmentation#crop_scale': [0.6, 1.0]}\""
    assert pre60 == pre30.replace('"[0]"', '"[0,1,2]"').replace("30", "60")
    assert pre60 == base.replace(default_crop, "--pretrain_epochs 60").replace("runs/crop060", "runs/budget_pre60")
    assert ft24 == base.replace(f"--arms mae {default_crop}", "--arms scratch,mae --epochs 24").replace(
        "runs/crop060", "runs/budget_ft24 --pretrain_dir runs/crop060 --reuse_pretraining True")


def test_comparison_reports_intervals_over_seeds_and_paired_differences():
    sys.path.insert(0, os.path.join(REPO, "scripts"))
    from compare_classification import _ci95, paired

    lo, hi = _ci95([0.1, 0.2, 0.3])  # mean 0.2, sd 0.1, t(0.975, 2) = 4.303
    assert (lo, hi) == pytest.approx((0.2 - 0.24843, 0.2 + 0.24843), abs=1e-4) and _ci95([0.5]) is None
    results = {"scratch": [{"seed": s, "mean_auc": v} for s, v in ((0, 0.80), (1, 0.90), (2, 0.85))],
               "mae": [{"seed": s, "mean_auc": v} for s, v in ((2, 0.95), (0, 0.90), (1, 1.00))]}
    (row,) = paired(results, "mean_auc")
    # paired by seed, not by position: +0.10 on every seed, so the interval has no width
    assert row.startswith("| MAE - scratch (no layer decay) | +0.100 | +0.100..+0.100 |")
    assert row.endswith("+0.100 / +0.100 / +0.100 |")


def test_summary_marks_the_best_arm_and_seeds_that_never_predict_a_class():
    sys.path.insert(0, os.path.join(REPO, "scripts"))
    from compare_classification import summary

    def arm(auc, acc, recall_a):
        return [{"seed": s, "mean_auc": auc[s], "accuracy": acc[s],
                 "per_class": {"a": {"recall": recall_a[s]}, "b": {"recall": 1.0}}} for s in range(2)]

    results = {"scratch": arm((0.8, 0.9), (0.7, 0.8), (0.0, 0.5)), "mae": arm((0.95, 0.95), (0.7, 0.7), (0.5, 0.7))}
    head, rule, scratch, mae = summary(results, {"class_names": ["a", "b"]}).splitlines()
    assert head == "| arm | AUC | accuracy | recall a | recall b |" and rule.count("---") == 5
    # the best mean per metric in bold (scratch's accuracy 0.75 > 0.70); a collapsed seed is named in its class's cell
    assert scratch == ("| scratch (no layer decay) | 0.850 ± 0.071 | **0.750 ± 0.071** | 0.250 ± 0.354 (1 of 2 seeds "
                       "never predict it) | 1.000 ± 0.000 |")
    assert mae == "| MAE | **0.950 ± 0.000** | 0.700 ± 0.000 | 0.600 ± 0.141 | 1.000 ± 0.000 |"


def test_readme_and_evidence_tables_are_the_committed_comparison_output():
    """docs/results/compare_pneumonia.json is the results.json of evidence.md's first command (3 seeds, every arm);
    the README's results table and evidence.md's main table and paired differences, made again from it, must be
    there as written: a figure edited by hand, or left from another run, fails here."""
    sys.path.insert(0, os.path.join(REPO, "scripts"))
    from compare_classification import summary, table

    res = json.load(open(os.path.join(REPO, "docs", "results", "compare_pneumonia.json")))
    assert res["setup"]["seeds"] == [0, 1, 2] and list(res["results"]) == ["scratch", "mae", "msmae", "msmae_masked",
                                                                             "cnn"]
    readme = open(os.path.join(REPO, "README.md")).read().splitlines()
    short = summary(res["results"], res["setup"]).splitlines()
    assert [ln for ln in short if ln not in readme] == []
    evidence = open(os.path.join(REPO, "docs", "evidence.md")).read().splitlines()
    rows = [ln for ln in table(res["results"], res["setup"]).splitlines()[2:] if ln.startswith("| ")]
    assert len(rows) > 5 + 4 and [ln for ln in rows if ln not in evidence] == []


def test_mcnemar_on_decisions_whose_answer_is_known():
    from medmae_ext.outputs.statistics import mcnemar

    a = [True] * 8 + [True] * 5 + [False] * 3
    b = [False] * 8 + [True] * 5 + [False] * 3
    assert mcnemar(a, b) == (8, 0, pytest.approx(2 * 0.5 ** 8))  # 8 discordant pairs, all one way
    assert mcnemar(b, a)[:2] == (0, 8) and mcnemar(a, a) == (0, 0, 1.0)
    only_a, only_b, p = mcnemar([True, False] * 10, [False, True] * 10)
    assert (only_a, only_b) == (10, 10) and p == pytest.approx(1.0)
