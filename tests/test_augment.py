"""Issue 28 item 1: the random augmentation of a whole batch on the device draws what MONAI's per-item chain drew,
resizes the crop exactly as ``interpolate`` does, moves every key together; the attention refresh reads the cache."""

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
    n = 3000
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
