"""The release path (issue 10): ``scripts/pack_bundle.py`` packs each bundle into a model-zoo folder + zip that runs
ALONE: copied to a temporary folder, in fresh interpreters where the only ``medmae_ext`` is the one shipped inside.

Per bundle: pack without weights, copy alone, train one iteration there (``python -m monai.bundle run training``
from inside the bundle, the zoo convention); pack again with the weights that run wrote (``large_files.yml`` with
their sha256, ``docs/data_license.txt``), copy that release alone and run MONAI's checks as the zoo CI does
(``verify_metadata`` against the official schema, ``verify_net_in_out``, ``ckpt_export`` + the TorchScript's output,
``ConfigWorkflow.check_properties`` of every config), the bundle's inference, the large-file hash check, and
``monai.bundle download`` of the zip from a ``file://`` URL + ``monai.bundle.load`` (every tensor loaded).
"""

import glob
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import REPO, place_trained_weights

SCHEMA = os.path.join(os.path.dirname(REPO), "shared", "monai", "meta_schema_20240725.json")
CHECKS = os.path.join(REPO, "tests", "zoo_checks.py")
TINY = ["--epochs", "1", "--epoch_length", "1", "--num_workers", "0"]
# per bundle: the 1-iteration trainings (config, extra args), and the configs whose MONAI properties are checked
BUNDLES = {
    "mae_pretrain": dict(
        train=[("train.json", ["--batch_size", "4"]), ("train_3d.json", ["--batch_size", "1"])],
        properties=[("inference", "inference.json"), ("inference", "inference.json+inference_3d.json")],
        train_properties=["train.json", "train_3d.json"]),
    "msmae_pretrain": dict(
        train=[("train.json", ["--batch_size", "4"]), ("train_3d.json", ["--batch_size", "1"])],
        properties=[("inference", "inference.json"), ("inference", "inference.json+inference_3d.json")],
        train_properties=["train.json", "train_3d.json"]),
    "vit_classification": dict(
        train=[("train.json", ["--batch_size", "4", "--val_interval", "1"])],
        properties=[("inference", "inference.json"), ("eval", "train.json+evaluate.json")],
        train_properties=["train.json"]),
    "unetr_segmentation": dict(
        train=[("train.json", ["--batch_size", "1", "--val_interval", "1"])],
        properties=[("inference", "inference.json"), ("eval", "train.json+evaluate.json")],
        train_properties=["train.json"]),
}


def _env():
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def _run(args, cwd, timeout=600):
    r = subprocess.run([sys.executable, *map(str, args)], cwd=str(cwd), env=_env(), capture_output=True, text=True,
                       timeout=timeout)
    out = r.stdout + r.stderr
    assert r.returncode == 0, f"{' '.join(map(str, args))} (in {cwd}) failed:\n{out[-4000:]}"
    return out


WEIGHTS_URL = "https://example.org/medmae/releases"


def _pack(bundle, out, models_dir=None):
    args = [os.path.join(REPO, "scripts", "pack_bundle.py"), "--bundle", bundle, "--out", out]
    if models_dir:
        args += ["--models_dir", models_dir, "--weights_url", WEIGHTS_URL]
    _run(args, REPO)
    return os.path.join(out, bundle)


def _alone(packed, where):
    """Copy a packed bundle to a folder of its own, far from the repository."""
    dst = os.path.join(where, os.path.basename(packed))
    shutil.copytree(packed, dst)
    return dst


@pytest.mark.skipif(not os.path.isfile(SCHEMA), reason="../shared/monai/meta_schema_20240725.json is not present")
@pytest.mark.parametrize("bundle", sorted(BUNDLES))
def test_packed_bundle_runs_alone_and_passes_the_zoo_checks(bundle, tmp_path):
    from medmae_ext.bundle.workflow import config_files

    spec = BUNDLES[bundle]
    # 1. pack without weights; train one iteration of every training config inside the bundle copied alone
    bare = _alone(_pack(bundle, tmp_path / "dist0"), tmp_path / "alone0")
    assert not os.path.exists(os.path.join(bare, "large_files.yml"))
    assert "without trained weights" in open(os.path.join(bare, "docs", "data_license.txt")).read()
    assert "This pack ships **no trained weights**" in open(os.path.join(bare, "docs", "README.md")).read()
    for config, extra in spec["train"]:
        files = [os.path.relpath(f, bare) for f in config_files(os.path.join(bare, "configs"), config)]
        out = _run(["-m", "monai.bundle", "run", "training", "--config_file", str(files), *TINY, *extra], bare)
        assert "Engine run finished" in out
    assert os.path.isfile(os.path.join(bare, "models", "model.pt"))

    # 2. the release: packed with those weights, copied alone
    release = _alone(_pack(bundle, tmp_path / "dist", os.path.join(bare, "models")), tmp_path / "alone")
    assert sorted(os.listdir(release)) == sorted(
        ["LICENSE", "configs", "docs", "large_files.yml", "medmae_ext", "models"])
    assert not glob.glob(os.path.join(release, "models", "checkpoint_*.pt")), "resume state must not ship"
    assert "synthetic data only" in open(os.path.join(release, "docs", "data_license.txt")).read()
    meta = json.load(open(os.path.join(release, "configs", "metadata.json")))
    assert "medmae-ext" not in meta["required_packages_version"]  # shipped inside, not installed
    # what the weights are, where a zoo reviewer and a user read it: the full licence, the measured metric, the data
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in open(os.path.join(release, "LICENSE")).read()
    record = json.load(open(os.path.join(release, "models", "metadata.json")))["medmae_run"]
    if record.get("best_metric"):
        assert meta["eval_metrics"] == {record["best_metric"]["name"]: round(record["best_metric"]["value"], 4)}
    readme = open(os.path.join(release, "docs", "README.md")).read()
    weights = readme[readme.index("## The weights in this pack"):].split("\n## ")[0]
    assert f"for {record['epochs_run']} epoch(s), {record['iterations_run']} iteration(s)" in weights
    assert "trained on `synthetic`" in weights and "they are not a model for real images" in weights
    assert all(u.startswith(WEIGHTS_URL + "/models/") for u in re.findall(r'url: "([^"]+)"', open(
        os.path.join(release, "large_files.yml")).read()))

    # large_files.yml: MONAI's own downloader accepts the shipped file by its sha256 (no network needed) ...
    from monai.bundle import ConfigParser
    from monai.bundle.scripts import download_large_files

    large = ConfigParser.load_config_file(os.path.join(release, "large_files.yml"))["large_files"]
    assert {f["path"] for f in large} == {os.path.relpath(p, release).replace(os.sep, "/") for p in
                                          glob.glob(os.path.join(release, "models", "**", "model.pt"), recursive=True)}
    download_large_files(bundle_path=release)  # (MONAI 1.6.1 fails when given large_file_name)
    # ... and refuses a file that is not the one recorded (MONAI's check_hash)
    tampered = _alone(release, tmp_path / "tampered")
    sd = torch.load(os.path.join(tampered, "models", "model.pt"), weights_only=True)
    torch.save({k: v + 1 for k, v in sd.items()}, os.path.join(tampered, "models", "model.pt"))
    with pytest.raises(Exception):
        download_large_files(bundle_path=tampered)

    # 3. MONAI's checks in a fresh interpreter that sees only the bundle's medmae_ext
    steps = (["import", "metadata", "net_in_out", "export"] + [f"properties:{k}:{c}" for k, c in spec["properties"]]
             + [f"properties:train:{c}" for c in spec["train_properties"]])
    out = _run([CHECKS, release, SCHEMA, *steps], tmp_path)
    assert [line for line in out.splitlines() if line.startswith("OK ")] == [f"OK {s}" for s in steps]

    # 4. the packed README stands alone: no repository path, and its commands run as written from inside the pack
    # (all but training, which step 1 ran, and those naming data, code or environments outside the pack: /data/...,
    # ../shared, the repository's scripts/ and requirements files, another bundle's folder)
    assert "bundles/" not in readme and "repository README" not in readme
    commands = _bash_commands(readme)
    assert any("--config_file configs/" in c or "--config_file \"['configs/" in c for c in commands)
    outside = r"run training|torchrun|/data/|\.\./|scripts/|atlas_demo|requirements-"
    runnable = [c for c in commands if not re.search(outside, c)]
    assert runnable, commands
    for command in runnable:
        r = subprocess.run(["bash", "-c", command], cwd=release, env=_env(), capture_output=True, text=True,
                           timeout=600)
        assert r.returncode == 0, f"{command}\n{r.stderr[-3000:]}"

    # 5. what the bundle's own inference wrote (a pretraining bundle: the README's inference commands above)
    if bundle in ("mae_pretrain", "msmae_pretrain"):
        res = os.path.join(release, "eval", "inference")
        images = sorted(glob.glob(os.path.join(release, "data", "synthetic_2d", "images", "*.png")))
        rows = open(os.path.join(res, "embeddings.csv")).read().splitlines()
        assert len(rows) == 1 + len(images) and rows[0].startswith("image,f0,") and len(rows[1].split(",")) == 1 + 192
        assert sorted(os.listdir(res)) == sorted(
            [os.path.basename(p).replace(".png", "_recon.png") for p in images] + ["embeddings.csv"])
        # the documented overrides: CLS pooling, embeddings only
        _run(["-m", "monai.bundle", "run", "--config_file", "configs/inference.json", "--input_glob", "cxr_0000.png",
              "--pooling", "cls", "--reconstructions", "False", "--output_dir", "eval/cls"], release)
        assert os.listdir(os.path.join(release, "eval", "cls")) == ["embeddings.csv"]
        cls_row = open(os.path.join(release, "eval", "cls", "embeddings.csv")).read().splitlines()[1].split(",")
        mean_row = rows[1].split(",")
        assert cls_row[0] == mean_row[0] and cls_row[1:] != mean_row[1:]
    elif bundle == "vit_classification":
        _run(["-m", "monai.bundle", "run", "--config_file", "configs/inference.json"], release)
        assert glob.glob(os.path.join(release, "eval", "**", "*.csv"), recursive=True)
    else:
        _run(["-m", "monai.bundle", "run", "--config_file", "configs/inference.json", "--input_glob", "ct_000.nii.gz"],
             release)
        assert glob.glob(os.path.join(release, "eval", "**", "*.nii.gz"), recursive=True)

    assert os.path.isfile(os.path.join(release, "models", "model.pt")), "the checks left the shipped model in place"

    # 6. monai.bundle download of the zip (file:// URL) + monai.bundle.load: every tensor of network_def loaded
    zips = glob.glob(os.path.join(tmp_path, "dist", f"{bundle}_v*.zip"))
    assert len(zips) == 1
    dl = tmp_path / "downloads"
    _run(["-m", "monai.bundle", "download", "--name", bundle, "--bundle_dir", dl, "--url", f"file://{zips[0]}"],
         tmp_path)
    assert os.path.isfile(dl / bundle / "configs" / "metadata.json")
    out = _run([CHECKS, dl / bundle, SCHEMA, "import", f"load:{bundle}:{dl}"], tmp_path)
    assert f"OK load:{bundle}:{dl}" in out


def _bash_commands(markdown: str) -> list[str]:
    """Every command of the ```bash blocks of a README (continuation lines joined, comment lines left out)."""
    blocks = re.findall(r"```bash\n(.*?)```", markdown, re.S)
    lines = [c for b in blocks for c in b.replace("\\\n", " ").splitlines()]
    return [c for c in lines if c.strip() and not c.lstrip().startswith("#")]


def _repo_copy(where) -> str:
    """The parts of the repository the documented commands use, copied to ``where`` (so that ``dist/`` and the
    bundles' ``models/`` of the test never touch the developer's tree)."""
    root = os.path.join(str(where), "medmae")
    outputs = {"data", "models", "eval", "logs", "cache"}  # a bundle's run outputs (medmae_ext/data is code)

    def ignore(folder, names):
        top = os.path.dirname(os.path.abspath(folder)) == os.path.join(REPO, "bundles")
        return {n for n in names if n == "__pycache__" or (top and n in outputs)}

    for part in ("medmae_ext", "scripts", "bundles", "docs"):
        shutil.copytree(os.path.join(REPO, part), os.path.join(root, part), ignore=ignore)
    shutil.copy2(os.path.join(REPO, "README.md"), root)
    shutil.copy2(os.path.join(REPO, "LICENSE"), root)
    return root


def _place_weights(root: str, bundle: str, config: str) -> None:
    """``models/[3d/]model.pt`` of ``config``'s network as initialised, with the run record a finished run on the
    synthetic default writes (``trained_on``: synthetic): what a training run leaves, in a second."""
    place_trained_weights(os.path.join(root, "bundles", bundle), bundle, config)


def _readme_block(root: str, heading: str, readme: str = "README.md") -> str:
    return _run([os.path.join(REPO, "scripts", "readme_commands.py"), heading, "--readme", readme, "--cwd", root],
                REPO, timeout=900)


def test_readme_release_commands_as_written(tmp_path):
    """docs/design.md "Release": pack vit_classification with a finished run's weights, run it from inside."""
    root = _repo_copy(tmp_path)
    _place_weights(root, "vit_classification", "train.json")
    _readme_block(root, "## Release", "docs/design.md")
    packed = os.path.join(root, "dist", "vit_classification")
    meta = json.load(open(os.path.join(packed, "configs", "metadata.json")))
    assert os.path.isfile(os.path.join(root, "dist", f"vit_classification_v{meta['version']}.zip"))
    assert os.path.isfile(os.path.join(packed, "medmae_ext", "__init__.py"))
    csvs = glob.glob(os.path.join(packed, "eval", "**", "*.csv"), recursive=True)
    assert csvs and not glob.glob(os.path.join(root, "bundles", "vit_classification", "eval", "**", "*.csv"),
                                  recursive=True), "outputs belong to the packed bundle it was run from"


def test_pack_refuses_weights_of_other_data_without_a_data_license(tmp_path):
    root = _repo_copy(tmp_path)
    _place_weights(root, "vit_classification", "train.json")
    models = os.path.join(root, "bundles", "vit_classification", "models")
    meta = json.load(open(os.path.join(models, "metadata.json")))
    meta["medmae_run"]["trained_on"] = "chestxray14:/data/cxr14/Data_Entry_2017.csv"
    json.dump(meta, open(os.path.join(models, "metadata.json"), "w"))
    r = subprocess.run([sys.executable, "scripts/pack_bundle.py", "--bundle", "vit_classification", "--out", "dist"],
                       cwd=root, env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "chestxray14:/data/cxr14" in r.stderr and "--data_license" in r.stderr
    # refused: nothing half-written that the next documented command would run
    dist = os.path.join(root, "dist")
    assert not os.path.isdir(dist) or not os.listdir(dist), os.listdir(dist)
    lic = tmp_path / "cxr14_license.txt"
    lic.write_text("ChestX-ray14: NIH Clinical Center, CC0.\n")
    r = subprocess.run([sys.executable, "scripts/pack_bundle.py", "--bundle", "vit_classification", "--out", "dist",
                        "--data_license", lic], cwd=root, env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "--weights_url is not set" in r.stderr  # no invented download URL
    _run(["scripts/pack_bundle.py", "--bundle", "vit_classification", "--out", "dist", "--data_license", lic,
          "--weights_url", WEIGHTS_URL], root)
    assert "ChestX-ray14: NIH" in open(os.path.join(root, "dist", "vit_classification", "docs", "data_license.txt")).read()
    os.remove(os.path.join(models, "metadata.json"))  # weights whose run never finished: refused, named
    r = subprocess.run([sys.executable, "scripts/pack_bundle.py", "--bundle", "vit_classification", "--out", "dist"],
                       cwd=root, env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "metadata.json is missing or holds no run record" in r.stderr


@pytest.mark.parametrize("bundle", ["mae_pretrain", "msmae_pretrain"])
def test_pretraining_inference_commands_as_written(bundle, tmp_path):
    """The bundle README's inference block (2D and 3D): embeddings for every input, one reconstruction each."""
    root = _repo_copy(tmp_path)
    _place_weights(root, bundle, "train.json")
    _place_weights(root, bundle, "train_3d.json")
    _readme_block(root, "## Inference: embeddings", f"bundles/{bundle}/docs/README.md")
    b = os.path.join(root, "bundles", bundle)
    for sub, ext, hidden, images in (("inference", "png", 192, "data/synthetic_2d/images/*.png"),
                                     (os.path.join("3d", "inference"), "nii.gz", 96,
                                      "data/synthetic_3d/imagesTr/*.nii.gz")):
        out = os.path.join(b, "eval", sub)
        inputs = sorted(glob.glob(os.path.join(b, images)))
        rows = open(os.path.join(out, "embeddings.csv")).read().splitlines()
        assert len(rows) == 1 + len(inputs) and len(rows[1].split(",")) == 1 + hidden
        assert sorted(os.path.join(root, r.split(",")[0]) for r in rows[1:]) == inputs  # as given: relative to cwd
        assert len(glob.glob(os.path.join(out, f"*_recon.{ext}"))) == len(inputs)
        if bundle == "msmae_pretrain" and ext == "nii.gz":
            assert len(glob.glob(os.path.join(out, "*_attention.nii.gz"))) == len(inputs)


def test_packed_bundle_loads_from_another_directory_as_its_readme_says(tmp_path, tmp_path_factory):
    """Without the zoo checks' sys.path insertion: from another directory MONAI does not import the shipped
    medmae_ext (it adds a bundle to sys.path only when a workflow runs, after the configs are parsed). Where medmae
    is installed (as here), the installed one would then run the checkout's bundle -- its weights -- under the packed
    bundle's name: the packed configs stop instead, naming the remedy. With the bundle folder on PYTHONPATH, as the
    packed README says, monai.bundle.load and monai.bundle run use the pack's own code, weights and folders."""
    from conftest import initial_weights

    bundle = "vit_classification"
    _run([os.path.join(REPO, "scripts", "pack_bundle.py"), "--bundle", bundle, "--out", tmp_path / "dist",
          "--models_dir", tmp_path / "none", "--zip", "False"], REPO)
    packed = os.path.join(tmp_path, "dist", bundle)
    os.makedirs(os.path.join(packed, "models"), exist_ok=True)
    shutil.copy(initial_weights(tmp_path_factory, bundle, "inference.json"), os.path.join(packed, "models"))
    assert "`PYTHONPATH=<this folder> python ...`" in open(os.path.join(packed, "docs", "README.md")).read()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    load = ("import monai.bundle; net = monai.bundle.load(name='vit_classification', bundle_dir=%r, "
            "workflow_type='inference', device='cpu'); print(type(net).__name__)") % str(tmp_path / "dist")
    env = {k: v for k, v in _env().items() if k != "PYTHONPATH"}
    bare = subprocess.run([sys.executable, "-c", load], cwd=elsewhere, env=env, capture_output=True, text=True,
                          timeout=300)
    assert bare.returncode != 0 and "these are the configs of a packed vit_classification bundle" in bare.stderr
    assert "PYTHONPATH=<bundle folder>" in bare.stderr
    cli = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "--config_file",
                          os.path.join(packed, "configs", "inference.json")], cwd=elsewhere, env=env,
                         capture_output=True, text=True, timeout=300)
    assert cli.returncode == 1 and "PYTHONPATH=<bundle folder>" in cli.stderr and "Traceback" not in cli.stderr
    env["PYTHONPATH"] = packed
    ok = subprocess.run([sys.executable, "-c", load], cwd=elsewhere, env=env, capture_output=True, text=True,
                        timeout=300)
    assert ok.returncode == 0 and ok.stdout.strip().endswith("ViTClassifier"), ok.stderr[-2000:]
    run = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "--config_file",
                          os.path.join(packed, "configs", "inference.json")], cwd=elsewhere, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert glob.glob(os.path.join(packed, "eval", "predictions.csv")), "outputs go to the bundle, not to the cwd"
