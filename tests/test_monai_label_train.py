"""MONAI Label trains the packed unetr_segmentation bundle: MONAI Label 0.8.5's own ``BundleTrainTask`` over its own
``LocalDatastore`` (labels saved through ``save_label``, what ``PUT /datastore/label`` calls), in-process, as the
server's ``/train`` runs it, two sessions in a row in the same bundle folder.

And the served-model rule on its own (``ServedModelBaseline`` + ``BestModelSaver``) with a network whose quality is
known exactly, so that "a worse model never replaces the served one" is checked in both directions.
"""

import glob
import logging
import os
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import REPO, captured_warnings, initial_weights

B = "unetr_segmentation"


@pytest.fixture
def monai_label_app(tmp_path, synth3d):
    """A MONAI Label app folder holding the packed bundle (no weights: MONAI Label trains it), and a datastore of
    4 synthetic CT volumes whose labels were saved through the datastore API."""
    from test_unetr_bundle import _placeholder_torchvision

    _placeholder_torchvision()
    from monailabel.datastore.local import LocalDatastore

    r = subprocess.run([sys.executable, "scripts/pack_bundle.py", "--bundle", B, "--out", str(tmp_path / "dist"),
                        "--zip", "False"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    bundle = tmp_path / "app" / "model" / B
    shutil.copytree(tmp_path / "dist" / B, bundle)
    studies = tmp_path / "studies"
    os.makedirs(studies)
    images = sorted(glob.glob(os.path.join(synth3d, "imagesTr", "*.nii.gz")))[:4]
    for im in images:
        shutil.copy(im, studies)
    ds = LocalDatastore(str(studies), extensions=("*.nii.gz",))
    for im in images:
        name = os.path.basename(im)
        ds.save_label(name.replace(".nii.gz", ""), os.path.join(synth3d, "labelsTr", name), "final", {})
    assert len(ds.datalist()) == 4
    return str(bundle), ds


def _train(bundle, ds, **request):
    from monailabel.tasks.train.bundle import BundleTrainTask

    task = BundleTrainTask(bundle, conf={})
    assert task.is_valid()
    return task({"model": B, "device": "cpu", "multi_gpu": False, "val_split": 0.5, **request}, ds)


def test_monai_label_trains_the_packed_bundle_twice(monai_label_app, tmp_path_factory):
    from monailabel.tasks.train.bundle import BundleTrainTask

    from medmae_ext.serving import under_monai_label

    assert not under_monai_label(), "importing monailabel is not running under it"
    bundle, ds = monai_label_app
    # MONAI Label's train options show the bundle's displayable_configs: the pretrained encoder is one of them
    assert BundleTrainTask(bundle, conf={}).config()["pretrained_ckpt"] == "auto"
    encoder = initial_weights(tmp_path_factory, "mae_pretrain", "train_3d.json")
    models = os.path.join(bundle, "models")
    # session 1: one epoch, shorter than val_interval (5): model.pt is still written (validated at the end)
    with captured_warnings("medmae_ext", logging.INFO) as said:
        # (no model.pt yet: nothing to load; MONAI Label 0.8.5 fails on pretrained=False)
        _train(bundle, ds, max_epochs=1, pretrained=True, pretrained_ckpt=encoder)
    assert os.path.isfile(os.path.join(models, "model.pt"))
    assert any("validating it so that it can become model.pt" in m for m in said)
    # resume state lives out of models/, where MONAI Label lists every *.pt as a model to load
    assert sorted(os.path.basename(p) for p in glob.glob(os.path.join(models, "*.pt"))) == ["model.pt"]
    (ck_path,) = glob.glob(os.path.join(models, "monailabel", "checkpoint_*.pt"))
    ck = torch.load(ck_path, weights_only=True)
    # the schedule and the run identity follow MONAI Label's train#trainer#max_epochs (1), not the config's epochs
    iters = ck["trainer"]["iteration"]
    assert ck["lr_scheduler"]["t_total"] == iters and ck["run"]["epochs"] == 1
    assert ck["run"]["init"].startswith(f"encoder of {encoder}")  # the displayable pretrained_ckpt was used
    served = torch.load(os.path.join(models, "model.pt"), weights_only=True)

    # session 2, same folder, 2 epochs, starting from the served model (MONAI Label's CheckpointLoader): a fresh run,
    # not a resume of session 1 ("Epoch count ... larger than max_epochs" before); the served model is validated on
    # this session's validation data first, and replaced only if an epoch beats it
    with captured_warnings("medmae_ext", logging.INFO) as said:
        _train(bundle, ds, max_epochs=2, pretrained=True, pretrained_ckpt="auto")
    text = "\n".join(said)
    assert "resuming from" not in text
    baseline = [ln for ln in text.splitlines() if "served model" in ln and "val_mean_dice=" in ln]
    assert baseline, text[-3000:]
    served_dice = float(baseline[0].split("val_mean_dice=")[1].split()[0].rstrip(";"))
    after = torch.load(os.path.join(models, "model.pt"), weights_only=True)
    replaced = any(not torch.equal(after[k], served[k]) for k in served)
    improved = "new best val_mean_dice" in text
    assert replaced == improved, f"served {served_dice}: model.pt replaced={replaced}, a better epoch={improved}"
    assert sorted(os.path.basename(p) for p in glob.glob(os.path.join(models, "*.pt"))) == ["model.pt"]


def test_served_model_is_replaced_only_by_a_better_one(tmp_path):
    """A network whose validation metric is known: the served weights score 1.0, the run's weights 0.5, then 1.5."""
    from ignite.engine import Engine, Events
    from monai.engines import SupervisedEvaluator
    from monai.handlers import from_engine
    from ignite.metrics import Average

    from medmae_ext.checkpoints import BestModelSaver, finite_greater
    from medmae_ext.serving import EndOfRunValidation, ServedModelBaseline

    net = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.constant_(net.weight, 1.0)
    torch.save(net.state_dict(), tmp_path / "model.pt")  # the served model: metric 1.0
    torch.nn.init.constant_(net.weight, 0.5)  # the new run starts worse
    data = [{"image": torch.ones(1, 1), "label": torch.zeros(1, 1)}]
    metric = Average(output_transform=lambda out: from_engine(["pred"])(out)[0].mean())
    evaluator = SupervisedEvaluator(device="cpu", val_data_loader=data, network=net, key_val_metric={"score": metric},
                                    metric_cmp_fn=finite_greater, decollate=False)
    saver = BestModelSaver(str(tmp_path), net)
    saver.attach(evaluator)
    trainer = Engine(lambda e, b: None)
    ServedModelBaseline(evaluator, net, saver, str(tmp_path)).attach(trainer)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: evaluator.run(e.state.epoch))
    EndOfRunValidation(evaluator, 1, net, str(tmp_path)).attach(trainer)
    trainer.run([0], max_epochs=1)
    assert torch.equal(net.weight, torch.full((1, 1), 0.5)), "the run's own weights are restored after the baseline"
    assert evaluator.state.best_metric == pytest.approx(1.0) and evaluator.state.best_metric_epoch == 0
    assert torch.load(tmp_path / "model.pt", weights_only=True)["weight"].item() == 1.0  # worse run: kept
    torch.nn.init.constant_(net.weight, 1.5)
    trainer = Engine(lambda e, b: None)
    ServedModelBaseline(evaluator, net, saver, str(tmp_path)).attach(trainer)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: evaluator.run(e.state.epoch))
    trainer.run([0], max_epochs=1)
    assert torch.load(tmp_path / "model.pt", weights_only=True)["weight"].item() == 1.5  # better run: replaced
