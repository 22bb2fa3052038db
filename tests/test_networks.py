import pytest
import torch
from monai.networks.blocks import PatchEmbeddingBlock
from monai.networks.nets import UNETR, ViT

from medmae_ext.errors import InputError
from medmae_ext.training.losses import MAELoss, MaskedPatchMSELoss
from medmae_ext.networks.masking import AttentionMasking, RandomMasking
from medmae_ext.networks import (
    MaskedAutoencoder, ViTClassifier, load_pretrained_encoder, patch_weights, patchify, unpatchify,
)

TINY2D = dict(in_channels=1, img_size=32, patch_size=8, spatial_dims=2, hidden_size=48, mlp_dim=96, num_layers=3,
              num_heads=4, decoder_hidden_size=32, decoder_mlp_dim=64, decoder_num_layers=1, decoder_num_heads=4)
TINY3D = dict(in_channels=2, img_size=32, patch_size=16, spatial_dims=3, hidden_size=48, mlp_dim=96, num_layers=12,
              num_heads=4, decoder_hidden_size=24, decoder_mlp_dim=48, decoder_num_layers=1, decoder_num_heads=4)


@pytest.mark.parametrize("cfg,shape", [(TINY2D, (3, 1, 32, 32)), (TINY3D, (2, 2, 32, 32, 32))])
def test_mae_forward_backward(cfg, shape):
    torch.manual_seed(0)
    net = MaskedAutoencoder(**cfg)
    x = torch.randn(shape)
    out = net(x)
    n = net.num_patches
    p = int(torch.tensor(net.patch_size).prod()) * cfg["in_channels"]
    n_masked = round(0.75 * n)
    assert out["pred_masked"].shape == (shape[0], n_masked, p) and out["masked_index"].shape == (shape[0], n_masked)
    assert out["mask"].sum(1).eq(n_masked).all()
    assert out["mask"].gather(1, out["masked_index"]).eq(1).all()  # the predicted patches are the masked ones
    assert net.dense_prediction(out).shape == (shape[0], n, p)
    loss = MAELoss(net.patch_size)(out, x)
    loss.backward()
    assert torch.isfinite(loss)
    assert net.encoder.patch_embedding.patch_embeddings.weight.grad.abs().sum() > 0
    assert net.decoder_pred.weight.grad.abs().sum() > 0
    assert net.encoder.patch_embedding.position_embeddings.requires_grad is False  # fixed sin-cos


def test_encoder_sees_only_visible_patches():
    net = MaskedAutoencoder(**TINY2D, masking=RandomMasking(0.75))
    seen = []
    net.encoder.blocks[0].register_forward_hook(lambda m, i, o: seen.append(i[0].shape[1]))
    net(torch.randn(2, 1, 32, 32))
    assert seen == [1 + 16 - 12]  # CLS + visible tokens


def test_thrown_patches_are_neither_encoded_nor_decoded():
    net = MaskedAutoencoder(**TINY2D, masking=AttentionMasking(0.5, 0.25))
    enc, dec = [], []
    net.encoder.blocks[0].register_forward_hook(lambda m, i, o: enc.append(i[0].shape[1]))
    net.decoder_blocks[0].register_forward_hook(lambda m, i, o: dec.append(i[0].shape[1]))
    out = net(torch.randn(2, 1, 32, 32), torch.rand(2, 16))
    assert enc == [1 + 4] and dec == [1 + 4 + 8]
    assert out["thrown"].sum(1).eq(4).all() and out["mask"].sum(1).eq(8).all()
    assert out["pred_masked"].shape[1] == 8
    assert (net.dense_prediction(out)[out["thrown"].bool()] == 0).all()


def test_loss_counts_only_masked_patches():
    torch.manual_seed(0)
    x = torch.randn(2, 1, 32, 32)
    mask = torch.zeros(2, 16)
    mask[:, :5] = 1
    loss = MaskedPatchMSELoss((8, 8))
    pred = torch.randn(2, 16, 64)
    base = loss(pred, x, mask)
    changed_visible = pred.clone()
    changed_visible[:, 5:] += 10.0
    assert torch.allclose(loss(changed_visible, x, mask), base)
    changed_masked = pred.clone()
    changed_masked[:, :5] += 10.0
    assert loss(changed_masked, x, mask) > base + 1.0
    # a perfect prediction of the masked patches gives zero, whatever the visible ones hold
    perfect = loss.target(x).clone()
    perfect[:, 5:] = 123.0
    assert loss(perfect, x, mask).item() == pytest.approx(0.0, abs=1e-6)


def test_norm_pix_target_is_normalised_per_patch():
    t = MaskedPatchMSELoss((8, 8)).target(torch.rand(2, 1, 32, 32) * 50 + 7)
    assert torch.allclose(t.mean(-1), torch.zeros(2, 16), atol=1e-4)
    assert torch.allclose(t.var(-1, unbiased=False), torch.ones(2, 16), atol=1e-2)


@pytest.mark.parametrize("shape,patch", [((2, 3, 32, 48), (8, 16)), ((1, 2, 32, 32, 16), (16, 8, 8))])
def test_patchify_roundtrip_and_token_order(shape, patch):
    x = torch.randn(shape)
    p = patchify(x, patch)
    assert torch.equal(unpatchify(p, patch, [s // q for s, q in zip(shape[2:], patch)], shape[1]), x)
    # token i of MONAI's conv patch embedding is patch i of patchify
    nd = len(patch)
    emb = PatchEmbeddingBlock(shape[1], shape[2:], patch, 16, 4, proj_type="conv", pos_embed_type="none",
                              spatial_dims=nd)
    conv = emb.patch_embeddings
    w = conv.weight.permute(0, *range(2, 2 + nd), 1).reshape(16, -1)  # (voxels of a patch, then channels)
    assert torch.allclose(emb(x), p @ w.T + conv.bias, atol=1e-4)


def test_patch_weights_average_each_patch():
    m = torch.zeros(1, 1, 32, 32)
    m[..., :8, 8:16] = 1.0
    w = patch_weights(m, (8, 8))
    assert w.shape == (1, 16) and w[0, 1] == 1.0 and w.sum() == 1.0


def test_mae_encoder_loads_into_monai_vit(tmp_path):
    torch.manual_seed(0)
    mae = MaskedAutoencoder(**TINY2D)
    torch.save(mae.state_dict(), tmp_path / "model.pt")
    vit = ViT(1, 32, 8, hidden_size=48, mlp_dim=96, num_layers=3, num_heads=4, classification=True,
              spatial_dims=2, qkv_bias=True, post_activation=None)
    load_pretrained_encoder(vit, str(tmp_path / "model.pt"))
    vit.classification_head = torch.nn.Identity()
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        ours = mae.encoder(x)[:, 0]
        theirs, _ = vit(x)
    assert torch.allclose(ours, theirs, atol=1e-5)
    assert vit.patch_embedding.position_embeddings.requires_grad  # learnable in the target, sin-cos initial value


def test_mae_encoder_loads_into_unetr_and_interpolates_pos_embed(tmp_path, caplog):
    mae = MaskedAutoencoder(**TINY3D)
    torch.save({"network": mae.state_dict(), "optimizer": {}}, tmp_path / "ckpt.pt")
    for size in (32, 48):
        unetr = UNETR(2, 3, size, feature_size=8, hidden_size=48, mlp_dim=96, num_heads=4, qkv_bias=True)
        load_pretrained_encoder(unetr, str(tmp_path / "ckpt.pt"))
        sd = unetr.state_dict()
        for i in (0, 11):
            assert torch.equal(sd[f"vit.blocks.{i}.attn.qkv.weight"], mae.encoder.blocks[i].attn.qkv.weight)
        assert torch.equal(sd["vit.norm.weight"], mae.encoder.norm.weight)
        assert unetr(torch.randn(1, 2, size, size, size)).shape == (1, 3, size, size, size)
    assert "interpolated from grid (2, 2, 2) to (3, 3, 3)" in caplog.text


def test_mismatched_encoder_is_reported_by_key(tmp_path):
    torch.save(MaskedAutoencoder(**TINY3D).state_dict(), tmp_path / "m.pt")
    unetr = UNETR(2, 3, 32, feature_size=8, hidden_size=96, mlp_dim=96, num_heads=4, qkv_bias=True)
    with pytest.raises(ValueError, match=r"'vit\.patch_embedding\.\w+' has shape .* in the checkpoint"):
        load_pretrained_encoder(unetr, str(tmp_path / "m.pt"))
    with pytest.raises(InputError, match="nothere.pt"):
        load_pretrained_encoder(unetr, str(tmp_path / "nothere.pt"))
    (tmp_path / "broken.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="broken.pt"):
        load_pretrained_encoder(unetr, str(tmp_path / "broken.pt"))


def test_classifier_keep_tokens_and_torchscript(tmp_path):
    torch.manual_seed(0)
    clf = ViTClassifier(3, 1, 32, 8, hidden_size=48, mlp_dim=96, num_layers=3, num_heads=4, drop_path_rate=0.1)
    seen = []
    hook = clf.encoder.blocks[0].register_forward_hook(lambda m, i, o: seen.append(i[0].shape[1]))
    x = torch.randn(2, 1, 32, 32)
    assert clf(x, keep=torch.tensor([[0, 3, 5, 7]] * 2)).shape == (2, 3)
    assert seen == [5]
    hook.remove()
    clf.eval()
    scripted = torch.jit.script(clf)
    assert torch.allclose(scripted(x), clf(x), atol=1e-5)


@pytest.mark.parametrize("kwargs,match", [
    (dict(img_size=30, patch_size=8), r"not divisible by patch_size \(8, 8\)"),
    (dict(hidden_size=50, num_heads=5), "divisible by 4"),
    (dict(decoder_hidden_size=30, decoder_num_heads=5), "decoder_hidden_size=30"),
])
def test_bad_network_config_is_explained(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MaskedAutoencoder(**{**TINY2D, **kwargs})


def test_wrong_input_shape_is_explained():
    net = MaskedAutoencoder(**TINY2D)
    with pytest.raises(ValueError, match=r"expects \[batch, 1 channel\(s\), \[32, 32\]\]"):
        net(torch.randn(1, 3, 32, 32))
