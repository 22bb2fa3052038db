"""Run a bundle config in-process, as ``python -m monai.bundle run <run_id> --config_file ...`` does."""

from __future__ import annotations

import os
from collections.abc import Sequence

__all__ = ["OVERRIDE_BASES", "config_files", "require_base", "run_bundle_config"]

#: configs that are overrides merged on a base config (model-zoo pattern: the network is written once per bundle):
#: ``--config_file "['configs/<base>','configs/<override>']"``
OVERRIDE_BASES = {
    "evaluate.json": "train.json",
    "train_3d.json": "train.json",
    "multi_gpu_train.json": "train.json",
    "inference_3d.json": "inference.json",
}


def config_files(configs_dir: str, config: str | Sequence[str]) -> list[str]:
    """The files MONAI merges for ``config`` (a name or a list of names): each override (:data:`OVERRIDE_BASES`)
    preceded by its base unless an earlier file is that base (``evaluate.json`` -> ``[train.json, evaluate.json]``;
    ``[train_3d.json, multi_gpu_train.json]`` -> ``[train.json, train_3d.json, multi_gpu_train.json]``)."""
    names: list[str] = []
    for name in [config] if isinstance(config, str) else list(config):
        chain = [name]
        while chain[0] in OVERRIDE_BASES and OVERRIDE_BASES[chain[0]] not in names:
            chain.insert(0, OVERRIDE_BASES[chain[0]])
        names += chain
    return [os.path.join(configs_dir, c) for c in names]


def require_base(override: str) -> None:
    """First ``initialize`` item of an override config: on a ``python -m monai.bundle`` command line whose
    ``--config_file`` holds ``override`` without its base before it, stop with the command to use (instead of MONAI's
    "the referring item ... is not defined")."""
    from . import _cli_config_files

    files = _cli_config_files()
    base = OVERRIDE_BASES[override]
    names = [os.path.basename(f) for f in files]
    if override in names and base not in names[: names.index(override)]:
        given = files[names.index(override)]
        folder = os.path.dirname(given) or "configs"
        raise ValueError(
            f"{given} is an override of {base}: run it merged on it, --config_file "
            f"\"['{os.path.join(folder, base)}','{given}']\"")


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
