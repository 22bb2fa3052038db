"""The README's recipes on the user's own data, run exactly as written (commands copied from README.md), in a copy of
the repository (its bundles, scripts and medmae_ext: the bundles write into the copy) next to a link to ../shared;
the data the recipes name (my_xrays/, my_ct/, my_labels/) is made by the test. The CT recipe and the unetr "Real CT"
block need ../shared/data (skipped where it is absent, e.g. a user's clone)."""

import json
import os
import re
import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import BUNDLES, REPO
from PIL import Image

sys.path.insert(0, os.path.join(REPO, "scripts"))
from readme_commands import readme_commands  # noqa: E402

SHARED = os.path.join(os.path.dirname(REPO), "shared")
CT = os.path.join(SHARED, "data", "ct")
needs_ct = pytest.mark.skipif(not os.path.isdir(CT), reason="../shared/data is not present")


def _repo_copy(tmp_path):
    """The bundles, scripts and medmae_ext in a fresh folder next to a link to ../shared, as a developer's checkout
    has them (``python -m monai.bundle`` run there imports that medmae_ext, whose bundles are the copy's)."""
    repo = tmp_path / "repo"
    shutil.copytree(BUNDLES, repo / "bundles", ignore=shutil.ignore_patterns("data", "models", "eval", "logs", "runs"))
    shutil.copytree(os.path.join(REPO, "scripts"), repo / "scripts")
    shutil.copytree(os.path.join(REPO, "medmae_ext"), repo / "medmae_ext", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(os.path.join(REPO, "LICENSE"), repo / "LICENSE")
    if os.path.isdir(SHARED):
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


def _xray_folders(repo, per_class=40, size=28, seed=0):
    """my_xrays/normal|pneumonia/*.png (pneumonia: bright opacities) and new_xrays/*.png, 8-bit like X-ray PNGs."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    for k, cls in enumerate(("normal", "pneumonia")):
        os.makedirs(repo / "my_xrays" / cls)
        for i in range(per_class):
            img = rng.integers(20, 110, (size, size)).astype(np.uint8)
            if k:
                cy, cx = rng.integers(7, size - 7, 2)
                img[(yy - cy) ** 2 + (xx - cx) ** 2 < 25] = 220
            Image.fromarray(img).save(repo / "my_xrays" / cls / f"{cls}_{i:03d}.png")
    os.makedirs(repo / "new_xrays")
    for i in range(5):
        Image.fromarray(rng.integers(20, 110, (size, size)).astype(np.uint8)).save(repo / "new_xrays" / f"x{i}.png")


def test_png_folder_recipe_runs_as_written(tmp_path):
    """README: a folder of X-ray PNGs -> MAE -> classifier -> evaluation -> predictions. The classifier, its
    evaluation and its predictions repeat no size or class flag: sizes from the encoder's record, classes from the
    folders, then everything from the classifier's record."""
    cmds = readme_commands("### A folder of X-ray PNGs")
    assert len(cmds) == 4 and all(c.startswith("python -m monai.bundle run") for c in cmds)
    assert all("--img_size" not in c and "--class_names" not in c for c in cmds[1:])
    repo = _repo_copy(tmp_path)
    _xray_folders(repo)
    outputs = _run_all(cmds, repo)
    b = repo / "bundles" / "vit_classification"
    assert "from the pretraining run record" in outputs[1] and "loaded from encoder of" in outputs[1]
    record = json.load(open(b / "models" / "metadata.json"))
    run = record["medmae_run"]
    assert run["settings"]["img_size"] == [28, 28] and run["settings"]["patch_size"] == [4, 4]
    assert run["settings"]["class_names"] == ["normal", "pneumonia"] and run["status"] == "finished"
    assert run["label_source"].endswith("normal/ -> 0 normal, pneumonia/ -> 1 pneumonia")
    m = json.load(open(b / "eval" / "test" / "metrics.json"))
    assert m["split"] == "test" and set(m["per_class"]) == {"normal", "pneumonia"}
    rows = open(b / "eval" / "predictions.csv").read().splitlines()
    assert rows[0] == "image,normal,pneumonia,predicted" and len(rows) == 6


def _ct_data(repo):
    """my_ct/: a CT volume and a CT DICOM series of the shared set; my_labels/: stand-in atlas labels on the shared
    CT, of which UNETR trains on the DICOM series (the same scan as example_ct.nii.gz) and validates on ct_cropped:
    every kind of input the recipe names, each once (the suite's time)."""
    os.makedirs(repo / "my_ct")
    for name in ("ct_cropped.nii.gz", "example_ct_dicom"):
        os.symlink(os.path.join(CT, name), repo / "my_ct" / name)
    r = subprocess.run([sys.executable, "scripts/make_atlas_demo.py", "--ct_dir", CT, "--out_dir", "my_labels"],
                       cwd=repo, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    datalist = json.load(open(repo / "my_labels" / "datalist.json"))
    datalist["training"] = [it for it in datalist["training"] if os.path.isdir(it["image"])]
    assert len(datalist["training"]) == 1, datalist
    json.dump(datalist, open(repo / "my_labels" / "datalist.json", "w"))


@needs_ct
def test_ct_recipe_runs_as_written(tmp_path):
    """README: CT volumes / a DICOM series -> 3D MAE at 3 mm -> UNETR -> masks. UNETR takes the spacing and window
    from the encoder's record, its inference from UNETR's own record (no flag repeated)."""
    cmds = readme_commands("### CT volumes or DICOM series")
    assert len(cmds) == 3 and "--pixdim" in cmds[0] and all("--pixdim" not in c for c in cmds[1:])
    repo = _repo_copy(tmp_path)
    _ct_data(repo)
    outputs = _run_all(cmds, repo)
    b = repo / "bundles"
    assert "loaded from encoder of" in outputs[1] and "/mae_pretrain/models/3d/model.pt" in outputs[1]
    settings = json.load(open(b / "unetr_segmentation" / "models" / "metadata.json"))["medmae_run"]["settings"]
    assert settings["pixdim"] == [3, 3, 3] and settings["label_map"] == {"5": 1, "1": 2, "2": 3, "3": 3, "52": 4}
    seg = nib.load(b / "unetr_segmentation" / "eval" / "example_ct_dicom_seg.nii.gz")
    assert seg.shape == (512, 512, 20)  # on the series' own grid


@needs_ct
def test_unetr_real_ct_recipe_runs_as_written(tmp_path):
    """bundles/unetr_segmentation/docs: atlas-id labels on real CT (and a DICOM series in the datalist) train and
    evaluate through --label_map, which the evaluation reads from the run record; the same training without the map
    stops before the first iteration."""
    cmds = readme_commands("## Real CT", "bundles/unetr_segmentation/docs/README.md")
    assert len(cmds) == 3 and "--label_map" in cmds[1] and "--label_map" not in cmds[2]
    repo = _repo_copy(tmp_path)
    _run_all(cmds, repo)
    dl = json.load(open(repo / "atlas_demo" / "datalist.json"))
    assert any(os.path.isdir(it["image"]) for it in dl["training"])  # the DICOM series, as a datalist image
    b = repo / "bundles" / "unetr_segmentation"
    settings = torch.load(b / "models" / "checkpoint_1.pt", weights_only=True)["run"]["settings"]
    assert '"label_map": {"1": 2, "2": 3, "3": 3, "5": 1, "52": 4}' in settings
    rows = open(b / "eval" / "validation" / "dice_per_item.csv").read().splitlines()
    assert rows[0] == "item,liver,spleen,kidney,aorta,mean" and len(rows) == 2 and "ct_cropped" in rows[1]
    without = re.sub(r' --label_map "[^"]*"', "", cmds[1]).replace("--resume False", "--bundle_root bundles/x")
    r = subprocess.run(["bash", "-c", without], cwd=repo, capture_output=True, text=True, timeout=900)
    assert r.returncode == 1
    err = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert err[-2].startswith("ERROR: ") and err[-1].startswith("(full traceback: ")  # the message alone, then where
    assert "example_ct_atlas.nii.gz has values [5, 6, 52, 117] outside the classes 0..4" in err[-2]
    assert not os.path.exists(repo / "bundles" / "x" / "models")
