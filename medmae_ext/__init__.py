"""medmae_ext: the small extension package behind the medmae MONAI bundles.

Bundle configs reference it by ``_target_`` and in expressions (``medmae_ext.networks.ViTClassifier``,
``medmae_ext.training.resume.resume_checkpoint(...)``). Its sub-packages, by concern:

* ``networks`` -- the ViT encoder, MAE / MSMAE model, classifier, masking strategies, weight mapping;
* ``data`` -- dataset readers, transforms, caches, the checks made on data before training;
* ``training`` -- what a training run needs beside MONAI's trainer: batch preparation, losses, optimiser groups,
  checkpoints and resume, MSMAE attention refresh, seeding, DDP, the served model;
* ``outputs`` -- reports, pictures, prediction files, DICOM SEG, ``torch.export``;
* ``bundle`` -- the bundle itself: where it lives, its run record, config checks, errors a user reads.

Sub-packages are imported on first use, so ``import medmae_ext`` stays cheap.
"""

import importlib
import logging
import warnings

__version__ = "0.3.0"

_SUBPACKAGES = ("bundle", "data", "networks", "outputs", "training", "errors")

# MONAI 1.6.1 builds an NvImgCodecPydicomReader inside every LoadImage when pydicom is installed (highdicom needs it)
# and, without nvImageCodec's GPU decoder, says so at every construction. The bundles read DICOM series with ITK,
# never with that reader: the notice is noise, silenced here (and only it).
logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)
warnings.filterwarnings("ignore", message="NvImgCodecPydicomReader: nvImageCodec decoder plugin did not register")

from .errors import install_excepthook  # noqa: E402

install_excepthook()


def __getattr__(name):
    if name in _SUBPACKAGES:
        return importlib.import_module(f".{name}", __name__)
    if name == "bundle_root":
        from .bundle.paths import bundle_root

        return bundle_root
    raise AttributeError(f"module 'medmae_ext' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_SUBPACKAGES) + ["bundle_root"])
