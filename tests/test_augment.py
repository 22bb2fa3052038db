"""Issue 28 item 1: the random augmentation of a whole batch on the device draws what MONAI's per-item chain drew,
resizes the crop exactly as ``interpolate`` does, moves every key together; the attention refresh reads the cache."""

import copy
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.transforms import Compose, EnsureTyped, MapTransform, RandScaleCropd
from scipy.stats import chi2_contingency

from medmae_ext.data.augment import AugmentOnDevice, BatchAugment
from medmae_ext.data.caching import CachedView, cached_dataset
from medmae_ext.errors import InputError


def _monai_boxes(spatial, lo, n):
    """Crop boxes drawn by MONAI's ``RandScaleCropd`` (the bundles' chain until now), read off a coordinate image."""
    d = len(spatial)
    coords = torch.stack(torch.meshgrid(*[torch.arange(s, dtype=torch.float32) for s in spatial], indexing="ij"))
    crop = RandScaleCropd("image", roi_scale=lo, max_roi_scale=1.0, random_size=True)
    crop.set_random_state(seed=0)
    sizes, starts = [], []
    for _ in range(n):
        out = crop({"image": coords})["image"]
        sizes.append(list(out.shape[1:]))
        starts.append([int(out[a].min()) for a in range(d)])
    return np.array(sizes), np.array(starts)


def _contingency(a, b):
    values = sorted(set(a) | set(b))
    return np.array([[np.sum(a == v) for v in values], [np.sum(b == v) for v in values]])


@pytest.mark.parametrize("spatial,lo", [((28, 28), 0.6), ((64, 48), 0.75), ((12, 10, 14), 0.75)])
def test_crop_sizes_and_positions_are_distributed_as_monai_drew_them(spatial, lo):
    n = 2000
    m_sizes, m_starts = _monai_boxes(spatial, lo, n)
    torch.manual_seed(0)
    draw = BatchAugment(["image"], crop_scale=(lo, 1.0), flip_prob=0.0).draw(n, spatial)
    b_sizes, b_starts = draw.sizes.numpy(), draw.starts.numpy()
    for a in range(len(spatial)):
        assert set(b_sizes[:, a]) == set(m_sizes[:, a])  # the same support: ceil(lo * S) .. S
        assert chi2_contingency(_contingency(m_sizes[:, a], b_sizes[:, a])).pvalue > 1e-3
        pairs_m = m_sizes[:, a] * 1000 + m_starts[:, a]  # (size, start): where the crop sits given its size
        pairs_b = b_sizes[:, a] * 1000 + b_starts[:, a]
        assert set(pairs_b) == set(pairs_m)
        assert chi2_contingency(_contingency(pairs_m, pairs_b)).pvalue > 1e-3
        assert (b_starts[:, a] + b_sizes[:, a] <= spatial[a]).all() and (b_starts[:, a] >= 0).all()
    if len(spatial) == 2:  # the two axes are drawn independently (aspect ratio varies), as MONAI's are
        assert abs(np.corrcoef(b_sizes[:, 0], b_sizes[:, 1])[0, 1]) < 0.06


def test_flips_are_drawn_with_their_probability_per_axis_and_independently():
    torch.manual_seed(1)
    flips = BatchAugment(["image"], crop_scale=None, flip_prob=0.2, flip_axes=[0, 1, 2]).draw(20000, (8, 8, 8)).flips
    rate = flips.float().mean(0)
    assert torch.allclose(rate, torch.full((3,), 0.2), atol=0.015), rate
    both = (flips[:, 0] & flips[:, 2]).float().mean()
    assert abs(float(both) - 0.04) < 0.008
    assert not BatchAugment(["image"], flip_axes=[0]).draw(500, (8, 8)).flips[:, 1].any()


@pytest.mark.parametrize("spatial", [(28, 20), (12, 10, 14)])
def test_the_batch_is_cropped_resized_and_flipped_as_interpolate_does_it(spatial):
    d = len(spatial)
    aug = BatchAugment(["image"], crop_scale=(0.6, 1.0), flip_prob=0.5, flip_axes=list(range(d)))
    torch.manual_seed(0)
    x = torch.rand(16, 2, *spatial)
    draw = aug.draw(16, spatial)
    out = aug.apply(x, draw, aug.grid(draw, spatial, "cpu"))
    assert draw.flips.any() and (draw.sizes < torch.tensor(spatial)).any()
    for i in range(16):
        box = tuple(slice(int(a), int(a + s)) for a, s in zip(draw.starts[i], draw.sizes[i]))
        ref = F.interpolate(x[i:i + 1][(slice(None), slice(None)) + box], size=spatial,
                            mode="bilinear" if d == 2 else "trilinear", align_corners=False)
        ref = ref.flip([a + 2 for a in range(d) if draw.flips[i, a]]) if draw.flips[i].any() else ref
        torch.testing.assert_close(out[i:i + 1], ref, atol=1e-5, rtol=0)
    # on the CPU each crop is resized by interpolate itself (a GPU takes the grid): the same pixels, the same draws
    assert aug.on_each_image(x) == (d == 3) and not aug.on_each_image(x.to("meta"))
    assert aug.on_each_image(torch.zeros(1, 1, 96, 96)) and not aug.on_each_image(torch.zeros(1, 1, 64, 64))
    torch.testing.assert_close(aug.apply(x, draw, None), out, atol=1e-5, rtol=0)
    torch.manual_seed(1)
    batch = aug({"image": x})
    torch.manual_seed(1)
    again = aug.draw(16, spatial)
    torch.testing.assert_close(batch["image"], aug.apply(x, again, aug.grid(again, spatial, "cpu")), atol=1e-5, rtol=0)


def test_flips_alone_are_exact_and_keys_move_together():
    aug = BatchAugment(["image", "attn"], crop_scale=None, flip_prob=0.5, flip_axes=[0, 1])
    x = torch.arange(4 * 6 * 5, dtype=torch.float32).view(4, 1, 6, 5)
    torch.manual_seed(3)
    out = aug({"image": x, "attn": x.clone(), "label": torch.arange(4)})
    torch.manual_seed(3)
    draw = aug.draw(4, (6, 5))
    for i in range(4):
        dims = [a + 1 for a in range(2) if draw.flips[i, a]]
        assert torch.equal(out["image"][i], x[i].flip(dims) if dims else x[i])
    assert torch.equal(out["image"], out["attn"]) and torch.equal(out["label"], torch.arange(4))
    torch.manual_seed(3)
    mine = x.clone()
    assert torch.equal(aug({"image": mine}, inplace=True)["image"], out["image"]) and torch.equal(mine, out["image"])
    with pytest.raises(ValueError, match="'attn' has spatial shape"):
        aug({"image": x, "attn": x[..., :4]})
    with pytest.raises(InputError, match="crop_scale"):
        BatchAugment(crop_scale=(0.5, 1.5))
    with pytest.raises(InputError, match="flip_axes"):
        BatchAugment(flip_axes=[2])({"image": x})


def test_the_trainer_handler_augments_on_the_device_and_evaluators_never_see_it():
    from ignite.engine import Engine

    seen = []
    engine = Engine(lambda e, b: seen.append(b["image"].clone()))
    AugmentOnDevice(BatchAugment(["image"], crop_scale=(0.5, 1.0), flip_prob=0.5), "cpu").attach(engine)
    data = [{"image": torch.rand(4, 1, 16, 16)} for _ in range(3)]
    torch.manual_seed(0)
    engine.run(data, max_epochs=1)
    assert len(seen) == 3 and all(not torch.equal(s, b["image"]) for s, b in zip(seen, data))
    plain = Engine(lambda e, b: seen.append(b["image"]))
    AugmentOnDevice(None, "cpu").attach(plain)  # disabled: the batch as the loader gave it
    plain.run(data[:1], max_epochs=1)
    assert seen[-1] is data[0]["image"]


class _Doubled(MapTransform):
    calls = 0

    def __call__(self, data):
        type(self).calls += 1
        return {**data, "image": data["image"] * 2}


@pytest.mark.parametrize("cache", ["memory", "disk", "none"])
def test_the_attention_refresh_reads_the_deterministic_part_from_the_cache(tmp_path, cache):
    chain = Compose([
        _Doubled("image"),
        EnsureTyped("image", dtype=torch.float32, track_meta=False),
        RandScaleCropd("image", roi_scale=0.5, random_size=True),
    ])
    data = [{"image": torch.full((1, 8, 8), float(i)), "id": f"s{i}"} for i in range(5)]
    ds = cached_dataset(data, chain, cache=cache, cache_dir=str(tmp_path / "c"))
    [ds[i] for i in range(5)]  # an epoch fills the disk cache
    before = _Doubled.calls
    view = CachedView(ds)
    items = [view[i] for i in range(5)]
    assert [it["id"] for it in items] == [f"s{i}" for i in range(5)]
    assert all(torch.equal(it["image"], torch.full((1, 8, 8), 2.0 * i)) for i, it in enumerate(items))
    assert _Doubled.calls - before == (5 if cache == "none" else 0)  # deterministic steps rerun only without a cache


# compact caches (issue 28 item 2) ---------------------------------------------------------------------------------
def _uint8_items(n=6, size=28, seed=0):
    rng = np.random.default_rng(seed)
    return [{"image": rng.integers(10 + i, 200 + i, size=(1, size, size), dtype=np.uint8), "id": f"s{i}",
             "label": i % 2} for i in range(n)]


def test_a_uint8_image_is_cached_in_one_byte_and_read_back_as_the_same_floats(tmp_path):
    from medmae_ext.data import preprocessing
    from medmae_ext.data.compact import TOLERANCE

    settings = {"spatial_dims": 2, "in_channels": 1, "img_size": [28, 28], "modality": "XR"}
    chain = Compose(preprocessing(settings) + [EnsureTyped("image", dtype=torch.float32, track_meta=False)])
    items = _uint8_items()
    plain = cached_dataset(items, chain, cache="none")
    for cache in ("memory", "disk"):
        ds = cached_dataset(items, chain, cache=cache, cache_dir=str(tmp_path / "c"))
        for i in range(len(items)):
            got, want = ds[i], plain[i]
            assert got["image"].dtype == torch.float32 and sorted(got) == sorted(want)
            assert (got["image"] - want["image"]).abs().max() <= TOLERANCE
            assert got["label"] == want["label"]
    held = ds = cached_dataset(items, chain, cache="memory")
    entry = held._cache[0]
    assert entry["image"].dtype == torch.uint8 and entry["image"].shape == (1, 28, 28)
    assert entry["image"].element_size() * entry["image"].numel() == 784  # 1 byte a pixel (+ 8 bytes: lo, step)
    view = CachedView(ds)
    assert view[0]["image"].dtype == torch.float32 and torch.allclose(view[0]["image"], plain[0]["image"], atol=1e-6)


def test_the_memory_cache_of_an_npz_holds_the_reader_s_pixels_once(tmp_path):
    """Issue 28: the .npz reader's items are views of the file's one uint8 array; the memory cache of those items is a
    view of the same pixels, not a second copy (20k items at 224 px: 2.1x their bytes before), and reads the same
    floats as the cache without sharing; an item whose stored levels are not its pixels is copied as before."""
    from monai.data import CacheDataset

    from medmae_ext.data import preprocessing
    from medmae_ext.data.compact import TOLERANCE
    from medmae_ext.data.readers import load_medmnist_npz

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (10, 28, 20), dtype=np.uint8)
    images[3] = images[3] // 4 + 7  # levels 7..70: stored as pixels - 7, shared all the same
    images[5] = (images[5] // 2) * 2  # even pixels only: levels are pixels / 2, not the pixels: copied
    np.savez(tmp_path / "d.npz", train_images=images, train_labels=np.arange(10)[:, None] % 2)
    items = load_medmnist_npz(str(tmp_path / "d.npz"))
    settings = {"spatial_dims": 2, "in_channels": 1, "img_size": [20, 28], "modality": "XR"}
    chain = Compose(preprocessing(settings) + [EnsureTyped("image", dtype=torch.float32, track_meta=False)])
    ds = cached_dataset(items, chain, cache="memory")
    plain = CacheDataset(items, copy.deepcopy(ds.transform), cache_rate=1.0)  # MONAI's cache of the same entries
    root = items[0]["image"].base
    while isinstance(root.base, np.ndarray):
        root = root.base
    for i in range(10):
        entry = ds._cache[i]["image"]
        held = entry.as_tensor() if hasattr(entry, "as_tensor") else entry
        assert np.shares_memory(held.numpy(), root) == (i != 5), i
        got, want = ds[i]["image"], plain[i]["image"]
        assert got.is_contiguous() and got.shape == want.shape == (1, 20, 28)
        assert (got - want).abs().max() <= TOLERANCE, i
        assert torch.allclose(CachedView(ds)[i]["image"], want, atol=TOLERANCE)
    assert np.array_equal(items[0]["image"], images[0].T[None])  # the reader's items are untouched
    got = ds[0]["image"]
    got.fill_(-1)  # writing to a read leaves the cache and the reader's array as they were
    assert np.array_equal(items[0]["image"], images[0].T[None]) and float(ds._cache[0]["image"].min()) >= 0
    assert torch.equal(ds[1]["image"], plain[1]["image"])
    # uint8 pixels that are a view of another dtype's bytes are copied, and read the same
    odd = [{**items[1], "image": images[1:2].astype(np.int16).view(np.uint8)[:, :, ::2].transpose(0, 2, 1)}]
    got, want = cached_dataset(odd, chain, cache="memory"), CacheDataset(odd, copy.deepcopy(ds.transform))
    assert np.array_equal(odd[0]["image"], items[1]["image"])
    assert not np.shares_memory(got._cache[0]["image"].numpy(), odd[0]["image"])
    assert (got[0]["image"] - want[0]["image"]).abs().max() <= TOLERANCE


def test_images_off_a_byte_lattice_stay_float32_and_label_maps_and_meta_survive():
    from monai.data import MetaTensor

    from medmae_ext.data.compact import Compactd, Expandd, lattice_code

    smooth = F.interpolate(torch.rand(1, 1, 20, 20), size=(28, 28), mode="bilinear")[0]  # resampled: no lattice
    assert lattice_code(smooth) is None
    assert lattice_code(torch.rand(1, 40, 40)) is None  # more than 256 values
    labels = MetaTensor(torch.randint(0, 5, (1, 8, 8, 8)).float(), meta={"filename_or_obj": "ct.nii.gz"})
    stored = Compactd()({"image": smooth, "label": labels})
    assert stored["image"].dtype == torch.float32 and stored["label"].dtype == torch.uint8
    back = Expandd()(stored)
    assert torch.equal(back["label"], labels) and back["label"].meta["filename_or_obj"] == "ct.nii.gz"
    assert torch.equal(back["image"], smooth) and sorted(back) == ["image", "label"]
    flat = torch.full((1, 4, 4), 0.25)  # one value
    assert torch.equal(Expandd()(Compactd()({"image": flat}))["image"], flat)


def test_cache_quantize_keeps_images_resized_when_read_in_one_byte_within_half_a_level(tmp_path):
    """Issue 28 item 2: images resized when read (ChestX-ray14's 1024^2 PNGs at 224 px) stayed float32, 4x the uint8
    image; ``quantize`` (config id ``cache_quantize``) stores them as 256 levels of their own range, each pixel off by
    half a level at most. Off by default (exact floats); the disk cache's key tells the two apart."""
    from monai.data import MetaTensor

    from medmae_ext.data import preprocessing
    from medmae_ext.data.compact import Compactd, Expandd, quantized_code

    settings = {"spatial_dims": 2, "in_channels": 1, "img_size": [20, 20], "modality": "XR"}
    chain = Compose(preprocessing(settings) + [EnsureTyped("image", dtype=torch.float32, track_meta=False)])
    items = _uint8_items()  # 28 px read, 20 px trained: a resize, values off any lattice
    plain = cached_dataset(items, chain, cache="none")
    exact = cached_dataset(items, chain, cache="memory")
    assert exact._cache[0]["image"].dtype == torch.float32  # the default: the exact floats
    small = cached_dataset(items, chain, cache="memory", quantize=True)
    for i in range(len(items)):
        entry, want = small._cache[i], plain[i]["image"]
        assert entry["image"].dtype == torch.uint8 and entry["image"].shape == (1, 20, 20)
        stored = sum(v.numel() * v.element_size() for v in entry.values() if isinstance(v, torch.Tensor))
        assert stored <= 1.1 * 400  # bytes per item against the uint8 image at training size
        got = small[i]["image"]
        half = float(want.max() - want.min()) / 510
        err = float((got - want).abs().max())
        assert got.dtype == torch.float32 and 0 < err <= half * (1 + 1e-5)  # rounded, by half a level at most
        assert torch.equal(exact[i]["image"], want)
    disk = str(tmp_path / "c")
    assert cached_dataset(items, chain, "disk", disk, quantize=True)[0]["image"].unique().numel() <= 256
    assert torch.equal(cached_dataset(items, chain, "disk", disk)[0]["image"], plain[0]["image"])  # not served stale
    # a label map stays exact, a MetaTensor keeps its meta, a constant image and a non-finite one are handled
    labels = MetaTensor(torch.randint(0, 5, (1, 6, 6, 6)).float(), meta={"filename_or_obj": "ct.nii.gz"})
    smooth = MetaTensor(torch.rand(1, 6, 6, 6) * 1000 - 500, meta={"filename_or_obj": "ct.nii.gz"})
    back = Expandd()(Compactd(quantize=True)({"image": smooth, "label": labels}))
    assert torch.equal(back["label"], labels) and back["image"].meta["filename_or_obj"] == "ct.nii.gz"
    assert (back["image"] - smooth).abs().max() <= 1000 / 510 * (1 + 1e-5)
    assert torch.equal(Expandd()(Compactd(quantize=True)({"image": torch.full((1, 3, 3), 0.3)}))["image"],
                       torch.full((1, 3, 3), 0.3))
    assert quantized_code(torch.tensor([[0.0, float("nan")]])) is None


def test_the_memory_cache_packs_entries_into_blocks_and_gives_what_monai_s_cache_gives():
    """Issue 28: entries sit in shared blocks (a 20k-item set no longer fragments the heap, scripts/benchmark_memory.py);
    what an item reads is MONAI's ``CacheDataset``'s, values, dtypes, meta and random draws; a read copies the item,
    never the block; a spawned worker gets each block once."""
    import pickle

    from monai.data import CacheDataset, MetaTensor

    from medmae_ext.data.caching import PackedCacheDataset

    class _Meta(MapTransform):  # a 3D-like entry: a MetaTensor with meta, and a float map off any lattice
        def __call__(self, d):
            return {**d, "vol": MetaTensor(torch.rand(1, 6, 6, 6), meta={"filename_or_obj": d["id"]})}

    chain = Compose([EnsureTyped("image", dtype=torch.float32, track_meta=False), _Meta("vol"),
                     RandScaleCropd(["image", "vol"], roi_scale=0.5, random_size=True)])
    # images as tensors: an entry that is not the item's own uint8 array (the test above) is copied into a block
    items = [{**d, "image": torch.as_tensor(d["image"])} for d in _uint8_items(n=12, size=16)]
    torch.manual_seed(0)
    packed = cached_dataset(items, chain, cache="memory")
    assert isinstance(packed, PackedCacheDataset)
    torch.manual_seed(0)
    plain = CacheDataset(items, copy.deepcopy(packed.transform), cache_rate=1.0)  # the same chain, compact coding too
    for i in range(12):
        a, b = packed._cache[i], plain._cache[i]
        assert sorted(a) == sorted(b)
        assert torch.equal(a["image"], b["image"]) and a["image"].dtype == b["image"].dtype
        assert type(a["vol"]) is MetaTensor and a["vol"].meta["filename_or_obj"] == f"s{i}"
    # the entries are views of one block
    storages = {packed._cache[i][k].untyped_storage().data_ptr() for i in range(12) for k in ("image", "vol")}
    assert len(storages) == 1
    block = packed._cache[0]["image"].untyped_storage().nbytes()
    # reads: the same random draws as MONAI's, and a copy of the item only
    packed.transform.set_random_state(5)
    plain.transform.set_random_state(5)
    for i in range(12):
        got, want = packed[i], plain[i]
        assert torch.equal(got["image"], want["image"]) and torch.equal(got["vol"], want["vol"])
        assert got["image"].untyped_storage().nbytes() < block  # not a copy of the block
        got["vol"].fill_(-1)  # writing to what a read returned leaves the cache as it was
    assert all(float(packed._cache[i]["vol"].min()) >= 0 for i in range(12))
    # a DataLoader worker started by spawn gets the blocks through shared memory, each once, and reads the same items
    from multiprocessing.reduction import ForkingPickler

    from torch import multiprocessing  # noqa: F401 - registers the shared-memory reductions of tensors, storages

    small = PackedCacheDataset(items, Compose([EnsureTyped("image", dtype=torch.float32)]), cache_rate=1.0,
                               block_bytes=64 << 10)
    assert len(bytes(ForkingPickler.dumps(small))) < 32 << 10  # handles, not 12 copies of the 64 KiB block
    loader = torch.utils.data.DataLoader(small, batch_size=4, num_workers=1, multiprocessing_context="spawn")
    assert all(torch.equal(b["image"], torch.stack([small[4 * j + k]["image"] for k in range(4)]))
               for j, b in enumerate(loader))


def test_a_cache_with_nothing_random_after_it_is_read_without_a_copy_and_a_batch_never_writes_into_it():
    """Issue 28: with the augmentation on the batch, only the cache's own decoding follows it. A read then copies
    nothing (the copy, and finding where the cache stops, were 30% of a read at 224 px): an image stored as float32
    comes back as the entry's tensor, a coded one as new floats -- the values MONAI's cache gives. The DataLoader's
    batch is a copy, so the trainer's in-place augmentation never writes into the cache."""
    from monai.data import CacheDataset, DataLoader

    from medmae_ext.data.caching import PackedCacheDataset

    items = [{"image": torch.rand(1, 12, 12) if i % 2 else torch.randint(0, 256, (1, 12, 12)).float() / 255,
              "id": f"s{i}"} for i in range(6)]  # odd items off any byte lattice (float32), even ones coded
    chain = Compose([EnsureTyped("image", dtype=torch.float32, track_meta=False)])
    ds = cached_dataset(items, chain, cache="memory")
    assert isinstance(ds, PackedCacheDataset) and ds._tail() == (2, True)  # EnsureTyped, Compactd | Expandd
    plain = CacheDataset(items, copy.deepcopy(ds.transform), cache_rate=1.0)
    for i in range(6):
        got, entry = ds[i], ds._cache[i]
        assert torch.equal(got["image"], plain[i]["image"]) and got["id"] == f"s{i}" and got is not entry
        assert (got["image"].data_ptr() == entry["image"].data_ptr()) == bool(i % 2), i  # float32: the entry's own
    before = [ds[i]["image"].clone() for i in range(6)]
    aug = BatchAugment(keys=("image",), crop_scale=None, flip_prob=1.0)
    for batch in DataLoader(ds, batch_size=3):
        aug(batch, inplace=True)  # the trainer's handler flips the collated batch in place
        batch["image"].fill_(-1)
    assert all(torch.equal(ds[i]["image"], before[i]) for i in range(6))
    # a random transform after the cache: each read is a copy, as before (the test above writes into one)
    rand = cached_dataset(items, Compose([*chain.transforms, RandScaleCropd("image", roi_scale=1.0)]), cache="memory")
    assert rand._tail() == (2, False) and rand[1]["image"].data_ptr() != rand._cache[1]["image"].data_ptr()


# the fine-tuning recipe's batch options (issue 30 item 1) ------------------------------------------------------------
def test_random_erasing_puts_one_noise_box_in_the_drawn_share_of_images_and_leaves_the_map():
    aug = BatchAugment(["image", "attn"], crop_scale=None, flip_prob=0.0, erase_prob=0.25)
    x = torch.rand(400, 1, 32, 32)
    torch.manual_seed(0)
    out = aug({"image": x, "attn": x.clone()})
    changed = (out["image"] != x).flatten(1)
    erased = changed.any(1)
    assert 0.18 < erased.float().mean() < 0.32 and torch.equal(out["attn"], x)  # the map is never erased
    areas = changed[erased].float().mean(1)
    assert areas.min() >= 0.015 and areas.max() <= 0.37  # erase_area (0.02, 1/3), sides rounded to pixels
    img = torch.rand(8, 1, 32, 32)
    kept = img.clone()
    torch.manual_seed(1)
    noisy = BatchAugment(["image"], crop_scale=None, flip_prob=0.0, erase_prob=1.0)({"image": img})["image"]
    assert torch.equal(img, kept) and 0.6 < (noisy == img).float().mean() < 0.99  # input untouched
    box = noisy[noisy != img]  # the noise has the images' mean and spread
    assert abs(float(box.mean()) - 0.5) < 0.05 and abs(float(box.std()) - 0.29) < 0.05


@pytest.mark.parametrize("kind", ["mixup", "cutmix"])
def test_mixup_and_cutmix_mix_labels_by_the_share_of_each_image(kind):
    from medmae_ext.data.mixing import MixCut, mixing

    mix = MixCut(3, mixup_alpha=0.8 if kind == "mixup" else 0, cutmix_alpha=1.0 if kind == "cutmix" else 0)
    n = 6
    image = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 1, 16, 16).clone()  # image i is all i
    label = torch.tensor([0, 1, 2, 0, 1, 2])
    torch.manual_seed(2)
    out = mix({"image": image, "attn": image.clone(), "label": label})
    y = out["label"]
    assert y.shape == (n, 3) and torch.allclose(y.sum(1), torch.ones(n))
    for i in range(n):  # the share of image i's own pixels (its value) is the weight of its own label
        partner = n - 1 - i
        own = out["image"][i].mean() if kind == "mixup" else (out["image"][i] == i).float().mean()
        if kind == "mixup":
            lam = (own - partner) / (i - partner)
        else:
            lam = own
        expected = lam * F.one_hot(label[i], 3) + (1 - lam) * F.one_hot(label[partner], 3)
        torch.testing.assert_close(y[i], expected.float(), atol=1e-5, rtol=0)
    assert torch.equal(out["attn"], out["image"])
    assert mixing(3) is None and isinstance(mixing(3, 0.8, 1.0), MixCut)
    with pytest.raises(InputError, match="'mixup'"):
        mixing(3, -1.0)


def test_the_overrides_the_bundle_docs_show_reach_the_augmentation(tmp_path, synth2d):
    """mae_pretrain docs: ``--augmentation#crop_scale "[0.45, 1.0]"``, ``--augmentation#flip_prob 0``; vit docs:
    ``--augmentation#crop_scale "[0.5, 1.0]"``, ``--random_erasing``; 3D: flips of every axis, no crop."""
    from conftest import REPO, run_bundle

    wf = run_bundle("mae_pretrain", "train.json", run_id="initialize", bundle_root=str(tmp_path / "m"),
                    dataset_dir=synth2d, **{"augmentation#crop_scale": [0.45, 1.0], "augmentation#flip_prob": 0})
    aug = wf.parser.get_parsed_content("augmentation")
    assert aug.crop_scale == (0.45, 1.0) and aug.flip_prob == 0 and aug.keys == ["image"]
    wf = run_bundle("vit_classification", "train.json", run_id="initialize", bundle_root=str(tmp_path / "v"),
                    dataset_dir=synth2d, pretrained_ckpt="scratch", random_erasing=0.25,
                    **{"augmentation#crop_scale": [0.5, 1.0]})
    aug = wf.parser.get_parsed_content("augmentation")
    assert aug.crop_scale == (0.5, 1.0) and aug.erase_prob == 0.25 and aug.keys == ["image", "attn"]
    from monai.bundle import ConfigParser

    from medmae_ext.bundle.workflow import config_files

    p = ConfigParser()
    p.read_config(config_files(os.path.join(REPO, "bundles", "mae_pretrain", "configs"), "train_3d.json"))
    aug3 = p.get_parsed_content("augmentation")
    assert aug3.crop_scale is None and aug3.flip_axes == [0, 1, 2] and aug3.flip_prob == 0.2


@pytest.mark.parametrize("bundle", ["mae_pretrain", "msmae_pretrain", "vit_classification", "unetr_segmentation"])
def test_cache_quantize_reaches_the_training_cache_only(tmp_path, bundle):
    """``--cache_quantize true`` quantizes the training set's cache; a validation set's cache stays exact, so the
    figures a run reports are computed on the images inference sees."""
    from monai.bundle import ConfigParser

    from conftest import bundle_configs
    from medmae_ext.data.compact import Compactd

    def quantize_of(p, part):
        p[f"{part}#dataset#data"] = []
        if "items" in p[f"{part}#dataset"]:
            p[f"{part}#dataset#items"] = []
        steps = p.get_parsed_content(f"{part}#dataset").transform.transforms
        return [t.quantize for t in steps if isinstance(t, Compactd)]

    for setting in (False, True):
        p = ConfigParser()
        p.read_config(bundle_configs(bundle, "train.json"))
        p["bundle_root"], p["cache_quantize"] = str(tmp_path), setting
        assert quantize_of(p, "train") == [setting]
        if "validate" in p.config and "dataset" in p["validate"]:
            assert quantize_of(p, "validate") == [False]
