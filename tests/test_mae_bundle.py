"""mae_pretrain: short runs of train.json (2D) and train_3d.json (3D), resume, CLI, and a falling loss."""

import glob
import os
import subprocess
import sys

import pytest
import torch
from conftest import REPO, bundle_config, bundle_configs, run_bundle

FAST = dict(epochs=1, epoch_length=2, num_workers=0, batch_size=4, max_items=12)


def test_train_2d_two_iterations(tmp_path, synth2d):
    wf = run_bundle("mae_pretrain", "train.json", bundle_root=str(tmp_path), dataset_dir=synth2d, **FAST)
    trainer = wf.parser.get_parsed_content("train#trainer")
    assert trainer.state.iteration == 2
    assert os.path.isfile(tmp_path / "models" / "model.pt")
    assert os.path.isfile(tmp_path / "models" / "checkpoint_1.pt")
    assert os.path.isfile(tmp_path / "eval" / "reconstructions" / "recon_epoch0001.png")
    assert glob.glob(str(tmp_path / "logs" / "events.out.tfevents.*"))
    sd = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert any(k.startswith("encoder.blocks.0.") for k in sd) and "decoder_pred.weight" in sd


def test_train_3d_two_iterations(tmp_path, synth3d):
    fast = {**FAST, "batch_size": 1, "num_samples": 2}
    wf = run_bundle("mae_pretrain", "train_3d.json", bundle_root=str(tmp_path), dataset_dir=synth3d, **fast)
    trainer = wf.parser.get_parsed_content("train#trainer")
    assert trainer.state.iteration == 2
    out = trainer.state.output
    assert out["image"].shape == (2, 1, 64, 64, 64)  # batch 1 x 2 crops
    assert out["pred"]["mask"].sum(1).eq(48).all()  # 75% of 4x4x4 patches
    assert os.path.isfile(tmp_path / "models" / "3d" / "model.pt")  # 3D weights apart from the 2D ones
    assert wf.parser.get_parsed_content("optimizer").defaults["fused"] is True  # fused AdamW by default


def test_resume_continues_from_last_checkpoint(tmp_path, synth2d):
    run_bundle("mae_pretrain", "train.json", bundle_root=str(tmp_path), dataset_dir=synth2d, **FAST)
    first = torch.load(tmp_path / "models" / "checkpoint_1.pt", weights_only=False)
    assert first["trainer"]["iteration"] == 2 and first["trainer"]["epoch_length"] == 2
    wf = run_bundle("mae_pretrain", "train.json", bundle_root=str(tmp_path), dataset_dir=synth2d,
                    **{**FAST, "epochs": 3})
    trainer = wf.parser.get_parsed_content("train#trainer")
    assert trainer.state.epoch == 3 and trainer.state.iteration == 6  # 2 resumed + 4 new, not 6 new
    ckpts = sorted(os.path.basename(p) for p in glob.glob(str(tmp_path / "models" / "checkpoint_*.pt")))
    assert ckpts == ["checkpoint_2.pt", "checkpoint_3.pt"]  # older ones pruned, nothing half-written left
    assert not [p for p in os.listdir(tmp_path / "models") if p.endswith(".tmp") or p.startswith("tmp")]


def test_loss_falls(tmp_path, synth2d):
    wf = run_bundle("mae_pretrain", "train.json", bundle_root=str(tmp_path), dataset_dir=synth2d,
                    **{**FAST, "epochs": 6, "epoch_length": 6, "batch_size": 8, "max_items": None, "warmup_epochs": 1,
                       "picture_interval": 100})
    losses = []
    trainer = wf.parser.get_parsed_content("train#trainer")
    assert trainer.state.iteration == 36
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "logs"))
    acc.Reload()
    losses = [e.value for e in acc.Scalars("train_loss")]
    assert len(losses) == 36
    assert sum(losses[-6:]) / 6 < 0.9 * sum(losses[:6]) / 6


def test_cli_training_entry_point(tmp_path, synth2d):
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", bundle_config("mae_pretrain", "train.json"),
           "--bundle_root", str(tmp_path), "--dataset_dir", synth2d, "--epochs", "1", "--epoch_length", "2",
           "--num_workers", "0", "--batch_size", "4", "--max_items", "8",
           "--num_threads", "1"]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert os.path.isfile(tmp_path / "models" / "model.pt")
    assert "torch uses 1 CPU thread(s) ('num_threads')" in r.stdout + r.stderr


def test_missing_image_fails_clearly_before_training(tmp_path, synth2d):
    import json
    import shutil

    d = tmp_path / "data"
    shutil.copytree(synth2d, d)
    dl = json.load(open(d / "datalist.json"))
    os.remove(d / dl["training"][3]["image"])
    r = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "training", "--config_file",
                        bundle_config("mae_pretrain", "train.json"), "--bundle_root", str(tmp_path), "--dataset_dir",
                        str(d), "--epochs", "1", "--num_workers", "0"],
                       cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode != 0
    assert "DatalistError" in r.stderr and dl["training"][3]["image"].split("/")[-1] in r.stderr
    assert not os.path.exists(tmp_path / "models" / "model.pt")


def test_compile_flag_compiles_in_place_and_checkpoints_stay_plain():
    """--compile True compiles every bundle's network in place (nn.Module.compile): state-dict keys, hence
    checkpoints and model.pt, stay the plain network's; a compiled forward equals the plain one (torch.compile's
    "eager" backend here: tracing without code generation, so the test stays fast)."""
    from monai.bundle import ConfigParser

    from medmae_ext.bundle.runtime import compiled

    for bundle, cfg in (("mae_pretrain", "train.json"), ("msmae_pretrain", "train_3d.json")):
        p = ConfigParser()
        p.read_config(bundle_configs(bundle, cfg))
        p.update({"bundle_root": ".", "compile": True, "device": "$torch.device('cpu')"})
        net = p.get_parsed_content("network")
        assert net._compiled_call_impl is not None
        assert not any("_orig_mod" in k for k in net.state_dict())
    torch.manual_seed(0)
    plain = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.GELU(), torch.nn.Linear(8, 2))
    x = torch.randn(3, 4)
    want = plain(x)
    assert torch.allclose(compiled(plain, True, backend="eager")(x), want)
    assert list(plain.state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    with pytest.raises(ValueError, match="'compile' must be true or false"):
        compiled(plain, "yes")
