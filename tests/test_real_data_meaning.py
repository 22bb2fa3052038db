"""What the numbers mean on real-format data: one orientation for every reader, class counts checked against the
labels, validation that shows a one-class model for what it is (MedMNIST-format fixtures made here; the shared
PneumoniaMNIST copy where present)."""

import csv
import os

import numpy as np
import pytest
import torch
from conftest import REPO, captured_warnings, exception_chain, run_bundle
from PIL import Image

from medmae_ext.data import DatalistError

B = "vit_classification"
FAST = dict(epochs=1, epoch_length=3, num_workers=0, batch_size=8, val_interval=1, warmup_epochs=0,
            img_size=[28, 28], patch_size=[4, 4], pretrained_ckpt="scratch")
PNEUMONIA = os.path.join(os.path.dirname(REPO), "shared", "data", "pneumoniamnist_trainval.npz")



@pytest.fixture(scope="module")
def npz(tmp_path_factory):
    """A binary MedMNIST-format file whose class is a bright band at the *top* of the image (orientation matters)."""
    rng = np.random.default_rng(0)
    d = tmp_path_factory.mktemp("npz")
    out = {}
    for split, n in (("train", 48), ("val", 16)):
        img = rng.integers(0, 120, (n, 28, 28), dtype=np.uint8)
        lab = np.arange(n) % 2
        img[lab == 1, :6, :] = 250
        out[f"{split}_images"], out[f"{split}_labels"] = img, lab[:, None]
    np.savez(d / "toy.npz", **out)
    os.makedirs(d / "png")
    for i, im in enumerate(out["val_images"]):
        Image.fromarray(im).save(d / "png" / f"val_{i:02d}.png")
    return d


def test_forgetting_class_names_on_binary_data_stops_before_training(tmp_path, npz):
    with pytest.raises(Exception) as info:
        run_bundle(B, "train.json", bundle_root=str(tmp_path), data_format="medmnist", data_path=str(npz / "toy.npz"),
                   **FAST)
    msg = [str(e) for e in exception_chain(info.value) if isinstance(e, DatalistError)]
    assert msg and "labels use classes [0, 1] but the network has 3 outputs" in msg[0] and "--class_names" in msg[0]
    assert not os.path.exists(tmp_path / "models")  # nothing trained, nothing written
    with pytest.raises(Exception) as info:  # MSMAE's supervised head likewise
        run_bundle("msmae_pretrain", "train.json", bundle_root=str(tmp_path / "ms"), data_format="medmnist",
                   data_path=str(npz / "toy.npz"), img_size=[28, 28], patch_size=[4, 4], epochs=1, num_workers=0)
    assert any("network has 3 outputs" in str(e) for e in exception_chain(info.value) if isinstance(e, DatalistError))


def test_same_pixels_same_prediction_whichever_reader(tmp_path, npz):
    """Train from the .npz, then predict the validation images once from the .npz and once from PNGs of the same
    pixels (inference.json's folder reader): the probabilities agree."""
    root = tmp_path / "b"
    names = ["normal", "pneumonia"]
    run_bundle(B, "train.json", bundle_root=str(root), data_format="medmnist", data_path=str(npz / "toy.npz"),
               class_names=names, **FAST)
    common = dict(bundle_root=str(root), class_names=names, img_size=[28, 28], patch_size=[4, 4], num_workers=0)
    run_bundle(B, "inference.json", run_id="run", input_dir=str(npz / "png"), output_dir=str(tmp_path / "png"), **common)
    run_bundle(B, "inference.json", run_id="run", output_dir=str(tmp_path / "npz"),
               datalist=f"$medmae_ext.data.dataset_items('medmnist', '{npz / 'toy.npz'}', 'validation')", **common)
    rows = {}
    for k in ("png", "npz"):
        rows[k] = [[float(v) for v in r[1:3]] for r in list(csv.reader(open(tmp_path / k / "predictions.csv")))[1:]]
    assert len(rows["png"]) == len(rows["npz"]) == 16
    np.testing.assert_allclose(rows["png"], rows["npz"], atol=1e-5)
    # the orientation is not a symmetry of the task: the transposed image gets another prediction
    from medmae_ext.data import load_medmnist_npz

    net = run_bundle(B, "inference.json", run_id="initialize", **common).parser.get_parsed_content("network")
    net.load_state_dict(torch.load(root / "models" / "model.pt", weights_only=True))
    x = torch.as_tensor(np.stack([i["image"] for i in load_medmnist_npz(str(npz / "toy.npz"), "validation")])) / 255.0
    with torch.no_grad():
        assert not torch.allclose(net(x).softmax(1), net(x.transpose(-1, -2)).softmax(1), atol=1e-3)


def test_validation_reports_accuracy_f1_recall_and_warns_on_one_class(tmp_path, npz):
    from types import SimpleNamespace

    from medmae_ext.outputs.reports import ClassificationReport

    wf = run_bundle(B, "train.json", bundle_root=str(tmp_path), data_format="medmnist", data_path=str(npz / "toy.npz"),
                    class_names=["normal", "pneumonia"], **FAST)
    metrics = wf.parser.get_parsed_content("validate#evaluator").state.metrics
    assert {"val_auc", "accuracy", "macro_f1", "recall_normal", "recall_pneumonia"} <= set(metrics)
    assert os.path.isfile(tmp_path / "eval" / "validation" / "metrics.json")
    # a model that says "pneumonia" for everything: AUC can be fine, recall of "normal" is 0, and it is said
    rep = ClassificationReport(str(tmp_path / "one"), ["normal", "pneumonia"])
    rep._reset(None)
    probs = [[0.4, 0.6], [0.1, 0.9], [0.3, 0.7], [0.2, 0.8]]  # ranks the normals first: AUC 1.0
    engine = SimpleNamespace(state=SimpleNamespace(metrics={}, output=[
        {"pred": torch.tensor(p), "label": torch.tensor(y)} for p, y in zip(probs, [[1, 0], [0, 1], [1, 0], [0, 1]])]))
    rep._collect(engine)
    with captured_warnings("medmae_ext.outputs.reports") as said:
        m = rep(engine)
    assert m["mean_auc"] == 1.0 and m["per_class"]["normal"]["recall"] == 0.0 and m["accuracy"] == 0.5
    assert any("predicts 'pneumonia' for all 4 samples" in s for s in said)


@pytest.mark.skipif(not os.path.isfile(PNEUMONIA), reason="../shared PneumoniaMNIST is not present")
def test_shared_pneumoniamnist_reads_as_two_classes_in_png_orientation(tmp_path):
    from medmae_ext.data import check_labels, dataset_items
    from monai.transforms import LoadImage

    items = check_labels(dataset_items("medmnist", PNEUMONIA, "training"), 2, class_names=["normal", "pneumonia"])
    assert len(items) == 3882 and sum(i["label"] == 0 for i in items) == 388
    raw = np.load(PNEUMONIA)["train_images"][7]
    png = str(tmp_path / "x.png")
    Image.fromarray(raw).save(png)
    np.testing.assert_array_equal(items[7]["image"], np.asarray(LoadImage(image_only=True, ensure_channel_first=True)(png)))


def test_segmentation_bundle_refuses_a_format_without_masks(tmp_path, npz):
    with pytest.raises(Exception) as info:
        run_bundle("unetr_segmentation", "train.json", bundle_root=str(tmp_path), data_format="medmnist",
                   data_path=str(npz / "toy.npz"), epochs=1, num_workers=0, pretrained_ckpt="scratch")
    msg = [str(e) for e in exception_chain(info.value) if isinstance(e, DatalistError)]
    assert msg and "'medmnist' carries no segmentation masks" in msg[0]
