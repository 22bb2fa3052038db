"""Silent wrong results in the training recipe and on real 3D inputs (issue 25), one test per item; items 1-2 are
in test_optim.py, item 3 in test_msmae.py (``test_attention_reaches_dataloader_workers``)."""

import glob
import json
import os
import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import REPO, bundle_configs, captured_warnings, place_trained_weights, raised, run_bundle

from medmae_ext.errors import InputError

SHARED_DICOM = os.path.join(os.path.dirname(REPO), "shared", "data", "ct", "example_ct_dicom")


def _batches_of(tmp_path, synth2d, kill_after=None, epochs=3):
    """mae_pretrain for ``epochs`` epochs; per iteration a digest of the batch and of its MAE mask. With
    ``kill_after``: stopped (an exception, like a kill) at the end of that epoch, after its checkpoint."""
    from ignite.engine import Events
    from monai.bundle import ConfigWorkflow

    wf = ConfigWorkflow(config_file=bundle_configs("mae_pretrain", "train.json"), bundle_root=str(tmp_path),
                        dataset_dir=synth2d, epochs=epochs, num_workers=0, batch_size=8, max_items=24)
    wf.initialize()
    trainer = wf.parser.get_parsed_content("train#trainer")
    seen = []

    @trainer.on(Events.ITERATION_COMPLETED)
    def _record(engine):
        out = engine.state.output["pred"]
        seen.append((engine.state.epoch, float(engine.state.batch["image"].sum()),
                     tuple(out["masked_index"][0].tolist())))

    if kill_after:
        @trainer.on(Events.EPOCH_COMPLETED(once=kill_after))
        def _kill(engine):
            raise KeyboardInterrupt("killed")

        with pytest.raises(KeyboardInterrupt):
            wf.run()
    else:
        wf.run()
    return seen


def test_a_resumed_run_sees_the_batches_of_an_uninterrupted_one(tmp_path, synth2d):
    """Item 4: data order, crops/flips and MAE masks of epoch 3 are the same whether the run got there in one go or
    was killed after epoch 2 and resumed (before: epoch 1's draws came back after every resume)."""
    from medmae_ext.training.runlock import release_run_lock

    whole = _batches_of(tmp_path / "whole", synth2d)
    first = _batches_of(tmp_path / "killed", synth2d, kill_after=2)
    release_run_lock(str(tmp_path / "killed" / "models"))  # the killed process is gone
    resumed = _batches_of(tmp_path / "killed", synth2d)
    assert [s for s in first if s[0] <= 2] == [s for s in whole if s[0] <= 2]
    assert resumed and {s[0] for s in resumed} == {3}
    assert resumed == [s for s in whole if s[0] == 3]
    assert [s for s in whole if s[0] == 3] != [s for s in whole if s[0] == 1]


def test_3d_learning_rate_counts_crops(tmp_path):
    """Item 5: the 3D rule base_lr x batch / 256 counts the crops a step trains on (batch_size x num_samples)."""
    from monai.bundle import ConfigParser

    for bundle, crops in (("mae_pretrain", 2), ("msmae_pretrain", 1)):
        p = ConfigParser()
        p.read_config(bundle_configs(bundle, "train_3d.json"))
        p["bundle_root"] = str(tmp_path)
        lr, base, batch = (p.get_parsed_content(k) for k in ("lr", "base_lr", "batch_size"))
        assert p.get_parsed_content("crops_per_item") == crops
        assert lr == pytest.approx(base * batch * crops / 256)


def test_mean_pooling_is_maes_fine_tuning_head():
    """Item 6: pooling 'mean' = fc_norm of the average of the patch tokens before the encoder's final norm (which is
    then unused and frozen); 'cls' = the CLS token after it."""
    from medmae_ext.networks import ViTClassifier

    torch.manual_seed(0)
    mean = ViTClassifier(2, 1, 16, 4, hidden_size=24, mlp_dim=48, num_layers=2, num_heads=2, pooling="mean").eval()
    x = torch.rand(3, 1, 16, 16)
    tokens = mean.encoder(x, final_norm=False)
    torch.testing.assert_close(mean(x), mean.head(mean.fc_norm(tokens[:, 1:].mean(1))))
    assert not any(p.requires_grad for p in mean.encoder.norm.parameters())
    cls = ViTClassifier(2, 1, 16, 4, hidden_size=24, mlp_dim=48, num_layers=2, num_heads=2, pooling="cls").eval()
    torch.testing.assert_close(cls(x), cls.head(cls.encoder(x)[:, 0]))
    with pytest.raises(ValueError, match="pooling"):
        ViTClassifier(2, 1, 16, 4, hidden_size=24, mlp_dim=48, num_layers=2, num_heads=2, pooling="max")


def test_an_impossible_spacing_stops_before_resampling(tmp_path):
    """Item 7: a 30 mm header made Spacingd ask for 55 GB and abort; now it stops naming the file, its spacing and
    the resampled size, in training and in inference."""
    images = tmp_path / "ct"
    os.makedirs(images)
    vol = np.full((60, 60, 60), -1000, np.float32)
    vol[10:50, 10:50, 10:50] = 40
    nib.save(nib.Nifti1Image(vol, np.diag([30.0, 30.0, 30.0, 1.0])), str(images / "huge.nii.gz"))
    nib.save(nib.Nifti1Image(vol, np.diag([30.0, 30.0, 30.0, 1.0])), str(images / "huge2.nii.gz"))
    with pytest.raises(Exception) as info:
        run_bundle("mae_pretrain", "train_3d.json", bundle_root=str(tmp_path / "run"), data_format="images",
                   data_path=str(images), epochs=1, num_workers=0, batch_size=1)
    msg = raised(info, InputError)
    assert "huge" in msg and "spacing [30.0, 30.0, 30.0] mm" in msg and "max_voxels" in msg and "(1200, 1200, 900)" in msg
    place_trained_weights(tmp_path / "inf", "unetr_segmentation", "train.json")
    with pytest.raises(Exception) as info:
        run_bundle("unetr_segmentation", "inference.json", "run", bundle_root=str(tmp_path / "inf"),
                   input_dir=str(images), num_workers=0)
    assert "huge" in raised(info, InputError)


@pytest.mark.skipif(not os.path.isdir(SHARED_DICOM), reason="../shared/data/ct/example_ct_dicom is not present")
def test_a_broken_dicom_series_is_refused_naming_the_slice(tmp_path):
    """Item 8: one unreadable slice (ITK silently built a 19-slice volume with a 2.11 mm spacing) or a missing slice
    stops naming the series and the slice."""
    from medmae_ext.data.dicom import check_dicom_series
    from medmae_ext.errors import ImageReadError

    series = tmp_path / "series"
    shutil.copytree(SHARED_DICOM, series)
    files = sorted(os.listdir(series))
    assert check_dicom_series(str(series)) == 20
    with open(series / files[7], "wb") as f:
        f.write(b"\0" * 300)
    with pytest.raises(ImageReadError, match=f"slice {files[7]} cannot be read"):
        check_dicom_series(str(series))
    os.remove(series / files[7])
    with pytest.raises(InputError, match="not evenly spaced.*slice\\(s\\) missing"):
        check_dicom_series(str(series))
    place_trained_weights(tmp_path / "inf", "unetr_segmentation", "train.json")
    with pytest.raises(Exception) as info:  # in a bundle: inference stops before writing a misplaced mask
        run_bundle("unetr_segmentation", "inference.json", "run", bundle_root=str(tmp_path / "inf"),
                   input_dir=str(series), num_workers=0)
    assert "not evenly spaced" in raised(info, InputError)
    assert not glob.glob(str(tmp_path / "inf" / "eval" / "*seg*"))


def test_a_two_channel_volume_exits_1_naming_the_file(tmp_path):
    """Item 9: an input error exits 1 (it was 134) with the file named."""
    images = tmp_path / "ct"
    os.makedirs(images)
    vol = np.full((40, 40, 40, 2), -1000, np.float32)
    nib.save(nib.Nifti1Image(vol, np.diag([1.5, 1.5, 2.0, 1.0])), str(images / "two_channels.nii.gz"))
    cfg = "['bundles/mae_pretrain/configs/train.json','bundles/mae_pretrain/configs/train_3d.json']"
    r = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", cfg,
                        "--data_format", "images", "--data_path", str(images), "--bundle_root", str(tmp_path / "r"),
                        "--num_workers", "0"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 1, r.stderr[-3000:]
    assert "two_channels.nii.gz" in r.stderr and "channel" in r.stderr


def _label_pair(folder, name, lab, spacing=(1.0, 1.0, 1.0), label_affine=None):
    img = np.where(lab > 0, 60, -1000).astype(np.float32)
    aff = np.diag([*spacing, 1.0])
    nib.save(nib.Nifti1Image(img, aff), str(folder / f"{name}_img.nii.gz"))
    nib.save(nib.Nifti1Image(lab.astype(np.uint8), aff if label_affine is None else label_affine),
             str(folder / f"{name}_lab.nii.gz"))
    return {"id": name, "image": str(folder / f"{name}_img.nii.gz"), "label": str(folder / f"{name}_lab.nii.gz")}


def test_class_volumes_are_logged_and_implausible_ones_warned(tmp_path):
    """Item 10: per-class volumes in mL after label_map; a class far outside the range its name implies is warned
    about (an adrenal gland mapped to 'aorta', the stomach to 'liver'); an organ cut by the field of view is not; an
    all-background training label is warned about, naming the file."""
    from medmae_ext.data import check_segmentation_items

    names = {"0": "background", "1": "liver", "2": "aorta"}
    lab = np.zeros((40, 40, 40), np.uint8)
    lab[5:35, 5:35, 5:35] = 1  # 27 mL at 1 mm: a "liver" of 27 mL, fully inside
    lab[18:20, 18:20, 18:21] = 2  # 0.012 mL "aorta"
    cut = np.zeros((40, 40, 40), np.uint8)
    cut[0:30, 5:35, 5:35] = 1  # touches the edge: a cut organ, not warned about
    cut[10:20, 10:20, 0:40] = 2
    empty = np.zeros((40, 40, 40), np.uint8)
    items = [_label_pair(tmp_path, "a", lab), _label_pair(tmp_path, "b", cut), _label_pair(tmp_path, "c", empty)]
    with captured_warnings("medmae_ext.data.segmentation") as warnings:
        check_segmentation_items(items, names)
    text = "\n".join(warnings)
    assert "class 1 'liver' is 27.0 mL" in text and "800-3000 mL" in text and "item 0" in text
    assert "class 2 'aorta' is 0.0 mL" in text
    assert "item 1" not in text  # cut by the field of view
    assert "c_lab.nii.gz is all background" in text
    with captured_warnings("medmae_ext.data.segmentation") as quiet:
        check_segmentation_items(items[:2], names, organ_volumes=False)
    assert not any("mL" in w for w in quiet)


def test_grid_mismatch_reports_the_largest_position_difference(tmp_path):
    """Item 11: a label at 2 mm on a 3 mm image of the same shape: the message gives the far corner's distance."""
    from medmae_ext.data import check_segmentation_items
    from medmae_ext.errors import LabelError

    lab = np.zeros((40, 40, 40), np.uint8)
    lab[10:20, 10:20, 10:20] = 1
    it = _label_pair(tmp_path, "g", lab, spacing=(3.0, 3.0, 3.0), label_affine=np.diag([2.0, 2.0, 2.0, 1.0]))
    with pytest.raises(LabelError) as info:
        check_segmentation_items([it], {"0": "background", "1": "liver"})
    expected = np.sqrt(3) * 39 * 1.0  # (3 - 2) mm x 39 voxels along each axis
    assert f"up to {expected:.4g} mm apart" in str(info.value)


def test_duplicates_and_a_repeated_validation_split(tmp_path):
    """Item 12: the same item twice, or validation items that are training items (same file, or same content under
    another name), are warned about with counts; validation equal to training stops."""
    from medmae_ext.data import DatalistError
    from medmae_ext.data.checks import check_splits

    a = np.zeros((1, 4, 4), np.float32)
    b = np.ones((1, 4, 4), np.float32)
    train = [{"id": "a", "image": a, "label": 0}, {"id": "a2", "image": a.copy(), "label": 0},
             {"id": "b", "image": b, "label": 1}]
    val = [{"id": "b_again", "image": b.copy(), "label": 1}, {"id": "c", "image": a + 2, "label": 0}]
    with captured_warnings("medmae_ext.data.checks") as w:
        check_splits(train, val, "set")
    text = "\n".join(w)
    assert "[training]: 1 item(s) repeat another item" in text and "a = a2" in text
    assert "1 of the 2 validation items are also training items" in text and "b_again" in text
    with pytest.raises(DatalistError, match="the validation split is the training split"):
        check_splits(train, [dict(it) for it in train], "set")
    f1, f2, f3 = tmp_path / "x.png", tmp_path / "y.png", tmp_path / "z.png"
    f1.write_bytes(b"same bytes")
    f2.write_bytes(b"same bytes")
    f3.write_bytes(b"other bytes")
    with captured_warnings("medmae_ext.data.checks") as w:
        check_splits([{"id": "x", "image": str(f1)}, {"id": "z", "image": str(f3)}], [{"id": "y", "image": str(f2)}],
                     "files")
    assert any("also training items" in m for m in w)


def test_an_item_missing_a_key_is_named_before_training(tmp_path, synth2d):
    """Item 13: an item without the 'mask' its neighbours have failed in collate with KeyError: 'mask'."""
    dl = json.load(open(os.path.join(synth2d, "datalist.json")))
    del dl["training"][3]["mask"]
    bad = tmp_path / "datalist.json"
    for section in dl.values():
        if isinstance(section, list):
            for it in section:
                for k in ("image", "mask"):
                    if isinstance(it.get(k), str):
                        it[k] = os.path.join(synth2d, it[k])
    json.dump(dl, open(bad, "w"))
    with pytest.raises(Exception) as info:
        run_bundle("vit_classification", "train.json", bundle_root=str(tmp_path / "r"), data_path=str(bad),
                   epochs=1, num_workers=0, batch_size=4, pretrained_ckpt="scratch")
    msg = raised(info, InputError)
    assert "item 3" in msg and "has no 'mask'" in msg


def test_an_unknown_override_names_the_closest_id(tmp_path):
    """Item 14: --epoch (for --epochs) trained the configured epochs silently; now it stops naming --epochs."""
    r = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "training", "--config_file",
                        "bundles/vit_classification/configs/train.json", "--epoch", "1", "--bundle_root",
                        str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 1 and "--epoch is not a config id" in r.stderr and "did you mean --epochs?" in r.stderr
    assert not os.path.exists(tmp_path / "models")
