"""Where a bundle lives: the default ``bundle_root`` of every medmae config.

The default depends only on where ``medmae_ext`` itself is, never on the command line, the working directory or
the caller, so ``python -m monai.bundle``, torchrun, ``ConfigWorkflow`` in a notebook, MONAI Label and the model
zoo's CI all get the same one:

1. ``medmae_ext`` shipped inside a packed bundle (``scripts/pack_bundle.py``): that bundle;
2. ``medmae_ext`` of a medmae checkout (``pip install -e .``): ``<checkout>/bundles/<name>``;
3. otherwise ``.`` (the model-zoo convention: run from inside the bundle).

A packed bundle's configs use :func:`packed_bundle_root` instead: rule 1 or a stop. Read with another
``medmae_ext`` (an installed medmae, found first when the bundle folder is not on the import path) rule 2 would
silently run the checkout's bundle -- its weights, its record, its outputs -- under the packed bundle's name.

``--bundle_root`` overrides it (MONAI Label and the zoo CI pass it). A bundle folder copied out of the checkout by
hand still writes to the checkout's copy: pack it (the documented way to carry a bundle) or pass ``--bundle_root``.
"""

from __future__ import annotations

import os

__all__ = ["bundle_root", "packed_bundle_root", "checkout_bundle", "configs_dir", "is_bundle", "PACKAGE_PARENT"]

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


def packed_bundle_root(name: str) -> str:
    """``bundle_root`` of a packed bundle's configs: the bundle that ships this ``medmae_ext``; any other
    ``medmae_ext`` stops, naming the one imported and the remedies."""
    if is_bundle(PACKAGE_PARENT):
        return PACKAGE_PARENT
    from ..errors import InputError

    raise InputError(
        f"these are the configs of a packed {name} bundle, but the medmae_ext imported is "
        f"{os.path.join(PACKAGE_PARENT, 'medmae_ext')} (an installed medmae, not the copy shipped in the bundle), "
        f"whose default bundle_root would be {checkout_bundle(name)}: another bundle's weights and outputs. Run from "
        "inside the bundle folder, put it first on the import path (PYTHONPATH=<bundle folder>), or pass "
        "--bundle_root <bundle folder>."
    )


def checkout_bundle(name: str) -> str:
    """``bundles/<name>`` of the medmae checkout that holds this ``medmae_ext``."""
    return os.path.join(PACKAGE_PARENT, "bundles", name)


def configs_dir(name: str) -> str:
    """Where bundle ``name``'s configs (and its ``metadata.json``) are, whatever ``bundle_root`` a run writes to: the
    packed bundle that holds this ``medmae_ext``, else the checkout's ``bundles/<name>/configs``."""
    root = PACKAGE_PARENT if is_bundle(PACKAGE_PARENT) else checkout_bundle(name)
    return os.path.join(root, "configs")
