"""Run a bundle config in-process, as ``python -m monai.bundle run <run_id> --config_file ...`` does."""

from __future__ import annotations

import os
from collections.abc import Sequence

__all__ = ["BUNDLE_BASES", "OVERRIDE_BASES", "config_files", "require_base", "run_bundle_config"]

#: configs that are overrides merged on a base config (model-zoo pattern: the network is written once per bundle):
#: ``--config_file "['configs/<base>','configs/<override>']"``
OVERRIDE_BASES = {
    "evaluate.json": "train.json",
    "train_3d.json": "train.json",
    "multi_gpu_train.json": "train.json",
    "inference_3d.json": "inference.json",
}


#: bundles written as what they add to another bundle: each of their configs is merged after the other bundle's
#: config chain (``msmae_pretrain/configs/train.json`` after ``mae_pretrain``'s ``train.json`` [+ ``train_3d.json``])
BUNDLE_BASES = {"msmae_pretrain": "mae_pretrain"}


def config_files(configs_dir: str, config: str | Sequence[str]) -> list[str]:
    """The files MONAI merges for ``config`` (a name or a list of names) of the bundle whose configs are in
    ``configs_dir``: each override (:data:`OVERRIDE_BASES`) preceded by its base unless an earlier file is that base
    (``evaluate.json`` -> ``[train.json, evaluate.json]``; ``[train_3d.json, multi_gpu_train.json]`` ->
    ``[train.json, train_3d.json, multi_gpu_train.json]``). For a bundle of :data:`BUNDLE_BASES`, that chain of the
    base bundle, then the bundle's own files of the chain (msmae ``train_3d.json`` -> ``[mae/train.json,
    mae/train_3d.json, msmae/train.json]``)."""
    names: list[str] = []
    for name in [config] if isinstance(config, str) else list(config):
        chain = [name]
        while chain[0] in OVERRIDE_BASES and OVERRIDE_BASES[chain[0]] not in names:
            chain.insert(0, OVERRIDE_BASES[chain[0]])
        names += chain
    base = BUNDLE_BASES.get(os.path.basename(os.path.dirname(os.path.abspath(configs_dir))))
    if base is None or not _is_override(os.path.join(configs_dir, "train.json")):  # a packed bundle is standalone
        return [os.path.join(configs_dir, c) for c in names]
    base_dir = os.path.join(os.path.dirname(os.path.dirname(os.path.normpath(configs_dir))), base, "configs")
    own = [c for c in names if os.path.isfile(os.path.join(configs_dir, c))]
    return [os.path.join(base_dir, c) for c in names] + [os.path.join(configs_dir, c) for c in own]


def _is_override(path: str) -> bool:
    import json

    with open(path) as f:
        return "+config_chain" in json.load(f)


def require_base(chain, base: str, override: str) -> None:
    """First ``initialize`` item of an override config: stop with the command to use when ``override`` was not merged
    on ``base``. ``chain`` is the config id ``config_chain``: each base config sets it to its own tag and each override
    appends its tag (``"+config_chain"``), so it lists what MONAI merged, in order, however the run was started (no
    command-line parsing). Without this, MONAI would say "the referring item ... is not defined". Tags are
    ``<bundle>/<file>``."""
    tags = [str(c) for c in (chain or [])]
    if override in tags and base not in tags[: tags.index(override)]:
        from ..errors import InputError

        b_bundle, b_file = base.split("/")
        o_bundle, o_file = override.split("/")
        raise InputError(
            f"{override} is an override of {base}: run it merged on it, --config_file "
            f"\"['bundles/{b_bundle}/configs/{b_file}','bundles/{o_bundle}/configs/{o_file}']\" (in a packed bundle: "
            f"\"['configs/{b_file}','configs/{o_file}']\")"
        )


def run_bundle_config(configs_dir: str, config: str | Sequence[str], run_id: str = "training", **override):
    """Build a ``monai.bundle.ConfigWorkflow`` for ``configs_dir/<config>`` (several files are merged in order; an
    override name alone is merged on its base, :func:`config_files`)
    with its ``metadata.json`` and ``logging.conf``, run initialize / run / finalize, return the workflow."""
    from monai.bundle import ConfigWorkflow

    files = config_files(configs_dir, config)
    wf = ConfigWorkflow(
        config_file=files if len(files) > 1 else files[0],
        meta_file=os.path.join(configs_dir, "metadata.json"),
        logging_file=os.path.join(configs_dir, "logging.conf"),
        run_id=run_id,
        **override,
    )
    wf.initialize()
    wf.run()
    wf.finalize()
    return wf
