"""Readers for the classification datasets, on small files made here."""

import os

import numpy as np
import pytest
from PIL import Image

from medmae_ext.data import (
    CHESTXRAY14_CLASSES, DatalistError, chestxray14_csv, dataset_items, ham10000_csv, image_folder,
    messidor2_csv, split_items,
)


def _png(path, channels=1):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    shape = (8, 8) if channels == 1 else (8, 8, channels)
    Image.fromarray(np.zeros(shape, np.uint8)).save(path)


def test_split_items_is_a_deterministic_partition():
    items = [{"id": i} for i in range(40)]
    parts = {s: split_items(items, s, 0.2, 0.1, seed=3) for s in ("training", "validation", "test")}
    ids = sorted(i["id"] for p in parts.values() for i in p)
    assert ids == list(range(40)) and len(parts["validation"]) == 8 and len(parts["test"]) == 4
    assert parts["validation"] == split_items(items, "validation", 0.2, 0.1, seed=3)
    with pytest.raises(DatalistError, match="unknown split 'train'"):
        split_items(items, "train")


def test_chestxray14_multilabel_and_official_split(tmp_path):
    rows = ["Image Index,Finding Labels,Patient ID"]
    for i in range(10):
        name = f"0000000{i}_000.png"
        _png(str(tmp_path / "images" / name))
        rows.append(f"{name},{['No Finding', 'Mass|Nodule', 'Hernia'][i % 3]},{i}")
    (tmp_path / "Data_Entry_2017.csv").write_text("\n".join(rows))
    (tmp_path / "train_val_list.txt").write_text("\n".join(f"0000000{i}_000.png" for i in range(7)))
    (tmp_path / "test_list.txt").write_text("\n".join(f"0000000{i}_000.png" for i in range(7, 10)))
    csv_path, img = str(tmp_path / "Data_Entry_2017.csv"), str(tmp_path / "images")
    test = chestxray14_csv(csv_path, img, "test", split_dir=str(tmp_path))
    assert [t["id"] for t in test] == ["00000007_000.png", "00000008_000.png", "00000009_000.png"]
    lab = {t["id"]: t["label"] for t in test}
    assert lab["00000007_000.png"][[CHESTXRAY14_CLASSES.index("Mass"), CHESTXRAY14_CLASSES.index("Nodule")]].tolist() == [1, 1]
    assert lab["00000009_000.png"].sum() == 0 and lab["00000008_000.png"][13] == 1  # No Finding / Hernia
    tr = chestxray14_csv(csv_path, img, "training", split_dir=str(tmp_path), val_frac=0.3)
    va = chestxray14_csv(csv_path, img, "validation", split_dir=str(tmp_path), val_frac=0.3)
    assert len(tr) + len(va) == 7 and not {t["id"] for t in tr} & {t["id"] for t in va}
    (tmp_path / "bad.csv").write_text("Image Index,Finding Labels\nx.png,Flu\n")
    with pytest.raises(DatalistError, match=r"bad.csv row 2: unknown finding\(s\) \['Flu'\]"):
        chestxray14_csv(str(tmp_path / "bad.csv"), img)
    (tmp_path / "cols.csv").write_text("Image,Labels\nx.png,Mass\n")
    with pytest.raises(DatalistError, match=r"lacks column\(s\) \['Image Index', 'Finding Labels'\]"):
        chestxray14_csv(str(tmp_path / "cols.csv"), img)


def test_ham10000_groups_lesions_and_finds_images_in_parts(tmp_path):
    rows = ["lesion_id,image_id,dx"]
    for i in range(20):
        part = "HAM10000_images_part_1" if i < 10 else "HAM10000_images_part_2"
        _png(str(tmp_path / part / f"ISIC_{i:07d}.jpg"), 3)
        rows.append(f"HAM_{i // 2:07d},ISIC_{i:07d},{['nv', 'mel', 'bkl'][i % 3]}")
    (tmp_path / "meta.csv").write_text("\n".join(rows))
    dirs = [str(tmp_path / "HAM10000_images_part_1"), str(tmp_path / "HAM10000_images_part_2")]
    splits = {s: ham10000_csv(str(tmp_path / "meta.csv"), dirs, s) for s in ("training", "validation", "test")}
    assert sum(len(v) for v in splits.values()) == 20
    lesion = {s: {int(i["id"][5:]) // 2 for i in v} for s, v in splits.items()}
    assert not (lesion["training"] & lesion["test"]) and not (lesion["training"] & lesion["validation"])
    assert {i["label"] for v in splits.values() for i in v} == {5, 4, 2}  # nv, mel, bkl
    (tmp_path / "gone.csv").write_text("image_id,dx\nISIC_9999999,nv\n")
    with pytest.raises(DatalistError, match="image 'ISIC_9999999' not found"):
        ham10000_csv(str(tmp_path / "gone.csv"), dirs)


def test_messidor2_skips_ungradable_and_checks_grades(tmp_path):
    for i in range(6):
        _png(str(tmp_path / "IMAGES" / f"20051020_{i}.png"), 3)
    rows = ["image_id,adjudicated_dr_grade,adjudicated_gradable,patient_id"]
    rows += [f"20051020_{i}.png,{i % 5},1,p{i // 2}" for i in range(5)] + ["20051020_5.png,,0,p2"]
    (tmp_path / "messidor_data.csv").write_text("\n".join(rows))
    allitems = [i for s in ("training", "validation", "test")
                for i in messidor2_csv(str(tmp_path / "messidor_data.csv"), str(tmp_path / "IMAGES"), s)]
    assert sorted(i["label"] for i in allitems) == [0, 1, 2, 3, 4]
    (tmp_path / "bad.csv").write_text("image_id,adjudicated_dr_grade\n20051020_1.png,7\n")
    with pytest.raises(DatalistError, match="grade' 7 outside 0-4"):
        messidor2_csv(str(tmp_path / "bad.csv"), str(tmp_path / "IMAGES"))


def test_image_folder_training_testing_layout(tmp_path):
    for split, n in (("Training", 10), ("Testing", 3)):
        for c in ("glioma", "meningioma", "notumor", "pituitary"):
            for i in range(n):
                _png(str(tmp_path / split / c / f"{c}_{i}.jpg"))
    test = image_folder(str(tmp_path), "test")
    assert len(test) == 12 and {t["label"] for t in test} == {0, 1, 2, 3}
    tr, va = (image_folder(str(tmp_path), s, split_by="image") for s in ("training", "validation"))
    assert len(tr) + len(va) == 40 and len(va) == 6
    assert dataset_items("folder", str(tmp_path), "test") == test
    with pytest.raises(DatalistError, match="image folder not found"):
        image_folder(str(tmp_path / "nope"))
    with pytest.raises(DatalistError, match="unknown data_format 'xlsx'"):
        dataset_items("xlsx", str(tmp_path))


def _patients(items):
    return {i["patient"] for i in items}


def test_chestxray14_without_official_split_is_split_by_patient(tmp_path):
    rows = ["Image Index,Finding Labels,Patient ID"]
    for p in range(50):
        for k in range(3):  # three follow-up images per patient
            name = f"{p:08d}_{k:03d}.png"
            _png(str(tmp_path / "images" / name))
            rows.append(f"{name},{['No Finding', 'Mass'][p % 2]},{p}")
    (tmp_path / "Data_Entry_2017.csv").write_text("\n".join(rows))
    parts = {s: chestxray14_csv(str(tmp_path / "Data_Entry_2017.csv"), str(tmp_path / "images"), s)
             for s in ("training", "validation", "test")}
    assert sum(len(v) for v in parts.values()) == 150
    assert not _patients(parts["training"]) & _patients(parts["test"])
    assert not _patients(parts["training"]) & _patients(parts["validation"])
    assert not _patients(parts["validation"]) & _patients(parts["test"])
    assert all(len(v) % 3 == 0 for v in parts.values())  # whole patients only


def test_messidor2_and_folder_need_a_patient_id_or_an_explicit_image_split(tmp_path):
    rows = ["image_id,adjudicated_dr_grade"]
    for p in range(20):
        for eye in ("L", "R"):
            name = f"P{p:03d}_{eye}.png"
            _png(str(tmp_path / "IMAGES" / name), 3)
            rows.append(f"{name},{p % 5}")
    (tmp_path / "m.csv").write_text("\n".join(rows))
    csv_path, img = str(tmp_path / "m.csv"), str(tmp_path / "IMAGES")
    with pytest.raises(DatalistError, match="cannot split by patient.*group_column.*split_by"):
        messidor2_csv(csv_path, img)
    parts = {s: messidor2_csv(csv_path, img, s, group_pattern=r"^(P\d+)_") for s in ("training", "validation", "test")}
    assert sum(len(v) for v in parts.values()) == 40 and all(len(v) % 2 == 0 for v in parts.values())
    assert not _patients(parts["training"]) & (_patients(parts["test"]) | _patients(parts["validation"]))
    assert len(messidor2_csv(csv_path, img, "training", split_by="image")) > 0  # explicit opt-out works
    with pytest.raises(DatalistError, match="does not match group_pattern"):
        messidor2_csv(csv_path, img, group_pattern=r"^patient(\d+)")
    for c in ("a", "b"):
        for p in range(10):
            for k in range(3):
                _png(str(tmp_path / "folder" / c / f"{c}{p}_slice{k}.png"))
    with pytest.raises(DatalistError, match="cannot split by patient"):
        image_folder(str(tmp_path / "folder"))
    parts = {s: image_folder(str(tmp_path / "folder"), s, group_pattern=r"^(\w+?)_") for s in ("training", "test")}
    assert not _patients(parts["training"]) & _patients(parts["test"])
    assert all(len(v) % 3 == 0 for v in parts.values())


def test_medmnist_npz_has_the_orientation_of_the_png_loader(tmp_path):
    from medmae_ext.data import load_medmnist_npz
    from monai.transforms import LoadImage

    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (2, 28, 20), dtype=np.uint8)  # not square: a transpose cannot hide
    img[:, :3, :] = 255  # a bright top band
    np.savez(tmp_path / "x.npz", train_images=img, train_labels=np.array([[0], [1]]))
    Image.fromarray(img[1]).save(tmp_path / "x1.png")
    from_npz = load_medmnist_npz(str(tmp_path / "x.npz"), "training")[1]["image"]
    from_png = np.asarray(LoadImage(image_only=True, ensure_channel_first=True)(str(tmp_path / "x1.png")))
    assert from_npz.shape == from_png.shape == (1, 20, 28)
    np.testing.assert_array_equal(from_npz, from_png)  # the same pixel values: one intensity step for both
    assert from_npz.dtype == np.uint8


def test_check_labels_names_the_item_and_the_fix():
    from medmae_ext.data import check_labels

    items = [{"id": f"s{i}", "image": f"/d/s{i}.png", "label": i % 2} for i in range(6)]
    assert check_labels(items, 2) is items
    with pytest.raises(DatalistError, match=r"classes \[0, 1\] but the network has 3 outputs.*--class_names"):
        check_labels(items, 3, class_names=["normal", "nodule", "opacity"])
    with pytest.raises(DatalistError, match=r"item 2 \(id=s2, image=/d/s2.png\): label 7 is outside 0..1"):
        check_labels(items[:2] + [{"id": "s2", "image": "/d/s2.png", "label": 7}], 2)
    with pytest.raises(DatalistError, match="label 'pneumonia' is not a class index"):
        check_labels([{"id": "x", "label": "pneumonia"}], 2)
    with pytest.raises(DatalistError, match="has no 'label'"):
        check_labels([{"id": "x"}], 2)
    with pytest.raises(DatalistError, match="multi-hot label"):
        check_labels([{"id": "x", "label": [1, 0]}], 3, multi_label=True)


def test_image_list_takes_dicom_series_folders(tmp_path):
    from medmae_ext.data import image_list

    series = tmp_path / "in" / "patient7_ct"
    series.mkdir(parents=True)
    for k in range(2):
        (series / f"slice{k}").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 16)
    (tmp_path / "in" / "a.nii.gz").write_bytes(b"x")
    assert [i["id"] for i in image_list(str(tmp_path / "in"), "*")] == ["a.nii.gz", "patient7_ct"]
    assert image_list(str(series)) == [{"image": str(series), "id": "patient7_ct"}]
