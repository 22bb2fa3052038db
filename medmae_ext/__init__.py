"""medmae_ext: the small extension package behind the medmae MONAI bundles.

Bundle configs reference its classes by ``_target_`` (for example ``medmae_ext.networks.MaskedAutoencoder``).
"""

import ast
import logging
import os
import sys
import warnings

__version__ = "0.1.0"


def _cli_config_files() -> list[str]:
    """The ``--config_file`` of a ``python -m monai.bundle ...`` command line (also under torchrun), else []."""
    argv = sys.argv
    if not argv or not argv[0].replace(os.sep, "/").endswith("monai/bundle/__main__.py"):
        return []
    for i, arg in enumerate(argv):
        value = argv[i + 1] if arg == "--config_file" and i + 1 < len(argv) else (
            arg.split("=", 1)[1] if arg.startswith("--config_file=") else None)
        if value is None:
            continue
        value = value.strip()
        if value[:1] in "[(":
            try:
                return [str(v) for v in ast.literal_eval(value)]
            except (ValueError, SyntaxError):
                return [v.strip(" '\"") for v in value.strip("[]()").split(",") if v.strip(" '\"")]
        return [value]
    return []


def _is_bundle(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "configs", "metadata.json"))


def bundle_root(name: str) -> str:
    """Default ``bundle_root`` of the medmae bundle configs (``--bundle_root`` on the command line overrides it, as do
    MONAI Label and the model zoo's CI, which pass it). In order:

    1. ``python -m monai.bundle ... --config_file <bundle>/configs/x.json`` (also under torchrun): the bundle that
       holds the (first) config file, wherever it is and whatever the working directory;
    2. ``medmae_ext`` shipped inside a packed bundle (``scripts/pack_bundle.py``): that bundle
       (``monai.bundle.load`` / a Python session that imported it from there);
    3. ``bundles/<name>`` when the working directory is the medmae repository root, else ``.`` (model-zoo
       convention: run from inside the bundle).
    """
    for cfg in _cli_config_files()[:1]:
        folder = os.path.dirname(cfg) or "."
        root = os.path.dirname(folder) if os.path.basename(os.path.normpath(folder)) == "configs" else folder
        root = root or "."
        if _is_bundle(root):
            return root
    packed = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if _is_bundle(packed):
        return packed
    here = os.path.join("bundles", name)
    return here if _is_bundle(here) else "."


# MONAI 1.6.1 builds an NvImgCodecPydicomReader inside every LoadImage when pydicom is installed (highdicom needs it)
# and, without nvImageCodec's GPU decoder, says so at every construction. The bundles read DICOM series with ITK,
# never with that reader: the notice is noise, silenced here (and only it).
logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)
warnings.filterwarnings("ignore", message="NvImgCodecPydicomReader: nvImageCodec decoder plugin did not register")

from . import errors  # noqa: E402

errors.install_excepthook()

from . import attention, checkpoints, checks, data, dicom_seg, distributed, engines, export, guards, imbalance, runlock, handlers, losses, masking, metadata, networks, optim, pictures, pretrain_outputs, reports, runtime, serving, transforms, workflow  # noqa: E402,F401
