"""unetr_segmentation: encoder transfer from the 3D MAE checkpoint, train / evaluate / inference, MONAI Label."""

import csv
import glob
import json
import os
import shutil
import sys
import types

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import BUNDLES, bundle_config, initial_weights, run_bundle

B = "unetr_segmentation"
FAST = dict(epochs=1, epoch_length=2, num_workers=0, batch_size=1, num_samples=2, val_interval=1,
            sw_batch_size=4)


@pytest.fixture(scope="module")
def mae3d_ckpt(tmp_path_factory):
    """A mae_pretrain/train_3d.json model.pt."""
    return initial_weights(tmp_path_factory, "mae_pretrain", "train_3d.json")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, synth3d, mae3d_ckpt):
    root = tmp_path_factory.mktemp("unetr")
    wf = run_bundle(B, "train.json", bundle_root=str(root), dataset_dir=synth3d, pretrained_ckpt=mae3d_ckpt, **FAST)
    return root, wf


def test_network_starts_from_the_pretrained_encoder(synth3d, mae3d_ckpt):
    from monai.bundle import ConfigParser

    p = ConfigParser()
    p.read_config(bundle_config(B, "train.json"))
    p.update({"bundle_root": ".", "pretrained_ckpt": mae3d_ckpt, "device": "$torch.device('cpu')"})
    net = p.get_parsed_content("network")
    ck = torch.load(mae3d_ckpt, weights_only=True)
    for i in (0, 5, 11):
        assert torch.equal(net.vit.blocks[i].mlp.linear1.weight, ck[f"encoder.blocks.{i}.mlp.linear1.weight"])
    assert torch.equal(net.vit.patch_embedding.position_embeddings.data,
                       ck["encoder.patch_embedding.position_embeddings"])
    assert net.vit.patch_embedding.position_embeddings.requires_grad  # fine-tuned, not frozen


def _initial_unetr(synth3d, seed):
    from monai.bundle import ConfigParser

    p = ConfigParser()
    p.read_config(bundle_config(B, "train.json"))
    p.update({"bundle_root": ".", "pretrained_ckpt": None, "device": "$torch.device('cpu')", "seed": seed,
              "dataset_dir": synth3d})
    p.get_parsed_content("initialize")  # set_determinism(seed=@seed), as the workflow does before building
    return p.get_parsed_content("network").state_dict()


def test_seed_fixes_the_initial_weights(synth3d):
    a, b, c = _initial_unetr(synth3d, 0), _initial_unetr(synth3d, 0), _initial_unetr(synth3d, 1)
    key = "decoder2.transp_conv.conv.weight"
    vit = "vit.blocks.0.attn.qkv.weight"
    assert torch.equal(a[key], b[key]) and torch.equal(a[vit], b[vit])
    assert not torch.equal(a[key], c[key])


def test_train_two_iterations_and_best_model(trained):
    root, wf = trained
    assert wf.parser.get_parsed_content("train#trainer").state.iteration == 2
    ev = wf.parser.get_parsed_content("validate#evaluator")
    assert 0.0 <= ev.state.best_metric <= 1.0
    sd = torch.load(root / "models" / "model.pt", weights_only=True)
    assert "vit.blocks.11.attn.qkv.weight" in sd and "out.conv.conv.weight" in sd


def test_evaluate_reports_dice_per_case(trained, synth3d):
    root, _ = trained
    run_bundle(B, "evaluate.json", run_id="evaluating", bundle_root=str(root), dataset_dir=synth3d,
               num_workers=0)
    rows = list(csv.reader(open(root / "eval" / "validation" / "dice_per_item.csv")))
    assert rows[0] == ["item", "liver", "spleen", "kidney", "aorta", "mean"]  # organs by name, background excluded
    assert len(rows) == 1 + 2  # header + the two validation volumes
    metrics = json.load(open(root / "eval" / "validation" / "metrics.json"))
    assert metrics["split"] == "validation" and metrics["background"] == "excluded"


def test_inference_writes_label_maps(trained, synth3d, tmp_path):
    root, _ = trained
    src = sorted(glob.glob(os.path.join(synth3d, "imagesTr", "*.nii.gz")))[:1]
    os.makedirs(tmp_path / "in")
    shutil.copy(src[0], tmp_path / "in")
    run_bundle(B, "inference.json", run_id="run", bundle_root=str(root), input_dir=str(tmp_path / "in"),
               output_dir=str(tmp_path / "out"), num_workers=0)
    out = glob.glob(str(tmp_path / "out" / "*_seg.nii.gz"))
    assert len(out) == 1
    seg, img = nib.load(out[0]), nib.load(src[0])
    assert seg.shape[:3] == img.shape and np.allclose(seg.affine, img.affine)
    assert set(np.unique(np.asarray(seg.dataobj))) <= {0, 1, 2, 3, 4}


def test_mismatched_pretrained_encoder_is_reported(tmp_path, synth3d, mae3d_ckpt):
    with pytest.raises(Exception) as info:
        run_bundle(B, "train.json", bundle_root=str(tmp_path), dataset_dir=synth3d, pretrained_ckpt=mae3d_ckpt,
                   **{**FAST, "hidden_size": 192, "num_heads": 4})
    chain, e = [], info.value
    while e is not None:
        chain.append(str(e))
        e = e.__cause__ or e.__context__
    assert any("has shape" in m and "vit." in m and "in the checkpoint" in m for m in chain)


def _placeholder_torchvision():
    """monailabel.transform.post imports torchvision.utils (make_grid/save_image, used for 2D pathology pictures)
    at import time. No torchvision wheel loads beside torch 2.13.0+cpu, so register a placeholder module whose two
    functions raise if ever called; the bundle inference path never calls them."""
    if "torchvision" in sys.modules:
        return
    try:
        import torchvision  # noqa: F401
        return
    except Exception:
        pass

    def unavailable(*args, **kwargs):
        raise NotImplementedError("torchvision is not installed in this environment")

    tv, utils = types.ModuleType("torchvision"), types.ModuleType("torchvision.utils")
    utils.make_grid = utils.save_image = unavailable
    tv.utils = utils
    sys.modules["torchvision"], sys.modules["torchvision.utils"] = tv, utils


def test_monai_label_bundle_infer_task(trained, synth3d, tmp_path):
    _placeholder_torchvision()
    from monailabel.tasks.infer.bundle import BundleInferTask

    root, _ = trained
    app_model = tmp_path / "models" / B
    shutil.copytree(os.path.join(BUNDLES, B, "configs"), app_model / "configs")
    shutil.copytree(os.path.join(BUNDLES, B, "docs"), app_model / "docs")
    os.makedirs(app_model / "models")
    shutil.copy(root / "models" / "model.pt", app_model / "models" / "model.pt")
    task = BundleInferTask(str(app_model), conf={})
    assert task.is_valid()
    assert task.labels == {"liver": 1, "spleen": 2, "kidney": 3, "aorta": 4}
    image = sorted(glob.glob(os.path.join(synth3d, "imagesTr", "*.nii.gz")))[0]
    label_file, result = task({"image": image, "device": "cpu", "result_extension": ".nii.gz"})
    seg = nib.load(label_file)
    assert seg.shape[:3] == nib.load(image).shape
    assert set(np.unique(np.asarray(seg.dataobj))) <= {0, 1, 2, 3, 4}
    json.dumps(result, default=str)
