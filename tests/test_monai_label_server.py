"""A real MONAI Label 0.8.5 server (the monaibundle sample app of its wheel) holding the packed unetr_segmentation
bundle, started with the unetr README's commands exactly as written and called over HTTP as 3D Slicer's MONAI Label
plugin calls it: /info, PUT /datastore/label, /train, /infer, across a restart.

The server runs in its own environment (README "MONAI Label server": pydicom 2 / numpy 1, which this project's
environment cannot hold). This test skips where that environment is absent, and fails instead when
``MEDMAE_REQUIRE_MONAILABEL_SERVER=1`` (``.ci/run``).
"""

import contextlib
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import REPO, initial_weights

sys.path.insert(0, os.path.join(REPO, "scripts"))
from readme_commands import readme_commands  # noqa: E402

B = "unetr_segmentation"
README = f"bundles/{B}/docs/README.md"
ENV = os.environ.get("MEDMAE_MONAILABEL_ENV", os.path.join(REPO, ".venv-monailabel"))
BASE = "http://127.0.0.1:8000"


@pytest.fixture(scope="module")
def server_python():
    """The MONAI Label environment's interpreter (README "MONAI Label server environment")."""
    py = os.path.join(ENV, "bin", "python")
    ok = os.path.isfile(py) and subprocess.run([py, "-c", "import monailabel.main, torchvision, pydicom_seg"],
                                               capture_output=True, timeout=300).returncode == 0
    if not ok:
        why = (f"no MONAI Label server environment at {ENV} (unetr README, 'MONAI Label server environment'; "
               "MEDMAE_MONAILABEL_ENV names another folder)")
        if os.environ.get("MEDMAE_REQUIRE_MONAILABEL_SERVER") == "1":
            pytest.fail(why)
        pytest.skip(why)
    return py


def _get(path):
    with urllib.request.urlopen(BASE + path, timeout=60) as r:
        return json.load(r)


def _multipart(field, filename, payload):
    boundary = "medmae-test-boundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode() + payload + f"\r\n--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def _request(method, path, body=None, headers=None, timeout=60):
    req = urllib.request.Request(BASE + path, data=body, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.read()
    except urllib.error.HTTPError as e:
        raise AssertionError(f"{method} {path}: HTTP {e.code} {e.read()[-2000:]!r}") from None


def _train(**request):
    """POST /train/<model> as 3D Slicer's MONAI Label module sends it (``getParamsFromConfig``: every train option
    /info lists, a list option as its first entry; ``run_id`` "" included), with ``request`` set in its options table."""
    options = _get("/info/")["trainers"][B]["config"]
    params = {k: v[0] if isinstance(v, list) else v for k, v in options.items()}
    params.update(request)
    _request("POST", f"/train/{B}?run_sync=true", json.dumps(params).encode(),
             {"Content-Type": "application/json"}, timeout=900)


def _train_async(**request):
    """POST /train/<model> as 3D Slicer's module does (asynchronously), then poll GET /train/ as it does until the
    task ends; returns the task (status, details)."""
    options = _get("/info/")["trainers"][B]["config"]
    params = {k: v[0] if isinstance(v, list) else v for k, v in options.items()}
    params.update(request)
    _request("POST", f"/train/{B}", json.dumps(params).encode(), {"Content-Type": "application/json"})
    deadline = time.time() + 900
    while True:
        task = _get("/train/")
        if task["status"] not in ("SUBMITTED", "RUNNING"):
            return task
        assert time.time() < deadline, task
        time.sleep(1)


def _infer(image, out):
    with open(out, "wb") as f:
        f.write(_request("POST", f"/infer/{B}?image={image}&output=image", timeout=600))
    return np.asarray(nib.load(out).dataobj)


@contextlib.contextmanager
def _server(command, cwd, log):
    """Start the README's command (in its own process group), wait for /info, stop it at the end."""
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", 8000)) != 0, "port 8000 is taken: the README's server cannot start"
    with open(log, "a") as out:
        proc = subprocess.Popen(["bash", "-c", command], cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.time() + 300
        while True:
            try:
                _get("/info/")
                break
            except (urllib.error.URLError, ConnectionError, OSError):
                assert proc.poll() is None and time.time() < deadline, f"server did not start:\n{_tail(log)}"
                time.sleep(1)
        yield
    finally:
        _stop(proc)


def _stop(proc):
    """Stop a server started in its own process group: SIGTERM, then SIGKILL after a minute."""
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _wait_for(log, text, seconds=30):
    """The server may log an error after it has answered: wait for ``text`` in its log."""
    deadline = time.time() + seconds
    while text not in open(log).read():
        assert time.time() < deadline, f"{text!r} not in the server log:\n{_tail(log)}"
        time.sleep(0.5)


def _tail(log, n=4000):
    return open(log).read()[-n:]


def _bundle_inference(py, bundle, image, out_dir):
    """The packed bundle's own inference.json on one image, in the server environment, with bundle's model.pt."""
    src = os.path.join(out_dir, "in")
    os.makedirs(src)
    shutil.copy(image, src)
    r = subprocess.run([py, "-m", "monai.bundle", "run", "--config_file", os.path.join(bundle, "configs", "inference.json"),
                        "--input_dir", src, "--output_dir", out_dir], cwd=bundle, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    (seg,) = glob.glob(os.path.join(out_dir, "*_seg.nii.gz"))
    return np.asarray(nib.load(seg).dataobj)


def test_monai_label_server_over_http(server_python, synth3d, tmp_path, tmp_path_factory):
    from test_zoo_pack import _place_weights, _repo_copy

    # the README's serving recipe, as written, in a copy of the repository: pack the trained bundle (weights of a
    # run -- here the network as initialised, seed 0 -- with their run record), copy it into the sample app, start
    work = _repo_copy(tmp_path)
    os.makedirs(os.path.join(work, "studies"))
    os.makedirs(os.path.join(work, "my_labels"))
    open(os.path.join(work, "my_labels", "LICENSE.txt"), "w").write("test volumes: synthetic, no restriction\n")
    os.symlink(os.path.abspath(ENV), os.path.join(work, ".venv-monailabel"))
    _place_weights(work, B, "train.json")
    pack, copy_app, start = readme_commands("### Serve it in MONAI Label")
    assert pack.startswith("python scripts/pack_bundle.py --bundle unetr_segmentation --out dist")
    assert start.startswith(". .venv-monailabel/bin/activate && monailabel start_server") and "--port 8000" in start
    r = subprocess.run(["bash", "-c", pack], cwd=work, env={**os.environ, "PYTHONPATH": ""}, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    work = type(tmp_path)(work)
    images = sorted(glob.glob(os.path.join(synth3d, "imagesTr", "*.nii.gz")))[:4]
    for im in images:
        shutil.copy(im, work / "studies")
    subprocess.run(["bash", "-c", copy_app], cwd=work, check=True)
    bundle = str(work / "mlapp" / "model" / B)
    models = os.path.join(bundle, "models")
    served0 = open(os.path.join(models, "model.pt"), "rb").read()
    log = str(tmp_path / "server.log")
    image = str(work / "studies" / os.path.basename(images[0]))
    name0 = os.path.basename(image).replace(".nii.gz", "")

    with _server(start, work, log):
        info = _get("/info/")
        assert list(info["models"]) == [B] and info["labels"] == ["liver", "spleen", "kidney", "aorta"], info
        options = info["trainers"][B]["config"]
        # the bundle's displayable config is a train option; model.pt is the model MONAI Label loads to train on
        assert options["pretrained_ckpt"] == "auto" and options["model_filename"] == ["model.pt"], options
        seg0 = _infer(name0, tmp_path / "seg0.nii.gz")
        assert seg0.shape == nib.load(image).shape and set(np.unique(seg0)) <= {0, 1, 2, 3, 4}

        for im in images:
            name = os.path.basename(im).replace(".nii.gz", "")
            label = os.path.join(synth3d, "labelsTr", os.path.basename(im))
            reply = json.loads(_request("PUT", f"/datastore/label?image={name}&tag=final",
                                        *_multipart("label", os.path.basename(im), open(label, "rb").read())))
            assert reply == {"image": name, "label": name}
        assert _get("/info/")["datastore"]["completed"] == 4

        # a session starts from the served model (MONAI Label loads it), validates it first on the session's own
        # validation images, and replaces it only with a better epoch: from the initial weights, 3 epochs are
        # better on this data (seeded: the same result every run)
        mark = len(open(log).read())
        encoder = initial_weights(tmp_path_factory, "mae_pretrain", "train_3d.json")
        _train(max_epochs=3, val_split=0.5, multi_gpu=False, device="cpu", pretrained_ckpt=encoder)
        said = open(log).read()[mark:]
        assert "served model" in said and "it is replaced only by a better model" in said, said[-3000:]
        # what the session really starts from: MONAI Label's CheckpointLoader of the served model.pt, over the encoder
        assert f"training starts from {os.path.join(models, 'model.pt')}" in said, said[-3000:]
        assert "new best val_mean_dice" in said, said[-3000:]
        served1 = open(os.path.join(models, "model.pt"), "rb").read()
        assert served1 != served0, "the trained model.pt did not change"
        # resume state lives out of models/*.pt, which MONAI Label lists as models to load
        assert sorted(os.path.basename(p) for p in glob.glob(os.path.join(models, "*.pt"))) == ["model.pt"]
        cks = glob.glob(os.path.join(models, "monailabel", "checkpoint_*.pt"))
        assert cks, os.listdir(models)
        last = max(cks, key=lambda p: int(os.path.basename(p)[len("checkpoint_"):-len(".pt")]))
        ck = torch.load(last, weights_only=True)
        # the schedule and the run identity follow the request's max_epochs, not the config's epochs
        assert ck["lr_scheduler"]["t_total"] == ck["trainer"]["iteration"] and ck["run"]["epochs"] == 3
        assert ck["run"]["init"].startswith(f"encoder of {encoder}")  # the train option pretrained_ckpt was used
        # the weights' provenance is MONAI Label's datastore, not the bundle's synthetic default (pack_bundle reads
        # it to decide the data licence), and no synthetic data was written into the served bundle
        meta = json.load(open(os.path.join(models, "metadata.json")))
        assert meta["trained_on"] == f"monailabel:{work / 'studies'}", meta["trained_on"]
        assert not os.path.exists(os.path.join(bundle, "data")), os.listdir(os.path.join(bundle, "data"))

        # the next /infer uses the new model.pt, without a restart
        # (one reference run covers both: /infer equals the bundle's own inference.json with the same model.pt,
        # and differs from the first /infer, so the served model is the new one)
        seg1 = _infer(name0, tmp_path / "seg1.nii.gz")
        ref1 = _bundle_inference(server_python, bundle, image, str(tmp_path / "ref1"))
        assert np.array_equal(seg1, ref1), "/infer differs from the bundle's own inference with the new model.pt"
        assert not np.array_equal(seg1, seg0), "the second /infer did not use the new model.pt"

        # a request that cannot run stops before training, and the reason reaches the client: Slicer's module
        # trains asynchronously and shows the task's status and details (the last lines of the run); model.pt
        # untouched. Here: a pretrained_ckpt typed into Slicer's options table that does not exist.
        missing = str(tmp_path / "no_such_encoder.pt")
        task = _train_async(max_epochs=1, val_split=0.5, multi_gpu=False, device="cpu", pretrained_ckpt=missing)
        assert task["status"] == "ERROR", task
        said = "\n".join(task["details"])
        assert f"ERROR: WeightsFileError: pretrained checkpoint not found: {missing} (config id 'pretrained_ckpt'" in said, said
        assert open(os.path.join(models, "model.pt"), "rb").read() == served1

        # another session, with val_split 0 (none of the labelled volumes for validation, as MONAI Label splits them
        # at 0.2 with 1-2 volumes): one is held out for validation, named in the log; the earlier session's resume
        # checkpoints (51 MB each) are removed, not piled up
        def resume_state():
            return sorted(glob.glob(os.path.join(models, "monailabel", "**", "checkpoint_*.pt"), recursive=True))

        before = resume_state()
        mark = len(open(log).read())
        _train(max_epochs=1, val_split=0.0, multi_gpu=False, device="cpu")
        said = open(log).read()[mark:]
        assert "holding out" in said and "for validation; training on the other 3" in said, said[-3000:]
        after = resume_state()
        assert after and len(after) <= len(before), (before, after)
        assert not glob.glob(os.path.join(models, "monailabel", "previous", "**", "*.pt"), recursive=True)
        # the record says what the session really started from: the served model, loaded over the network as built
        identity = json.load(open(os.path.join(models, "metadata.json")))["medmae_run"]["identity"]
        assert identity["started_from"] == os.path.join(models, "model.pt"), identity


def test_ci_builds_the_server_environment_as_documented():
    """.ci/run makes the README's server environment with the README's own command, then requires this test."""
    (cmd,) = readme_commands("#### MONAI Label server environment", README)
    assert cmd == ("python3 -m venv .venv-monailabel && .venv-monailabel/bin/pip install --no-deps -r "
                   "requirements-monailabel-server.txt")
    ci = open(os.path.join(REPO, ".ci", "run")).read()
    assert (f'python scripts/readme_commands.py "#### MONAI Label server environment" --readme {README}' in ci
            and "MEDMAE_REQUIRE_MONAILABEL_SERVER=1" in ci)


def test_monai_label_refuses_the_2d_bundles_at_start(server_python, tmp_path, tmp_path_factory):
    """The README's server command with the 2D bundles (a classifier and a pretraining encoder, packed with weights):
    the server does not come up serving them as segmentation models; the log says what it serves instead."""
    app = tmp_path / "mlapp"
    shutil.copytree(os.path.join(ENV, "monailabel", "sample-apps", "monaibundle"), app)
    for bundle in ("vit_classification", "mae_pretrain"):
        r = subprocess.run([sys.executable, "scripts/pack_bundle.py", "--bundle", bundle, "--out", str(tmp_path / "d"),
                            "--models_dir", str(tmp_path / "none"), "--zip", "False"], cwd=REPO, capture_output=True,
                           text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        shutil.copytree(tmp_path / "d" / bundle, app / "model" / bundle)
        os.makedirs(app / "model" / bundle / "models")
        shutil.copy(initial_weights(tmp_path_factory, bundle, "inference.json"), app / "model" / bundle / "models")
    (tmp_path / "studies").mkdir()
    log = str(tmp_path / "server.log")
    # one server start (the slow part) for the classifier; the encoder's network_def refuses the same way when
    # MONAI Label's BundleInferTask builds it (checked below without a server)
    for models in ("vit_classification",):
        start = (f". {ENV}/bin/activate && monailabel start_server --app {app} --studies {tmp_path / 'studies'} "
                 f"--conf models {models} --conf zoo_source github --conf sam2 false --host 127.0.0.1 --port 8000")
        with open(log, "w") as out:
            proc = subprocess.Popen(["bash", "-c", start], stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.time() + 300
            while "MONAI Label serves medmae's 3D segmentation bundle only" not in open(log).read():
                assert proc.poll() is None and time.time() < deadline, f"{models}: no refusal:\n{_tail(log)}"
                time.sleep(1)
            text = open(log).read()
            assert f"{models} gives no label map" in text and "--conf models unetr_segmentation" in text, _tail(log)
            with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
                _get("/info/")  # nothing was started that serves it
        finally:
            _stop(proc)
    build = ("import sys; sys.path.insert(0, sys.argv[1]); from monailabel.tasks.infer.bundle import BundleInferTask; "
             "BundleInferTask(sys.argv[1], {})")
    r = subprocess.run([server_python, "-c", build, str(app / "model" / "mae_pretrain")], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode != 0 and "mae_pretrain gives no label map" in r.stderr, r.stderr[-2000:]
