"""Class imbalance options (class-weighted loss, balanced sampling), the label-stratified selection split, and the
validation history / confusion-matrix picture a researcher reads during training."""

import collections
import glob
import json

import numpy as np
import pytest
import torch
from conftest import run_bundle
from medmae_ext.data import DatalistError, dataset_items, select_split
from medmae_ext.training.imbalance import balanced_sampler, class_weights, classification_loss
from medmae_ext.training.losses import MAELoss

FAST = dict(epochs=2, val_interval=1, num_workers=0, batch_size=8, warmup_epochs=0,
            pretrained_ckpt="scratch")


def _items(counts):
    return [{"image": f"{k}_{i}.png", "label": k, "id": f"{k}_{i}"} for k, n in enumerate(counts) for i in range(n)]


def test_balanced_weights_make_every_class_weigh_the_same():
    items = _items([10, 90])
    w = class_weights(items, 2, "balanced")
    assert torch.allclose(w, torch.tensor([100 / (2 * 10), 100 / (2 * 90)]))
    assert abs(float(w[0] * 10) - float(w[1] * 90)) < 1e-4  # the minority's total weight = the majority's
    assert class_weights(items, 2, "none") is None
    # multi-label: pos_weight = negatives / positives
    ml = [{"label": [1.0, 0.0]}] * 3 + [{"label": [0.0, 1.0]}]
    assert torch.allclose(class_weights(ml, 2, "balanced", multi_label=True), torch.tensor([1 / 3, 3.0]))


def test_weighted_loss_changes_the_gradient_towards_the_minority():
    items = _items([10, 90])
    logits, y = torch.zeros(4, 2, requires_grad=True), torch.tensor([0, 1, 1, 1])
    plain, weighted = classification_loss(items, 2, "none"), classification_loss(items, 2, "balanced")
    assert plain.weight is None and weighted.weight is not None
    g_plain = torch.autograd.grad(plain(logits, y), logits)[0]
    g_weighted = torch.autograd.grad(weighted(logits, y), logits)[0]
    # the one minority sample gets a larger share of the gradient under balanced weights
    assert g_weighted[0].abs().sum() / g_weighted.abs().sum() > 2 * g_plain[0].abs().sum() / g_plain.abs().sum()


def test_bad_weighting_names_the_config_id_and_the_empty_class():
    with pytest.raises(ValueError, match="'class_weighting'.*'inverse'"):
        class_weights(_items([5, 5]), 2, "inverse")
    with pytest.raises(DatalistError, match=r"class_weighting='balanced': classes \['normal'\] have no training item"):
        class_weights(_items([0, 5]), 2, "balanced", class_names=["normal", "pneumonia"])
    with pytest.raises(ValueError, match="balanced_sampling"):
        balanced_sampler(_items([5, 5]), 2, True, multi_label=True)


def test_balanced_sampler_draws_classes_equally_and_is_seeded():
    items = _items([20, 180])
    draws = list(balanced_sampler(items, 2, True, seed=3))
    assert len(draws) == 200
    share = sum(items[i]["label"] == 0 for i in draws) / len(draws)
    assert 0.4 < share < 0.6  # 10% of the items, about half of the draws
    assert draws == list(balanced_sampler(items, 2, True, seed=3))
    assert balanced_sampler(items, 2, False) is None


def test_msmae_head_class_weight_enters_the_cross_entropy():
    out = {"pred_masked": torch.zeros(2, 1, 4), "masked_index": torch.zeros(2, 1, dtype=torch.long),
           "logits": torch.tensor([[2.0, 0.0], [2.0, 0.0]])}
    target = {"image": torch.zeros(2, 1, 2, 2), "label": torch.tensor([0, 1])}
    plain = MAELoss([2, 2], ce_weight=1.0)(out, target)
    weighted = MAELoss([2, 2], ce_weight=1.0, class_weight=torch.tensor([0.1, 1.9]))(out, target)
    # weighted mean of the two samples' cross-entropies: the misclassified class-1 sample dominates
    ce = torch.nn.functional.cross_entropy(out["logits"], target["label"], reduction="none")
    assert torch.isclose(plain, ce.mean(), atol=1e-5)
    assert torch.isclose(weighted, (0.1 * ce[0] + 1.9 * ce[1]) / 2.0, atol=1e-5)


def test_select_split_is_stratified_disjoint_and_keeps_patients_together():
    items = _items([30, 270])
    val, train = select_split(items, "validation", 0.1, seed=1), select_split(items, "training", 0.1, seed=1)
    assert len(val) + len(train) == 300 and not {i["id"] for i in val} & {i["id"] for i in train}
    assert collections.Counter(i["label"] for i in val) == {0: 3, 1: 27}
    assert val == select_split(items, "validation", 0.1, seed=1) != select_split(items, "validation", 0.1, seed=2)
    grouped = [{**it, "patient": f"p{n // 3}"} for n, it in enumerate(items)]
    v = select_split(grouped, "validation", 0.2)
    t = select_split(grouped, "training", 0.2)
    assert not {i["patient"] for i in v} & {i["patient"] for i in t}


def test_select_frac_carves_validation_from_training_of_any_reader(tmp_path):
    path = tmp_path / "tiny.npz"
    rng = np.random.default_rng(0)
    np.savez(path, train_images=rng.integers(0, 255, (40, 8, 8), dtype=np.uint8),
             train_labels=np.array([[0]] * 8 + [[1]] * 32), val_images=np.zeros((6, 8, 8), np.uint8),
             val_labels=np.array([[0], [1]] * 3))
    kw = {"select_frac": 0.25, "select_seed": 0}
    val = dataset_items("medmnist", str(path), "validation", **kw)
    train = dataset_items("medmnist", str(path), "training", **kw)
    assert len(val) == 10 and len(train) == 30
    assert collections.Counter(int(i["label"]) for i in val) == {0: 2, 1: 8}
    assert len(dataset_items("medmnist", str(path), "validation")) == 6  # the file's own split, untouched
    with pytest.raises(DatalistError, match="select_frac"):
        dataset_items("medmnist", str(path), "training", select_frac=1.5)


def test_classification_bundle_weighted_loss_sampler_history_and_confusion_picture(tmp_path, synth2d):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    wf = run_bundle("vit_classification", "train.json", bundle_root=str(tmp_path), dataset_dir=synth2d,
                    class_weighting="balanced", balanced_sampling=True, **FAST)
    loss = wf.parser.get_parsed_content("loss")
    assert loss.weight is not None and loss.weight.shape == (3,)
    loader = wf.parser.get_parsed_content("train#dataloader")
    assert isinstance(loader.sampler, torch.utils.data.WeightedRandomSampler)
    rows = open(tmp_path / "eval" / "validation" / "history.csv").read().splitlines()
    assert rows[0].startswith("epoch,accuracy,macro_f1,mean_auc,recall_normal") and [r[0] for r in rows[1:]] == ["1", "2"]
    events = EventAccumulator(glob.glob(str(tmp_path / "logs"))[0], size_guidance={"images": 0}).Reload()
    assert [e.step for e in events.Images("validation/confusion_matrix")] == [1, 2]
    # evaluation of the same folder leaves the training history alone
    run_bundle("vit_classification", "evaluate.json", "evaluating", bundle_root=str(tmp_path), dataset_dir=synth2d,
               split="validation", num_workers=0)
    assert open(tmp_path / "eval" / "validation" / "history.csv").read().splitlines() == rows
    assert json.load(open(tmp_path / "eval" / "validation" / "metrics.json"))["num_samples"] > 0
