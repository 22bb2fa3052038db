"""Training state a user can trust, attacked as long runs get attacked: NaN pixels and losses, "train further"
with a longer schedule, restarts after a good validation, bad labels, interrupted saves, corrupt checkpoints,
unwritable folders, tiny splits, impossible settings, two runs in one folder, deprecated defaults."""

import json
import os
import shutil
import socket
import subprocess
import sys
import warnings

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import BUNDLES, bundle_config, bundle_configs, captured_warnings, raised, run_bundle

from medmae_ext.training.resume import RunMismatchError
from medmae_ext.errors import InputError
from medmae_ext.training.guards import NonFiniteError
from medmae_ext.training.runlock import LOCK_NAME, RunLockedError

B = "vit_classification"
FAST = dict(epochs=1, epoch_length=2, num_workers=0, batch_size=4, val_interval=1, warmup_epochs=0,
            pretrained_ckpt="scratch")




def _workflow(config, **override):
    from monai.bundle import ConfigWorkflow

    d = os.path.join(BUNDLES, B, "configs")
    return ConfigWorkflow(config_file=os.path.join(d, config), meta_file=os.path.join(d, "metadata.json"),
                          logging_file=os.path.join(d, "logging.conf"), run_id="training", **override)


# 1. NaN / Inf --------------------------------------------------------------------------------------------------
def test_nan_voxels_stop_before_training_naming_the_file(tmp_path, synth3d):
    data = tmp_path / "data"
    shutil.copytree(synth3d, data)
    dl = json.load(open(data / "datalist.json"))
    bad = data / dl["training"][1]["image"]
    img = nib.load(bad)
    arr = np.asarray(img.dataobj, dtype=np.float32)
    arr[3, 4, 5] = np.nan
    nib.save(nib.Nifti1Image(arr, img.affine), bad)
    with pytest.raises(Exception) as info:
        run_bundle("mae_pretrain", "train_3d.json", bundle_root=str(tmp_path / "run"), dataset_dir=str(data),
                   epochs=1, num_workers=0)
    msg = raised(info, InputError)
    assert str(bad) in msg and "1 NaN/Inf voxel(s)" in msg and "(0, 3, 4, 5)" in msg
    assert not os.path.exists(tmp_path / "run" / "models" / "3d" / "checkpoint_1.pt")


def test_a_non_finite_loss_stops_the_run_naming_iteration_and_samples(tmp_path, synth2d):
    # an lr no weight survives: AdamW moves every weight by ~lr at step 1, so step 2's loss overflows
    with pytest.raises(Exception) as info:
        run_bundle("mae_pretrain", "train.json", bundle_root=str(tmp_path / "run"), dataset_dir=synth2d, epochs=2,
                   batch_size=8, num_workers=0, warmup_epochs=0, lr=1e30)
    msg = raised(info, NonFiniteError)
    assert "at epoch 1, iteration 2" in msg and "batch samples: ['cxr_" in msg
    models = tmp_path / "run" / "models"
    assert not os.path.isdir(models) or not [f for f in os.listdir(models) if f.endswith(".pt")]


def test_savers_never_write_non_finite_weights_over_good_state(tmp_path):
    from ignite.engine import Engine, State

    from medmae_ext.training.checkpoints import AtomicCheckpointSaver, BestModelSaver

    net = torch.nn.Linear(3, 2)
    engine = Engine(lambda e, b: None)
    saver = AtomicCheckpointSaver(str(tmp_path), {"network": net}, model_filename="model.pt")
    saver.attach(engine)
    engine.state = State(epoch=1, iteration=1)
    saver(engine)
    good = {f: open(tmp_path / f, "rb").read() for f in ("checkpoint_1.pt", "model.pt")}
    with torch.no_grad():
        net.weight[0, 0] = float("nan")
    engine.state.epoch = 2
    with pytest.raises(NonFiniteError, match="weight"):
        saver(engine)
    with pytest.raises(NonFiniteError):
        saver.save_model(engine)
    best = BestModelSaver(str(tmp_path), net)
    evaluator = Engine(lambda e, b: None)
    best.attach(evaluator)
    evaluator.state = State(epoch=2, key_metric_name="auc", metrics={"auc": 0.9}, best_metric=0.9,
                            best_metric_epoch=2)
    with pytest.raises(NonFiniteError, match="not overwritten"):
        best(evaluator)
    assert sorted(os.listdir(tmp_path)) == ["checkpoint_1.pt", "model.pt"]
    assert all(open(tmp_path / f, "rb").read() == b for f, b in good.items())


# 2. train further: the schedule of the new length ---------------------------------------------------------------
def test_train_further_follows_the_schedule_of_the_new_total(tmp_path, synth2d):
    from ignite.engine import Events

    kw = dict(bundle_root=str(tmp_path), dataset_dir=synth2d, **{**FAST, "epochs": 2, "warmup_epochs": 1})
    run_bundle(B, "train.json", **kw)
    wf = _workflow("train.json", **{**kw, "epochs": 4})
    wf.initialize()
    trainer = wf.parser.get_parsed_content("train#trainer")
    opt = wf.parser.get_parsed_content("optimizer")
    seen = []
    trainer.add_event_handler(Events.ITERATION_STARTED, lambda e: seen.append((e.state.iteration, opt.param_groups[-1]["lr"])))
    wf.run()
    sched = wf.parser.get_parsed_content("train#lr_scheduler")
    assert sched.t_total == 8 and sched.warmup_steps == 2
    peak = opt.param_groups[-1]["initial_lr"]
    expected = [(it, peak * sched.lr_lambda(it - 1)) for it in range(5, 9)]
    assert [i for i, _ in seen] == [5, 6, 7, 8]
    np.testing.assert_allclose([lr for _, lr in seen], [lr for _, lr in expected], rtol=1e-6)
    assert seen[-1][1] < 0.2 * peak  # decays towards the end of the new total (the old one re-warmed to peak)


def test_a_changed_epoch_length_is_refused_on_resume(tmp_path, synth2d):
    kw = dict(bundle_root=str(tmp_path), dataset_dir=synth2d, **FAST)
    run_bundle(B, "train.json", **kw)
    with pytest.raises(Exception) as info:
        run_bundle(B, "train.json", **{**kw, "epochs": 2, "epoch_length": 3})
    msg = raised(info, RunMismatchError)
    assert "were 2 iterations long, this run's are 3" in msg and "--resume False" in msg


# 3. the best model survives a restart ----------------------------------------------------------------------------
def test_a_restart_keeps_the_best_metric_and_model(tmp_path, synth2d):
    kw = dict(bundle_root=str(tmp_path), dataset_dir=synth2d, **FAST)
    run_bundle(B, "train.json", **kw)
    models = tmp_path / "models"
    ck = torch.load(models / "checkpoint_1.pt", weights_only=False)
    assert ck["best_model"]["best_metric_epoch"] == 1 and 0 <= ck["best_model"]["best_metric"] <= 1
    ck["best_model"] = {"best_metric": 2.0, "best_metric_epoch": 1}  # a best no AUC can beat
    torch.save(ck, models / "checkpoint_1.pt")
    model = open(models / "model.pt", "rb").read()
    wf = run_bundle(B, "train.json", **{**kw, "epochs": 2})
    assert wf.parser.get_parsed_content("train#trainer").state.epoch == 2
    evaluator = wf.parser.get_parsed_content("validate#evaluator")
    assert evaluator.state.best_metric == 2.0 and evaluator.state.best_metric_epoch == 1
    assert open(models / "model.pt", "rb").read() == model  # the restart's worse model did not replace it


# 4. labels of every split before training ------------------------------------------------------------------------
def test_a_bad_validation_label_stops_before_the_first_epoch(tmp_path, synth2d):
    data = tmp_path / "data"
    shutil.copytree(synth2d, data)
    dl = json.load(open(data / "datalist.json"))
    dl["validation"][2]["label"] = 7
    json.dump(dl, open(data / "datalist.json", "w"))
    with pytest.raises(Exception) as info:
        run_bundle(B, "train.json", bundle_root=str(tmp_path / "run"), dataset_dir=str(data), **FAST)
    msg = raised(info, InputError)
    assert "item 2" in msg and dl["validation"][2]["image"] in msg and "label 7 is outside 0..2" in msg
    assert not os.path.exists(tmp_path / "run" / "models" / "checkpoint_1.pt")
    dl["validation"][2]["label"] = "pneumonia"  # a class name where an index belongs: not a "missing file"
    json.dump(dl, open(data / "datalist.json", "w"))
    with pytest.raises(Exception) as info:
        run_bundle(B, "train.json", bundle_root=str(tmp_path / "run"), dataset_dir=str(data), **FAST)
    msg = raised(info, InputError)
    assert "label 'pneumonia' is not a class index" in msg and "missing" not in msg


# 5. failure hygiene ------------------------------------------------------------------------------------------------
def test_temp_files_of_an_interrupted_save_are_cleaned_on_the_next_start(tmp_path, synth2d):
    from medmae_ext.training.runlock import TEMP_PREFIX

    models = tmp_path / "models"
    os.makedirs(models)
    for name in (f"{TEMP_PREFIX}ab12cd_3", f"{TEMP_PREFIX}zz99yy00"):  # what a SIGKILL / ENOSPC mid-save leaves
        (models / name).write_bytes(b"\0" * 1000)
    # Python tempfile names of other programs (--ckpt_dir /tmp) and a user's file are not ours: never deleted
    for name in ("tmpab12cd34", "tmpzz99yy_0", "tmp_notes.txt"):
        (models / name).write_text("someone else's file")
    run_bundle(B, "train.json", bundle_root=str(tmp_path), dataset_dir=synth2d, **FAST)
    left = sorted(os.listdir(models))
    assert not [n for n in left if n.startswith(TEMP_PREFIX)], left
    assert {"tmpab12cd34", "tmpzz99yy_0", "tmp_notes.txt"} <= set(left), left


def test_a_corrupt_newest_checkpoint_falls_back_naming_both(tmp_path, synth2d):
    kw = dict(bundle_root=str(tmp_path), dataset_dir=synth2d, **FAST)
    run_bundle(B, "train.json", **kw)
    run_bundle(B, "train.json", **{**kw, "epochs": 2})
    models = tmp_path / "models"
    data = open(models / "checkpoint_2.pt", "rb").read()
    open(models / "checkpoint_2.pt", "wb").write(data[: len(data) // 3])  # truncated by a full disk
    with captured_warnings("medmae_ext.training.resume") as warned:
        wf = run_bundle(B, "train.json", **{**kw, "epochs": 3})
    assert any("checkpoint_1.pt" in w and "checkpoint_2.pt" in w and "newest intact" in w for w in warned), warned
    assert wf.parser.get_parsed_content("train#trainer").state.epoch == 3


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes to read-only folders")
def test_an_unwritable_checkpoint_folder_stops_before_the_first_epoch(tmp_path, synth2d):
    os.makedirs(tmp_path / "models")
    os.chmod(tmp_path / "models", 0o500)
    try:
        with pytest.raises(Exception) as info:
            run_bundle(B, "train.json", bundle_root=str(tmp_path), dataset_dir=synth2d, **FAST)
        assert "not writable" in raised(info, PermissionError)
    finally:
        os.chmod(tmp_path / "models", 0o700)


def test_an_unwritable_checkpoint_folder_is_named(tmp_path, synth2d):
    """As root (CI) a read-only mode does not stop writes: a file where the folder should be does."""
    (tmp_path / "models").write_text("not a folder")
    with pytest.raises(Exception) as info:
        run_bundle(B, "train.json", bundle_root=str(tmp_path), dataset_dir=synth2d, **FAST)
    msg = raised(info, PermissionError)
    assert str(tmp_path / "models") in msg and "--ckpt_dir" in msg


def test_fewer_items_than_a_batch_is_an_error(tmp_path, synth2d):
    with pytest.raises(Exception) as info:
        run_bundle("mae_pretrain", "train.json", bundle_root=str(tmp_path), dataset_dir=synth2d, epochs=1,
                   num_workers=0, batch_size=64, max_items=10)
    assert "10 item(s), fewer than one batch (--batch_size 64)" in raised(info, InputError)


@pytest.mark.parametrize("override,message", [({"patch_size": [0, 0]}, "must be positive"),
                                              ({"mask_ratio": 0.0}, "masks none of the")])
def test_impossible_settings_are_named(tmp_path, synth2d, override, message):
    with pytest.raises(Exception) as info:
        run_bundle("mae_pretrain", "train.json", bundle_root=str(tmp_path), dataset_dir=synth2d, epochs=1,
                   num_workers=0, **override)
    assert message in raised(info, ValueError)


# 6. one run per folder ---------------------------------------------------------------------------------------------
def test_a_second_run_in_the_same_folder_stops_naming_the_first(tmp_path, synth2d):
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        os.makedirs(tmp_path / "models")
        lock = tmp_path / "models" / LOCK_NAME
        lock.write_text(json.dumps({"pid": other.pid, "host": socket.gethostname(), "started": "2026-11-24 09:00:00"}))
        with pytest.raises(Exception) as info:
            run_bundle(B, "train.json", bundle_root=str(tmp_path), dataset_dir=synth2d, **FAST)
        msg = raised(info, RunLockedError)
        assert f"pid {other.pid} on host {socket.gethostname()}" in msg and "2026-11-24 09:00:00" in msg
        assert lock.exists() and not os.path.exists(tmp_path / "models" / "checkpoint_1.pt")
    finally:
        other.kill()
        other.wait()
    # that run is gone now (killed without removing its lock): the next run takes the lock over, and frees it
    with captured_warnings("medmae_ext.training.runlock") as warned:
        run_bundle(B, "train.json", bundle_root=str(tmp_path), dataset_dir=synth2d, **FAST)
    assert any("is gone" in w for w in warned) and not lock.exists()
    assert os.path.exists(tmp_path / "models" / "checkpoint_1.pt")


# 7. deprecations ----------------------------------------------------------------------------------------------------
def test_3d_configs_set_orientation_labels_and_readers_close_their_files(tmp_path):
    from monai.bundle import ConfigParser

    for bundle, config in (("mae_pretrain", "train_3d.json"), ("msmae_pretrain", "train_3d.json"),
                           ("unetr_segmentation", "train.json"), ("unetr_segmentation", "evaluate.json"),
                           ("unetr_segmentation", "inference.json")):
        p = ConfigParser()
        p.read_config(bundle_configs(bundle, config))
        p["bundle_root"] = str(tmp_path)
        key = "preprocessing" if config == "inference.json" else "validate#preprocessing" if (
            config == "evaluate.json") else "train#preprocessing"
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            chain = p.get_parsed_content(key, instantiate=True)
        orient = [t for t in chain.transforms if type(t).__name__ == "Orientationd"]
        assert len(orient) == 1 and orient[0].ornt_transform.labels == (("L", "R"), ("P", "A"), ("I", "S"))
        assert not [w for w in caught if "Orientationd" in str(w.message)], (bundle, config)
    from medmae_ext.data import chestxray14_csv

    rows = ["Image Index,Finding Labels,Patient ID"] + [f"{i:08d}_000.png,No Finding,{i}" for i in range(4)]
    (tmp_path / "Data_Entry_2017.csv").write_text("\n".join(rows) + "\n")
    os.makedirs(tmp_path / "images")
    for i in range(4):
        (tmp_path / "images" / f"{i:08d}_000.png").write_bytes(b"")
    (tmp_path / "train_val_list.txt").write_text("00000000_000.png\n00000001_000.png\n00000002_000.png\n")
    (tmp_path / "test_list.txt").write_text("00000003_000.png\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        items = chestxray14_csv(str(tmp_path / "Data_Entry_2017.csv"), str(tmp_path / "images"), "test",
                                split_dir=str(tmp_path))
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]
    assert [os.path.basename(it["image"]) for it in items] == ["00000003_000.png"]
