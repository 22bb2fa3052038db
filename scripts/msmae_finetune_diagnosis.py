"""Why does MSMAE masked fine-tuning trail full fine-tuning? Scores fine-tuned ``vit_classification`` models on a
split three ways and prints a table:

* ``all tokens`` -- how validation, evaluation and inference run (every patch token);
* ``attention drop`` -- the tokens a masked fine-tuning batch keeps: masked + thrown patches drawn from the model's
  own CLS attention (``mask_ratio`` + ``throw_ratio``), the rest kept (what the model was trained on);
* ``random drop`` -- the same number of tokens kept, drawn uniformly.

It also prints the share of the model's CLS attention (the map MSMAE masks by) on the outermost ring of patches:
attention that sits on the image border masks and keeps background, not the lungs.

A pretraining folder (``msmae_pretrain``'s ``bundle_root``) in ``arm_roots`` gets the attention line only.
For each: AUC, accuracy at the argmax, per-class recall and the mean predicted probability of each class. If the
model scores well on the tokens it was trained with but its decision shifts with every token present, the gap is
a train/test mismatch of masked fine-tuning, not a weak encoder.

    python scripts/msmae_finetune_diagnosis.py --arm_roots "['runs/compare_pneumonia/seed0/pretrain/msmae','runs/compare_pneumonia/seed0/msmae_masked']" \\
        --data_format medmnist --data_path ../shared/data/pneumoniamnist_trainval.npz \\
        --class_names "['normal','pneumonia']" --img_size "[28,28]" --patch_size "[4,4]"
"""

from __future__ import annotations

import os

import fire
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def border_share(att: torch.Tensor, grid) -> float:
    """Mean share of the CLS attention (``[B, N]`` on ``grid``) that falls on the outermost ring of patches."""
    a = att.float().reshape(len(att), *grid)
    a = a / a.flatten(1).sum(1).clamp_min(1e-12).reshape(-1, *([1] * len(grid)))
    inner = a[(slice(None),) + tuple(slice(1, g - 1) for g in grid)]
    return float((1 - inner.flatten(1).sum(1)).mean())


@torch.no_grad()
def score(arm_root: str, data_format: str, data_path: str, class_names, img_size, patch_size, split="validation",
          repeats: int = 5, seed: int = 0) -> dict[str, dict]:
    from monai.bundle import ConfigParser
    from monai.metrics import compute_roc_auc

    from medmae_ext.networks.masking import AttentionMasking, RandomMasking, patch_counts

    p = ConfigParser()
    p.read_config(os.path.join(REPO, "bundles", "vit_classification", "configs", "train.json"))
    p.update({"bundle_root": arm_root, "data_format": data_format, "data_path": os.path.abspath(data_path),
              "class_names": list(class_names), "img_size": list(img_size), "patch_size": list(patch_size),
              "num_workers": 0, "device": torch.device("cpu"),
              "pretrained_ckpt": "scratch",  # the scored weights are loaded below, not an encoder to start from
              "validate#datalist":
              f"$medmae_ext.data.dataset_items(@data_format, @data_path, '{split}', **@data_kwargs)"})
    net = p.get_parsed_content("network_def")
    ckpt = os.path.join(arm_root, "models", "model.pt")
    pretraining = "decoder_pred.weight" in torch.load(ckpt, map_location="cpu", weights_only=True)
    if pretraining:  # an mae/msmae_pretrain folder: its encoder's attention only
        from medmae_ext.networks import load_pretrained_encoder

        net = load_pretrained_encoder(net, ckpt)
    else:
        net.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=True))
    net.eval()
    images, labels = [], []
    for batch in p.get_parsed_content("validate#dataloader"):
        images.append(batch["image"].float())
        labels.append(torch.as_tensor(batch["label"]).reshape(-1).long())
    x, y = torch.cat(images), torch.cat(labels)
    n = net.encoder.num_patches
    mask_ratio, throw_ratio = p["mask_ratio"], p["throw_ratio"]
    kept = patch_counts(n, mask_ratio, throw_ratio)[2]
    att = net.encoder.cls_attention(x)
    torch.manual_seed(seed)
    ways = {
        "all tokens": lambda: net(x),
        "attention drop": lambda: net(x, AttentionMasking(mask_ratio, throw_ratio)(len(x), n, x.device, att).visible),
        "random drop": lambda: net(x, RandomMasking(mask_ratio, throw_ratio)(len(x), n, x.device).visible),
    }
    c = len(class_names)
    out = {"border_share": border_share(att, net.encoder.grid)}
    if pretraining:
        return out
    for name, fn in ways.items():
        prob = torch.stack([fn().float().softmax(-1) for _ in range(1 if name == "all tokens" else repeats)]).mean(0)
        onehot = torch.nn.functional.one_hot(y, c).float()
        auc = float(compute_roc_auc(prob, onehot, average="macro"))
        pred = prob.argmax(1)
        out[name] = {
            "tokens": n if name == "all tokens" else kept,
            "auc": auc,
            "accuracy": float((pred == y).float().mean()),
            "recall": [float((pred[y == k] == k).float().mean()) for k in range(c)],
            "mean_prob": [[float(prob[y == k, j].mean()) for j in range(c)] for k in range(c)],
        }
    return out


def uniform_ring(img_size, patch_size) -> float:
    grid = [i // p for i, p in zip(img_size, patch_size)]
    total, inner = 1, 1
    for g in grid:
        total, inner = total * g, inner * max(g - 2, 0)
    return 1 - inner / total


def main(arm_roots, data_format: str = "medmnist", data_path: str | None = None, class_names=("normal", "pneumonia"),
         img_size=(28, 28), patch_size=(4, 4), split: str = "validation", repeats: int = 5):
    roots = [arm_roots] if isinstance(arm_roots, str) else list(arm_roots)
    names = list(class_names)
    print("| model | tokens seen | kept / all | AUC | accuracy | " + " | ".join(f"recall {n}" for n in names)
          + f" | mean P({names[-1]}) on {names[0]} / on {names[-1]} |")
    print("| --- " * (6 + len(names)) + "|")
    for root in roots:
        res = score(root, data_format, data_path, names, img_size, patch_size, split, repeats)
        ring = res.pop("border_share")
        print(f"| {os.path.join(*os.path.normpath(root).split(os.sep)[-2:])} | CLS attention on the border ring: "
              f"{ring:.1%} (uniform: {uniform_ring(img_size, patch_size):.1%}) | | | | | |", flush=True)
        for way, r in res.items():
            mp = r["mean_prob"]
            print(f"| {os.path.join(*os.path.normpath(root).split(os.sep)[-2:])} | {way} | {r['tokens']} | {r['auc']:.3f} | {r['accuracy']:.3f} | "
                  + " | ".join(f"{v:.3f}" for v in r["recall"]) + f" | {mp[0][-1]:.3f} / {mp[-1][-1]:.3f} |", flush=True)


if __name__ == "__main__":
    fire.Fire(main)
