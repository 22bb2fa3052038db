"""Readers for the classification datasets, on small files made here."""

import os

import numpy as np
import pytest
from PIL import Image

from medmae_ext.data import (
    CHESTXRAY14_CLASSES, DatalistError, chestxray14_csv, classification_datalist, ham10000_csv, image_folder,
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
    rows = ["image_id,adjudicated_dr_grade,adjudicated_gradable"] + [f"20051020_{i}.png,{i % 5},1" for i in range(5)]
    rows.append("20051020_5.png,,0")
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
    tr, va = image_folder(str(tmp_path), "training"), image_folder(str(tmp_path), "validation")
    assert len(tr) + len(va) == 40 and len(va) == 6
    assert classification_datalist("folder", str(tmp_path), "test") == test
    with pytest.raises(DatalistError, match="image folder not found"):
        image_folder(str(tmp_path / "nope"))
    with pytest.raises(DatalistError, match="unknown data_format 'xlsx'"):
        classification_datalist("xlsx", str(tmp_path))
