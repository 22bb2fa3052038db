import json
import os

import numpy as np
import pytest
import torch
from monai.transforms import Transform
from PIL import Image

from medmae_ext.data import DatalistError, load_datalist, load_medmnist_npz, make_synthetic_2d
from medmae_ext.data.transforms import ValidateImaged
from conftest import run_bundle


def test_synthetic_2d_is_deterministic_and_labelled(tmp_path, synth2d):
    other = make_synthetic_2d(str(tmp_path), num_images=60, size=64, seed=1)
    a = json.load(open(os.path.join(synth2d, "datalist.json")))
    b = json.load(open(other))
    assert a["training"] == b["training"]
    for item in a["training"][:6]:
        pa = np.array(Image.open(os.path.join(synth2d, item["image"])))
        pb = np.array(Image.open(os.path.join(tmp_path, item["image"])))
        assert np.array_equal(pa, pb) and pa.shape == (64, 64)
        lesion = np.array(Image.open(os.path.join(synth2d, item["mask"]))) > 0
        assert lesion.any() == (item["label"] > 0)
    labels = [i["label"] for i in a["training"] + a["validation"] + a["test"]]
    assert sorted(set(labels)) == [0, 1, 2] and len(labels) == 60
    assert len(a["validation"]) == 9 and len(a["test"]) == 9


def test_synthetic_3d_has_organs_and_lesion_class(synth3d):
    import nibabel as nib

    d = json.load(open(os.path.join(synth3d, "datalist.json")))
    item = d["training"][1]
    img = nib.load(os.path.join(synth3d, item["image"]))
    lab = np.asarray(nib.load(os.path.join(synth3d, item["label"])).dataobj)
    assert img.shape == (64, 64, 64) and np.allclose(img.header.get_zooms(), (1.5, 1.5, 2.0))
    assert set(np.unique(lab)) == {0, 1, 2, 3, 4}
    lesion = np.asarray(nib.load(os.path.join(synth3d, item["lesion"])).dataobj)
    assert bool(lesion.any()) == bool(item["class"])


def test_load_datalist_resolves_and_checks(synth2d):
    items = load_datalist(os.path.join(synth2d, "datalist.json"), "validation", is_segmentation=False)
    assert len(items) == 9 and all(os.path.isabs(i["image"]) and os.path.isfile(i["image"]) for i in items)
    assert items[0]["id"].startswith("cxr_")


def _write(tmp_path, content):
    p = tmp_path / "dataset.json"
    p.write_text(json.dumps(content) if not isinstance(content, str) else content)
    return str(p)


def test_missing_image_in_datalist_names_file_and_key(tmp_path):
    (tmp_path / "a.nii.gz").write_bytes(b"")
    path = _write(tmp_path, {"training": [{"image": "a.nii.gz", "label": "a.nii.gz"},
                                          {"image": "gone.nii.gz", "label": "a.nii.gz"}]})
    with pytest.raises(DatalistError, match=r"item 1 .* key 'image': .*gone\.nii\.gz"):
        load_datalist(path)


def test_datalist_structure_errors(tmp_path):
    with pytest.raises(DatalistError, match="datalist file not found: .*nope.json"):
        load_datalist(str(tmp_path / "nope.json"))
    with pytest.raises(DatalistError, match="no section 'training'"):
        load_datalist(_write(tmp_path, {"validation": [{"image": "x"}]}))
    with pytest.raises(DatalistError, match=r"training\[0\] has no key 'image'"):
        load_datalist(_write(tmp_path, {"training": [{"img": "x"}]}))
    with pytest.raises(DatalistError, match="not valid JSON"):
        load_datalist(_write(tmp_path, "{oops"))


def test_medmnist_npz_reader(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "pneumoniamnist.npz"
    np.savez(path, train_images=rng.integers(0, 255, (5, 28, 28), dtype=np.uint8), train_labels=np.arange(5)[:, None] % 2,
             val_images=rng.integers(0, 255, (2, 28, 28, 3), dtype=np.uint8), val_labels=np.eye(2, 4)[:, :])
    tr = load_medmnist_npz(str(path), "training")
    assert len(tr) == 5 and tr[0]["image"].shape == (1, 28, 28) and tr[3]["label"] == 1
    # as stored: uint8 views into the file's one array (no float copy per item: 1 byte a pixel)
    assert all(it["image"].dtype == np.uint8 and np.shares_memory(it["image"], tr[0]["image"].base) for it in tr)
    assert sum(it["image"].nbytes for it in tr) == 5 * 28 * 28
    va = load_medmnist_npz(str(path), "validation")
    assert va[0]["image"].shape == (3, 28, 28) and va[0]["label"].shape == (4,)
    assert va[1]["id"] == "pneumoniamnist:val:1"
    with pytest.raises(DatalistError, match="has no array 'test_images'"):
        load_medmnist_npz(str(path), "test")
    with pytest.raises(DatalistError, match="not found"):
        load_medmnist_npz(str(tmp_path / "missing.npz"))


def test_validate_image_names_the_file_on_wrong_channels(tmp_path):
    from monai.transforms import LoadImaged

    p = tmp_path / "rgb_xray.png"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(p)
    data = LoadImaged("image", image_only=True, ensure_channel_first=True)({"image": str(p)})
    with pytest.raises(ValueError, match=r"rgb_xray\.png.*3 channel\(s\).*expects 1 \(config id 'in_channels'\)"):
        ValidateImaged("image", channels=1)(data)
    with pytest.raises(ValueError, match=r"rgb_xray\.png.*2 spatial dims.*expects 3D"):
        ValidateImaged("image", spatial_dims=3)(data)
    assert ValidateImaged("image", channels=3, spatial_dims=2)(data)["image"].shape == (3, 16, 16)
    with pytest.raises(ValueError, match="in-memory item"):
        ValidateImaged("image", channels=1)({"image": torch.zeros(2, 4, 4)})


def test_disk_cache_is_keyed_by_file_content_and_transform_parameters(tmp_path):
    """dataset_cache='disk': read back when nothing changed; a changed --img_size or a rewritten image is never
    served from the stale cache."""
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Resized

    from medmae_ext.data import cached_dataset

    img = tmp_path / "a.png"
    Image.fromarray(np.full((16, 16), 10, np.uint8)).save(img)
    items = [{"image": str(img)}]

    def pre(size):
        return Compose([LoadImaged("image", image_only=True), EnsureChannelFirstd("image"), Resized("image", size)])

    cache = tmp_path / "cache"
    first = cached_dataset(items, pre((8, 8)), "disk", str(cache))[0]["image"]
    files = set(os.listdir(cache))
    assert first.shape == (1, 8, 8) and len(files) == 1
    assert float(cached_dataset(items, pre((8, 8)), "disk", str(cache))[0]["image"].mean()) == float(first.mean())
    assert set(os.listdir(cache)) == files  # read back, nothing new written
    assert cached_dataset(items, pre((4, 4)), "disk", str(cache))[0]["image"].shape == (1, 4, 4)
    Image.fromarray(np.full((16, 16), 200, np.uint8)).save(img)
    os.utime(img, (1, 1))  # a different mtime, as a rewritten file has
    assert float(cached_dataset(items, pre((8, 8)), "disk", str(cache))[0]["image"].mean()) == 200
    assert len(os.listdir(cache)) == 3
    with pytest.raises(DatalistError, match="'dataset_cache' must be one of"):
        cached_dataset(items, pre((8, 8)), "ssd", str(cache))


def test_bundle_trains_from_a_disk_cache(tmp_path, synth2d):
    wf = run_bundle("mae_pretrain", "train.json", bundle_root=str(tmp_path), dataset_dir=synth2d, epochs=1,
                    epoch_length=2, num_workers=0, batch_size=4, max_items=8,
                    dataset_cache="disk")
    assert wf.parser.get_parsed_content("train#trainer").state.iteration == 2
    assert len(os.listdir(tmp_path / "cache")) == 8


class _Counted(Transform):
    calls = 0

    def __call__(self, data):
        type(self).calls += 1
        return dict(data)


def test_mapped_cache_is_built_once_and_mapped_by_every_later_run(tmp_path):
    """Issue 28 item 2: dataset_cache='mapped' keeps the memory cache in one file under cache_dir, built once; a
    later run (a restart, a resume) with the same items and transforms maps it and runs no deterministic transform;
    a changed image or --img_size gets a file of its own; a damaged file is built again, named; a worker started by
    spawn maps the file instead of receiving a copy; a MetaTensor keeps its file name and affine."""
    import pickle

    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Resized

    from conftest import captured_warnings
    from medmae_ext.data import cached_dataset
    from medmae_ext.data.mapped import MappedCacheDataset

    items = []
    for i in range(5):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (16, 16), dtype=np.uint8)).save(tmp_path / f"{i}.png")
        items.append({"image": str(tmp_path / f"{i}.png"), "id": f"x{i}"})

    def pre(size):
        return Compose([_Counted(), LoadImaged("image", image_only=True), EnsureChannelFirstd("image"),
                        Resized("image", size)])

    cache = tmp_path / "cache"
    want = cached_dataset(items, pre((8, 8)), "memory")
    first = cached_dataset(items, pre((8, 8)), "mapped", str(cache))
    assert isinstance(first, MappedCacheDataset) and os.listdir(cache) == [os.path.basename(first.path)]
    before = _Counted.calls
    again = cached_dataset(items, pre((8, 8)), "mapped", str(cache))
    assert _Counted.calls == before and again.path == first.path  # mapped: nothing recomputed
    for ds in (first, again):
        for i in range(5):
            got = ds[i]
            assert torch.equal(got["image"].as_tensor(), want[i]["image"].as_tensor()) and got["id"] == f"x{i}"
            assert got["image"].meta["filename_or_obj"] == items[i]["image"]
            assert torch.equal(got["image"].affine, want[i]["image"].affine)
    from monai.data import DataLoader

    batches = [next(iter(DataLoader(again, batch_size=5, num_workers=w)))["image"] for w in (0, 2)]
    assert torch.equal(batches[0], batches[1])  # forked workers read the same mapped entries
    worker = pickle.loads(pickle.dumps(again))  # what a worker started by spawn receives
    assert again.__getstate__()["_cache"] is None and torch.equal(worker[2]["image"], want[2]["image"])
    assert cached_dataset(items, pre((4, 4)), "mapped", str(cache))[0]["image"].shape == (1, 4, 4)
    Image.fromarray(np.full((16, 16), 200, np.uint8)).save(tmp_path / "0.png")
    os.utime(tmp_path / "0.png", (1, 1))  # a different mtime, as a rewritten file has
    latest = cached_dataset(items, pre((16, 16)), "mapped", str(cache))
    assert float(latest[0]["image"].mean()) == 200  # the rewritten image, not the stale one
    assert len(os.listdir(cache)) == 3
    with open(latest.path, "r+b") as f:  # killed mid-copy: a truncated file under the final name
        f.truncate(100)
    with captured_warnings("medmae_ext.data.mapped") as said:
        rebuilt = cached_dataset(items, pre((16, 16)), "mapped", str(cache))
    assert len(said) == 1 and latest.path in said[0] and "building it again" in said[0]
    assert float(rebuilt[0]["image"].mean()) == 200 and rebuilt.path == latest.path
    assert not [f for f in os.listdir(cache) if f.endswith(".tmp")]
    with pytest.raises(DatalistError, match="'dataset_cache'='mapped' needs a cache folder"):
        cached_dataset(items, pre((8, 8)), "mapped", None)


def test_bundle_trains_from_a_mapped_cache_and_maps_it_again_on_the_next_run(tmp_path, synth3d):
    """The 3D pretraining default (MetaTensors in the cache) from dataset_cache='mapped', twice: one file, built once;
    with cache_quantize the resampled volumes are held in one byte a voxel."""
    opts = dict(bundle_root=str(tmp_path), dataset_dir=synth3d, epochs=1, epoch_length=1, num_workers=0, batch_size=1,
                max_items=2, num_samples=1, dataset_cache="mapped", cache_quantize=True)
    wf = run_bundle("mae_pretrain", "train_3d.json", **opts)
    assert wf.parser.get_parsed_content("train#trainer").state.iteration == 1
    files = os.listdir(tmp_path / "cache")
    assert len(files) == 1 and files[0].startswith("mapped-")
    built = os.stat(tmp_path / "cache" / files[0]).st_mtime_ns
    wf = run_bundle("mae_pretrain", "train_3d.json", **{**opts, "bundle_root": str(tmp_path / "again"),
                                                        "cache_dir": str(tmp_path / "cache")})
    assert os.listdir(tmp_path / "cache") == files and os.stat(tmp_path / "cache" / files[0]).st_mtime_ns == built
    ds = wf.parser.get_parsed_content("train#dataset")
    assert ds.path == str(tmp_path / "cache" / files[0]) and ds._cache[0]["image"].dtype == torch.uint8
