"""The compute-floor MAE step (visible-only embedding, masked-only prediction and loss, SDPA, CLS-row maps) gives
the loss, gradients and attention maps of the straightforward implementation kept in ``reference_mae.py``."""

from __future__ import annotations

import pytest
import torch

import reference_mae as ref
from medmae_ext.training.losses import MAELoss
from medmae_ext.networks.masking import AttentionMasking, MaskPlan, RandomMasking
from medmae_ext.networks import MaskedAutoencoder, ViTClassifier, ViTEncoder


class FixedPlan:
    """A masking strategy that returns one given plan (so both implementations see the same masks)."""

    def __init__(self, plan: MaskPlan, mask_ratio: float, throw_ratio: float) -> None:
        self.plan, self.mask_ratio, self.throw_ratio = plan, mask_ratio, throw_ratio

    def __call__(self, batch_size, num_patches, device=None, weights=None) -> MaskPlan:
        return self.plan


CASES = {
    # name: spatial_dims, img, patch, in_channels, strategy, num_classes
    "2d-random": (2, 32, 8, 1, RandomMasking(0.75), 0),
    "2d-attention-thrown-2ch": (2, 32, 8, 2, AttentionMasking(0.45, 0.30), 2),
    "3d-random": (3, 32, 8, 1, RandomMasking(0.75), 0),
    "3d-attention-thrown": (3, 32, 8, 1, AttentionMasking(0.45, 0.30), 2),
}


def _net(spatial_dims, img, patch, in_channels, masking, num_classes):
    torch.manual_seed(0)
    return MaskedAutoencoder(in_channels=in_channels, img_size=img, patch_size=patch, spatial_dims=spatial_dims,
                             hidden_size=48, mlp_dim=96, num_layers=3, num_heads=4, decoder_hidden_size=24,
                             decoder_mlp_dim=48, decoder_num_layers=2, decoder_num_heads=4, masking=masking,
                             num_classes=num_classes)


@pytest.mark.parametrize("case", sorted(CASES))
def test_loss_and_gradients_equal_reference(case):
    spatial_dims, img, patch, ch, strategy, num_classes = CASES[case]
    net = _net(spatial_dims, img, patch, ch, strategy, num_classes)
    b, n = 3, net.num_patches
    torch.manual_seed(1)
    image = torch.randn(b, ch, *(img,) * spatial_dims) * 2 + 0.5
    label = torch.tensor([0, 1, 1])
    weights = torch.rand(b, n) if isinstance(strategy, AttentionMasking) else None
    plan = strategy(b, n, image.device, weights)
    if strategy.throw_ratio:
        assert plan.thrown.shape[1] > 0
    net.masking = FixedPlan(plan, strategy.mask_ratio, strategy.throw_ratio)
    loss_fn = MAELoss((patch,) * spatial_dims, norm_pix=True, ce_weight=1.0)

    out = net(image, weights)
    loss = loss_fn(out, {"image": image, "label": label})
    loss.backward()
    fast = {k: p.grad.clone() for k, p in net.named_parameters() if p.grad is not None}
    net.zero_grad(set_to_none=True)

    expected_out = ref.mae_forward(net, image, plan)
    expected = ref.masked_mse(expected_out["pred"], image, expected_out["mask"], (patch,) * spatial_dims)
    if num_classes:
        expected = expected + torch.nn.functional.cross_entropy(expected_out["logits"], label)
    expected.backward()
    slow = {k: p.grad.clone() for k, p in net.named_parameters() if p.grad is not None}

    assert torch.allclose(loss, expected, rtol=1e-6, atol=1e-7), (float(loss), float(expected))
    assert fast.keys() == slow.keys() and len(fast) > 10
    for k in slow:
        scale = slow[k].abs().max().clamp_min(1e-6)
        assert (fast[k] - slow[k]).abs().max() <= 1e-5 * scale, k
    # the masked patches' reconstructions, their position and the mask/thrown indicators are those of the reference
    mask = expected_out["mask"].bool()
    dense = net.dense_prediction(out)
    assert torch.allclose(dense[mask], expected_out["pred"][mask], atol=1e-5)
    assert (dense[~mask] == 0).all()
    assert torch.equal(out["mask"], expected_out["mask"]) and torch.equal(out["thrown"], expected_out["thrown"])
    assert out["pred_masked"].shape == (b, plan.masked.shape[1], patch**spatial_dims * ch)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_attention_map_equals_reference(spatial_dims):
    torch.manual_seed(0)
    enc = ViTEncoder(1, 32, 8, hidden_size=48, mlp_dim=96, num_layers=3, num_heads=4, spatial_dims=spatial_dims).eval()
    x = torch.randn(2, 1, *(32,) * spatial_dims)
    fast, slow = enc.cls_attention(x), ref.cls_attention(enc, x)
    assert fast.shape == (2, enc.num_patches) and fast.dtype == torch.float32
    assert (fast - slow).abs().max() <= 1e-6
    assert fast.amax(1).gt(0).all()  # not a degenerate all-zero map


def test_embedding_of_kept_patches_equals_conv_embedding_then_selection():
    """The gathered-patch matmul uses the conv weights in patchify's voxel/channel order (3 channels, 3D)."""
    torch.manual_seed(0)
    enc = ViTEncoder(3, (32, 16, 24), (8, 4, 8), hidden_size=48, mlp_dim=96, num_layers=1, num_heads=4,
                     spatial_dims=3)
    x = torch.randn(2, 3, 32, 16, 24)
    keep = torch.rand(2, enc.num_patches).argsort(1)[:, :7]
    full = enc.embed(x)
    assert torch.allclose(enc.embed(x, keep), torch.gather(full, 1, keep.unsqueeze(-1).expand(-1, -1, 48)), atol=1e-5)
    with pytest.raises(ValueError, match="expects"):
        enc.embed(torch.randn(2, 1, 32, 16, 24), keep)


def test_blocks_use_sdpa_and_store_no_attention():
    net = _net(2, 32, 8, 1, RandomMasking(0.75), 0)
    blocks = list(net.encoder.blocks) + list(net.decoder_blocks)
    assert all(blk.attn.use_flash_attention and not blk.attn.save_attn for blk in blocks)
    net(torch.randn(2, 1, 32, 32))
    assert all(blk.attn.att_mat.numel() == 0 for blk in blocks)


def test_attention_dropout_is_off_in_eval_mode():
    """MONAI's SDPA path passes its dropout rate in eval mode too; blocks with dropout keep the explicit path."""
    torch.manual_seed(0)
    clf = ViTClassifier(2, 1, 32, 8, hidden_size=48, mlp_dim=96, num_layers=2, num_heads=4, dropout_rate=0.3,
                        drop_path_rate=0.0)
    assert not any(blk.attn.use_flash_attention for blk in clf.encoder.blocks)
    clf.eval()
    x = torch.randn(2, 1, 32, 32)
    assert torch.equal(clf(x), clf(x))
    clf.train()
    assert not torch.equal(clf(x), clf(x))


def test_masked_fine_tuning_forward_equals_reference():
    torch.manual_seed(0)
    clf = ViTClassifier(2, 1, 32, 8, hidden_size=48, mlp_dim=96, num_layers=2, num_heads=4, drop_path_rate=0.0)
    x = torch.randn(3, 1, 32, 32)
    keep = torch.rand(3, clf.encoder.num_patches).argsort(1)[:, :5]
    latent, _ = ref.encoder_forward(clf.encoder, x, keep)
    assert torch.allclose(clf(x, keep), clf.head(latent[:, 0]), atol=1e-5)


def test_loss_rejects_a_dense_output():
    with pytest.raises(KeyError, match="pred_masked"):
        MAELoss((8, 8))({"pred": torch.zeros(1, 16, 64), "mask": torch.ones(1, 16)}, torch.zeros(1, 1, 32, 32))


def test_num_threads_knob():
    from medmae_ext.bundle.runtime import set_num_threads

    before = torch.get_num_threads()
    try:
        assert set_num_threads(0) == before  # 0 keeps PyTorch's default
        assert set_num_threads(1) == 1 and torch.get_num_threads() == 1
        for bad in (-1, 1.5, True, "2"):
            with pytest.raises(ValueError, match="config id 'num_threads'"):
                set_num_threads(bad)
    finally:
        torch.set_num_threads(before)
