"""Every bundle: required files, metadata valid against the official bundle schema (its offline copy in
../shared/monai; skipped where absent), parsable configs."""

import glob
import json
import os
import subprocess
import sys

import pytest
from conftest import BUNDLES, REPO, bundle_configs, exception_chain, raised

SCHEMA = os.path.join(os.path.dirname(REPO), "shared", "monai", "meta_schema_20240725.json")
needs_schema = pytest.mark.skipif(not os.path.isfile(SCHEMA), reason="../shared/monai/meta_schema_20240725.json is not present")
ALL = sorted(os.path.basename(os.path.dirname(p)) for p in glob.glob(os.path.join(BUNDLES, "*", "configs")))
OFFICIAL = "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json"


def test_bundles_present():
    assert {"mae_pretrain"} <= set(ALL)


@pytest.mark.parametrize("bundle", ALL)
def test_bundle_layout(bundle):
    root = os.path.join(BUNDLES, bundle)
    for f in ("configs/metadata.json", "configs/logging.conf", "configs/train.json", "docs/README.md", "LICENSE"):
        assert os.path.isfile(os.path.join(root, f)), f"{bundle} lacks {f}"


@pytest.mark.parametrize("bundle", ALL)
@needs_schema
def test_metadata_is_schema_valid(bundle):
    from monai.bundle import verify_metadata

    meta = os.path.join(BUNDLES, bundle, "configs", "metadata.json")
    assert json.load(open(meta))["schema"] == OFFICIAL
    verify_metadata(meta_file=meta, filepath=SCHEMA)  # raises on any violation; never downloads (file exists)


@needs_schema
def test_schema_rejects_incomplete_metadata(tmp_path):
    from monai.bundle import verify_metadata

    meta = json.load(open(os.path.join(BUNDLES, "mae_pretrain", "configs", "metadata.json")))
    del meta["task"]
    del meta["network_data_format"]["inputs"]["image"]["channel_def"]
    bad = tmp_path / "metadata.json"
    bad.write_text(json.dumps(meta))
    with pytest.raises(Exception, match="task|channel_def"):
        verify_metadata(meta_file=str(bad), filepath=SCHEMA)


@needs_schema
def test_verify_metadata_cli_offline():
    meta = os.path.join(BUNDLES, "mae_pretrain", "configs", "metadata.json")
    r = subprocess.run([sys.executable, "-m", "monai.bundle", "verify_metadata", "--meta_file", meta, "--filepath", SCHEMA],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "metadata is verified with no error" in r.stdout + r.stderr


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(BUNDLES, "*", "configs", "*.json"))))
def test_configs_parse(path):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    name = os.path.basename(path)
    if name.startswith("metadata"):  # metadata_3d.json: an override of metadata.json (checked in test_zoo_pack)
        return
    # an override file is only meaningful on top of its base, as it is run: multi_gpu_train.json and evaluate.json on
    # train.json, inference_3d.json on inference.json
    from medmae_ext.bundle.workflow import config_files

    parser.read_config(config_files(os.path.dirname(path), name))
    parser["bundle_root"] = os.path.join(BUNDLES, os.path.basename(os.path.dirname(os.path.dirname(path))))
    parser.parse()
    if "network_def" in parser:
        net = parser.get_parsed_content("network_def")
        assert sum(p.numel() for p in net.parameters()) > 0


@pytest.mark.parametrize("bundle", ALL)
def test_metadata_package_versions_are_the_pinned_ones(bundle):
    """What metadata.json tells the model zoo and MONAI Label to install is exactly what requirements.txt pins (a
    drifted pin, e.g. tqdm 4.67.1 vs 4.70.1, installs another environment than the one tested)."""
    import medmae_ext

    pins = {}
    for line in open(os.path.join(REPO, "requirements.txt")):
        name, sep, version = line.split("#")[0].strip().partition("==")
        if sep:
            pins[name.lower()] = version
    pins["medmae-ext"] = medmae_ext.__version__
    meta = json.load(open(os.path.join(BUNDLES, bundle, "configs", "metadata.json")))
    wanted = {"monai": meta["monai_version"], "torch": meta["pytorch_version"], "numpy": meta["numpy_version"],
              **{k.lower(): v for k, v in meta.get("required_packages_version", {}).items()},
              **{k.lower(): v for k, v in meta.get("optional_packages_version", {}).items()}}
    assert {k: (v, pins.get(k)) for k, v in wanted.items() if pins.get(k) != v} == {}


def test_an_override_config_alone_says_so(tmp_path):
    """train_3d.json (and evaluate.json) are merged on train.json (model-zoo pattern: the network is written once);
    given alone on the command line it stops naming the command to use, before any data is read or written (exit 1,
    the one-paragraph message)."""
    path = "bundles/mae_pretrain/configs/train_3d.json"
    r = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", path,
                        "--bundle_root", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1, r.stderr[-2000:]
    assert ("mae_pretrain/train_3d.json is an override of mae_pretrain/train.json: run it merged on it, --config_file "
            f"\"['bundles/mae_pretrain/configs/train.json','{path}']\"") in r.stderr, r.stderr[-2000:]
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("bundle,config,base", [
    ("vit_classification", "evaluate.json", "vit_classification/train.json"),
    ("unetr_segmentation", "evaluate.json", "unetr_segmentation/train.json"),
    ("vit_classification", "multi_gpu_train.json", "vit_classification/train.json"),
    ("mae_pretrain", "train_3d.json", "mae_pretrain/train.json"),
    ("mae_pretrain", "multi_gpu_train.json", "mae_pretrain/train.json"),
    ("unetr_segmentation", "multi_gpu_train.json", "unetr_segmentation/train.json")])
def test_every_override_checks_its_base(bundle, config, base):
    """The first ``initialize`` item of each override checks that it was merged on its base, from the config id
    ``config_chain`` that the merge itself builds (no command-line parsing: ``ConfigWorkflow`` in a notebook is
    checked the same way), alone and merged."""
    from monai.bundle import ConfigParser

    from medmae_ext.errors import InputError

    tag = f"{bundle}/{config}"
    with open(os.path.join(BUNDLES, bundle, "configs", config)) as f:
        raw = json.load(f)
    assert raw["initialize"][0] == f"$medmae_ext.bundle.workflow.require_base(@config_chain, '{base}', '{tag}')"
    if not any("#" in k for k in raw):  # MONAI itself cannot read an override of nested ids ("train#...") alone
        alone = ConfigParser()
        alone.read_config(os.path.join(BUNDLES, bundle, "configs", config))
        assert alone.get_parsed_content("config_chain") == [tag]
        with pytest.raises(RuntimeError) as info:  # MONAI wraps the expression's error
            alone.get_parsed_content("initialize#0")
        assert f"{tag} is an override of {base}" in raised(info, InputError)
    merged = ConfigParser()
    merged.read_config(bundle_configs(bundle, config))
    assert merged.get_parsed_content("config_chain") == [base, tag]
    merged.get_parsed_content("initialize#0")  # merged: passes



@pytest.mark.parametrize("bundle,train,inference", [
    ("vit_classification", "train.json", "inference.json"),
    ("unetr_segmentation", "train.json", "inference.json"),
    ("mae_pretrain", "train.json", "inference.json"),
    ("mae_pretrain", "train_3d.json", "inference_3d.json"),
    ("msmae_pretrain", "train.json", "inference.json"),
    ("msmae_pretrain", "train_3d.json", "inference_3d.json"),
])
def test_inference_network_takes_the_trained_weights(bundle, train, inference, tmp_path):
    """inference.json stays a standalone config (the model zoo's CI and MONAI Label read it alone), so its network is
    written a second time: the weights of train.json's network must load into it, every tensor, shapes equal (for
    the pretraining bundles: the encoder of the masked autoencoder into the feature extractor)."""
    import torch
    from monai.bundle import ConfigParser

    nets = []
    for name in (train, inference):
        p = ConfigParser()
        p.read_config(bundle_configs(bundle, name))
        p["bundle_root"] = str(tmp_path)  # no trained model there: both build the default network
        nets.append(p.get_parsed_content("network_def"))
    trained, served = nets
    state = trained.state_dict()
    if bundle in ("vit_classification", "unetr_segmentation"):
        assert {k: tuple(v.shape) for k, v in state.items()} == {
            k: tuple(v.shape) for k, v in served.state_dict().items()}
    served.load_state_dict(state)  # EncoderFeatures: strict on every encoder tensor, the decoder set aside
    loaded = served.state_dict()
    assert loaded and set(loaded) <= set(state)
    assert all(torch.equal(v, state[k]) for k, v in loaded.items())


def test_same_defaults_in_every_launch_mode(tmp_path, monkeypatch):
    """bundle_root (and what an override was merged on) come from where medmae_ext is and from the merge itself,
    never from the command line or the call stack: the same under python -m monai.bundle (from any folder), torchrun,
    ConfigWorkflow in a notebook and a packed bundle run from inside itself. (MONAI Label: its sessions are told by
    the items it gives, tests/test_monai_label_train.py.)"""
    from monai.bundle import ConfigWorkflow

    cfg = os.path.join(BUNDLES, "vit_classification", "configs", "train.json")
    probe = ["--probe", "$print('PROBE', @bundle_root, @config_chain)", "--init_id", "probe", "--final_id", "probe"]
    expected = f"PROBE {os.path.join(BUNDLES, 'vit_classification')} ['vit_classification/train.json']"

    def probed(args, cwd):
        r = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        return {ln for ln in r.stdout.splitlines() if ln.startswith("PROBE")}

    assert probed(["-m", "monai.bundle", "run", "probe", "--config_file", cfg, *probe], tmp_path) == {expected}
    assert probed(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1", "-m", "monai.bundle", "run",
                   "probe", "--config_file", cfg, *probe], tmp_path) == {expected}
    monkeypatch.chdir(tmp_path)  # a notebook somewhere else, no command line of monai.bundle
    monkeypatch.setattr(sys, "argv", ["ipykernel_launcher.py"])
    wf = ConfigWorkflow(config_file=cfg)
    assert wf.parser.get_parsed_content("bundle_root") == os.path.join(BUNDLES, "vit_classification")
    r = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "pack_bundle.py"), "--bundle",
                        "vit_classification", "--out", str(tmp_path / "dist"), "--models_dir", str(tmp_path / "none"),
                        "--zip", "False"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    packed = tmp_path / "dist" / "vit_classification"
    assert probed(["-m", "monai.bundle", "run", "probe", "--config_file", "configs/train.json", *probe], packed) == {
        f"PROBE {packed} ['vit_classification/train.json']"}
