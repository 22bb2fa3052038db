"""Segmentation labels are checked before training (grid, values, classes), atlas ids are remapped by
``label_map``, and an unreadable file is the first and last line a user reads, in all four bundles."""

import json
import os
import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import REPO, bundle_config, bundle_configs, captured_warnings, exception_chain, run_bundle

from medmae_ext.data import check_segmentation_items, label_lookup
from medmae_ext.errors import ImageReadError, InputError, LabelError, headline
from medmae_ext.data.transforms import RemapLabeld

NAMES = {"0": "background", "1": "liver", "2": "spleen", "3": "kidney", "4": "aorta"}
TS_V2 = {5: 1, 1: 2, 2: 3, 3: 3, 52: 4}  # TotalSegmentator v2 ids -> liver, spleen, kidney (both), aorta
AFF = np.diag([1.5, 1.5, 2.0, 1.0])
AFF[:3, 3] = [-20.0, 10.0, 5.0]


def _volume(shape=(20, 18, 16), seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(0, 50, shape)).astype(np.int16)


def _labels(shape=(20, 18, 16), ids=(1, 2, 3, 4)):
    lab = np.zeros(shape, np.uint8)
    for n, v in enumerate(ids):
        lab[2 + 3 * n: 4 + 3 * n, 3:9, 4:10] = v
    return lab


def _item(tmp_path, name, lab, img=None, lab_aff=AFF, img_aff=AFF):
    img = _volume() if img is None else img
    nib.save(nib.Nifti1Image(img, img_aff), tmp_path / f"{name}_img.nii.gz")
    nib.save(nib.Nifti1Image(lab, lab_aff), tmp_path / f"{name}_lab.nii.gz")
    return {"image": str(tmp_path / f"{name}_img.nii.gz"), "label": str(tmp_path / f"{name}_lab.nii.gz"), "id": name}


def _fails(items, match, **kw):
    with pytest.raises(LabelError) as info:
        check_segmentation_items(items, NAMES, source="dl.json [training]", **kw)
    msg = str(info.value)
    for m in match:
        assert m in msg, msg
    return msg


def test_each_bad_label_is_named_with_both_files_and_the_values(tmp_path):
    good = _item(tmp_path, "good", _labels())
    assert check_segmentation_items([good], NAMES, in_channels=1) == [good]
    raw = _item(tmp_path, "raw", _labels(ids=(5, 1, 52, 117)))
    _fails([good, raw], ["item 1 (id=raw)", raw["label"], "[5, 52, 117]", "outside the classes 0..4", "label_map"])
    short = _item(tmp_path, "short", _labels()[:-2])
    _fails([short], [short["label"], short["image"], "(18, 18, 16)", "(20, 18, 16)"])
    shifted = AFF.copy()
    shifted[0, 3] += 3.0  # same shape, two voxels to the side: a label drawn on another series
    moved = _item(tmp_path, "moved", _labels(), lab_aff=shifted)
    _fails([moved], [moved["label"], moved["image"], "different positions in space", "3 mm"])
    blurred = _item(tmp_path, "blur", _labels().astype(np.float32) * 0.5)
    _fails([blurred], [blurred["label"], "non-integer values [0.5"])
    two = _item(tmp_path, "two", np.stack([_labels(), _labels()], -1))
    _fails([two], [two["label"], "2 channels"])
    two_img = _item(tmp_path, "twoimg", _labels(), img=np.stack([_volume(), _volume()], -1))
    _fails([two_img], [two_img["image"], "2 channel(s)", "'in_channels'"], in_channels=1)
    no_kidney = _item(tmp_path, "nokid", _labels(ids=(1, 2, 4)))
    _fails([no_kidney], ["{3: 'kidney'}", "occur in no label"])
    with captured_warnings("medmae_ext.data.segmentation") as warned:  # validation: a warning, not an error
        check_segmentation_items([no_kidney], NAMES, source="dl.json [validation]", require_all_classes=False)
    assert any("{3: 'kidney'}" in w for w in warned)
    empty = _item(tmp_path, "empty", np.zeros((20, 18, 16), np.uint8))
    _fails([empty], ["background only"])


def test_a_label_stored_in_another_orientation_on_the_same_grid_passes(tmp_path):
    lab = nib.Nifti1Image(_labels(), AFF)
    lps = lab.as_reoriented(nib.orientations.axcodes2ornt(("L", "P", "S")))  # ITK tools write LPS
    item = _item(tmp_path, "lps", np.asarray(lps.dataobj), lab_aff=lps.affine)
    assert check_segmentation_items([item], NAMES)
    off = lps.affine.copy()
    off[2, 3] += 2.0  # the same storage order, one slice off
    moved = _item(tmp_path, "lps_moved", np.asarray(lps.dataobj), lab_aff=off)
    _fails([moved], ["different positions in space"])


def test_label_map_sends_atlas_ids_to_classes_and_the_rest_to_background():
    src = torch.tensor([[0, 5, 1, 2, 3, 52, 117, 6, 4]], dtype=torch.float32)[None]  # [C=1, 1, 9]
    out = RemapLabeld("label", {str(k): v for k, v in TS_V2.items()}, num_classes=5)({"label": src})["label"]
    assert out.dtype == src.dtype and out.shape == src.shape
    assert out.flatten().tolist() == [0, 1, 2, 3, 3, 4, 0, 0, 0]
    assert RemapLabeld("label", None, num_classes=5)({"label": src})["label"] is src
    for bad, what in (({5: 7}, "within 0..4"), ({-1: 1}, "source ids must be >= 0"), ({"x": 1}, "'x' is not an integer"),
                      ({}, "non-empty")):
        with pytest.raises(LabelError, match="label_map") as info:
            label_lookup(bad, 5)
        assert what in str(info.value)


def test_docs_atlas_maps_send_each_organ_to_its_class():
    """The BTCV and TotalSegmentator maps the unetr docs print are the right ids for liver/spleen/kidney/aorta."""
    text = open(os.path.join(REPO, "bundles", "unetr_segmentation", "docs", "README.md")).read()
    maps = {}
    for line in text.splitlines():
        if line.startswith("| ") and "label_map" not in line and "{" in line:
            cells = [c.strip().strip("`") for c in line.strip("|").split("|")]
            maps[cells[0]] = json.loads(cells[-1])
    btcv = {1: "spleen", 2: "right kidney", 3: "left kidney", 6: "liver", 8: "aorta", 4: "gallbladder"}
    ts2 = {1: "spleen", 2: "kidney_right", 3: "kidney_left", 5: "liver", 52: "aorta", 6: "stomach"}
    cls = {"liver": 1, "spleen": 2, "kidney": 3, "aorta": 4}
    for name, atlas in (("BTCV", btcv), ("TotalSegmentator v2", ts2)):
        lut = label_lookup(maps[name], 5)
        for src, organ in atlas.items():
            want = next((c for o, c in cls.items() if o in organ), 0)
            assert (lut[src] if src < len(lut) else 0) == want, (name, organ)


def _atlas_set(tmp_path):
    """Two training and one validation volume whose labels carry TotalSegmentator v2 ids (and ids to drop)."""
    items = []
    for i in range(3):
        lab = _labels(ids=(5, 1, 2 + i % 2, 52))
        lab[15:17, 12:15, 12:14] = 117 if i == 0 else 0  # an id the bundle does not use
        items.append(_item(tmp_path, f"ts{i}", lab, img=_volume(seed=i)))
    dl = tmp_path / "atlas.json"
    json.dump({"training": items[:2], "validation": items[2:]}, open(dl, "w"))
    return str(dl)


FAST = dict(epochs=1, val_interval=1, warmup_epochs=0, num_workers=0, batch_size=1, num_samples=1,
            roi_size=[16, 16, 16], pixdim=[1.5, 1.5, 2.0], pretrained_ckpt="scratch", resume=False)
FAST_NET = {"feature_size": 8, "hidden_size": 48, "mlp_dim": 96,
            "num_heads": 2}


def test_raw_atlas_labels_stop_the_bundle_before_training_and_label_map_trains(tmp_path):
    dl = _atlas_set(tmp_path)
    root = tmp_path / "b"
    with pytest.raises(Exception) as info:
        run_bundle("unetr_segmentation", "train.json", bundle_root=str(root), data_path=dl, **FAST, **FAST_NET)
    assert any(isinstance(x, LabelError) and "[5, 52, 117]" in str(x) and "ts0_lab.nii.gz" in str(x)
               for x in exception_chain(info.value))
    assert not os.path.isdir(root / "models") or not os.listdir(root / "models")  # nothing trained, nothing written
    wf = run_bundle("unetr_segmentation", "train.json", bundle_root=str(root), data_path=dl, label_map=TS_V2, **FAST,
                    **FAST_NET)
    trainer = wf.parser.get_parsed_content("train#trainer")
    assert trainer.state.iteration == 2 and os.path.isfile(root / "models" / "model.pt")
    val = wf.parser.get_parsed_content("validate#dataset")[0]["label"]
    assert sorted(torch.unique(val).tolist()) == [0, 1, 2, 3, 4]  # 117 dropped, kidney from id 3 (this volume)
    record = json.load(open(root / "models" / "metadata.json"))["medmae_run"]["settings"]
    assert record["label_map"] == {str(k): v for k, v in TS_V2.items()}
    # evaluation reads the same map (and the sizes) from the run record: no flag repeated
    ev = run_bundle("unetr_segmentation", "evaluate.json", run_id="evaluating", bundle_root=str(root), data_path=dl)
    assert ev.parser.get_parsed_content("evaluator").state.metrics["mean_dice"] >= 0
    assert ev.parser.get_parsed_content("label_map") == {str(k): v for k, v in TS_V2.items()}
    # another map is another run (resume refuses it, naming the setting)
    from medmae_ext.training.resume import RunMismatchError

    with pytest.raises(Exception) as info:
        run_bundle("unetr_segmentation", "train.json", bundle_root=str(root), data_path=dl,
                   label_map={**TS_V2, 117: 4}, **{**FAST, "resume": True, "epochs": 2}, **FAST_NET)
    mismatch = [x for x in exception_chain(info.value) if isinstance(x, RunMismatchError)]
    assert mismatch and "label_map: checkpoint has" in str(mismatch[0])



def test_headline_is_the_innermost_input_error():
    try:
        try:
            try:
                raise EOFError("Compressed file ended before the end-of-stream marker was reached")
            except EOFError as e:
                raise ImageReadError("cannot read /data/ct_07.nii.gz: EOFError: Compressed file ended") from e
        except ImageReadError as e:
            raise RuntimeError("applying transform <LoadImaged object>") from e
    except RuntimeError as e:
        wrapped = RuntimeError("Failed to instantiate component 'monai.data.dataset.CacheDataset'")
        wrapped.__cause__ = e
    assert headline(wrapped) == "ImageReadError: cannot read /data/ct_07.nii.gz: EOFError: Compressed file ended"
    worker = RuntimeError("Caught RuntimeError in DataLoader worker process 0.\nOriginal Traceback (most recent call "
                          "last):\n  File \"x.py\", line 1\nmedmae_ext.errors.ImageReadError: cannot read /d/a.png: bad")
    assert headline(worker) == "medmae_ext.errors.ImageReadError: cannot read /d/a.png: bad"
    assert headline(ValueError("plain")) is None
    assert issubclass(LabelError, InputError) and issubclass(ImageReadError, InputError)


def _truncated_copy(src, dst):
    data = open(src, "rb").read()
    open(dst, "wb").write(data[: len(data) // 2])


@pytest.mark.parametrize("bundle,config,key", [("mae_pretrain", "train.json", "image"),
                                               ("msmae_pretrain", "train.json", "image"),
                                               ("vit_classification", "train.json", "image"),
                                               ("unetr_segmentation", "train.json", "label")])
def test_an_unreadable_file_is_the_first_and_last_line_a_user_reads(tmp_path, synth2d, synth3d, bundle, config, key):
    src = synth3d if bundle == "unetr_segmentation" else synth2d
    data = tmp_path / "data"
    shutil.copytree(src, data)
    dl = json.load(open(data / "datalist.json"))
    bad = dl["training"][0][key]
    _truncated_copy(data / bad, data / bad)
    root = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "training", "--config_file",
                        str(bundle_configs(bundle, config)), "--bundle_root", str(root), "--dataset_dir", str(data),
                        "--epochs", "1", "--num_workers", "0", "--pretrained_ckpt", "scratch"][: None if bundle in (
                            "vit_classification", "unetr_segmentation") else -2],
                       cwd=REPO, capture_output=True, text=True, timeout=600,
                       env={**os.environ, "MEDMAE_ERROR_DIR": str(tmp_path / "errors")})
    assert r.returncode == 1, r.stderr[-3000:]
    err = [ln for ln in r.stderr.splitlines() if ln.strip()]
    first = next(ln for ln in err if ln.startswith(("ERROR", "Traceback")))
    path = os.path.join(str(data), bad)
    assert first.startswith("ERROR: ImageReadError: cannot read ") and path in first, r.stderr[-3000:]
    assert "Compressed file ended" in first or "not a gzip file" in first or "cannot read" in first
    # the message alone, then where the full traceback went: no traceback in the terminal
    assert "Traceback" not in r.stderr and err[-1].startswith("(full traceback: "), r.stderr[-3000:]
    report = err[-1][len("(full traceback: "):-1]
    assert report.startswith(str(tmp_path / "errors")) and "Traceback (most recent call last)" in open(report).read()
    assert "terminate called" not in r.stdout + r.stderr
    assert not glob_checkpoints(root)


def glob_checkpoints(root):
    import glob

    return glob.glob(os.path.join(str(root), "models", "**", "*.pt"), recursive=True)
