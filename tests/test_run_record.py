"""A trained model carries its own meaning (issue 24): classes, sizes and preprocessing are recorded with the weights
(``models/metadata.json``, ``medmae_run``) and every later step reads them -- evaluate, inference, both exports, the
pack and fine-tuning -- with no training flag repeated; a flag that contradicts the record stops naming both values.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPO, bundle_configs, raised, run_bundle
from PIL import Image

from medmae_ext.errors import InputError

SCHEMA = os.path.join(os.path.dirname(REPO), "shared", "monai", "meta_schema_20240725.json")


def _npz(path, n=(48, 16, 16), size=28, seed=0):
    """A MedMNIST-style ``.npz``: 2 classes, class 1 has a bright disc."""
    rng = np.random.default_rng(seed)
    arrays = {}
    yy, xx = np.mgrid[:size, :size]
    for split, count in zip(("train", "val", "test"), n):
        labels = np.arange(count) % 2
        imgs = rng.integers(0, 90, (count, size, size)).astype(np.uint8)
        for i in np.flatnonzero(labels):
            cy, cx = rng.integers(8, size - 8, 2)
            imgs[i][(yy - cy) ** 2 + (xx - cx) ** 2 < 20] = 230
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = imgs, labels[:, None]
    np.savez(path, **arrays)
    return str(path)


def _png_folder(root, classes=("normal", "pneumonia"), n=4):
    """``root/<class>/*.png``: each class its own intensity, so a label can be told from the image."""
    for k, c in enumerate(classes):
        os.makedirs(root / c, exist_ok=True)
        for i in range(n):
            Image.fromarray(np.full((28, 28), 40 + 150 * k + i, np.uint8)).save(root / c / f"{c}_{i}.png")
    return str(root)


def _cli(args, cwd=REPO, ok=True, timeout=900):
    r = subprocess.run([sys.executable, *map(str, args)], cwd=str(cwd), capture_output=True, text=True,
                       timeout=timeout)
    if ok:
        assert r.returncode == 0, f"{' '.join(map(str, args))}\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}"
    return r


def test_folder_labels_follow_class_names(tmp_path):
    """Item 1: with data_format 'folder' label k is the folder named class_names[k] (any case); names that are not the
    folders stop, naming both; without class_names the folder names (sorted) are the classes."""
    from medmae_ext.bundle.settings import Settings
    from medmae_ext.data import DatalistError, class_names_for, image_folder, label_source

    root = _png_folder(tmp_path / "set")
    reversed_ = image_folder(root, "all", classes=["pneumonia", "normal"])
    assert {it["id"].split("/")[0]: it["label"] for it in reversed_} == {"pneumonia": 0, "normal": 1}
    cased = image_folder(root, "all", classes=["Normal", "PNEUMONIA"])
    assert {it["id"].split("/")[0]: it["label"] for it in cased} == {"normal": 0, "pneumonia": 1}
    with pytest.raises(DatalistError, match=r"class_names \['cat', 'dog'\] do not match its class folders "
                                            r"\['normal', 'pneumonia'\]"):
        image_folder(root, "all", classes=["cat", "dog"])
    assert class_names_for("folder", root, Settings({"class_names": ["a", "b", "c"]})) == ["normal", "pneumonia"]
    recorded = Settings({"class_names": ["a", "b"]}, {"settings": {"class_names": ["pneumonia", "normal"]}})
    assert class_names_for("folder", root, recorded) == ["pneumonia", "normal"]  # a trained model's own order
    assert "pneumonia/ -> 0 pneumonia, normal/ -> 1 normal" in label_source("folder", root, ["pneumonia", "normal"])


def test_settings_check_names_the_id_and_both_values():
    from medmae_ext.bundle.settings import Settings

    s = Settings({"img_size": [64, 64], "patch_size": [8, 8]}, {"settings": {"img_size": [28, 28]}, "path": "r.json"},
                 config_id="ckpt_path")
    assert s.img_size == [28, 28] and s.patch_size == [8, 8]
    s.check({"img_size": (28, 28), "patch_size": [16, 16]})  # same value in another form; an unrecorded id
    with pytest.raises(InputError) as info:
        s.check({"img_size": [32, 32]})
    msg = str(info.value)
    assert "img_size: this run has [32, 32], the record has [28, 28]" in msg and "r.json" in msg
    assert "--intended_changes \"['img_size']\"" in msg
    s.check({"img_size": [32, 32]}, intended=["img_size"])
    with pytest.raises(InputError, match="not model settings"):
        s.check({}, intended=["epochs"])


def test_2d_chain_reads_the_record_at_every_step(tmp_path):
    """Items 2, 3 and 8, the way a user runs them: MAE at 28x28 / patch 4, then the classifier from that encoder with
    two named classes; evaluate, inference, ckpt_export, torch.export, the pack (and the model zoo's checks of it)
    and the packed bundle's inference all follow the record: no size or class flag is repeated after training."""
    npz = _npz(tmp_path / "xray.npz")
    mae, vit = tmp_path / "runs" / "mae_pretrain", tmp_path / "runs" / "vit_classification"
    data = ["--data_format", "medmnist", "--data_path", npz]
    _cli(["-m", "monai.bundle", "run", "training", "--config_file", "bundles/mae_pretrain/configs/train.json", *data,
          "--img_size", "[28,28]", "--patch_size", "[4,4]", "--epochs", "1", "--bundle_root", mae])
    r = _cli(["-m", "monai.bundle", "run", "training", "--config_file",
              "bundles/vit_classification/configs/train.json", *data, "--class_names", "['normal','pneumonia']",
              "--epochs", "2", "--val_interval", "1", "--bundle_root", vit])
    out = r.stdout + r.stderr
    assert "from the pretraining run record" in out and "img_size [28, 28], patch_size [4, 4]" in out, out[-3000:]
    record = json.load(open(vit / "models" / "metadata.json"))
    run = record["medmae_run"]
    assert run["status"] == "finished" and run["settings"]["img_size"] == [28, 28]
    assert run["settings"]["class_names"] == ["normal", "pneumonia"] and run["settings"]["patch_size"] == [4, 4]
    assert record["network_data_format"]["inputs"]["image"]["spatial_shape"] == [28, 28]
    assert record["network_data_format"]["outputs"]["pred"]["channel_def"] == {"0": "normal", "1": "pneumonia"}
    assert "min-max scaled per image" in record["network_data_format"]["inputs"]["image"]["channel_def"]["0"]

    evaluate = "['bundles/vit_classification/configs/train.json','bundles/vit_classification/configs/evaluate.json']"
    _cli(["-m", "monai.bundle", "run", "evaluating", "--config_file", evaluate, *data, "--bundle_root", vit])
    m = json.load(open(vit / "eval" / "test" / "metrics.json"))
    assert m["split"] == "test" and set(m["per_class"]) == {"normal", "pneumonia"} and m["num_samples"] == 16
    r = _cli(["-m", "monai.bundle", "run", "evaluating", "--config_file", evaluate, *data, "--bundle_root", vit,
              "--img_size", "[32,32]"], ok=False)
    assert r.returncode == 1 and "img_size: this run has [32, 32], the record has [28, 28]" in r.stderr

    pngs = tmp_path / "new"
    os.makedirs(pngs)
    imgs = np.load(npz)["test_images"][:3]
    for i, im in enumerate(imgs):
        Image.fromarray(im).save(pngs / f"x{i}.png")
    _cli(["-m", "monai.bundle", "run", "--config_file", "bundles/vit_classification/configs/inference.json",
          "--input_dir", pngs, "--bundle_root", vit])
    rows = open(vit / "eval" / "predictions.csv").read().splitlines()
    assert rows[0] == "image,normal,pneumonia,predicted" and len(rows) == 4

    ts = vit / "models" / "model.ts"
    _cli(["-m", "monai.bundle", "ckpt_export", "network_def", "--filepath", ts, "--ckpt_file",
          vit / "models" / "model.pt", "--meta_file", vit / "models" / "metadata.json", "--config_file",
          "bundles/vit_classification/configs/inference.json", "--bundle_root", vit])
    x = torch.rand(2, 1, 28, 28)
    assert torch.jit.load(str(ts))(x).shape == (2, 2)

    pt2 = vit / "models" / "model.pt2"
    _cli(["-m", "medmae_ext.outputs.export", "--config_file", "bundles/vit_classification/configs/inference.json",
          "--ckpt_file", vit / "models" / "model.pt", "--filepath", pt2])
    from medmae_ext.outputs.export import load_program

    program, meta = load_program(str(pt2))
    raw = torch.as_tensor(imgs[:, None].astype(np.float32))
    with torch.no_grad():  # item 8: the program does the min-max itself: 0-255 and /255 inputs decide alike
        torch.testing.assert_close(program(raw), program(raw / 255.0), rtol=1e-4, atol=1e-5)
    assert any("applies the intensity step itself" in s for s in meta["preprocessing"])
    assert meta["network_data_format"]["inputs"]["image"]["spatial_shape"] == [28, 28]

    lic = tmp_path / "lic.txt"
    lic.write_text("test data, no licence\n")
    _cli(["scripts/pack_bundle.py", "--bundle", "vit_classification", "--out", tmp_path / "dist", "--models_dir",
          vit / "models", "--data_license", lic, "--weights_url", "https://example.org/w"])
    packed = tmp_path / "dist" / "vit_classification"
    cfg = json.load(open(packed / "configs" / "train.json"))
    assert cfg["model_defaults"]["img_size"] == [28, 28] and cfg["model_defaults"]["class_names"] == ["normal",
                                                                                                     "pneumonia"]
    assert json.load(open(packed / "configs" / "metadata.json"))["network_data_format"]["inputs"]["image"][
        "spatial_shape"] == [28, 28]
    alone = tmp_path / "alone"
    import shutil

    shutil.copytree(packed, alone / "vit_classification")
    if os.path.isfile(SCHEMA):
        out = _cli([os.path.join(REPO, "tests", "zoo_checks.py"), alone / "vit_classification", SCHEMA, "import",
                    "metadata", "net_in_out", "export"], cwd=tmp_path).stdout
        assert "OK net_in_out" in out and "OK export" in out
    _cli(["-m", "monai.bundle", "run", "--config_file", "configs/inference.json", "--input_dir", pngs],
         cwd=alone / "vit_classification")
    assert open(alone / "vit_classification" / "eval" / "predictions.csv").read().splitlines()[0] == (
        "image,normal,pneumonia,predicted")


def test_3d_chain_spacing_window_and_modality_travel(tmp_path, synth3d):
    """Item 5: a 3D encoder pretrained at 3 mm: UNETR fine-tuned from it resamples to 3 mm, and so do its evaluation
    and inference (read from UNETR's own record); another spacing with that encoder stops naming both."""
    small = dict(epochs=1, epoch_length=1, num_workers=0, dataset_dir=synth3d)
    run_bundle("mae_pretrain", "train_3d.json", bundle_root=str(tmp_path / "mae_pretrain"), batch_size=1,
               max_items=2, pixdim=[3.0, 3.0, 3.0], **small)
    enc = tmp_path / "mae_pretrain" / "models" / "3d" / "model.pt"
    assert json.load(open(enc.parent / "metadata.json"))["medmae_run"]["settings"]["pixdim"] == [3, 3, 3]
    unetr = str(tmp_path / "unetr_segmentation")
    net = dict(batch_size=1, num_samples=1, val_interval=1, feature_size=8)
    wf = run_bundle("unetr_segmentation", "train.json", bundle_root=unetr, **net, **small)  # pretrained_ckpt auto
    assert wf.parser.get_parsed_content("pixdim") == [3, 3, 3]
    assert "encoder of" in wf.parser.get_parsed_content("run_identity").init
    settings = json.load(open(os.path.join(unetr, "models", "metadata.json")))["medmae_run"]["settings"]
    assert settings["pixdim"] == [3, 3, 3] and settings["a_min"] == -175 and settings["modality"] == "CT"
    for config, run_id in (("evaluate.json", "evaluating"), ("inference.json", "run")):
        extra = {"input_dir": os.path.join(synth3d, "imagesTr"), "input_glob": "ct_000.nii.gz"} if run_id == "run" \
            else {"dataset_dir": synth3d}
        wf = run_bundle("unetr_segmentation", config, run_id, bundle_root=unetr, num_workers=0, **extra)
        assert wf.parser.get_parsed_content("pixdim") == [3, 3, 3]
        assert wf.parser.get_parsed_content("feature_size") == 8  # not a flag any more: from the record
    with pytest.raises(Exception) as info:
        run_bundle("unetr_segmentation", "train.json", bundle_root=str(tmp_path / "u2"), pixdim=[1.5, 1.5, 2.0],
                   pretrained_ckpt=str(enc), **net, **small)
    assert "pixdim: this run has [1.5, 1.5, 2], the record has [3, 3, 3]" in raised(info, InputError)


def _mr_like(path, shape=(48, 48, 24)):
    """An MR-like volume: no air, body intensities in the hundreds (like the shared TotalSegmentator MRI)."""
    import nibabel as nib

    rng = np.random.default_rng(0)
    vol = np.zeros(shape, np.float32)
    vol[6:-6, 6:-6, 3:-3] = rng.uniform(150, 800, (shape[0] - 12, shape[1] - 12, shape[2] - 6))
    nib.save(nib.Nifti1Image(vol, np.diag([3.0, 3.0, 3.0, 1.0])), str(path))
    return str(path)


def test_modality_chooses_the_intensity_and_is_checked(tmp_path):
    """Item 6: an MRI through the CT window stops naming the file; --modality MR normalises it per volume and the
    record says MR."""
    images = tmp_path / "mr"
    os.makedirs(images)
    _mr_like(images / "mr0.nii.gz")
    _mr_like(images / "mr1.nii.gz")
    args = dict(data_format="images", data_path=str(images), epochs=1, num_workers=0, batch_size=1, num_samples=1)
    with pytest.raises(Exception) as info:
        run_bundle("mae_pretrain", "train_3d.json", bundle_root=str(tmp_path / "ct"), **args)
    msg = raised(info, InputError)
    assert "mr0.nii.gz" in msg and "does not look like a CT in Hounsfield units" in msg and "--modality MR" in msg
    run_bundle("mae_pretrain", "train_3d.json", bundle_root=str(tmp_path / "mr_run"), modality="MR", **args)
    record = json.load(open(tmp_path / "mr_run" / "models" / "3d" / "metadata.json"))
    assert record["medmae_run"]["settings"]["modality"] == "MR"
    assert record["network_data_format"]["inputs"]["image"]["modality"] == "MR"
    assert any("z-score" in step for step in record["preprocessing"])


def test_a_killed_fresh_run_is_not_packed(tmp_path, synth2d):
    """Item 4: --resume False moves the earlier record with the weights; a fresh run killed after its first epoch
    leaves a record that says 'training', which the pack refuses (no stale 'synthetic' licence, no wrong size)."""
    from ignite.engine import Events
    from monai.bundle import ConfigWorkflow

    root = tmp_path / "vit"
    fast = dict(epochs=2, epoch_length=2, num_workers=0, batch_size=4, val_interval=1, dataset_dir=synth2d,
                pretrained_ckpt="scratch")
    run_bundle("vit_classification", "train.json", bundle_root=str(root), **fast)
    pack = [sys.executable, "scripts/pack_bundle.py", "--bundle", "vit_classification", "--out", str(tmp_path / "d"),
            "--models_dir", str(root / "models"), "--weights_url", "https://example.org/w"]
    assert subprocess.run(pack, cwd=REPO, capture_output=True, text=True).returncode == 0

    wf = ConfigWorkflow(config_file=bundle_configs("vit_classification", "train.json"), bundle_root=str(root),
                        resume=False, img_size=[32, 32], patch_size=[4, 4], **fast)
    wf.initialize()
    trainer = wf.parser.get_parsed_content("train#trainer")

    @trainer.on(Events.EPOCH_COMPLETED(once=1))
    def _killed(engine):
        raise KeyboardInterrupt("killed")

    with pytest.raises(KeyboardInterrupt):
        wf.run()
    previous = [os.path.join(dp, f) for dp, _, fs in os.walk(root / "models" / "previous") for f in fs]
    assert any(p.endswith("metadata.json") for p in previous), "the earlier record went with its weights"
    assert json.load(open(root / "models" / "metadata.json"))["medmae_run"]["status"] == "training"
    r = subprocess.run(pack, cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 1 and "has not finished (status 'training')" in r.stderr


def test_reports_name_the_split_they_scored(tmp_path, synth2d):
    """Item 7: the checkpoint-selection cut of training reports to eval/selection/ and says so; an evaluation of
    the validation split reports to eval/validation/ and says so: the two never share a folder."""
    root = str(tmp_path / "vit")
    run_bundle("vit_classification", "train.json", bundle_root=root, epochs=1, epoch_length=2, num_workers=0,
               batch_size=4, val_interval=1, dataset_dir=synth2d, pretrained_ckpt="scratch",
               data_kwargs={"select_frac": 0.2})
    sel = json.load(open(os.path.join(root, "eval", "selection", "metrics.json")))
    assert sel["split"] == "selection" and os.path.isfile(os.path.join(root, "eval", "selection", "history.csv"))
    run_bundle("vit_classification", "evaluate.json", "evaluating", bundle_root=root, num_workers=0,
               dataset_dir=synth2d, split="validation")
    val = json.load(open(os.path.join(root, "eval", "validation", "metrics.json")))
    assert val["split"] == "validation" and not os.path.exists(os.path.join(root, "eval", "validation", "history.csv"))


def test_segmentation_report_names_each_organ(tmp_path):
    """Item 7: per-organ Dice columns named by label_names, background excluded and said so."""
    from medmae_ext.outputs.segmentation_report import SegmentationReport

    names = {"0": "background", "1": "liver", "2": "spleen"}
    rep = SegmentationReport(names, output_dir=str(tmp_path), split="validation")

    class _E:  # a minimal engine
        class state:
            output, metrics = [], {}

    rep._reset(_E)
    label = torch.zeros(3, 4, 4, 4)
    label[0] = 1
    label[1, :2], label[0, :2] = 1, 0
    pred = label.clone()
    _E.state.output = [{"pred": pred, "label": label}]
    rep._collect(_E)
    s = rep(_E)
    assert s["background"] == "excluded" and s["dice_per_organ"]["liver"] == 1.0
    rows = open(tmp_path / "dice_per_item.csv").read().splitlines()
    assert rows[0] == "item,liver,spleen,mean" and rows[1].endswith(",1.0000,,1.0000")
    assert _E.state.metrics["dice_liver"] == 1.0
