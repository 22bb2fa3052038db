import pytest
import torch

from medmae_ext.networks import MaskedAutoencoder, ViTClassifier
from medmae_ext.training.optim import layer_ids, param_groups


def test_no_weight_decay_on_biases_norms_tokens():
    net = MaskedAutoencoder(1, 32, 8, 2, hidden_size=48, mlp_dim=96, num_layers=2, num_heads=4,
                            decoder_hidden_size=32, decoder_mlp_dim=64, decoder_num_layers=1, decoder_num_heads=4)
    groups = param_groups(net, lr=1e-3, weight_decay=0.05)
    named = {id(p): n for n, p in net.named_parameters()}
    for g in groups:
        for p in g["params"]:
            name = named[id(p)]
            expect_decay = p.ndim > 1 and not any(t in name for t in ("cls_token", "mask_token"))
            assert (g["weight_decay"] > 0) == expect_decay, name
    # frozen tensors (sin-cos position embeddings, unused cross-attention norms) are not optimised
    assert all(p.requires_grad for g in groups for p in g["params"])
    assert sum(len(g["params"]) for g in groups) == sum(1 for p in net.parameters() if p.requires_grad)


def test_layer_decay_scales_lr_by_depth():
    net = ViTClassifier(3, 1, 32, 8, hidden_size=48, mlp_dim=96, num_layers=4, num_heads=4)
    groups = param_groups(net, lr=1.0, weight_decay=0.05, layer_decay=0.5)
    lr_of = {}
    for g in groups:
        for p in g["params"]:
            lr_of[id(p)] = g["lr"]
    assert lr_of[id(net.head.weight)] == 1.0
    assert lr_of[id(net.encoder.blocks[3].mlp.linear1.weight)] == 0.5
    assert lr_of[id(net.encoder.blocks[0].mlp.linear1.weight)] == pytest.approx(0.5 ** 4)
    assert lr_of[id(net.encoder.patch_embedding.patch_embeddings.weight)] == pytest.approx(0.5 ** 5)
    torch.optim.AdamW(groups)  # groups are valid optimizer input


def _lr_of(groups):
    return {id(p): g["lr"] for g in groups for p in g["params"]}


def test_unetr_layers_by_module_membership():
    """Only the ViT's own modules get a depth; UNETR's convolutional decoder (its encoder2/encoder3 up-sampling
    paths hold ``blocks.<i>`` in their names) trains at the full learning rate (issue 25 item 1)."""
    from monai.networks.nets import UNETR

    net = UNETR(1, 3, (32, 32, 32), feature_size=8, hidden_size=48, mlp_dim=96, num_heads=4, qkv_bias=True)
    lr = _lr_of(param_groups(net, lr=1.0, weight_decay=0.05, layer_decay=0.5))
    vit = {id(p): n for n, p in net.vit.named_parameters()}
    for name, p in net.named_parameters():
        if not p.requires_grad:
            continue
        if name.startswith("vit.patch_embedding."):
            expected = 0.5 ** 13
        elif name.startswith("vit.blocks."):
            expected = 0.5 ** (12 - int(name.split(".")[2]))
        else:  # vit.norm, the whole decoder (encoder1..4, decoder2..5, out)
            expected = 1.0
        assert lr[id(p)] == pytest.approx(expected), name
    decoder_blocks = [n for n, p in net.named_parameters() if ".blocks." in n and id(p) not in vit]
    assert decoder_blocks and all(lr[id(p)] == 1.0 for n, p in net.named_parameters() if n in decoder_blocks)


def test_classifier_every_parameter_layer():
    net = ViTClassifier(3, 1, 32, 8, hidden_size=48, mlp_dim=96, num_layers=4, num_heads=4)
    ids, n = layer_ids(net)
    assert n == 4
    for name, p in net.named_parameters():
        if name.startswith(("encoder.patch_embedding.", "encoder.cls_token")):
            assert ids[id(p)] == 0, name
        elif name.startswith("encoder.blocks."):
            assert ids[id(p)] == int(name.split(".")[2]) + 1, name
        else:
            assert ids[id(p)] == 5, name


@pytest.mark.parametrize("pretrained", ["scratch", None, "random"])
def test_no_layer_decay_for_random_encoder(pretrained):
    """A randomly initialised encoder gets no layer decay (issue 25 item 2): every group trains at the full lr."""
    net = ViTClassifier(3, 1, 32, 8, hidden_size=48, mlp_dim=96, num_layers=4, num_heads=4)
    groups = param_groups(net, lr=1.0, weight_decay=0.05, layer_decay=0.75, pretrained=pretrained or "scratch")
    assert {g["lr"] for g in groups} == {1.0}
    loaded = param_groups(net, lr=1.0, weight_decay=0.05, layer_decay=0.75, pretrained="/some/model.pt")
    assert min(g["lr"] for g in loaded) == pytest.approx(0.75 ** 5)
