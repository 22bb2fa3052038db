"""How often do MSMAE's masks hit the lesion? Compares attention masking with random masking on a trained
msmae_pretrain checkpoint, over the lesion images of a datalist split (2D synthetic set: lesion masks under "mask").

    python -m monai.bundle run training --config_file bundles/msmae_pretrain/configs/train.json   # train first
    python scripts/msmae_lesion_coverage.py                      # reads bundles/msmae_pretrain/models/model.pt

Coverage = fraction of lesion pixels that lie in masked (reconstructed) patches, averaged over images and draws.
"""

from __future__ import annotations

import os

import fire
import torch
from monai.bundle import ConfigParser
from monai.data import DataLoader, Dataset
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Resized, ScaleIntensityd

from medmae_ext.training.attention import lesion_coverage
from medmae_ext.data import load_datalist
from medmae_ext.networks.masking import RandomMasking
from medmae_ext.networks import read_state_dict


def main(config: str = "bundles/msmae_pretrain/configs/train.json", bundle_root: str = "bundles/msmae_pretrain",
         dataset_dir: str | None = None, ckpt: str | None = None, split: str = "validation", repeats: int = 20,
         seed: int = 0):
    torch.manual_seed(seed)
    parser = ConfigParser()
    parser.read_config(config)
    parser["bundle_root"] = bundle_root
    if dataset_dir:
        parser["dataset_dir"] = dataset_dir
    parser.parse()
    net = parser.get_parsed_content("network_def")
    ckpt = ckpt or os.path.join(bundle_root, "models", "model.pt")
    net.load_state_dict(read_state_dict(ckpt))
    net.eval()
    img_size = parser.get_parsed_content("img_size")
    items = load_datalist(parser.get_parsed_content("datalist_file"), split, is_segmentation=False)
    tf = Compose([
        LoadImaged(["image", "mask"], image_only=True), EnsureChannelFirstd(["image", "mask"]),
        ScaleIntensityd("image"), Resized(["image", "mask"], img_size, mode=["area", "nearest"]),
    ])
    batch = next(iter(DataLoader(Dataset(items, tf), batch_size=len(items))))
    images, lesions = batch["image"].float(), (batch["mask"] > 0).float()
    att = net.masking
    rows = [
        (f"attention (MSMAE: {att.mask_ratio:.0%} masked, {att.throw_ratio:.0%} thrown)",
         lesion_coverage(net.encoder, images, lesions, att, repeats), att.mask_ratio),
        (f"random, same ratios ({att.mask_ratio:.0%} / {att.throw_ratio:.0%})",
         lesion_coverage(net.encoder, images, lesions, RandomMasking(att.mask_ratio, att.throw_ratio), repeats, False),
         att.mask_ratio),
        ("random MAE (75% masked)", lesion_coverage(net.encoder, images, lesions, RandomMasking(0.75), repeats, False),
         0.75),
    ]
    n = int((lesions.flatten(1).sum(1) > 0).sum())
    print(f"{ckpt}: {n} lesion images of split '{split}', {repeats} draws each")
    print("| masking | patches masked | lesion pixels in masked patches | vs random at same ratio |")
    print("| --- | --- | --- | --- |")
    for name, cov, ratio in rows:
        print(f"| {name} | {ratio:.0%} | {cov:.1%} | {cov / rows[1][1]:.2f}x |")


if __name__ == "__main__":
    fire.Fire(main)
