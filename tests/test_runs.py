"""What a run is: initialisation (scratch through the real CLI), run identity on resume, pruning within one run,
partial encoders, schedules too long for the run, metadata exported with the model."""

import glob
import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import REPO, bundle_config, captured_warnings, initial_weights, raised, run_bundle

from medmae_ext.training.resume import RunMismatchError

B = "vit_classification"
FAST = dict(epochs=1, epoch_length=2, num_workers=0, batch_size=4, val_interval=1, warmup_epochs=0)


@pytest.fixture(scope="module")
def mae_ckpt(tmp_path_factory):
    return initial_weights(tmp_path_factory, "mae_pretrain", "train.json")




def _cli(*args, timeout=600):
    r = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "training", *map(str, args)], cwd=REPO,
                       capture_output=True, text=True, timeout=timeout)
    return r.returncode, r.stdout + r.stderr


def test_scratch_survives_the_cli_and_auto_loads_the_sibling_loudly(tmp_path, synth2d, mae_ckpt):
    # the zoo layout: the sibling pretraining bundle's model.pt is what the default pretrained_ckpt points at
    root = tmp_path / "vit_classification"
    os.makedirs(tmp_path / "mae_pretrain" / "models")
    sibling = tmp_path / "mae_pretrain" / "models" / "model.pt"
    torch.save({k: v + 1.0 for k, v in torch.load(mae_ckpt, weights_only=True).items()}, sibling)  # unlike any init
    common = ["--config_file", bundle_config(B, "train.json"), "--bundle_root", root, "--dataset_dir", synth2d,
              "--epochs", 1, "--epoch_length", 1, "--batch_size", 4, "--num_workers", 0, "--val_interval", 1]
    rc, out = _cli(*common, "--pretrained_ckpt", "scratch")
    assert rc == 0, out[-3000:]
    assert "starts from RANDOM weights" in out
    ck = torch.load(root / "models" / "checkpoint_1.pt", weights_only=True)
    assert ck["run"]["init"] == "scratch"
    qkv = "encoder.blocks.0.attn.qkv.weight"
    sib = torch.load(sibling, weights_only=True)[qkv]
    assert not torch.allclose(ck["network"][qkv], sib, atol=0.1)  # one step moves weights by far less than 0.1
    # default "auto" without a sibling (a bundle copied alone: zoo, MONAI Label): random weights, said so and recorded
    alone = tmp_path / "alone" / "vit2"  # no mae_pretrain next to it
    rc, out = _cli(*common, "--bundle_root", alone)
    assert rc == 0, out[-3000:]
    assert "does not exist, so this run starts from RANDOM weights" in out and "starts from RANDOM weights" in out
    assert torch.load(alone / "models" / "checkpoint_1.pt", weights_only=True)["run"]["init"] == "scratch"
    # (an explicit path that does not exist stops: test_classification_bundle.py)
    root3 = tmp_path / "vit_classification"
    rc, out = _cli(*common, "--resume", "False")
    assert rc == 0, out[-3000:]
    assert f"loaded from encoder of {sibling}" in out
    ck = torch.load(root3 / "models" / "checkpoint_1.pt", weights_only=True)
    assert ck["run"]["init"].startswith(f"encoder of {sibling}") and torch.allclose(ck["network"][qkv], sib, atol=0.1)


def test_resume_refuses_another_run_and_a_finished_one(tmp_path, synth2d, mae_ckpt):
    kw = dict(bundle_root=str(tmp_path), dataset_dir=synth2d, **FAST)
    run_bundle(B, "train.json", pretrained_ckpt=mae_ckpt, **kw)
    before = sorted(os.listdir(tmp_path / "models"))
    with pytest.raises(Exception) as info:  # same command again: the run is finished
        run_bundle(B, "train.json", pretrained_ckpt=mae_ckpt, **kw)
    assert "already finished 1 epochs" in raised(info, RunMismatchError)
    with pytest.raises(Exception) as info:  # another initialisation is another run
        run_bundle(B, "train.json", pretrained_ckpt="scratch", **kw)
    msg = raised(info, RunMismatchError)
    assert "init: checkpoint has 'encoder of" in msg and "this run has 'scratch'" in msg and "--resume False" in msg
    with pytest.raises(Exception) as info:  # other data
        run_bundle(B, "train.json", pretrained_ckpt=mae_ckpt, data_kwargs={"max_items": 20}, **kw)
    assert "data: checkpoint has" in raised(info, RunMismatchError)
    assert sorted(os.listdir(tmp_path / "models")) == before  # refusing touched nothing
    wf = run_bundle(B, "train.json", pretrained_ckpt=mae_ckpt, **{**kw, "epochs": 2})  # train further: resumes
    assert wf.parser.get_parsed_content("train#trainer").state.iteration == 4
    wf = run_bundle(B, "train.json", pretrained_ckpt="scratch", resume=False, **kw)  # fresh, when asked
    assert wf.parser.get_parsed_content("train#trainer").state.iteration == 2
    prev = glob.glob(str(tmp_path / "models" / "previous" / "*"))
    # the earlier run whole: weights, record, and its reports and TensorBoard files (eval/, logs/)
    assert len(prev) == 1 and sorted(os.listdir(prev[0])) == ["checkpoint_1.pt", "checkpoint_2.pt", "eval", "logs",
                                                             "metadata.json", "model.pt"]
    assert torch.load(tmp_path / "models" / "checkpoint_1.pt", weights_only=True)["run"]["init"] == "scratch"


def test_pruning_stays_within_the_run_and_resume_never_loads_an_older_run(tmp_path, synth2d):
    from medmae_ext.training.checkpoints import AtomicCheckpointSaver
    from ignite.engine import Engine

    models = tmp_path / "models"
    os.makedirs(models)
    for e in (49, 50):
        torch.save({"network": {}, "run": {"network": "other", "init": "other", "data": "other"},
                    "trainer": {"epoch": e}}, models / f"checkpoint_{e}.pt")
    kw = dict(bundle_root=str(tmp_path), dataset_dir=synth2d, pretrained_ckpt="scratch", **{**FAST, "epochs": 3})
    with pytest.raises(Exception) as info:
        run_bundle(B, "train.json", **kw)
    assert "holds another run's checkpoint (checkpoint_50.pt)" in raised(info, RunMismatchError)
    run_bundle(B, "train.json", resume=False, **kw)
    assert sorted(os.path.basename(p) for p in glob.glob(str(models / "checkpoint_*.pt"))) == [
        "checkpoint_2.pt", "checkpoint_3.pt"]  # the old run moved aside, this run's newest two kept
    assert sorted(os.listdir(glob.glob(str(models / "previous" / "*"))[0])) == ["checkpoint_49.pt", "checkpoint_50.pt"]
    wf = run_bundle(B, "train.json", **{**kw, "epochs": 4})
    assert wf.parser.get_parsed_content("train#trainer").state.iteration == 8  # resumed from this run's epoch 3

    # the saver alone: files it did not write (another run's) are never pruned, its own beyond n_saved are
    d = tmp_path / "alone"
    os.makedirs(d)
    for name in ("checkpoint_49.pt", "checkpoint_50.pt"):
        torch.save({}, d / name)
    net = torch.nn.Linear(2, 2)
    engine = Engine(lambda e, b: None)
    AtomicCheckpointSaver(str(d), {"network": net}, model_filename=None, n_saved=2).attach(engine)
    engine.run([0], max_epochs=3)
    assert sorted(os.listdir(d)) == ["checkpoint_2.pt", "checkpoint_3.pt", "checkpoint_49.pt", "checkpoint_50.pt"]


def test_a_partial_encoder_is_an_error_unless_allowed(tmp_path, synth2d, mae_ckpt):
    from medmae_ext.networks import ViTClassifier, load_pretrained_encoder

    deep = ViTClassifier(3, 1, 64, 8, hidden_size=192, mlp_dim=768, num_layers=12, num_heads=3)
    with pytest.raises(ValueError, match=r"fills only part of the encoder.*encoder.blocks.6.*allow_partial_encoder"):
        load_pretrained_encoder(deep, mae_ckpt)
    load_pretrained_encoder(deep, mae_ckpt, allow_partial=True)
    ck = torch.load(mae_ckpt, weights_only=True)
    assert torch.equal(deep.encoder.blocks[5].mlp.linear1.weight, ck["encoder.blocks.5.mlp.linear1.weight"])
    with pytest.raises(Exception) as info:  # through the bundle: the config id is named
        run_bundle(B, "train.json", bundle_root=str(tmp_path), dataset_dir=synth2d, pretrained_ckpt=mae_ckpt,
                   **{"num_layers": 12}, **FAST)
    assert "allow_partial_encoder" in raised(info, ValueError)


def test_unetr_refuses_a_partial_encoder(tmp_path_factory):
    from monai.networks.nets import UNETR

    from medmae_ext.networks import MaskedAutoencoder, load_pretrained_encoder

    shallow = MaskedAutoencoder(img_size=64, patch_size=16, spatial_dims=3, hidden_size=96, mlp_dim=384, num_layers=6,
                                num_heads=4, decoder_hidden_size=48, decoder_num_heads=4, decoder_num_layers=1)
    path = tmp_path_factory.mktemp("shallow") / "model.pt"
    torch.save(shallow.state_dict(), path)
    unetr = UNETR(1, 5, (64, 64, 64), feature_size=8, hidden_size=96, mlp_dim=384, num_heads=4, qkv_bias=True)
    with pytest.raises(ValueError, match=r"vit.blocks.6"):
        load_pretrained_encoder(unetr, str(path))


def test_schedules_longer_than_the_run_are_warned(tmp_path, synth2d):
    from medmae_ext.bundle.checks import warn_short_schedule

    assert warn_short_schedule(10, warmup_epochs=3, val_interval=10) == []
    msgs = warn_short_schedule(10, warmup_epochs=10, val_interval=11)
    assert "warmup_epochs=10 with epochs=10: the learning rate is still warming up" in msgs[0]
    assert "val_interval=11" in msgs[1] and "validated only once, at the end of the run" in msgs[1]
    with captured_warnings("medmae_ext") as said:
        run_bundle("msmae_pretrain", "train.json", bundle_root=str(tmp_path), dataset_dir=synth2d, epochs=1,
                   epoch_length=1, batch_size=4, num_workers=0, max_items=8)
    assert any("attention_start_epoch=20 but the run has only 1 epochs: attention masking never starts" in m
               for m in said)
    assert any("warmup_epochs=4 with epochs=1" in m for m in said)


def test_exported_torchscript_carries_the_runs_metadata(tmp_path, synth2d):
    from PIL import Image

    import numpy as np

    # a 2-class 32x32 run of the classifier
    data = tmp_path / "data"
    os.makedirs(data / "img")
    items = []
    for i in range(16):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (32, 32), dtype=np.uint8)).save(data / "img" / f"{i}.png")
        items.append({"image": f"img/{i}.png", "label": i % 2})
    json.dump({"training": items[:12], "validation": items[12:], "test": items[12:]}, open(data / "dl.json", "w"))
    over = dict(data_path=str(data / "dl.json"), class_names=["normal", "pneumonia"], img_size=[32, 32],
                pretrained_ckpt="scratch")
    run_bundle(B, "train.json", bundle_root=str(tmp_path / "b"), **over, **FAST)
    meta = tmp_path / "b" / "models" / "metadata.json"
    ts = tmp_path / "b" / "models" / "model.ts"
    cmd = [sys.executable, "-m", "monai.bundle", "ckpt_export", "network_def", "--filepath", str(ts),
           "--ckpt_file", str(tmp_path / "b" / "models" / "model.pt"), "--meta_file", str(meta),
           "--config_file", bundle_config(B, "inference.json"), "--bundle_root", str(tmp_path / "b"),
           "--class_names", "['normal','pneumonia']", "--img_size", "[32,32]"]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    extra = {"metadata.json": ""}
    torch.jit.load(str(ts), _extra_files=extra)
    fmt = json.loads(extra["metadata.json"])["network_data_format"]
    assert fmt["inputs"]["image"]["spatial_shape"] == [32, 32]
    assert fmt["outputs"]["pred"]["num_channels"] == 2 and fmt["outputs"]["pred"]["type"] == "logits"
    assert fmt["outputs"]["pred"]["channel_def"] == {"0": "normal", "1": "pneumonia"}
    assert fmt["post_processed_outputs"]["pred"]["type"] == "probabilities"
