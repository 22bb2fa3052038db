"""vit_classification: fine-tune from a pretrained encoder, evaluate, inference, TorchScript export, MSMAE masked
fine-tuning, multi-label, DDP."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPO, bundle_config, captured_warnings, exception_chain, initial_weights, raised, run_bundle
from PIL import Image
from medmae_ext.errors import InputError

B = "vit_classification"
FAST = dict(epochs=1, epoch_length=2, num_workers=0, batch_size=4, val_interval=1)


@pytest.fixture(scope="module")
def mae_ckpt(tmp_path_factory):
    """A mae_pretrain model.pt of the default 2D size."""
    return initial_weights(tmp_path_factory, "mae_pretrain", "train.json")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, synth2d, mae_ckpt):
    root = tmp_path_factory.mktemp("vitcls")
    wf = run_bundle(B, "train.json", bundle_root=str(root), dataset_dir=synth2d, pretrained_ckpt=mae_ckpt, **FAST)
    return root, wf


def test_train_from_pretrained_encoder(trained, mae_ckpt):
    root, wf = trained
    assert wf.parser.get_parsed_content("train#trainer").state.iteration == 2
    assert os.path.isfile(root / "models" / "model.pt") and os.path.isfile(root / "models" / "checkpoint_1.pt")
    sd = torch.load(root / "models" / "model.pt", weights_only=True)
    assert "head.weight" in sd and sd["head.weight"].shape == (3, 192)
    # the optimizer decays the learning rate layer by layer: head fastest, patch embedding slowest
    lrs = [g["initial_lr"] for g in wf.parser.get_parsed_content("optimizer").param_groups]
    assert max(lrs) / min(lrs) == pytest.approx(0.75 ** -7, rel=1e-6)



def test_missing_pretrained_checkpoint_is_named(tmp_path, synth2d):
    with pytest.raises(Exception) as info:
        run_bundle(B, "train.json", bundle_root=str(tmp_path), dataset_dir=synth2d,
                   pretrained_ckpt=str(tmp_path / "nowhere" / "model.pt"), **FAST)
    msgs = [str(e) for e in exception_chain(info.value) if isinstance(e, InputError)]
    assert msgs and "nowhere/model.pt" in msgs[0] and "'pretrained_ckpt'" in msgs[0]


def test_evaluate_writes_report(trained, synth2d):
    root, _ = trained
    wf = run_bundle(B, "evaluate.json", run_id="evaluating", bundle_root=str(root), dataset_dir=synth2d,
                    num_workers=0)
    m = json.load(open(root / "eval" / "test" / "metrics.json"))
    assert m["num_samples"] == 9 and 0 <= m["accuracy"] <= 1 and 0 <= m["macro_f1"] <= 1
    assert set(m["per_class"]) == {"normal", "nodule", "opacity"}
    assert np.asarray(m["confusion_matrix"]).sum() == 9
    assert Image.open(root / "eval" / "test" / "confusion_matrix.png").size[0] > 200
    assert wf.parser.get_parsed_content("evaluator").state.metrics["accuracy"] == m["accuracy"]
    # each sample with its id, and intervals (the evaluation's defaults)
    assert m["bootstrap_resamples"] == 1000 and m["ci95"]["accuracy"][0] <= m["accuracy"] <= m["ci95"]["accuracy"][1]
    rows = list(csv.reader(open(root / "eval" / "test" / "predictions.csv")))
    assert rows[0] == ["id", "label", "p_normal", "p_nodule", "p_opacity", "predicted"] and len(rows) == 10
    test_ids = [it["id"] for it in json.load(open(os.path.join(synth2d, "datalist.json")))["test"]]
    assert sorted(r[0] for r in rows[1:]) == sorted(test_ids)
    assert sum(r[1] == r[5] for r in rows[1:]) == round(m["accuracy"] * 9)


def test_inference_writes_probability_csv(trained, synth2d):
    root, _ = trained
    run_bundle(B, "inference.json", run_id="run", bundle_root=str(root), input_dir=os.path.join(synth2d, "images"),
               num_workers=0)
    rows = list(csv.reader(open(root / "eval" / "predictions.csv")))
    assert rows[0] == ["image", "normal", "nodule", "opacity", "predicted"] and len(rows) == 61
    probs = np.array([[float(v) for v in r[1:4]] for r in rows[1:]])
    assert np.allclose(probs.sum(1), 1, atol=1e-4)
    assert all(r[4] == ["normal", "nodule", "opacity"][int(np.argmax(p))] for r, p in zip(rows[1:], probs))


def test_inference_on_empty_folder_names_it(tmp_path, trained):
    from medmae_ext.data import DatalistError

    root, _ = trained
    os.makedirs(tmp_path / "empty")
    with pytest.raises(Exception) as info:
        run_bundle(B, "inference.json", run_id="run", bundle_root=str(root), input_dir=str(tmp_path / "empty"),
                   num_workers=0)
    msgs = [str(e) for e in exception_chain(info.value) if isinstance(e, DatalistError)]
    assert msgs and "no image file or DICOM series folder matches" in msgs[0] and "empty" in msgs[0]


def test_ckpt_export_torchscript_matches(trained):
    root, _ = trained
    ts = root / "models" / "model.ts"
    cmd = [sys.executable, "-m", "monai.bundle", "ckpt_export", "network_def", "--filepath", str(ts),
           "--ckpt_file", str(root / "models" / "model.pt"), "--meta_file", bundle_config(B, "metadata.json"),
           "--config_file", bundle_config(B, "inference.json"), "--bundle_root", str(root)]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    from monai.bundle import ConfigParser

    scripted = torch.jit.load(str(ts))
    p = ConfigParser()
    p.read_config(bundle_config(B, "inference.json"))
    p["bundle_root"] = str(root)
    net = p.get_parsed_content("network_def")
    net.load_state_dict(torch.load(root / "models" / "model.pt", weights_only=True))
    net.eval()
    x = torch.rand(3, 1, 64, 64)
    with torch.no_grad():
        assert torch.allclose(scripted(x), net(x), atol=1e-5)


def test_msmae_masked_finetuning_drops_tokens_in_training_only(tmp_path, synth2d, mae_ckpt):
    from monai.bundle import ConfigWorkflow

    wf = ConfigWorkflow(config_file=bundle_config(B, "train.json"), meta_file=bundle_config(B, "metadata.json"),
                        logging_file=bundle_config(B, "logging.conf"), run_id="training", bundle_root=str(tmp_path),
                        dataset_dir=synth2d, pretrained_ckpt=mae_ckpt, msmae_finetune=True,
                        **{**FAST, "epochs": 2, "attention_interval": 1})
    wf.initialize()
    seen = {"train": [], "eval": []}
    net = wf.parser.get_parsed_content("network")
    net.encoder.blocks[0].register_forward_hook(
        lambda m, i, o: seen["train" if m.training else "eval"].append(i[0].shape[1]))
    wf.run()
    cache = wf.parser.get_parsed_content("attention_cache")
    assert len(cache) == 42 and cache.epoch == 1  # refreshed before epochs 0 and 1 (interval 1)
    assert set(seen["train"]) == {1 + 16}  # CLS + 25% of 64 patches
    assert 1 + 64 in set(seen["eval"])  # validation (and attention) use every token


def test_train_from_scratch_and_multilabel_chestxray14(tmp_path):
    from medmae_ext.data import CHESTXRAY14_CLASSES

    rng = np.random.default_rng(0)
    rows = ["Image Index,Finding Labels"]
    for i in range(48):
        name = f"{i // 2:08d}_{i % 2:03d}.png"  # two images per patient: splits keep them together
        (tmp_path / "images").mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (80, 80), dtype=np.uint8)).save(tmp_path / "images" / name)
        rows.append(f"{name},{['No Finding', 'Mass|Nodule', 'Effusion'][(i // 2) % 3]}")
    (tmp_path / "Data_Entry_2017.csv").write_text("\n".join(rows))
    with captured_warnings("medmae_ext") as said:
        wf = run_bundle(B, "train.json", bundle_root=str(tmp_path / "b"), data_format="chestxray14",
                        data_path=str(tmp_path / "Data_Entry_2017.csv"),
                        data_kwargs={"image_dir": str(tmp_path / "images")}, class_names=CHESTXRAY14_CLASSES,
                        multi_label=True, pretrained_ckpt=None, **FAST)
    assert isinstance(wf.parser.get_parsed_content("loss"), torch.nn.BCEWithLogitsLoss)
    assert wf.parser.get_parsed_content("train#trainer").state.iteration == 2
    ckpt = torch.load(tmp_path / "b" / "models" / "checkpoint_1.pt", weights_only=True)
    assert ckpt["network"]["head.weight"].shape[0] == 14
    # 4 validation images leave most of the 14 findings absent: macro AUC is NaN, and a NaN never selects a model;
    # the run still ends with a model to serve: its final weights, said so
    assert wf.parser.get_parsed_content("validate#evaluator").state.metrics["val_auc"] != \
        wf.parser.get_parsed_content("validate#evaluator").state.metrics["val_auc"]
    final = torch.load(tmp_path / "b" / "models" / "model.pt", weights_only=True)
    assert all(torch.equal(final[k], v) for k, v in ckpt["network"].items())
    assert any("no validation gave a finite metric" in m and "final weights" in m for m in said)


def test_classification_report_numbers(tmp_path):
    from types import SimpleNamespace

    from medmae_ext.outputs.reports import ClassificationReport

    rep = ClassificationReport(str(tmp_path), ["a", "b"])
    rep._reset(None)
    preds = [[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]]
    labels = [[1, 0], [1, 0], [0, 1], [0, 1]]
    engine = SimpleNamespace(state=SimpleNamespace(output=[{"pred": torch.tensor(p), "label": torch.tensor(y)}
                                                           for p, y in zip(preds, labels)], metrics={}))
    rep._collect(engine)
    m = rep(engine)
    assert m["accuracy"] == 0.75 and m["confusion_matrix"] == [[2, 0], [1, 1]]
    assert m["per_class"]["a"]["f1"] == pytest.approx(0.8) and m["per_class"]["b"]["f1"] == pytest.approx(2 / 3)
    assert m["mean_auc"] == pytest.approx(1.0) and engine.state.metrics["macro_f1"] == pytest.approx((0.8 + 2 / 3) / 2)


def test_the_report_holds_metatensor_outputs_as_plain_tensors(tmp_path):
    """The engine's outputs are MONAI MetaTensors after the post-transforms; the report keeps plain tensors (the
    bootstrap rescores them a thousand times, and MetaTensor's per-operation bookkeeping made that 2-3x slower) and
    gives the same numbers and intervals as from plain tensors."""
    from monai.data import MetaTensor

    from medmae_ext.outputs.statistics import as_vector

    assert type(as_vector(MetaTensor(torch.tensor([0.2, 0.8])))) is torch.Tensor
    rng = np.random.default_rng(0)
    labels = [[1, 0] if i % 3 else [0, 1] for i in range(60)]
    preds = [[p, 1 - p] for p in rng.uniform(0, 1, 60).tolist()]
    meta = _report_on(tmp_path / "meta", preds, labels, wrap=MetaTensor, bootstrap=200)
    plain = _report_on(tmp_path / "plain", preds, labels, bootstrap=200)
    assert meta["ci95"] == plain["ci95"] and meta["mean_auc"] == plain["mean_auc"]


def _report_on(tmp_path, preds, labels, ids=None, wrap=torch.as_tensor, **kwargs):
    """The report of an engine whose outputs are ``wrap`` (a tensor type) of ``preds`` and ``labels``."""
    from types import SimpleNamespace

    from medmae_ext.outputs.reports import ClassificationReport

    rep = ClassificationReport(str(tmp_path), ["normal", "pneumonia"], **kwargs)
    rep._reset(None)
    output = [{"pred": wrap(torch.tensor(p, dtype=torch.float32)), "label": wrap(torch.tensor(y))}
              for p, y in zip(preds, labels)]
    batch = [{"id": i} for i in ids] if ids else None
    engine = SimpleNamespace(state=SimpleNamespace(output=output, batch=batch, metrics={}))
    rep._collect(engine)
    return rep(engine)


def test_evaluation_writes_each_sample_and_95_percent_intervals(tmp_path):
    """Constructed so the answer is known: 400 samples, 300 right (accuracy 0.75, binomial sd 0.0217); the per-sample
    file holds each id, its label, its probabilities and its decision; the same file gives the same interval."""
    rng = np.random.default_rng(1)
    labels = [[1, 0] if i % 2 else [0, 1] for i in range(400)]
    right = rng.permutation([True] * 300 + [False] * 100)
    preds = [[0.8, 0.2] if (y[0] == 1) == r else [0.3, 0.7] for y, r in zip(labels, right)]
    ids = [f"img_{i:03d}" for i in range(400)]
    m = _report_on(tmp_path, preds, labels, ids, samples_file="predictions.csv", bootstrap=500)
    assert m["accuracy"] == pytest.approx(0.75) and m["bootstrap_resamples"] == 500
    lo, hi = m["ci95"]["accuracy"]
    assert lo < 0.75 < hi and hi - lo == pytest.approx(2 * 1.96 * (0.75 * 0.25 / 400) ** 0.5, abs=0.012)
    assert set(m["ci95"]) == {"accuracy", "macro_f1", "mean_auc", "recall_normal", "recall_pneumonia"}
    assert all(a <= m[k] <= b for k, (a, b) in m["ci95"].items() if k in m)
    assert m["ci95"] == _report_on(tmp_path / "again", preds, labels, ids, bootstrap=500)["ci95"]
    rows = open(tmp_path / "predictions.csv").read().splitlines()
    assert rows[0] == "id,label,p_normal,p_pneumonia,predicted" and len(rows) == 401
    first = rows[1].split(",")
    assert first[0] == "img_000" and first[1] == "pneumonia" and first[4] == ("pneumonia" if right[0] else "normal")
    assert sum(r.split(",")[1] == r.split(",")[4] for r in rows[1:]) == 300
    # a perfect classifier: every resample scores 1
    perfect = _report_on(tmp_path / "p", [[0.9, 0.1] if y[0] else [0.1, 0.9] for y in labels], labels, bootstrap=50)
    assert perfect["ci95"]["accuracy"] == [1.0, 1.0] and perfect["ci95"]["mean_auc"] == [1.0, 1.0]
    # training-time validation reports stay cheap: no interval, no per-sample file unless asked
    plain = _report_on(tmp_path / "v", preds, labels)
    assert "ci95" not in plain and not os.path.exists(tmp_path / "v" / "predictions.csv")


def test_calibration_error_and_overcalling_are_reported(tmp_path):
    labels = [[1, 0] if i < 50 else [0, 1] for i in range(100)]  # 50% normal
    # calibrated: confidence 0.8 on every sample, 80% of the decisions right -> ECE 0
    right = [i % 5 != 0 for i in range(100)]
    calibrated = [[0.8, 0.2] if (y[0] == 1) == r else [0.2, 0.8] for y, r in zip(labels, right)]
    cal = _report_on(tmp_path / "c", calibrated, labels)["calibration"]
    assert cal["ece"] == pytest.approx(0.0, abs=1e-6) and cal["bins"] == 10
    # over-confident: confidence 0.95, 60% right -> ECE 0.35
    right = [i % 5 not in (0, 1) for i in range(100)]
    confident = [[0.95, 0.05] if (y[0] == 1) == r else [0.05, 0.95] for y, r in zip(labels, right)]
    assert _report_on(tmp_path / "o", confident, labels)["calibration"]["ece"] == pytest.approx(0.35, abs=1e-6)
    # a model that over-calls pneumonia: its mean probability is above the observed 50%
    overcall = [[0.3, 0.7]] * 100
    cal = _report_on(tmp_path / "x", overcall, labels)["calibration"]
    assert cal["mean_probability"]["pneumonia"] == pytest.approx(0.7) and cal["observed_frequency"]["pneumonia"] == 0.5


def test_msmae_finetune_warns_when_few_tokens_are_kept(tmp_path):
    from monai.bundle import ConfigParser

    from medmae_ext.bundle.checks import MIN_KEPT_TOKENS, warn_few_kept_tokens

    with captured_warnings("medmae_ext.bundle.checks") as said:
        assert warn_few_kept_tokens(True, [28, 28], [4, 4], 0.45, 0.3) == 12  # 49 patches, 25% kept
        assert warn_few_kept_tokens(True, [224, 224], [16, 16], 0.45, 0.3) == MIN_KEPT_TOKENS  # the paper's setting
        assert warn_few_kept_tokens(False, [28, 28], [4, 4], 0.45, 0.3) == 49  # every token: nothing to say
    assert len(said) == 1 and "keeps 12 of 49 tokens" in said[0] and "--msmae_finetune False" in said[0]
    # the bundle's checks run it with the run's own sizes and ratios
    p = ConfigParser()
    p.read_config(bundle_config(B, "train.json"))
    p.update({"bundle_root": str(tmp_path), "pretrained_ckpt": "scratch", "img_size": [28, 28],
              "patch_size": [4, 4], "msmae_finetune": True})
    i = next(i for i, c in enumerate(p["checks"]) if "warn_few_kept_tokens" in c)
    with captured_warnings("medmae_ext.bundle.checks") as said:
        assert p.get_parsed_content(f"checks#{i}") == 12
    assert said and "keeps 12 of 49 tokens" in said[0]


def test_cnn_anchor_trains_and_its_record_builds_it_for_evaluation_and_inference(tmp_path, synth2d, mae_ckpt):
    """architecture resnet18 (the comparison's CNN anchor): MONAI's ResNet-18 with a small-input stem, from scratch;
    the record says so and evaluation / inference build a ResNet without the flag. An encoder cannot go into it."""
    from monai.networks.nets import ResNet

    root = tmp_path / "cnn"
    wf = run_bundle(B, "train.json", bundle_root=str(root), dataset_dir=synth2d, pretrained_ckpt="scratch",
                    architecture="resnet18", **FAST)
    net = wf.parser.get_parsed_content("network")
    assert isinstance(net, ResNet) and net.conv1.kernel_size == (3, 3) and net.conv1.stride == (1, 1)
    settings = json.load(open(root / "models" / "metadata.json"))["medmae_run"]["settings"]
    assert settings["architecture"] == "resnet18"
    run_bundle(B, "evaluate.json", "evaluating", bundle_root=str(root), dataset_dir=synth2d, split="validation",
               num_workers=0, bootstrap=0)
    assert json.load(open(root / "eval" / "validation" / "metrics.json"))["num_samples"] > 0
    run_bundle(B, "inference.json", run_id="run", bundle_root=str(root), input_dir=os.path.join(synth2d, "images"),
               num_workers=0)
    assert len(open(root / "eval" / "predictions.csv").read().splitlines()) == 61
    with pytest.raises(Exception) as info:
        run_bundle(B, "train.json", bundle_root=str(tmp_path / "bad"), dataset_dir=synth2d, pretrained_ckpt=mae_ckpt,
                   architecture="resnet18", **FAST)
    assert "ResNet has no ViT encoder to load the pretrained encoder" in raised(info, InputError)
    assert not os.path.exists(tmp_path / "bad" / "models" / "model.pt")


def test_label_smoothing_is_a_config_option(tmp_path, synth2d):
    wf = run_bundle(B, "train.json", run_id="initialize", bundle_root=str(tmp_path), dataset_dir=synth2d,
                    pretrained_ckpt="scratch", label_smoothing=0.1, num_workers=0)
    loss = wf.parser.get_parsed_content("loss")
    assert isinstance(loss, torch.nn.CrossEntropyLoss) and loss.label_smoothing == 0.1
    # a smoothed target: the loss of a perfect, confident prediction is no longer ~0
    logits = torch.tensor([[20.0, -20.0, -20.0]])
    assert float(loss(logits, torch.tensor([0]))) > 0.5
    with pytest.raises(Exception) as info:
        run_bundle(B, "train.json", run_id="initialize", bundle_root=str(tmp_path), dataset_dir=synth2d,
                   pretrained_ckpt="scratch", label_smoothing=1.5, num_workers=0).parser.get_parsed_content("loss")
    assert "config id 'label_smoothing' must be in [0, 1)" in raised(info, InputError)


def test_mixup_cutmix_and_random_erasing_are_config_options_the_trainer_applies(tmp_path, synth2d):
    """Issue 30 item 1: ``--mixup`` / ``--cutmix`` / ``--random_erasing`` / ``--rand_augment`` reach the training
    batch (soft labels that sum to one, a loss that takes them); the validation batches stay as they are."""
    from ignite.engine import Events

    wf = run_bundle(B, "train.json", run_id="initialize", bundle_root=str(tmp_path), dataset_dir=synth2d,
                    pretrained_ckpt="scratch", mixup=0.8, cutmix=1.0, random_erasing=0.25, label_smoothing=0.1,
                    rand_augment=2, rand_augment_magnitude=7, **FAST)
    ra = wf.parser.get_parsed_content("augmentation").rand_augment
    assert (ra.num_ops, ra.magnitude, ra.keys) == (2, 7.0, ["image", "attn"])
    rounds, do_round = [], ra.round
    ra.round = lambda batch, *a: rounds.append(batch["image"].shape) or do_round(batch, *a)
    trainer = wf.parser.get_parsed_content("train#trainer")
    seen, validated = [], []
    trainer.add_event_handler(Events.ITERATION_STARTED, lambda e: seen.append(e.state.batch["label"]))
    evaluator = wf.parser.get_parsed_content("validate#evaluator")
    evaluator.add_event_handler(Events.ITERATION_STARTED, lambda e: validated.append(e.state.batch["label"]))
    trainer.run()
    assert len(seen) == 2 and all(y.shape == (4, 3) and torch.allclose(y.sum(1), torch.ones(4)) for y in seen)
    assert any(((y > 0) & (y < 1)).any() for y in seen)  # mixed, not one-hot
    assert validated and all(y.dtype != torch.float32 or y.ndim == 1 for y in validated)
    assert float(trainer.state.output["loss"]) > 0
    assert rounds == [(4, 1, 64, 64)] * 4  # two rounds on each of the two training batches, none on validation
    with pytest.raises(Exception) as info:
        run_bundle(B, "train.json", bundle_root=str(tmp_path / "bad"), dataset_dir=synth2d, pretrained_ckpt="scratch",
                   mixup=-1, **FAST)
    assert "config id 'mixup' (a Beta alpha) must be >= 0" in raised(info, InputError)
    with pytest.raises(Exception) as info:
        run_bundle(B, "train.json", bundle_root=str(tmp_path / "bad2"), dataset_dir=synth2d, pretrained_ckpt="scratch",
                   rand_augment=-1, **FAST)
    assert "config id 'rand_augment' (operations per image) must be an integer >= 0" in raised(info, InputError)
    assert not os.path.exists(tmp_path / "bad2" / "models")  # stopped before training
