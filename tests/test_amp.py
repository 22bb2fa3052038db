"""Mixed precision without a GPU: every network forward+backward under CPU bf16 autocast, and one iteration of every
training config with ``amp`` forced on (the configs run it as CPU bf16 autocast off CUDA)."""

import pytest
import torch
from conftest import initial_weights

from medmae_ext.networks.masking import AttentionMasking, RandomMasking
from medmae_ext.networks import MaskedAutoencoder, ViTClassifier


def _backward_in_bf16(net, x, **kw):
    seen = []
    hooks = [m.register_forward_hook(lambda m, i, o: seen.append(o.dtype)) for m in net.modules()
             if isinstance(m, torch.nn.Linear)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x, **kw)
    for h in hooks:
        h.remove()
    assert torch.bfloat16 in seen  # autocast really ran the matmuls in bf16
    tensors = list(out.values()) if isinstance(out, dict) else [out]
    loss = sum(t.float().square().mean() for t in tensors if t.is_floating_point() and t.requires_grad)
    loss.backward()
    grads = [p.grad for p in net.parameters() if p.requires_grad and p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    return out


TINY = dict(hidden_size=48, mlp_dim=96, num_layers=2, num_heads=4)


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("masking", ["random", "attention"])
def test_masked_autoencoder_under_bf16_autocast(spatial_dims, masking):
    size = 32 if spatial_dims == 2 else 16
    m = RandomMasking(0.75) if masking == "random" else AttentionMasking(0.45, 0.3)
    net = MaskedAutoencoder(in_channels=1, img_size=size, patch_size=8, spatial_dims=spatial_dims, **TINY,
                            decoder_hidden_size=48, decoder_mlp_dim=64, decoder_num_layers=1, decoder_num_heads=4,
                            masking=m, num_classes=2)
    n = net.num_patches
    kw = {"weights": torch.rand(2, n)} if masking == "attention" else {}
    out = _backward_in_bf16(net, torch.rand(2, 1, *([size] * spatial_dims)), **kw)
    assert out["pred_masked"].shape == (2, out["masked_index"].shape[1], 8**spatial_dims)
    assert out["pred_masked"].dtype == torch.bfloat16 and out["logits"].shape == (2, 2)


def test_vit_classifier_under_bf16_autocast_with_token_drop():
    net = ViTClassifier(3, 1, 32, 8, **TINY)
    out = _backward_in_bf16(net, torch.rand(2, 1, 32, 32), keep=torch.tensor([[0, 3, 5], [1, 2, 9]]))
    assert out.shape == (2, 3)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        att = net.encoder.cls_attention(torch.rand(2, 1, 32, 32))  # MSMAE attention refresh
    assert att.shape == (2, 16) and torch.isfinite(att.float()).all()


def test_unetr_under_bf16_autocast():
    from monai.networks.nets import UNETR

    net = UNETR(1, 3, (32, 32, 32), feature_size=8, qkv_bias=True, **{k: v for k, v in TINY.items() if k != "num_layers"})
    out = _backward_in_bf16(net, torch.rand(1, 1, 32, 32, 32))
    assert out.shape == (1, 3, 32, 32, 32)


def test_autocast_iteration_is_none_where_monai_amp_applies():
    from medmae_ext.training.engines import autocast_iteration

    assert autocast_iteration("cpu", False) is None
    assert autocast_iteration("cuda:0", True) is None  # MONAI's own torch.autocast("cuda") + GradScaler
    assert callable(autocast_iteration("cpu", True))


TRAIN_CONFIGS = [
    ("mae_pretrain", "train.json", "synth2d", {}),
    ("mae_pretrain", "train_3d.json", "synth3d", {"num_samples": 1}),
    ("msmae_pretrain", "train.json", "synth2d", {"attention_start_epoch": 0}),
    ("msmae_pretrain", "train_3d.json", "synth3d", {"attention_start_epoch": 0}),
    ("vit_classification", "train.json", "synth2d", {"msmae_finetune": True, "val_interval": 1}),
    # validation in fp32 here: bf16 3D convolutions of a sliding-window pass over whole volumes take minutes on a CPU
    # (the run always validates its last epoch; the vit row covers the evaluator under autocast), and bf16 3D
    # convolutions are slow on a CPU at any size: a 32^3 crop and feature_size 8 keep the training step to seconds
    ("unetr_segmentation", "train.json", "synth3d", {"num_samples": 1, "val_interval": 2, "roi_size": [32, 32, 32],
                                                     "feature_size": 8,
                                                     "validate#evaluator#iteration_update": None}),
]


@pytest.mark.parametrize("bundle,config,data,extra", TRAIN_CONFIGS, ids=[f"{b}/{c}" for b, c, _, _ in TRAIN_CONFIGS])
def test_one_iteration_with_amp_on_cpu_bf16(tmp_path, tmp_path_factory, request, bundle, config, data, extra):
    over = dict(bundle_root=str(tmp_path), dataset_dir=request.getfixturevalue(data), epochs=1, epoch_length=1,
                batch_size=2, num_workers=0, amp=True, device="$torch.device('cpu')", **extra)
    if bundle in ("vit_classification", "unetr_segmentation"):
        src = ("mae_pretrain", "train.json" if bundle == "vit_classification" else "train_3d.json")
        over["pretrained_ckpt"] = initial_weights(tmp_path_factory, *src)
    if bundle == "unetr_segmentation":
        over["batch_size"] = 1
    from monai.bundle import ConfigWorkflow

    from conftest import bundle_config, bundle_configs

    wf = ConfigWorkflow(config_file=bundle_configs(bundle, config), meta_file=bundle_config(bundle, "metadata.json"),
                        logging_file=bundle_config(bundle, "logging.conf"), run_id="training", **over)
    wf.initialize()
    net = wf.parser.get_parsed_content("network")
    dtypes = []
    net.register_forward_hook(lambda m, i, o: dtypes.append(
        (o["pred_masked"] if isinstance(o, dict) else o).dtype))
    wf.run()
    trainer = wf.parser.get_parsed_content("train#trainer")
    assert trainer.state.iteration == 1 and not trainer.amp  # MONAI's CUDA-only AMP stays off on the CPU...
    loss = trainer.state.output[0]["loss"] if isinstance(trainer.state.output, list) else trainer.state.output["loss"]
    assert torch.isfinite(torch.as_tensor(loss))
    assert torch.bfloat16 in dtypes  # ...and the network ran under CPU bf16 autocast instead
