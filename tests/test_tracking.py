"""MONAI's experiment tracking as MONAI users call it (``--tracking mlflow``, SQLite store: MLflow 3 refuses the
``file:`` store), on every train and evaluate config: the loss, the learning rate and the metrics as metrics, the
run's settings as parameters, the run's pictures and reports as artifacts.

MLflow is optional (``requirements-tracking.txt``): the test skips where it is absent, and fails instead when
``MEDMAE_REQUIRE_MLFLOW=1`` (``.ci/run`` installs it and sets that)."""

import os
import shlex
import subprocess
import sys

import pytest
from conftest import REPO


@pytest.fixture(scope="module")
def mlflow_client():
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        if os.environ.get("MEDMAE_REQUIRE_MLFLOW") == "1":
            pytest.fail("mlflow is not installed (pip install -r requirements-tracking.txt)")
        pytest.skip("mlflow is not installed (optional: requirements-tracking.txt)")
    return MlflowClient


def _runs(client, uri):
    c = client(uri)
    return c, [r for e in c.search_experiments() for r in c.search_runs([e.experiment_id])]


# the flags as README "Experiment tracking" gives them
FLAGS = "--tracking mlflow --tracking_uri sqlite:///$PWD/mlruns.db"


def _bundle(args, root):
    """The bundle command with README's tracking flags, run in ``root``'s parent (its ``$PWD``)."""
    command = " ".join([shlex.quote(sys.executable), "-m", "monai.bundle", "run", *map(shlex.quote, args),
                        "--bundle_root", shlex.quote(str(root)), "--num_workers", "0", FLAGS])
    r = subprocess.run(["bash", "-c", command], cwd=os.path.dirname(root), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]


CASES = {
    "mae_pretrain": ("mae_pretrain/configs/train.json", ["--epochs", "1", "--epoch_length", "2"], "train_loss",
                     "settings.img_size", ".png"),
    "vit_classification": ("vit_classification/configs/train.json", ["--epochs", "1", "--epoch_length", "2",
                                                                     "--pretrained_ckpt", "scratch"],
                           "train_loss", "settings.class_names", "confusion_matrix.png"),
    "unetr_segmentation": ("unetr_segmentation/configs/train.json", ["--epochs", "1", "--epoch_length", "1",
                                                                     "--pretrained_ckpt", "scratch"],
                           "train_loss", "settings.pixdim", ".json"),
}


@pytest.mark.parametrize("bundle", list(CASES))
def test_mlflow_tracking_of_training_and_evaluation(bundle, mlflow_client, tmp_path):
    assert FLAGS in open(os.path.join(REPO, "README.md")).read().replace("\n", " ")
    config, args, loss, param, artifact = CASES[bundle]
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    root = tmp_path / bundle
    configs = [os.path.join(REPO, "bundles", c) for c in ([config] if isinstance(config, str) else config)]
    _bundle(["training", "--config_file", configs[0] if len(configs) == 1 else str(configs), *args], root)
    client, runs = _runs(mlflow_client, uri)
    (train,) = [r for r in runs if loss in r.data.metrics]
    assert "lr_group_0" in train.data.metrics  # the learning rate per optimiser group
    assert param in train.data.params and "synthetic" in train.data.params["data_source"]

    def files(run, path=None):
        out = []
        for a in client.list_artifacts(run.info.run_id, path):
            out += files(run, a.path) if a.is_dir else [a.path]
        return out

    assert any(f.endswith(artifact) for f in files(train)), files(train)
    if bundle in ("mae_pretrain", "msmae_pretrain"):
        return
    evaluate = str([os.path.join(REPO, "bundles", p) for p in (config, f"{bundle}/configs/evaluate.json")])
    _bundle(["evaluating", "--config_file", evaluate], root)
    _, runs = _runs(mlflow_client, uri)
    metric = "mean_auc" if bundle == "vit_classification" else "mean_dice"
    scored = [r for r in runs if r.info.run_id != train.info.run_id and metric in r.data.metrics]
    assert scored and scored[0].data.params.get("model_file", "").endswith("model.pt")
    assert any(f.endswith("metrics.json") for f in files(scored[0])), files(scored[0])
