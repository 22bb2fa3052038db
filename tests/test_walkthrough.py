"""The README's real-data walk-through, run exactly as written (commands copied from README.md), in a copy of the
bundles next to a link to ../shared so that a developer's own bundle outputs are never touched. Skipped where
../shared/data is absent (a user's clone)."""

import json
import os
import re
import shutil
import subprocess
import sys

import nibabel as nib
import pytest
import torch
from conftest import BUNDLES, REPO

sys.path.insert(0, os.path.join(REPO, "scripts"))
from readme_commands import readme_commands  # noqa: E402

SHARED = os.path.join(os.path.dirname(REPO), "shared")
pytestmark = pytest.mark.skipif(not os.path.isdir(os.path.join(SHARED, "data", "ct")),
                                reason="../shared/data is not present")


def _repo_copy(tmp_path):
    """The bundles, scripts and medmae_ext in a fresh folder next to a link to ../shared, as a developer's checkout
    has them (``python -m monai.bundle`` run there imports that medmae_ext, whose bundles are the copy's)."""
    repo = tmp_path / "repo"
    shutil.copytree(BUNDLES, repo / "bundles", ignore=shutil.ignore_patterns("data", "models", "eval", "logs", "runs"))
    shutil.copytree(os.path.join(REPO, "scripts"), repo / "scripts")
    shutil.copytree(os.path.join(REPO, "medmae_ext"), repo / "medmae_ext", ignore=shutil.ignore_patterns("__pycache__"))
    os.symlink(SHARED, tmp_path / "shared")
    return repo


def _run_all(cmds, repo) -> list[str]:
    """Run each command in ``repo`` as a shell would; every one must succeed. Returns their outputs."""
    outputs = []
    for cmd in cmds:
        r = subprocess.run(["bash", "-c", cmd], cwd=repo, capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, f"{cmd}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
        outputs.append(r.stdout + r.stderr)
    return outputs


def _walkthrough():
    cmds = readme_commands("## Real data walk-through")
    assert len(cmds) == 7 and all(c.startswith("python -m monai.bundle run") for c in cmds)
    return cmds


def test_walkthrough_2d_runs_as_written(tmp_path):
    """The 2D chain (MAE, MSMAE, fine-tuning from the MAE encoder, evaluation); independent of the 3D chain, so the
    two run as separate tests (in parallel under pytest -n)."""
    cmds = _walkthrough()[:4]
    assert all("pneumoniamnist" in c for c in cmds)
    repo = _repo_copy(tmp_path)
    outputs = _run_all(cmds, repo)
    b = repo / "bundles"
    assert "initialisation: 90 encoder tensors loaded from encoder of" in outputs[2]  # the MAE encoder, said so
    m = json.load(open(b / "vit_classification" / "eval" / "validation" / "metrics.json"))
    assert m["num_samples"] == 524 and set(m["per_class"]) == {"normal", "pneumonia"}
    assert all(0 <= v["recall"] <= 1 for v in m["per_class"].values())
    assert json.load(open(b / "vit_classification" / "models" / "metadata.json"))["network_data_format"][
        "inputs"]["image"]["spatial_shape"] == [28, 28]


def test_walkthrough_3d_runs_as_written(tmp_path):
    """The 3D chain: MAE on the real CT/MRI/DICOM files, UNETR from that encoder, inference on the DICOM series."""
    cmds = _walkthrough()[4:]
    repo = _repo_copy(tmp_path)
    outputs = _run_all(cmds, repo)
    b = repo / "bundles"
    assert "loaded from encoder of" in outputs[1] and "/mae_pretrain/models/3d/model.pt" in outputs[1]
    seg = nib.load(b / "unetr_segmentation" / "eval" / "example_ct_dicom_seg.nii.gz")
    assert seg.shape == (512, 512, 20)


def test_unetr_real_ct_recipe_runs_as_written(tmp_path):
    """bundles/unetr_segmentation/docs: atlas-id labels on real CT (and a DICOM series in the datalist) train and
    evaluate through --label_map; the same training without it stops before the first iteration."""
    cmds = readme_commands("## Real CT", "bundles/unetr_segmentation/docs/README.md")
    assert len(cmds) == 3 and "--label_map" in cmds[1] and "--label_map" in cmds[2]
    repo = _repo_copy(tmp_path)
    _run_all(cmds, repo)
    dl = json.load(open(repo / "atlas_demo" / "datalist.json"))
    assert any(os.path.isdir(it["image"]) for it in dl["training"])  # the DICOM series, as a datalist image
    b = repo / "bundles" / "unetr_segmentation"
    assert "label_map [(1, 2), (2, 3), (3, 3), (5, 1), (52, 4)]" in torch.load(
        b / "models" / "checkpoint_1.pt", weights_only=True)["run"]["data"]
    rows = open(b / "eval" / "validation" / "mean_dice_raw.csv").read().splitlines()
    assert len(rows) == 2 and "ct_cropped" in rows[1]  # one validation case, scored with the mapped labels
    without = re.sub(r' --label_map "[^"]*"', "", cmds[1]).replace("--resume False", "--bundle_root bundles/x")
    r = subprocess.run(["bash", "-c", without], cwd=repo, capture_output=True, text=True, timeout=900)
    assert r.returncode != 0
    err = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert "example_ct_atlas.nii.gz has values [5, 6, 52, 117] outside the classes 0..4" in err[-1]
    assert not os.path.exists(repo / "bundles" / "x" / "models")
