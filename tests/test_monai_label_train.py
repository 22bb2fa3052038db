"""The served-model rule of MONAI Label training on its own (``ServedModelBaseline`` + ``BestModelSaver``), with a
network whose quality is known exactly, so that "a worse model never replaces the served one" is checked in both
directions; and MONAI Label detection. MONAI Label's own ``/train`` on the packed bundle, over HTTP, is
``tests/test_monai_label_server.py``.
"""

import os

import pytest
import torch


def test_monai_label_session_is_told_by_the_items_alone(tmp_path, synth3d):
    """What makes a run a MONAI Label-style session (fresh, its own resume folder, no synthetic data written) is that
    its training items were given to it directly (MONAI Label overrides ``train#dataset#data``), decided by their
    type -- not by who imported or called what (a test session that imported monailabel, a notebook)."""
    import importlib

    from monai.bundle import ConfigParser

    from conftest import bundle_configs
    from medmae_ext.data import Datalist
    from medmae_ext.training.serving import data_supplied

    importlib.import_module("monailabel.tasks.train.bundle")  # imported: changes nothing
    assert data_supplied([{"image": "a.nii.gz", "label": "b.nii.gz"}]) and not data_supplied(Datalist())
    p = ConfigParser()
    p.read_config(bundle_configs("unetr_segmentation", "train.json"))
    p["bundle_root"] = str(tmp_path)
    p["data_path"] = os.path.join(synth3d, "datalist.json")
    assert p.get_parsed_content("monai_label") is False and p.get_parsed_content("resume_dir").endswith("models")
    p["train#dataset#data"] = [{"image": os.path.join(synth3d, "imagesTr", "ct_000.nii.gz"),
                                "label": os.path.join(synth3d, "labelsTr", "ct_000.nii.gz")}]
    p.parse(reset=True)
    assert p.get_parsed_content("monai_label") is True
    assert p.get_parsed_content("resume_dir") == os.path.join(str(tmp_path), "models", "monailabel")
    assert p.get_parsed_content("trained_on") == "monailabel:" + os.path.join(synth3d, "imagesTr")
    assert not os.path.exists(tmp_path / "data"), "no synthetic set is written for a session on given items"


def test_a_session_with_two_labelled_volumes_validates_on_one(tmp_path, synth3d):
    """MONAI Label's own split (its BundleTrainTask._partition_datalist, val_split 0.2 as Slicer sends it) leaves no
    validation volume out of 2 labelled ones: the bundle holds the last one out (logged) and trains on the other; with
    1 it stops before training with a reason that names what to do; a split with validation items is kept as sent."""
    from monai.bundle import ConfigParser
    from monailabel.tasks.train.bundle import BundleTrainTask

    from conftest import bundle_configs, captured_warnings

    items = [{"image": os.path.join(synth3d, "imagesTr", f"ct_00{i}.nii.gz"),
              "label": os.path.join(synth3d, "labelsTr", f"ct_00{i}.nii.gz")} for i in range(3)]

    def session(train, val):
        p = ConfigParser()
        p.read_config(bundle_configs("unetr_segmentation", "train.json"))
        p["bundle_root"] = str(tmp_path)
        p["train#dataset#data"] = train
        if val is not None:  # MONAI Label leaves the bundle's own list (synthetic default) for a negative val_split
            p["validate#dataset#data"] = val
        return p

    train, val = BundleTrainTask._partition_datalist(None, items[:2], {"val_split": 0.2})
    assert len(train) == 2 and val == []  # MONAI Label's premise: nothing to validate on
    p = session(train, val)
    with captured_warnings("medmae_ext.training.serving") as said:
        assert p.get_parsed_content("session") == {"train": items[:1], "validate": items[1:2]}
    assert len(said) == 1 and f"holding out {items[1]['image']} for validation" in said[0]
    assert list(p.get_parsed_content("train#dataset").data) == items[:1]
    assert list(p.get_parsed_content("validate#dataset").data) == items[1:2]
    assert "1 training items" in p.get_parsed_content("run_identity").data  # the run trained on what it says

    train, val = BundleTrainTask._partition_datalist(None, items[:1], {"val_split": 0.2})
    with pytest.raises(RuntimeError) as failed:  # MONAI's config expression error, raised from the bundle's
        session(train, val).get_parsed_content("session")
    assert "sent 1 labelled volume(s) and no validation volume: label at least 2" in str(failed.value.__cause__)

    train, val = BundleTrainTask._partition_datalist(None, items, {"val_split": -1})  # "the bundle's own list"
    assert val is None
    with pytest.raises(RuntimeError) as failed:
        session(train, val).get_parsed_content("session")
    assert "asked for the bundle's own validation list (val_split < 0)" in str(failed.value.__cause__)
    assert not os.path.exists(tmp_path / "data"), "the synthetic default is neither written nor read"

    train, val = BundleTrainTask._partition_datalist(None, items, {"val_split": 0.2})
    assert session(train, val).get_parsed_content("session") == {"train": train, "validate": val} and len(val) == 1
    # outside MONAI Label (the bundle's own datalist) an empty validation list is not filled from training
    from medmae_ext.training.serving import session_split

    assert session_split(items, [], monai_label=False) == {"train": items, "validate": []}


def test_served_model_is_replaced_only_by_a_better_one(tmp_path):
    """A network whose validation metric is known: the served weights score 1.0, the run's weights 0.5, then 1.5."""
    from ignite.engine import Engine, Events
    from monai.engines import SupervisedEvaluator
    from monai.handlers import from_engine
    from ignite.metrics import Average

    from medmae_ext.training.checkpoints import BestModelSaver, finite_greater
    from medmae_ext.training.serving import EndOfRunValidation, ServedModelBaseline

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
