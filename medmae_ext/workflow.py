"""Run a bundle config in-process, as ``python -m monai.bundle run <run_id> --config_file ...`` does."""

from __future__ import annotations

import os
from collections.abc import Sequence

__all__ = ["run_bundle_config"]


def run_bundle_config(configs_dir: str, config: str | Sequence[str], run_id: str = "training", **override):
    """Build a ``monai.bundle.ConfigWorkflow`` for ``configs_dir/<config>`` (several files are merged in order)
    with its ``metadata.json`` and ``logging.conf``, run initialize / run / finalize, return the workflow."""
    from monai.bundle import ConfigWorkflow

    files = [os.path.join(configs_dir, c) for c in ([config] if isinstance(config, str) else config)]
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
