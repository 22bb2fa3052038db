"""Long jobs as clusters run them: one run per folder under races, stops on SIGTERM / SIGINT that resume exactly,
whole earlier runs archived together, cache and checkpoint damage, terminal output a person can follow."""

import multiprocessing as mp
import os

import pytest

B = "vit_classification"
FAST = dict(epochs=1, epoch_length=2, num_workers=0, batch_size=4, val_interval=1, warmup_epochs=0,
            pretrained_ckpt="scratch")


def _contend(folder, barrier, results):
    from medmae_ext.training.runlock import RunLockedError, acquire_run_lock

    barrier.wait(30)
    try:
        acquire_run_lock(folder)
        results.put("won")
    except RunLockedError:
        results.put("lost")
    except Exception as e:  # a race that crashes a contender is a failure too
        results.put(f"{type(e).__name__}: {e}")
    barrier.wait(30)  # hold the lock until every contender has tried


def _dead_pid() -> int:
    ctx = mp.get_context("fork")
    p = ctx.Process(target=os._exit, args=(0,))
    p.start()
    p.join()
    return p.pid


def test_taking_over_a_stale_lock_is_atomic(tmp_path):
    """Several runs started together on a folder whose lock a killed run left: exactly one gets it, every time."""
    import json
    import socket

    from medmae_ext.training.runlock import LOCK_NAME

    ctx = mp.get_context("fork")
    winners = []
    for trial in range(25):
        folder = tmp_path / f"t{trial}"
        folder.mkdir()
        (folder / LOCK_NAME).write_text(json.dumps({"pid": _dead_pid(), "host": socket.gethostname(), "started": "x"}))
        barrier, results = ctx.Barrier(4), ctx.Queue()
        procs = [ctx.Process(target=_contend, args=(str(folder), barrier, results)) for _ in range(4)]
        for p in procs:
            p.start()
        outcome = sorted(results.get(timeout=60) for _ in procs)
        assert set(outcome) <= {"won", "lost"}, outcome
        for p in procs:
            p.join(60)
        winners.append(outcome.count("won"))
    assert winners == [1] * 25, winners


def test_a_released_lock_is_taken_by_the_next_run_and_a_held_one_refuses(tmp_path):
    from medmae_ext.training.runlock import LOCK_NAME, RunLockedError, acquire_run_lock, release_run_lock

    ctx = mp.get_context("fork")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    holder = ctx.Process(target=_contend, args=(str(tmp_path), barrier, results))
    holder.start()
    barrier.wait()
    assert results.get(timeout=60) == "won"
    with pytest.raises(RunLockedError, match=f"pid {holder.pid} on host"):
        acquire_run_lock(str(tmp_path))
    barrier.wait()
    holder.join(60)
    # the holder exited without releasing (like a SIGKILL): the kernel dropped its flock, the next run takes over
    assert acquire_run_lock(str(tmp_path)).endswith(LOCK_NAME)
    release_run_lock(str(tmp_path))
    assert not (tmp_path / LOCK_NAME).exists()


# checkpoints that cannot be read ----------------------------------------------------------------------------------
def test_every_checkpoint_unreadable_stops_and_changes_nothing(tmp_path, synth2d):
    from conftest import raised, run_bundle

    from medmae_ext.training.resume import RunMismatchError

    kw = dict(bundle_root=str(tmp_path), dataset_dir=synth2d, **FAST)
    run_bundle(B, "train.json", **{**kw, "epochs": 2})
    models = tmp_path / "models"
    for name in ("checkpoint_1.pt", "checkpoint_2.pt"):
        data = (models / name).read_bytes()
        (models / name).write_bytes(data[: len(data) // 3])  # truncated (full disk) or from a newer torch
    before = {p.name: p.stat().st_mtime_ns for p in models.iterdir()}
    with pytest.raises(Exception) as info:
        run_bundle(B, "train.json", **{**kw, "epochs": 3})
    msg = raised(info, RunMismatchError)
    assert "no checkpoint" in msg and "checkpoint_1.pt" in msg and "checkpoint_2.pt" in msg and "--resume False" in msg
    assert {p.name: p.stat().st_mtime_ns for p in models.iterdir()} == before  # nothing moved or written
    assert not (models / "previous").exists()


def test_a_resumed_run_logs_its_true_position(tmp_path, synth2d):
    import logging

    from conftest import captured_warnings, run_bundle

    kw = dict(bundle_root=str(tmp_path), dataset_dir=synth2d, **FAST)
    run_bundle(B, "train.json", **kw)
    with captured_warnings("ignite.engine.engine.SupervisedTrainer", logging.INFO) as ignite_said, captured_warnings(
        "medmae_ext.training.checkpoints", logging.INFO
    ) as we_said:
        run_bundle(B, "train.json", **{**kw, "epochs": 2})
    assert not [m for m in ignite_said if m.startswith("Engine run resuming from iteration 0, epoch 0")], ignite_said
    assert any("epoch 1, iteration 2 done; training until epoch 2" in m for m in we_said), we_said


# a fresh start archives the earlier run whole ---------------------------------------------------------------------
def test_resume_false_archives_the_whole_earlier_run(tmp_path, synth2d):
    """``--resume False``: weights, run record, TensorBoard files and pictures of the earlier run move together;
    the 3D run's files in the same bundle (logs/3d, models/3d) are another run's and stay."""
    import glob

    from conftest import run_bundle

    kw = dict(bundle_root=str(tmp_path), dataset_dir=synth2d, epochs=2, epoch_length=2, num_workers=0,
              batch_size=4, warmup_epochs=0, picture_interval=1)
    run_bundle("mae_pretrain", "train.json", **kw)
    (tmp_path / "logs" / "3d").mkdir()
    (tmp_path / "logs" / "3d" / "events.out.tfevents.1.other.3d").write_text("the 3D run's curve")
    old_events = sorted(os.listdir(tmp_path / "logs"))
    old_pictures = sorted(os.listdir(tmp_path / "eval" / "reconstructions"))
    assert old_pictures and any(n.startswith("events.out") for n in old_events)

    run_bundle("mae_pretrain", "train.json", **{**kw, "epochs": 1, "resume": False})
    archive = glob.glob(str(tmp_path / "models" / "previous" / "*"))
    assert len(archive) == 1, archive
    archive = archive[0]
    assert {"checkpoint_2.pt", "model.pt", "metadata.json"} <= set(os.listdir(archive))
    assert sorted(os.listdir(os.path.join(archive, "reconstructions"))) == old_pictures
    assert sorted(os.listdir(os.path.join(archive, "logs"))) == [n for n in old_events if n != "3d"]
    # what is left is this run's alone (and the other run's folder, untouched)
    assert (tmp_path / "logs" / "3d" / "events.out.tfevents.1.other.3d").read_text() == "the 3D run's curve"
    assert not set(os.listdir(tmp_path / "logs")) & set(old_events) - {"3d"}
    assert not set(os.listdir(tmp_path / "eval" / "reconstructions")) - {"recon_epoch0001.png"}


# weights files are data, never code -------------------------------------------------------------------------------
class _RunsCode:
    """Unpickling this creates a marker file: what a crafted "model.pt" does to a loader that trusts pickles."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_every_loader_of_user_weights_refuses_a_pickle_that_runs_code(tmp_path):
    import sys

    import torch
    from monai.handlers import CheckpointLoader

    from medmae_ext.errors import WeightsFileError
    from medmae_ext.networks import ViTClassifier
    from medmae_ext.networks.weights import load_pretrained_encoder, read_state_dict
    from medmae_ext.training.resume import RunIdentity, RunMismatchError, resume_checkpoint
    from medmae_ext.training.runlock import release_run_lock

    marker = tmp_path / "code_ran"
    evil = tmp_path / "models" / "model.pt"
    evil.parent.mkdir()
    torch.save({"network": {"w": torch.zeros(1)}, "x": _RunsCode(marker)}, evil)
    net = ViTClassifier(in_channels=1, img_size=(16, 16), patch_size=(4, 4), hidden_size=48, mlp_dim=96,
                        num_layers=1, num_heads=3, num_classes=2, spatial_dims=2)

    with pytest.raises(WeightsFileError, match=str(evil)):  # --pretrained_ckpt, export's --ckpt_file, serving
        read_state_dict(str(evil))
    with pytest.raises(WeightsFileError, match=str(evil)):
        load_pretrained_encoder(net, str(evil))
    with pytest.raises(Exception, match="(?i)weights.only"):  # evaluate / inference configs: MONAI's CheckpointLoader (weights_only=True)
        CheckpointLoader(load_path=str(evil), load_dict={"model": net})(None)
    ckpt = tmp_path / "models" / "checkpoint_1.pt"
    evil.rename(ckpt)
    with pytest.raises(RunMismatchError, match="checkpoint_1.pt"):  # resume
        resume_checkpoint(str(ckpt.parent), RunIdentity(net, epochs=2))
    release_run_lock(str(ckpt.parent))
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "scripts"))
    import pack_bundle

    with pytest.raises(pack_bundle.PackError, match="checkpoint_1.pt"):  # packing for the model zoo
        pack_bundle._state_dict(str(ckpt))
    assert not marker.exists()


# what a user reads when a run stops on their input ----------------------------------------------------------------
def _cli(tmp_path, *args):
    import subprocess
    import sys

    from conftest import REPO, bundle_config

    r = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "training", "--config_file",
                        bundle_config(B, "train.json"), "--bundle_root", str(tmp_path / "run"), "--epochs", "1",
                        "--epoch_length", "1", "--batch_size", "4", "--num_workers", "0", *args],
                       cwd=REPO, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "MEDMAE_ERROR_DIR": str(tmp_path / "errors")})
    lines = [ln for ln in r.stderr.splitlines() if ln.strip() and " - " not in ln[:40]]  # not the log lines
    return r, lines


@pytest.mark.parametrize("case", ["locked", "unreadable_weights"])
def test_a_usage_error_is_one_message_naming_the_file_and_what_to_do(tmp_path, synth2d, case):
    import json
    import socket
    import subprocess
    import sys

    from medmae_ext.training.runlock import LOCK_NAME

    other = None
    if case == "locked":  # a run of an earlier medmae that holds the folder (a live process, recorded in the lock)
        other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        (tmp_path / "run" / "models").mkdir(parents=True)
        (tmp_path / "run" / "models" / LOCK_NAME).write_text(
            json.dumps({"pid": other.pid, "host": socket.gethostname(), "started": "2026-12-01 08:00:00"}))
        args, expected = ["--pretrained_ckpt", "scratch"], [f"pid {other.pid}", "2026-12-01 08:00:00", "Wait for it"]
    else:
        bad = tmp_path / "encoder.pt"
        bad.write_bytes(b"PK\x03\x04 not really a checkpoint")
        args, expected = ["--pretrained_ckpt", str(bad)], [str(bad), "torch.save(model.state_dict(), path)"]
    try:
        r, lines = _cli(tmp_path, "--dataset_dir", synth2d, *args)
    finally:
        if other:
            other.kill()
            other.wait()
    assert r.returncode == 1, r.stderr[-3000:]
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    assert lines[-2].startswith("ERROR: ") and all(e in lines[-2] for e in expected), lines[-3:]
    assert lines[-1].startswith("(full traceback: ") and "delete" not in lines[-2], lines[-3:]


def test_damaged_npz_and_folders_say_what_to_do(tmp_path):
    import numpy as np

    from medmae_ext.data.readers import DatalistError, image_list, load_medmnist_npz

    npz = tmp_path / "pneumonia.npz"
    rng = np.random.default_rng(0)
    np.savez_compressed(npz, train_images=rng.integers(0, 255, (64, 28, 28), dtype=np.uint8),
                        train_labels=np.zeros((64, 1), np.uint8))
    data = bytearray(npz.read_bytes())
    for i in range(200, 260):  # flipped bytes inside the compressed images (a bad copy)
        data[i] ^= 0xFF
    npz.write_bytes(bytes(data))
    with pytest.raises(DatalistError, match=f"{npz} is damaged.*copy it again"):
        load_medmnist_npz(str(npz), "training")

    # a labelled folder (class sub-folders) read as unlabelled images: the glob matched folders, say how to reach in
    from PIL import Image

    for cls in ("normal", "pneumonia"):
        (tmp_path / "xr" / cls).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "xr" / cls / f"{i}.png")
    with pytest.raises(DatalistError, match=r"2 folder\(s\) \(normal/, pneumonia/\).*'pattern': '\*/\*\.png'"):
        image_list(str(tmp_path / "xr"))
    items = image_list(str(tmp_path / "xr"), "*/*.png")
    assert [it["id"] for it in items] == ["normal_0.png", "normal_1.png", "pneumonia_0.png", "pneumonia_1.png"]

    # a readme among the images is skipped, named, and the run goes on
    (tmp_path / "xr" / "normal" / "readme.txt").write_text("scanned 2019")
    from conftest import captured_warnings

    with captured_warnings("medmae_ext.data.readers") as said:
        items = image_list(str(tmp_path / "xr" / "normal"))
    assert [it["id"] for it in items] == ["0.png", "1.png"]
    assert any("readme.txt" in m and "skipped" in m for m in said), said


# a damaged disk cache is recomputed, named ------------------------------------------------------------------------
def test_unreadable_disk_cache_entries_are_recomputed_naming_them(tmp_path):
    import numpy as np
    import torch
    from conftest import captured_warnings
    from monai.transforms import Compose, ScaleIntensityRanged

    from medmae_ext.data.caching import cached_dataset

    items = [{"image": np.full((1, 4, 4), i, np.float32), "id": f"x{i}"} for i in range(4)]
    transform = Compose([ScaleIntensityRanged("image", 0, 10, 0, 1)])
    first = [d["image"] for d in cached_dataset(items, transform, "disk", str(tmp_path / "cache"))]
    entries = sorted((tmp_path / "cache").glob("*.pt"))
    assert len(entries) == 4
    entries[0].write_bytes(b"")  # full disk while the entry was written
    entries[1].write_bytes(entries[1].read_bytes()[:100])  # killed mid-copy
    with captured_warnings("medmae_ext.data.caching") as said:
        again = [d["image"] for d in cached_dataset(items, transform, "disk", str(tmp_path / "cache"))]
    assert all(torch.equal(torch.as_tensor(a), torch.as_tensor(b)) for a, b in zip(first, again))
    assert len(said) == 2 and all(str(e) in " ".join(said) for e in entries[:2]), said
    assert all(torch.load(e, weights_only=False) is not None for e in entries)  # rewritten whole


# reconstruction pictures: every column title and the legend drawn whole ------------------------------------------
@pytest.mark.parametrize("rows,side,columns", [(1, 28, 3), (8, 28, 4), (2, 16, 4), (4, 96, 3)])
def test_picture_header_is_never_clipped(rows, side, columns):
    import numpy as np

    from medmae_ext.outputs.pictures import _with_header, panel_labels

    labels = panel_labels(object() if columns == 4 else None)
    panel = np.zeros((rows * (side + 1) - 1, columns * (side + 1) - 1, 3), np.uint8)
    picture = _with_header(panel, labels, max(1, 512 // panel.shape[0]))
    header = picture[:30]
    body_w = picture.shape[1] if picture[30:, -1].min() == 0 else int(np.nonzero(picture[30:].min(axis=(0, 2)) < 255)[0].max()) + 1
    col_w = body_w / len(labels)
    ink = header.min(axis=2) < 200
    for k in range(len(labels)):  # a label ends inside its own column: the last pixels before the next are blank
        right = int((k + 1) * col_w)
        assert ink[2:14, int(k * col_w): right].any(), f"label {labels[k]!r} missing"
        assert not ink[2:14, right - 3: right].any(), f"label {labels[k]!r} runs into the next column"
    legend = header[15:29].min(axis=2) < 250
    assert legend.any() and not legend[:, -3:].any(), "legend clipped at the right edge"


def test_a_run_prints_no_library_noise(tmp_path, synth2d):
    """No deprecation or runpy warnings on an ordinary run (they train users to skip the real ones)."""
    r, _ = _cli(tmp_path, "--dataset_dir", synth2d, "--pretrained_ckpt", "scratch")
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout + r.stderr
    assert "torch.meshgrid" not in out and "found in sys.modules" not in out and "Warning:" not in out, out[-3000:]


# SIGTERM / SIGINT: stop at the end of the iteration, resume exactly there -----------------------------------------
def _trace_config(path, trace, kill_at=None, sig="SIGTERM"):
    """An extra config file: log every iteration's loss and learning rate to ``trace`` (JSON lines); with
    ``kill_at``, send ``sig`` to the process itself at that iteration (as SLURM / docker stop / Ctrl-C would)."""
    import json

    log = ("$@train#trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: open(%r, 'a').write("
           "json.dumps({'it': e.state.iteration, 'loss': float(monai.handlers.from_engine(['loss'], first=True)"
           "(e.state.output)[0]), 'lr': @optimizer.param_groups[0]['lr']}) + chr(10)))" % str(trace))
    run = [log]
    if kill_at:
        run.append(f"$@train#trainer.add_event_handler(Events.ITERATION_COMPLETED(once={kill_at}), "
                   f"lambda e: os.kill(os.getpid(), signal.{sig}))")
    run += ["$@train#trainer.run()", "$medmae_ext.training.stopping.exit_if_stopped(@train#trainer)"]
    json.dump({"+imports": ["$from ignite.engine import Events", "$import json", "$import signal", "$import monai"],
               "run": run}, open(path, "w"))
    return str(path)


def _train(root, synth2d, extra, workers):
    import subprocess
    import sys

    from conftest import REPO, bundle_config

    cfg = "['%s','%s']" % (bundle_config(B, "train.json"), extra)
    return subprocess.run([sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", cfg,
                           "--bundle_root", str(root), "--dataset_dir", synth2d, "--epochs", "3", "--batch_size", "8",
                           "--num_workers", str(workers), "--pretrained_ckpt", "scratch", "--val_interval", "1"],
                          cwd=REPO, capture_output=True, text=True, timeout=600)


def _trace(path):
    import json

    return {d["it"]: (d["loss"], d["lr"]) for d in map(json.loads, open(path).read().splitlines())}


@pytest.mark.parametrize("sig,workers", [("SIGTERM", 0), ("SIGINT", 2)])
def test_a_signal_stops_after_the_iteration_and_the_same_command_resumes_exactly(tmp_path, synth2d, sig, workers):
    import torch

    from medmae_ext.bundle.record import read_record
    from medmae_ext.training.runlock import LOCK_NAME

    straight = _train(tmp_path / "straight", synth2d, _trace_config(tmp_path / "a.json", tmp_path / "a.jsonl"), workers)
    assert straight.returncode == 0, straight.stderr[-3000:]
    expected = _trace(tmp_path / "a.jsonl")
    length = len(expected) // 3
    kill_at = length + 3  # mid-epoch 2

    root = tmp_path / "stopped"
    r = _train(root, synth2d, _trace_config(tmp_path / "b.json", tmp_path / "b.jsonl", kill_at, sig), workers)
    assert r.returncode == {"SIGTERM": 143, "SIGINT": 130}[sig], r.stderr[-3000:]
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    ckpt = root / "models" / "checkpoint_1_3.pt"
    assert ckpt.is_file() and not (root / "models" / LOCK_NAME).exists(), sorted(os.listdir(root / "models"))
    assert max(_trace(tmp_path / "b.jsonl")) == kill_at  # not one iteration more
    assert read_record(str(root / "models" / "model.pt"))["status"] != "finished"

    r = _train(root, synth2d, _trace_config(tmp_path / "c.json", tmp_path / "b.jsonl"), workers)  # the same command
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"resumed from {ckpt}: epoch 1, iteration {kill_at} done" in r.stdout + r.stderr
    got = _trace(tmp_path / "b.jsonl")
    assert sorted(got) == sorted(expected)
    loss_a, lr_a = torch.tensor([expected[i] for i in sorted(expected)]).T
    loss_b, lr_b = torch.tensor([got[i] for i in sorted(got)]).T
    torch.testing.assert_close(lr_b, lr_a, rtol=1e-6, atol=0)
    torch.testing.assert_close(loss_b, loss_a, rtol=1e-5, atol=1e-6)


# following a run in a terminal ------------------------------------------------------------------------------------
def _in_terminal(args, cwd, timeout=600) -> str:
    """Run ``args`` with a pseudo-terminal as stdout and stderr (what a person at a terminal sees)."""
    import pty
    import select
    import subprocess
    import time

    import fcntl
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))  # a terminal 160 x 40
    p = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave, cwd=cwd, close_fds=True)
    os.close(slave)
    out, end = b"", time.time() + timeout
    while time.time() < end:
        ready, _, _ = select.select([master], [], [], 1.0)
        if master in ready:
            try:
                data = os.read(master, 1 << 16)
            except OSError:  # the child closed the terminal
                break
            if not data:
                break
            out += data
        elif p.poll() is not None:
            break
    p.wait(30)
    os.close(master)
    assert p.returncode == 0, out.decode(errors="replace")[-3000:]
    return out.decode(errors="replace")


def test_training_and_inference_show_progress_epoch_lines_and_what_they_wrote(tmp_path, synth2d):
    import re
    import sys

    from conftest import REPO, bundle_config

    root = tmp_path / "run"
    out = _in_terminal([sys.executable, "-m", "monai.bundle", "run", "training", "--config_file",
                        bundle_config(B, "train.json"), "--bundle_root", str(root), "--dataset_dir", synth2d,
                        "--epochs", "2", "--batch_size", "8", "--num_workers", "0", "--pretrained_ckpt", "scratch",
                        "--val_interval", "1"], REPO)
    screen = out.replace("\r\n", "\n")
    total = re.findall(r"training:\s+\d+%\|.*?\| (\d+)/(\d+) \[[\d:]+<[\d:]+", screen)
    assert total and total[-1][0] == total[-1][1], screen[-3000:]  # one bar for the whole run, with its ETA
    assert int(total[-1][1]) > 2 * 3  # spans both epochs, not one
    epoch_lines = [ln for ln in screen.split("\n") if re.search(r"epoch [12]/2 \| loss [\d.]+ \| validation val_auc", ln)]
    assert len(epoch_lines) == 2, screen[-3000:]
    assert "Iter:" not in screen  # no per-iteration log lines breaking the bar
    assert not re.search(r"it/s[^\n]*\] *\d{4}-\d\d-\d\d ", screen) and not re.search(r"s/it[^\n]*\] *\d{4}-", screen)
    summary = screen[screen.index("training finished in"):]
    for written in ("models/: ", "model.pt", "metadata.json", "logs/: ", "eval/validation/: "):
        assert written in summary, summary

    out = _in_terminal([sys.executable, "-m", "monai.bundle", "run", "--config_file",
                        bundle_config(B, "inference.json"), "--bundle_root", str(root), "--dataset_dir", synth2d], REPO)
    screen = out.replace("\r\n", "\n")
    assert re.search(r"inference:\s+100%\|.*\| (\d+)/\1 ", screen), screen[-3000:]
    assert re.search(r"inference finished in [\d:]+; it wrote 1 file\(s\):\s*\n.*eval/: predictions.csv", screen), \
        screen[-2000:]


def test_progress_in_a_log_file_and_inputs_left_out_are_named(tmp_path):
    import io
    import shutil

    from conftest import captured_warnings
    from ignite.engine import Engine

    from medmae_ext.data.readers import image_list
    from medmae_ext.outputs.progress import Progress

    log = io.StringIO()  # not a terminal (SLURM's output file): plain lines every log_every seconds
    engine = Engine(lambda e, b: {"loss": 0.5})
    Progress("training", loss=lambda o: o["loss"], log_every=0, stream=log).attach(engine)
    engine.run(range(4), max_epochs=3)
    lines = log.getvalue().splitlines()
    assert lines[0] == "training: 12 iterations", lines
    assert any(ln.startswith("training: 12/12 iterations (100%), ") for ln in lines) and any("left" in ln for ln in lines)
    assert [ln.split(" | ")[:2] for ln in lines if ln.startswith("epoch ")] == [
        ["epoch 1/3", "loss 0.5000"], ["epoch 2/3", "loss 0.5000"], ["epoch 3/3", "loss 0.5000"]]

    # a DICOM series next to NIfTI files is not silently left out by the default '*.nii.gz'
    series = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "ct")
    dicom = [os.path.join(r, d) for r, ds, _ in os.walk(series) for d in ds]
    from medmae_ext.data.readers import is_dicom_series

    dicom = [d for d in dicom if is_dicom_series(d)]
    if not dicom:
        pytest.skip("../shared/data/ct has no DICOM series here")
    shutil.copytree(dicom[0], tmp_path / "scans" / "series_a")
    (tmp_path / "scans" / "ct1.nii.gz").write_bytes(b"x")
    with captured_warnings("medmae_ext.data.readers") as said:
        items = image_list(str(tmp_path / "scans"), "*.nii.gz")
    assert [it["id"] for it in items] == ["ct1.nii.gz"]
    assert any("series_a" in m and "'*'" in m for m in said), said


def test_the_stop_and_progress_handlers_never_swallow_an_exception():
    """ignite re-raises a run's exception only while no EXCEPTION_RAISED handler exists; ours must re-raise it (a
    DDP rank without StatsHandler would otherwise end 'successfully' after a crash)."""
    import signal

    from ignite.engine import Engine

    from medmae_ext.outputs.progress import Progress
    from medmae_ext.training.stopping import SignalStop

    def step(engine, batch):
        if engine.state.iteration == 3:
            raise RuntimeError("boom at iteration 3")

    before = signal.getsignal(signal.SIGINT)
    for handler in (Progress("training"), SignalStop(save=lambda e: "x")):
        engine = Engine(step)
        handler.attach(engine)
        with pytest.raises(RuntimeError, match="boom at iteration 3"):
            engine.run(range(5), max_epochs=2)
    assert signal.getsignal(signal.SIGINT) is before  # restored after the failure


def test_a_checkpoint_loaded_at_start_is_logged_as_the_initialisation(tmp_path):
    """MONAI Label's pretrained: true adds a plain CheckpointLoader to train#handlers: the log says the run starts
    from it (not from the random / encoder initialisation logged while the network was built); a resume loader is
    not reported twice."""
    import torch
    from monai.handlers import CheckpointLoader

    from conftest import captured_warnings
    from medmae_ext.training.checkpoints import ResumeCheckpointLoader
    from medmae_ext.training.resume import RunIdentity
    from medmae_ext.training.serving import log_loaded_checkpoints

    net = torch.nn.Linear(2, 2)
    served = str(tmp_path / "models" / "model.pt")
    handlers = [CheckpointLoader(load_path=served, load_dict={"model": net}),
                ResumeCheckpointLoader(load_path=str(tmp_path / "checkpoint_1.pt"), load_dict={"network": net})]
    identity = RunIdentity(net, init="encoder of enc.pt")
    with captured_warnings("medmae_ext.training.serving") as said:
        assert log_loaded_checkpoints(handlers, identity) == handlers
    assert len(said) == 1 and f"training starts from {served} (model)" in said[0]
    # the run record (checkpoints, metadata.json) says so too, beside how the network was built; a resume of the
    # same run is not refused for it (started_from is not part of what identifies a run)
    assert identity.state_dict()["started_from"] == served and identity.state_dict()["init"] == "encoder of enc.pt"
    RunIdentity(net, init="encoder of enc.pt").load_state_dict(identity.state_dict())
    again = RunIdentity(net, init="encoder of enc.pt")
    with captured_warnings("medmae_ext.training.serving") as said:
        log_loaded_checkpoints(handlers[1:], again)
    assert not said and "started_from" not in again.state_dict()


def test_a_fresh_session_discards_earlier_resume_state_but_archives_outputs(tmp_path):
    from medmae_ext.training.resume import move_previous_outputs

    ckpts, logs = tmp_path / "monailabel", tmp_path / "logs"
    ckpts.mkdir()
    logs.mkdir()
    for name in ("checkpoint_1.pt", "checkpoint_2.pt"):
        (ckpts / name).write_bytes(b"resume state")
    (logs / "report.txt").write_text("earlier session")
    dest = move_previous_outputs(str(ckpts), outputs=[str(logs)], discard_checkpoints=True)
    assert not list(ckpts.glob("checkpoint_*.pt")) and not list(ckpts.rglob("*.pt"))
    assert dest and open(os.path.join(dest, "logs", "report.txt")).read() == "earlier session"
    # without the option (a user's run) they are archived whole
    (ckpts / "checkpoint_3.pt").write_bytes(b"resume state")
    dest = move_previous_outputs(str(ckpts))
    assert os.path.isfile(os.path.join(dest, "checkpoint_3.pt"))
