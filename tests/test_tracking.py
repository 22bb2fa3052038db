"""MONAI's experiment tracking as MONAI users call it (``--tracking mlflow``, SQLite store: MLflow 3 refuses the
``file:`` store), on every train and evaluate config: the loss, the learning rate and the metrics as metrics, the
run's settings as parameters, the run's pictures and reports as artifacts.

MLflow is optional (``requirements-tracking.txt``): the test skips where it is absent, and fails instead when
``MEDMAE_REQUIRE_MLFLOW=1`` (``.ci/run`` installs it and sets that)."""

import json
import os
import shlex
import subprocess
import sys

import pytest
from conftest import REPO

# MONAI imports mlflow in every process where it is installed (``monai.handlers.mlflow_handler``, 0.8 s each), so
# .ci/run installs it into an environment of its own on top of .venv (.venv-tracking: .venv's packages + MLflow) and
# the rest of the suite runs without it; here, the bundles run with that environment's Python
TRACKING_ENV = os.environ.get("MEDMAE_TRACKING_ENV", os.path.join(REPO, ".venv-tracking"))


@pytest.fixture(scope="module")
def python():
    """A Python that has MLflow: the tracking environment's, else this one where MLflow is installed here."""
    candidates = [os.path.join(TRACKING_ENV, "bin", "python"), sys.executable]
    for py in candidates:
        if os.path.isfile(py) and subprocess.run([py, "-c", "import mlflow, medmae_ext"], capture_output=True).returncode == 0:
            return py
    if os.environ.get("MEDMAE_REQUIRE_MLFLOW") == "1":
        pytest.fail(f"no Python with mlflow and medmae among {candidates} (.ci/run builds {TRACKING_ENV})")
    pytest.skip("mlflow is not installed (optional: requirements-tracking.txt)")


READ_RUNS = """
import json, sys
from mlflow.tracking import MlflowClient
c = MlflowClient(sys.argv[1])
def files(run_id, path=None):
    out = []
    for a in c.list_artifacts(run_id, path):
        out += files(run_id, a.path) if a.is_dir else [a.path]
    return out
print(json.dumps([{"id": r.info.run_id, "metrics": r.data.metrics, "params": r.data.params, "files": files(r.info.run_id)}
                  for e in c.search_experiments() for r in c.search_runs([e.experiment_id])]))
"""


def _runs(python, uri):
    """Every run in the store at ``uri``, read with MLflow's client in the tracking environment."""
    r = subprocess.run([python, "-c", READ_RUNS, uri], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


# the flags as README "Experiment tracking" gives them
FLAGS = "--tracking mlflow --tracking_uri sqlite:///$PWD/mlruns.db"


def _bundle(python, args, root):
    """The bundle command with README's tracking flags, run in ``root``'s parent (its ``$PWD``)."""
    command = " ".join([shlex.quote(python), "-m", "monai.bundle", "run", *map(shlex.quote, args),
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
def test_mlflow_tracking_of_training_and_evaluation(bundle, python, tmp_path):
    assert FLAGS in open(os.path.join(REPO, "README.md")).read().replace("\n", " ")
    config, args, loss, param, artifact = CASES[bundle]
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    root = tmp_path / bundle
    configs = [os.path.join(REPO, "bundles", c) for c in ([config] if isinstance(config, str) else config)]
    _bundle(python, ["training", "--config_file", configs[0] if len(configs) == 1 else str(configs), *args], root)
    (train,) = [r for r in _runs(python, uri) if loss in r["metrics"]]
    assert "lr_group_0" in train["metrics"]  # the learning rate per optimiser group
    assert param in train["params"] and "synthetic" in train["params"]["data_source"]
    assert any(f.endswith(artifact) for f in train["files"]), train["files"]
    if bundle in ("mae_pretrain", "msmae_pretrain"):
        return
    evaluate = str([os.path.join(REPO, "bundles", p) for p in (config, f"{bundle}/configs/evaluate.json")])
    _bundle(python, ["evaluating", "--config_file", evaluate], root)
    metric = "mean_auc" if bundle == "vit_classification" else "mean_dice"
    scored = [r for r in _runs(python, uri) if r["id"] != train["id"] and metric in r["metrics"]]
    assert scored and scored[0]["params"].get("model_file", "").endswith("model.pt")
    assert any(f.endswith("metrics.json") for f in scored[0]["files"]), scored[0]["files"]
