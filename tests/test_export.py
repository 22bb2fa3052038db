"""The bundles' torch.export path (the successor of the deprecated TorchScript calls), run as the docs write it."""

import os
import re
import shutil
import subprocess

import pytest
import torch
from conftest import BUNDLES, REPO

from medmae_ext.outputs.export import load_program


@pytest.mark.parametrize("bundle,shape", [("vit_classification", (3, 1, 64, 64)),
                                          ("unetr_segmentation", (2, 1, 64, 64, 64))])
def test_docs_export_command_gives_a_program_equal_to_the_network(tmp_path, bundle, shape):
    from monai.bundle import ConfigParser

    text = open(os.path.join(BUNDLES, bundle, "docs", "README.md")).read()
    block = re.search(r"## Export with torch.export.*?```bash\n(.*?)```", text, re.S).group(1)
    cmds = [ln for ln in block.splitlines() if ln.strip()]
    assert len(cmds) == 1 and cmds[0].startswith("python -m medmae_ext.outputs.export")
    shutil.copytree(os.path.join(BUNDLES, bundle), tmp_path / "bundles" / bundle,
                    ignore=shutil.ignore_patterns("data", "models", "eval", "logs"))
    p = ConfigParser()
    p.read_config(os.path.join(BUNDLES, bundle, "configs", "inference.json"))
    p["bundle_root"] = str(tmp_path)
    torch.manual_seed(0)
    net = p.get_parsed_content("network_def").eval()
    os.makedirs(tmp_path / "bundles" / bundle / "models")
    torch.save(net.state_dict(), tmp_path / "bundles" / bundle / "models" / "model.pt")
    env = {**os.environ, "PYTHONPATH": REPO}
    r = subprocess.run(["bash", "-c", cmds[0]], cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Warning" not in r.stderr, r.stderr[-3000:]  # e.g. runpy's "found in sys.modules", torch.meshgrid
    module, meta = load_program(str(tmp_path / "bundles" / bundle / "models" / "model.pt2"))
    # another batch size than the export's example, in the stored intensity units: 0-255 for the X-ray classifier,
    # Hounsfield units for UNETR; the program applies the intensity step itself (per-image min-max / HU window)
    if bundle == "vit_classification":
        x = torch.rand(*shape) * 255
        lo, hi = x.flatten(1).amin(1).view(-1, 1, 1, 1), x.flatten(1).amax(1).view(-1, 1, 1, 1)
        expected = (x - lo) / (hi - lo)
    else:
        x = torch.rand(*shape) * 2000 - 1000
        expected = (x.clamp(-175, 250) + 175) / 425
    with torch.no_grad():
        torch.testing.assert_close(module(x), net(expected), rtol=1e-4, atol=1e-4)
    assert any("applies the intensity step itself" in step for step in meta["preprocessing"])
