"""Issue 30 item 1: RandAugment on the batch (``medmae_ext.data.randaugment``), each operation against a known answer:
PIL's own ``ImageEnhance`` / ``ImageOps`` on the same 8-bit image, exact pixel shifts, the rotation of a blob's
centre; the draws' statistics; an attention map moving with its image; errors that name the config id."""

import math

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance, ImageOps

from medmae_ext.data.augment import BatchAugment
from medmae_ext.data.randaugment import GEOMETRIC_OPS, INTENSITY_OPS, RandAugment, rand_augment
from medmae_ext.errors import InputError

ONE = torch.ones(1, 1, 1, 1)


def _image(seed=0, size=(28, 32)):
    a = np.random.default_rng(seed).integers(0, 256, size).astype(np.uint8)
    a[0, 0], a[1, 1] = 0, 255  # the range is [0, 255]: lo, hi = 0, 1 after scaling
    return a, torch.tensor(a, dtype=torch.float32)[None, None] / 255


def _level(v):
    return torch.full((1, 1, 1, 1), float(v))


@pytest.mark.parametrize("name,enhance", [("brightness", ImageEnhance.Brightness), ("contrast", ImageEnhance.Contrast),
                                          ("sharpness", ImageEnhance.Sharpness)])
@pytest.mark.parametrize("level", [-0.9, -0.4, 0.5, 0.9])
def test_enhance_operations_match_pil_within_its_8_bit_rounding(name, enhance, level):
    a, x = _image()
    ours = getattr(RandAugment, name)(x, 0 * ONE, ONE, _level(level)).clamp(0, 1)[0, 0].numpy() * 255
    ref = np.asarray(enhance(Image.fromarray(a)).enhance(1 + 0.9 * level)).astype(float)
    assert np.abs(ours - ref).max() <= 1.5  # PIL rounds its blend (and the smoothed image, and the mean) to 8 bits
    assert np.abs(ours - a).max() > 10  # and the operation did something


def test_equalize_posterize_solarize_invert_equal_pil_exactly():
    a, x = _image(1)
    img = Image.fromarray(a)

    def ours(name, level=0.0, lo=0.0, hi=1.0):
        return getattr(RandAugment, name)(x * (hi - lo) + lo, lo * ONE, hi * ONE, _level(level))[0, 0].numpy()

    assert np.abs(ours("equalize") * 255 - np.asarray(ImageOps.equalize(img))).max() < 1e-3
    for bits in (1, 2, 3, 4):
        level = (4 - bits) / 4 + 0.01  # timm: bits = 4 - int(4 * m / 10)
        assert np.abs(ours("posterize", level) * 255 - np.asarray(ImageOps.posterize(img, bits))).max() < 1e-3
    assert np.all(ours("posterize", 1.0) == 0)  # magnitude 10: no bit kept (timm's PIL took 0 bits: black)
    for t in (64, 128, 200):
        level = 1 - (t - 0.5) / 255  # the threshold between levels t - 1 and t
        assert np.abs(ours("solarize", level) * 255 - np.asarray(ImageOps.solarize(img, t))).max() < 1e-3
    assert np.abs(ours("invert") * 255 - np.asarray(ImageOps.invert(img))).max() < 1e-3
    # on another range (a CT window in HU, an MR z-score): the same result, mapped
    assert np.abs((ours("equalize", lo=-3.0, hi=5.0) + 3) / 8 * 255 - np.asarray(ImageOps.equalize(img))).max() < 1e-3


def test_translation_moves_by_whole_pixels_and_fills_with_the_image_mean():
    _, x = _image(2, (28, 28))
    for name, axis in (("translate_x", 3), ("translate_y", 2)):
        level = 5 / (0.45 * 28)  # five pixels
        grid = RandAugment.grid([name], torch.tensor([level]), (28, 28), "cpu")
        out = RandAugment.resample(x, torch.tensor([0]), grid, fill=x.mean())
        # output pixel j shows input pixel j + 5; the last five come from outside and get the mean
        kept = out.narrow(axis, 0, 23)
        assert torch.allclose(kept, x.narrow(axis, 5, 23), atol=1e-5)
        assert torch.allclose(out.narrow(axis, 23, 5), x.mean().expand_as(out.narrow(axis, 23, 5)), atol=1e-5)


@pytest.mark.parametrize("name,level", [("rotate", 0.7), ("rotate", -1.0), ("shear_x", 0.8), ("shear_y", -0.6)])
def test_rotation_and_shear_move_a_blob_where_the_affine_map_says_on_a_non_square_image(name, level):
    h, w = 48, 64
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    cy, cx = (h - 1) / 2, (w - 1) / 2
    by, bx = cy + 7.0, cx - 9.0  # the blob, off centre
    blob = torch.exp(-((yy - by) ** 2 + (xx - bx) ** 2) / (2 * 2.0**2)).float()[None, None]
    out = RandAugment.resample(blob, torch.tensor([0]), RandAugment.grid([name], torch.tensor([level]), (h, w), "cpu"),
                               fill=0.0)[0, 0].double()
    my, mx = float((out * yy).sum() / out.sum()), float((out * xx).sum() / out.sum())
    # the map takes an output pixel (about the centre) to the input pixel it reads: the blob lands at its inverse
    a = torch.eye(2, dtype=torch.float64)
    if name == "rotate":
        t = math.radians(30 * level)
        a = torch.tensor([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]], dtype=torch.float64)
    elif name == "shear_x":
        a[0, 1] = 0.3 * level
    else:
        a[1, 0] = 0.3 * level
    ex, ey = (torch.linalg.inv(a) @ torch.tensor([bx - cx, by - cy], dtype=torch.float64)).tolist()
    assert abs(mx - (cx + ex)) < 0.1 and abs(my - (cy + ey)) < 0.1
    if name == "rotate":  # a rotation keeps the distance to the centre
        assert abs(math.hypot(mx - cx, my - cy) - math.hypot(bx - cx, by - cy)) < 0.1


def test_draws_follow_the_recipe_uniform_operations_applied_at_prob_magnitude_around_m():
    from scipy import stats

    torch.manual_seed(0)
    ra = RandAugment(num_ops=2, magnitude=9, magnitude_std=0.5, prob=0.5)
    rounds = ra.draw(20000)
    assert len(rounds) == 2
    for op, m, sign in rounds:
        applied = op >= 0
        assert abs(float(applied.float().mean()) - 0.5) < 0.015
        counts = torch.bincount(op[applied], minlength=len(ra.ops)).numpy()
        assert stats.chisquare(counts).pvalue > 1e-3  # uniform over the operations
        assert float(m.max()) <= 10 and abs(float(m.mean()) - 8.98) < 0.02  # N(9, 0.5) clipped at 10
        assert abs(float((sign > 0).float().mean()) - 0.5) < 0.015
    # the two rounds are drawn independently
    both = (rounds[0][0] >= 0) & (rounds[1][0] >= 0)
    assert abs(float(both.float().mean()) - 0.25) < 0.015


def test_an_attention_map_moves_with_the_image_and_intensity_operations_leave_it_alone():
    torch.manual_seed(1)
    base = torch.rand(16, 1, 28, 28)
    image = base - base.mean(dim=(1, 2, 3), keepdim=True)  # mean 0: the image's fill equals the map's (0)
    batch = {"image": image, "attn": image.clone(), "label": torch.arange(16)}
    geo = RandAugment(num_ops=1, prob=1.0, ops=GEOMETRIC_OPS)(batch)  # one round: the image's mean is still 0
    assert not torch.allclose(geo["image"], image)  # moved
    assert torch.allclose(geo["image"], geo["attn"], atol=1e-5)  # and the map moved with it, exactly
    inten = RandAugment(num_ops=2, prob=1.0, ops=INTENSITY_OPS)(batch)
    assert torch.equal(inten["attn"], image) and not torch.allclose(inten["image"], image)
    assert torch.equal(batch["image"], image)  # the input batch is not written to
    for k in range(16):  # every result stays in the image's range
        assert float(inten["image"][k].min()) >= float(image[k].min()) - 1e-6
        assert float(inten["image"][k].max()) <= float(image[k].max()) + 1e-6


def test_batch_augment_applies_it_after_the_crop_and_flips_and_before_erasing():
    order = []

    class Spy:
        keys = ["image"]

        def __call__(self, batch):
            order.append("rand_augment")
            return batch

    aug = BatchAugment(keys=["image"], crop_scale=(0.5, 1.0), erase_prob=1.0, rand_augment=Spy())
    erase = aug.erase

    def spy_erase(x, inplace=False):
        order.append("erase")
        return erase(x, inplace)

    aug.erase = spy_erase
    out = aug({"image": torch.rand(4, 1, 16, 16)})
    assert order == ["rand_augment", "erase"] and out["image"].shape == (4, 1, 16, 16)


def test_bad_values_stop_naming_the_config_id():
    with pytest.raises(InputError, match="config id 'rand_augment'.*integer >= 0"):
        RandAugment(num_ops=-1)
    with pytest.raises(InputError, match="config id 'rand_augment_magnitude'"):
        RandAugment(magnitude=11)
    with pytest.raises(InputError, match="config id 'rand_augment' is for 2D images; this run is 3D"):
        RandAugment(num_ops=2, spatial_dims=3)
    with pytest.raises(InputError, match="unknown \\['color'\\]"):
        RandAugment(ops=["rotate", "color"])
    assert rand_augment(0) is None and rand_augment(0, spatial_dims=3) is None
    assert isinstance(rand_augment(2), RandAugment)
