"""Where a bundle lives: the default ``bundle_root`` of every medmae config.

The default depends only on where ``medmae_ext`` itself is, never on the command line, the working directory or
the caller, so ``python -m monai.bundle``, torchrun, ``ConfigWorkflow`` in a notebook, MONAI Label and the model
zoo's CI all get the same one:

1. ``medmae_ext`` shipped inside a packed bundle (``scripts/pack_bundle.py``): that bundle;
2. ``medmae_ext`` of a medmae checkout (``pip install -e .``): ``<checkout>/bundles/<name>``;
3. otherwise ``.`` (the model-zoo convention: run from inside the bundle).

``--bundle_root`` overrides it (MONAI Label and the zoo CI pass it). A bundle folder copied out of the checkout by
hand still writes to the checkout's copy: pack it (the documented way to carry a bundle) or pass ``--bundle_root``.
"""

from __future__ import annotations

import os

__all__ = ["bundle_root", "checkout_bundle", "configs_dir", "is_bundle", "PACKAGE_PARENT"]

#: the folder that holds ``medmae_ext``: a packed bundle's root, or a medmae checkout
PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def is_bundle(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "configs", "metadata.json"))


def bundle_root(name: str) -> str:
    """Default ``bundle_root`` of bundle ``name`` (see the module docstring)."""
    if is_bundle(PACKAGE_PARENT):
        return PACKAGE_PARENT
    checkout = os.path.join(PACKAGE_PARENT, "bundles", name)
    return checkout if is_bundle(checkout) else "."


def checkout_bundle(name: str) -> str:
    """``bundles/<name>`` of the medmae checkout that holds this ``medmae_ext``."""
    return os.path.join(PACKAGE_PARENT, "bundles", name)


def configs_dir(name: str) -> str:
    """Where bundle ``name``'s configs (and its ``metadata.json``) are, whatever ``bundle_root`` a run writes to: the
    packed bundle that holds this ``medmae_ext``, else the checkout's ``bundles/<name>/configs``."""
    root = PACKAGE_PARENT if is_bundle(PACKAGE_PARENT) else checkout_bundle(name)
    return os.path.join(root, "configs")
