"""The served-model rule of MONAI Label training on its own (``ServedModelBaseline`` + ``BestModelSaver``), with a
network whose quality is known exactly, so that "a worse model never replaces the served one" is checked in both
directions; and MONAI Label detection. MONAI Label's own ``/train`` on the packed bundle, over HTTP, is
``tests/test_monai_label_server.py``.
"""

import torch
import pytest


def test_importing_monailabel_is_not_running_under_it():
    import importlib

    from medmae_ext.serving import under_monai_label

    importlib.import_module("monailabel.tasks.train.bundle")
    assert not under_monai_label(), "importing monailabel is not running under it"


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
