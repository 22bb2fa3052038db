import pytest
import torch

from medmae_ext.networks import MaskedAutoencoder, ViTClassifier
from medmae_ext.optim import layer_id, param_groups


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
    assert layer_id("vit.blocks.7.attn.qkv.weight", 12) == 8 and layer_id("decoder5.conv", 12) == 13
    torch.optim.AdamW(groups)  # groups are valid optimizer input
