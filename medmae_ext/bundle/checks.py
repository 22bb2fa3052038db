"""Checks of a run's settings made before training starts, so that a short run does not silently skip part of
its recipe. (MSMAE's attention start is checked by :class:`~medmae_ext.training.attention.AttentionRefresher`, which owns it.)
"""

from __future__ import annotations

import difflib
import json
import logging
import math
import os
import sys

from ..errors import InputError

__all__ = ["warn_short_schedule", "warn_few_kept_tokens", "enough_items", "unknown_overrides", "known_ids"]

# MSMAE masked fine-tuning in the paper keeps 49 of 196 tokens (224 px, patch 16, mask 0.45 + throw 0.3)
MIN_KEPT_TOKENS = 49

logger = logging.getLogger(__name__)

_WHAT = {
    "warmup_epochs": "the learning rate is still warming up when the run ends (the cosine decay never happens)",
    "val_interval": "the model is validated only once, at the end of the run (serving.EndOfRunValidation), so "
    "models/model.pt is the final model, never an earlier, better one",
}


def warn_short_schedule(epochs: int, **epoch_settings) -> list[str]:
    """Warn, naming the config id, about every setting counted in epochs that the run never reaches
    (``value >= epochs``; ``val_interval > epochs``). Returns the warnings (empty when the schedule fits)."""
    out = []
    for name, value in epoch_settings.items():
        if value is None:
            continue
        late = value > epochs if name == "val_interval" else value >= epochs
        if late:
            what = _WHAT.get(name, "this part of the schedule never happens")
            out.append(f"{name}={value} with epochs={epochs}: {what}. Lower --{name} or raise --epochs.")
    for msg in out:
        logger.warning(msg)
    return out


def warn_few_kept_tokens(msmae_finetune: bool, img_size, patch_size, mask_ratio: float, throw_ratio: float) -> int:
    """Warn when MSMAE masked fine-tuning would encode fewer than ``MIN_KEPT_TOKENS`` tokens (the paper's count): at
    28 px / patch 4 it keeps 12 of 49, and on PneumoniaMNIST that arm lost accuracy and normal recall against every
    other arm (docs/evidence.md). Upsampling the images adds tokens but no information. Returns the kept count (all
    tokens when ``msmae_finetune`` is off)."""
    from ..networks.masking import patch_counts
    from ..networks.patching import grid_shape

    n = math.prod(grid_shape(img_size, patch_size))
    if not msmae_finetune:
        return n
    kept = patch_counts(n, float(mask_ratio), float(throw_ratio))[2]
    if kept < MIN_KEPT_TOKENS:
        logger.warning(
            f"msmae_finetune keeps {kept} of {n} tokens (mask_ratio {mask_ratio} + throw_ratio {throw_ratio} at "
            f"img_size {list(img_size)}, patch_size {list(patch_size)}); MSMAE's own setting keeps {MIN_KEPT_TOKENS} "
            "of 196. With so few tokens the classifier sees little of each image: expect lower accuracy than "
            "fine-tuning on all tokens (--msmae_finetune False), or lower --mask_ratio / --throw_ratio."
        )
    return kept


def enough_items(items, batch_size: int, drop_last: bool = True, split: str = "training") -> int:
    """Stop before training when the split has fewer items than one batch: with ``drop_last`` the epoch would have
    no iteration and the run would end at once with no model (exit code 0). Returns the item count."""
    n = len(items)
    if n == 0 or (drop_last and n < int(batch_size)):
        raise InputError(
            f"the {split} split has {n} item(s), fewer than one batch (--batch_size {batch_size}): "
            "an epoch would have no iteration. Lower --batch_size or add data."
        )
    return n


#: ``python -m monai.bundle run`` arguments that are not config ids
RUN_ARGUMENTS = {
    "config_file",
    "meta_file",
    "logging_file",
    "init_id",
    "run_id",
    "final_id",
    "args_file",
    "tracking",
    "workflow_type",
    "workflow_name",
    "properties_path",
}


def known_ids(chain) -> set[str]:
    """Top-level ids the config files named by ``config_chain`` (``<bundle>/<file>`` tags) define, with MONAI's
    experiment-tracking ids."""
    from monai.bundle.utils import DEFAULT_EXP_MGMT_SETTINGS

    from .paths import configs_dir

    ids = {"_meta_", "bundle_root"}
    for tag in chain or []:
        bundle, name = str(tag).split("/", 1)
        path = os.path.join(configs_dir(bundle), name)
        if os.path.isfile(path):
            with open(path) as f:
                ids.update(k.lstrip("+").split("#")[0] for k in json.load(f))
    for settings in DEFAULT_EXP_MGMT_SETTINGS.values():
        ids.update(settings.get("configs", {}))
        ids.update(("tracking_uri", "experiment_name", "run_name", "save_execute_config"))
    return ids


def unknown_overrides(chain, argv=None) -> list[str]:
    """On a ``python -m monai.bundle`` command line (also under torchrun), the ``--<id>`` flags that name no config id
    of the merged configs (``config_chain``): MONAI would add them silently and train with the configured value
    (``--epoch 1`` for ``--epochs``). One with a close known id stops the run naming both; others are warned about.
    This reads only what the user typed (``sys.argv``); it changes no setting. Returns the unknown ids."""
    argv = sys.argv if argv is None else argv
    if not argv or not str(argv[0]).replace(os.sep, "/").endswith("monai/bundle/__main__.py"):
        return []
    given = [a[2:].split("=", 1)[0] for a in argv[1:] if isinstance(a, str) and a.startswith("--") and len(a) > 2]
    known = known_ids(chain)
    unknown = [g for g in given if g not in RUN_ARGUMENTS and g.split("#")[0] not in known]
    for u in unknown:
        close = difflib.get_close_matches(u.split("#")[0], sorted(known), n=1, cutoff=0.75)
        if close:
            raise InputError(
                f"--{u} is not a config id of {list(chain)}: did you mean --{close[0]}? (MONAI would "
                f"add {u!r} as a new, unused id and run with the configured {close[0]})"
            )
        logger.warning(f"--{u} is not a config id of {list(chain)}: it is added as a new id that nothing reads")
    return unknown
