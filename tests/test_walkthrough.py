"""The README's real-data walk-through, run exactly as written (commands copied from README.md), in a copy of the
bundles next to a link to ../shared so that a developer's own bundle outputs are never touched. Skipped where
../shared/data is absent (a user's clone)."""

import json
import os
import re
import shutil
import subprocess

import nibabel as nib
import pytest
from conftest import BUNDLES, REPO

SHARED = os.path.join(os.path.dirname(REPO), "shared")
pytestmark = pytest.mark.skipif(not os.path.isdir(os.path.join(SHARED, "data", "ct")),
                                reason="../shared/data is not present")


def readme_commands(heading: str = "## Real data walk-through") -> list[str]:
    text = open(os.path.join(REPO, "README.md")).read()
    section = text[text.index(heading):]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [ln for ln in block.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def test_walkthrough_runs_as_written(tmp_path):
    cmds = readme_commands()
    assert len(cmds) == 7 and all(c.startswith("python -m monai.bundle run") for c in cmds)
    repo = tmp_path / "repo"
    shutil.copytree(BUNDLES, repo / "bundles", ignore=shutil.ignore_patterns("data", "models", "eval", "logs", "runs"))
    os.symlink(SHARED, tmp_path / "shared")
    outputs = []
    for cmd in cmds:
        r = subprocess.run(["bash", "-c", cmd], cwd=repo, capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, f"{cmd}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
        outputs.append(r.stdout + r.stderr)
    b = repo / "bundles"
    assert "initialisation: 90 encoder tensors loaded from encoder of" in outputs[2]  # the MAE encoder, said so
    m = json.load(open(b / "vit_classification" / "eval" / "validation" / "metrics.json"))
    assert m["num_samples"] == 524 and set(m["per_class"]) == {"normal", "pneumonia"}
    assert all(0 <= v["recall"] <= 1 for v in m["per_class"].values())
    assert json.load(open(b / "vit_classification" / "models" / "metadata.json"))["network_data_format"][
        "inputs"]["image"]["spatial_shape"] == [28, 28]
    assert "loaded from encoder of" in outputs[5] and "/mae_pretrain/models/3d/model.pt" in outputs[5]
    seg = nib.load(b / "unetr_segmentation" / "eval" / "example_ct_dicom_seg.nii.gz")
    assert seg.shape == (512, 512, 20)
