"""MONAI's experiment tracking (``--tracking mlflow``) on medmae's engines.

MONAI's ``ConfigWorkflow`` appends an ``MLFlowHandler`` to ``train#handlers``, ``validate#handlers`` and ``handlers``
(``monai.bundle.utils.DEFAULT_MLFLOW_SETTINGS``). Its trainer handler reads the loss with
``from_engine(['loss'], first=True)``, which assumes a decollated output (a list of dicts); medmae's trainers keep
the output a dict (``decollate`` false: no per-item split of every batch) and that transform then returns a 1-tuple,
which MLflow cannot log (``float() argument must be ... not 'tuple'`` at the first iteration). :func:`tracked`
receives an engine's handler list as built and, for each MLflow handler in it, makes the output transform give the
scalar, records the run's settings as the run's parameters and adds the run's output folder (pictures, metrics,
history) to its artifacts. Without ``--tracking`` the list is returned as it is; MLflow stays optional.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

__all__ = ["tracked", "flat_params"]


def flat_params(params: Mapping, prefix: str = "") -> dict[str, str]:
    """``{"settings": {"img_size": [28, 28]}}`` -> ``{"settings.img_size": "[28, 28]"}`` (MLflow params are strings)."""
    out: dict[str, str] = {}
    for k, v in params.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flat_params(v, key + "."))
        else:
            out[key] = str(v)
    return out


def _scalar(transform):
    def read(output):
        value = transform(output)
        return value[0] if isinstance(value, tuple) and len(value) == 1 else value

    return read


def tracked(handlers: Sequence, params: Mapping | None = None, artifacts: Sequence[str] = ()) -> list:
    """``handlers`` with every MONAI ``MLFlowHandler`` made to log what a medmae engine produces (module doc)."""
    from monai.handlers import MLFlowHandler

    handlers = list(handlers or [])
    for h in handlers:
        if not isinstance(h, MLFlowHandler):
            continue
        if h.output_transform is not None:
            h.output_transform = _scalar(h.output_transform)
        if params and not h.experiment_param:
            h.experiment_param = flat_params(params)
        h.artifacts = tuple(a for a in (*h.artifacts, *artifacts) if a)
    return handlers
