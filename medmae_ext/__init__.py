"""medmae_ext: the small extension package behind the medmae MONAI bundles.

Bundle configs reference its classes by ``_target_`` (for example ``medmae_ext.networks.MaskedAutoencoder``).
"""

import logging
import os
import warnings

__version__ = "0.1.0"


def bundle_root(name: str) -> str:
    """Default ``bundle_root`` of the medmae bundle configs: ``bundles/<name>`` when run from the medmae repository
    root (``--config_file bundles/<name>/configs/train.json``), else ``.`` (model-zoo convention: run from inside
    the bundle). ``--bundle_root`` on the command line overrides it."""
    here = os.path.join("bundles", name)
    return here if os.path.isfile(os.path.join(here, "configs", "metadata.json")) else "."


# MONAI 1.6.1 builds an NvImgCodecPydicomReader inside every LoadImage when pydicom is installed (highdicom needs it)
# and, without nvImageCodec's GPU decoder, says so at every construction. The bundles read DICOM series with ITK,
# never with that reader: the notice is noise, silenced here (and only it).
logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)
warnings.filterwarnings("ignore", message="NvImgCodecPydicomReader: nvImageCodec decoder plugin did not register")

from . import errors  # noqa: E402

errors.install_excepthook()

from . import attention, checkpoints, checks, data, dicom_seg, distributed, engines, export, guards, imbalance, runlock, handlers, losses, masking, metadata, networks, optim, pictures, reports, runtime, transforms, workflow  # noqa: E402,F401
