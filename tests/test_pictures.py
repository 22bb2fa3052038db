"""Pretraining pictures: a fixed, un-augmented set of images with the same masking draw each time, masked (blue) and
thrown (red) patches told apart, the image upright, labelled columns, the MSMAE attention overlay, TensorBoard."""

import glob
import json
import os
from types import SimpleNamespace

import numpy as np
import torch
from conftest import run_bundle
from medmae_ext.training.attention import AttentionCache
from medmae_ext.networks.masking import AttentionMasking, RandomMasking
from medmae_ext.networks import MaskedAutoencoder
from medmae_ext.outputs.pictures import MASKED_RGB, THROWN_RGB, ReconstructionSaver, picture_items, reconstruction_panel

SMALL = dict(in_channels=1, img_size=16, patch_size=4, hidden_size=32, mlp_dim=64, num_layers=2, num_heads=2,
             decoder_hidden_size=32, decoder_mlp_dim=64, decoder_num_layers=1, decoder_num_heads=2)


def test_panel_colours_masked_blue_thrown_red_visible_unchanged_and_upright():
    # MONAI order [C, W, H]: x[:, :, 0] is the top row of the picture; make it bright
    image = torch.zeros(1, 1, 8, 8)
    image[0, 0, :, 0] = 1.0
    pred = torch.full((1, 4, 16), 0.5)  # dense prediction, one value for every pixel of every patch
    mask = torch.tensor([[0.0, 1.0, 0.0, 0.0]])  # patch 1 = W 0..3, H 4..7 (bottom-left when upright)
    thrown = torch.tensor([[0.0, 0.0, 0.0, 1.0]])  # patch 3 = W 4..7, H 4..7 (bottom-right)
    panel = reconstruction_panel(image, pred, mask, thrown, [4, 4], norm_pix=False).astype(int)
    assert panel.shape == (8, 3 * 8 + 2, 3)
    inp, masked, recon = panel[:, 0:8], panel[:, 9:17], panel[:, 18:26]
    assert (inp[0] == 255).all() and (inp[1:] == 0).all()  # bright row on top: drawn upright
    bottom_left, bottom_right, top = (slice(4, 8), slice(0, 4)), (slice(4, 8), slice(4, 8)), (slice(0, 4), slice(None))
    assert (masked[bottom_left][..., 2] > masked[bottom_left][..., 0] + 100).all()  # blue
    assert (masked[bottom_right][..., 0] > masked[bottom_right][..., 2] + 100).all()  # red
    assert (masked[top] == inp[top]).all()  # visible patches unchanged
    assert (recon[bottom_left] == 128).all()  # the prediction (0.5 on the input's 0..1 scale), grey
    assert (recon[bottom_right][..., 0] > recon[bottom_right][..., 2] + 100).all()  # thrown: not reconstructed
    assert MASKED_RGB != THROWN_RGB


def test_saver_uses_the_fixed_images_with_the_same_mask_every_time(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    torch.manual_seed(0)
    net = MaskedAutoencoder(**SMALL, masking=RandomMasking(0.5))
    data = [{"image": torch.rand(1, 16, 16)} for _ in range(3)]
    saver = ReconstructionSaver(str(tmp_path / "pics"), dataset=data, max_images=2, log_dir=str(tmp_path / "logs"))
    first, labels = saver.picture(net, "cpu")
    torch.rand(100)  # the training loop moves the global RNG on ...
    state = torch.random.get_rng_state()
    again, _ = saver.picture(net, "cpu")
    assert np.array_equal(first, again)  # ... the picture's masking draw does not move
    assert torch.equal(state, torch.random.get_rng_state())  # and does not disturb training's RNG
    assert labels == ["input", "masked / thrown", "reconstruction"]
    # the engine's last (augmented) batch is never looked at
    engine = SimpleNamespace(network=net, state=SimpleNamespace(epoch=3, device="cpu", output=None))
    path = saver(engine)
    assert path.endswith("recon_epoch0003.png")
    events = EventAccumulator(str(tmp_path / "logs"), size_guidance={"images": 0}).Reload()
    assert [e.step for e in events.Images("pictures/reconstruction")] == [3]


def test_msmae_pictures_draw_masks_from_attention_and_overlay_it():
    torch.manual_seed(0)
    net = MaskedAutoencoder(**SMALL, num_classes=2,
                            masking=AttentionMasking(0.5, 0.25, warmup=RandomMasking(0.75)))
    cache = AttentionCache()
    saver = ReconstructionSaver("unused", dataset=[{"image": torch.rand(1, 16, 16)}], attention_cache=cache)
    _, labels = saver.picture(net, "cpu")
    assert labels[-1] == "reconstruction"  # before the first attention refresh: random masking, no map
    cache.store({"x": torch.zeros(4, 4)})
    panel, labels = saver.picture(net, "cpu")
    assert labels[-1] == "attention" and panel.shape[1] == 4 * 16 + 3


def test_picture_items_spread_over_the_classes_and_fall_back_to_training(tmp_path):
    path = tmp_path / "sorted.npz"
    np.savez(path, train_images=np.zeros((20, 8, 8), np.uint8), train_labels=np.array([[0]] * 2 + [[1]] * 18),
             val_images=np.zeros((10, 8, 8), np.uint8), val_labels=np.array([[0]] * 5 + [[1]] * 5))
    items = picture_items("medmnist", str(path), {}, [], count=4)
    assert len(items) == 4 and {int(i["label"]) for i in items} == {0, 1}  # sorted by class: still both classes
    train = [{"image": np.zeros((1, 8, 8)), "id": str(i)} for i in range(5)]
    assert picture_items("datalist", str(tmp_path / "none.json"), {}, train, count=2) == [train[0], train[4]]


def test_mae_bundle_pictures_come_from_the_validation_images(tmp_path, synth2d):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    wf = run_bundle("mae_pretrain", "train.json", bundle_root=str(tmp_path), dataset_dir=synth2d, epochs=1,
                    epoch_length=1, batch_size=4, num_workers=0, max_items=8)
    shown = {os.path.basename(it["image"]) for it in wf.parser.get_parsed_content("pictures#items")}
    validation = {os.path.basename(it["image"]) for it in json.load(open(f"{synth2d}/datalist.json"))["validation"]}
    assert len(shown) == 4 and shown <= validation
    assert glob.glob(str(tmp_path / "eval" / "reconstructions" / "recon_epoch0001.png"))
    events = EventAccumulator(str(tmp_path / "logs"), size_guidance={"images": 0}).Reload()
    assert [e.step for e in events.Images("pictures/reconstruction")] == [1]
