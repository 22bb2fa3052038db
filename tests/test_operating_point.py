"""The operating point of a two-class model: chosen on validation, kept in the run record, used by evaluation and
inference; the prior-shift correction. Rules and corrections on constructed data where the answer is known, then
the bundle chain on a small two-class set."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import BUNDLES, run_bundle


def test_threshold_rules_on_scores_whose_answer_is_known():
    from medmae_ext.outputs.operating_point import choose_threshold

    neg = [0.1, 0.2, 0.3, 0.6, 0.75]
    pos = [0.5, 0.7, 0.8, 0.9]
    score, positive = torch.tensor(neg + pos), torch.tensor([0] * 5 + [1] * 4)
    # Youden: at 0.8 -> 2/4 - 0 = 0.5; at 0.7 -> 3/4 - 1/5 = 0.55; at 0.5 -> 4/4 - 2/5 = 0.6 (the best)
    assert choose_threshold(score, positive, "youden") == pytest.approx(
        {"threshold": 0.5, "sensitivity": 1.0, "specificity": 0.6})
    # sensitivity >= 0.75 with the best specificity: 0.7 (0.8 reaches only 0.5)
    assert choose_threshold(score, positive, "sensitivity", 0.75)["threshold"] == pytest.approx(0.7)
    # specificity >= 0.8 with the best sensitivity: 0.7 (4/5 negatives below it)
    assert choose_threshold(score, positive, "specificity", 0.8) == pytest.approx(
        {"threshold": 0.7, "sensitivity": 0.75, "specificity": 0.8})
    with pytest.raises(ValueError, match="2 positive and 0 negative"):
        choose_threshold(torch.tensor([0.2, 0.4]), torch.tensor([1, 1]), "youden")
    with pytest.raises(ValueError, match="no threshold reaches specificity 1.0"):  # the top score is a negative
        choose_threshold(torch.tensor([0.9, 0.5]), torch.tensor([0, 1]), "specificity", 1.0)


def test_prior_shift_by_bayes_rule_and_what_it_changes():
    from medmae_ext.outputs.operating_point import Decision, shift_prior

    p = torch.tensor([[0.5, 0.5], [0.8, 0.2]], dtype=torch.float64)
    # odds 1 under prior 0.5 -> odds 4 under prior 0.8: p = 0.8; odds 1/4 -> 1: p = 0.5
    assert shift_prior(p, 0.5, 0.8)[:, 1].tolist() == pytest.approx([0.8, 0.5])
    assert torch.allclose(shift_prior(shift_prior(p, 0.5, 0.8), 0.8, 0.5), p)
    # argmax decisions follow the corrected probabilities; a threshold rule decides as before (sensitivity and
    # specificity do not depend on the prior), its threshold moved with the probabilities
    prob = torch.tensor([[0.6, 0.4], [0.45, 0.55], [0.3, 0.7]])
    assert Decision()(prob).argmax(1).tolist() == [0, 1, 1]
    assert Decision(None, (0.5, 0.8))(prob).argmax(1).tolist() == [1, 1, 1]
    assert Decision(None, (0.5, 0.4))(prob).argmax(1).tolist() == [0, 0, 1]
    assert Decision(0.5, (0.5, 0.2))(prob).argmax(1).tolist() == Decision(0.5)(prob).argmax(1).tolist() == [0, 1, 1]


def test_temperature_fitted_to_an_overconfident_model_is_its_overconfidence():
    """Labels drawn from sigmoid(z), the model reports sigmoid(3 z): the fitted temperature is 3, and the rescaled
    probabilities are calibrated again (ECE falls to sampling noise); decisions do not change."""
    from medmae_ext.outputs.operating_point import Decision, fit_temperature
    from medmae_ext.outputs.statistics import calibration

    g = torch.Generator().manual_seed(0)
    z = torch.randn(20000, generator=g, dtype=torch.float64) * 2
    y = (torch.rand(20000, generator=g, dtype=torch.float64) < torch.sigmoid(z)).long()
    p1 = torch.sigmoid(3 * z)
    prob = torch.stack([1 - p1, p1], 1)
    t = fit_temperature(prob, y)
    assert t == pytest.approx(3.0, rel=0.05)
    onehot = torch.nn.functional.one_hot(y, 2).double()
    fixed = Decision(temperature=t).probabilities(prob)
    assert calibration(prob, onehot, ["a", "b"])["ece"] > 0.08 > 0.01 > calibration(fixed, onehot, ["a", "b"])["ece"]
    assert torch.equal(Decision(temperature=t)(prob), Decision()(prob))
    assert torch.equal(Decision(0.7, temperature=t)(prob), Decision(0.7)(prob))


def test_rules_are_checked_with_the_config_id():
    from medmae_ext.errors import InputError
    from medmae_ext.outputs.operating_point import from_record, parse_rule

    assert parse_rule("youden", ["a", "b"]) == ("youden", None)
    assert parse_rule("Sensitivity:0.9", ["a", "b"]) == ("sensitivity", 0.9)
    for bad in ("youden:1", "sensitivity", "sensitivity:1.5", "recall:0.9", "specificity:x"):
        with pytest.raises(InputError, match="config id 'operating_point' must be one of"):
            parse_rule(bad, ["a", "b"])
    with pytest.raises(InputError, match="needs two classes, single-label"):
        parse_rule("youden", ["a", "b", "c"])
    assert parse_rule("argmax", ["a", "b", "c"], multi_label=True) == ("argmax", None)
    with pytest.raises(InputError, match="'prevalence' needs the validation prevalence"):
        from_record({"path": "m/metadata.json"}, ["a", "b"], 0.3)
    with pytest.raises(InputError, match=r"'prevalence'=1.5: the deployment's frequency"):
        from_record({"operating_point": {"prevalence": 0.5}}, ["a", "b"], 1.5)


def _two_class_npz(path, seed=0):
    """A two-class 28 px set, positive = a bright blob, with 25% positives in every split."""
    rng = np.random.default_rng(seed)

    def split(n):
        y = (np.arange(n) % 4 == 0).astype(np.int64)
        x = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
        x[y == 1, 8:20, 8:20] += 120
        return x, y[:, None]

    tr, va, te = split(64), split(32), split(32)
    np.savez(path, train_images=tr[0], train_labels=tr[1], val_images=va[0], val_labels=va[1], test_images=te[0],
             test_labels=te[1])
    return str(path)


def test_operating_point_travels_from_validation_to_evaluation_and_inference(tmp_path):
    data = _two_class_npz(tmp_path / "two.npz")
    root = tmp_path / "run"
    common = dict(data_format="medmnist", data_path=data, class_names=["normal", "pneumonia"], num_workers=0)
    run_bundle("vit_classification", "train.json", bundle_root=str(root), epochs=2, val_interval=1, batch_size=16,
               warmup_epochs=0, pretrained_ckpt="scratch", operating_point="sensitivity:0.75",
               temperature_scaling=True, **common)
    meta = json.load(open(root / "models" / "metadata.json"))["medmae_run"]
    point = meta["operating_point"]
    assert point["rule"] == "sensitivity:0.75" and point["positive_class"] == "pneumonia"
    assert point["epoch"] == meta["best_metric"]["epoch"] and point["prevalence"] == pytest.approx(0.25)
    assert point["sensitivity"] >= 0.75 and 0 <= point["threshold"] <= 1 and 0.05 < point["temperature"] < 20
    # the checkpoint carries it too (a resumed run keeps the point of its model.pt)
    ck = torch.load(root / "models" / "checkpoint_2.pt", weights_only=True)
    assert ck["best_model"]["operating_point"] == point

    # evaluation decides at the recorded threshold, with no flag repeated
    run_bundle("vit_classification", "evaluate.json", "evaluating", bundle_root=str(root), split="validation",
               **{k: v for k, v in common.items() if k != "class_names"})
    out = root / "eval" / "validation"
    metrics = json.load(open(out / "metrics.json"))
    assert metrics["operating_point"] == {"threshold": point["threshold"], "prior_shift": None,
                                          "temperature": point["temperature"]}
    rows = list(csv.DictReader(open(out / "predictions.csv")))
    # the written probabilities are the temperature-scaled ones; the threshold is on the model's own, so map it
    from medmae_ext.outputs.operating_point import with_temperature

    cut = float(with_temperature(torch.tensor([[1 - point["threshold"], point["threshold"]]], dtype=torch.float64),
                                 point["temperature"])[0, 1])
    assert rows and all(r["predicted"] == ("pneumonia" if float(r["p_pneumonia"]) >= cut - 1e-5 else "normal")
                        for r in rows)
    called = sum(r["predicted"] == "pneumonia" and r["label"] == "pneumonia" for r in rows)
    assert called / sum(r["label"] == "pneumonia" for r in rows) == pytest.approx(metrics["per_class"]["pneumonia"]["recall"])
    assert (out / "reliability.png").is_file() and len(metrics["calibration"]["reliability"]) == 10

    # a stated deployment prevalence corrects the probabilities; the threshold rule's decisions stay
    run_bundle("vit_classification", "evaluate.json", "evaluating", bundle_root=str(root), split="validation",
               prevalence=0.6, output_dir=str(root / "eval_shift"),
               **{k: v for k, v in common.items() if k != "class_names"})
    shifted = list(csv.DictReader(open(root / "eval_shift" / "validation" / "predictions.csv")))
    assert [r["predicted"] for r in shifted] == [r["predicted"] for r in rows]
    assert all(float(s["p_pneumonia"]) >= float(r["p_pneumonia"]) - 1e-6 for s, r in zip(shifted, rows))
    assert json.load(open(root / "eval_shift" / "validation" / "metrics.json"))["operating_point"]["prior_shift"] == [
        0.25, 0.6]

    # inference decides at the same threshold, on images given as files
    from PIL import Image

    images = tmp_path / "new"
    images.mkdir()
    val = np.load(data)["val_images"]
    for i in range(8):
        Image.fromarray(val[i]).save(images / f"x{i}.png")
    run_bundle("vit_classification", "inference.json", "run", bundle_root=str(root), input_dir=str(images),
               output_dir=str(root / "infer"), num_workers=0)
    inferred = list(csv.DictReader(open(root / "infer" / "predictions.csv")))
    assert len(inferred) == 8 and all(r["predicted"] == ("pneumonia" if float(r["pneumonia"]) >= cut - 1e-5
                                                         else "normal") for r in inferred)


def test_a_bad_rule_stops_before_training(tmp_path):
    data = _two_class_npz(tmp_path / "two.npz")
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file",
           os.path.join(BUNDLES, "vit_classification", "configs", "train.json"), "--bundle_root", str(tmp_path / "r"),
           "--data_format", "medmnist", "--data_path", data, "--class_names", "['normal','pneumonia']",
           "--operating_point", "sensitivity:95"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1, r.stderr[-2000:]
    assert "config id 'operating_point' must be one of argmax, youden" in r.stderr
    assert not os.path.exists(tmp_path / "r" / "models" / "model.pt")
