"""The served ``models/model.pt`` across training runs (MONAI Label trains in the bundle it serves from).

Within one run, :class:`~medmae_ext.training.checkpoints.BestModelSaver` writes ``model.pt`` when the validation metric
improves, and a resumed run continues from the best metric stored in its checkpoint. Two things are left for a
bundle that is trained again and again in place (each MONAI Label ``/train`` is a new run over the same folder):

* :class:`ServedModelBaseline`: a run that did not resume, in a folder that already serves a ``model.pt``,
  validates that model first on *this run's* validation data; its metric is the one to beat, so the served model is
  replaced only by a better one (never silently by a worse one; both numbers are logged). The comparison is on the
  same data, which a number stored from an earlier run with another validation split would not be.
* :class:`EndOfRunValidation`: a run whose last epoch is not a multiple of ``val_interval`` (a 1-epoch MONAI Label
  session with ``val_interval`` 2) validates once more at the end, so its last weights compete too; and a run that
  ends with no ``model.pt`` at all (no finite validation metric) writes its final weights with a WARNING, so that a
  trained bundle always has a model to serve.
"""

from __future__ import annotations

import logging
import math
import os

import torch
from ignite.engine import Engine, Events

from ..networks.weights import read_state_dict, unwrap
from .runlock import AtomicSaver

__all__ = [
    "ServedModelBaseline",
    "EndOfRunValidation",
    "data_supplied",
    "monai_label_data_source",
    "session_split",
    "not_for_monai_label",
    "log_loaded_checkpoints",
]

logger = logging.getLogger(__name__)


def data_supplied(items) -> bool:
    """True when the training items were given to the bundle directly rather than read by it from ``data_format`` /
    ``data_path``: MONAI Label overrides ``train#dataset#data`` with its datastore's labelled images (in-process, or
    written into ``configs/monailabel_train.json`` for torchrun). Decided by the items' type alone
    (:class:`~medmae_ext.data.Datalist` is what the bundle's readers return), so every way of starting a run --
    ``python -m monai.bundle``, torchrun, ``ConfigWorkflow``, MONAI Label -- gets the same answer. The bundles' config
    id ``monai_label`` is this value: each such run is a fresh MONAI Label-style session (see the module doc)."""
    from ..data.readers import Datalist

    return not isinstance(items, Datalist)


def monai_label_data_source(items) -> str:
    """``trained_on`` of a run on MONAI Label's data (it replaces ``train#dataset#data`` with its datastore's labelled
    images, whatever ``data_path`` says): ``"monailabel:<folder holding the training images>"``. Never
    ``"synthetic"``: that word lets ``scripts/pack_bundle.py`` ship weights with the synthetic data's licence."""
    images = [str(it["image"]) if isinstance(it, dict) else str(it) for it in items or []]
    if not images:
        raise ValueError("train#dataset#data is empty: MONAI Label sent no labelled images to train on")
    paths = [os.path.abspath(p) for p in images]
    return "monailabel:" + (os.path.commonpath(paths) if len(paths) > 1 else os.path.dirname(paths[0]))


def session_split(train_items, validation_items, monai_label: bool) -> dict:
    """The training and validation items of a run: ``{"train": ..., "validate": ...}``, as given, except under
    MONAI Label when its request gave no validation images. MONAI Label splits its labelled volumes by the request's
    ``val_split`` with MONAI's ``partition_dataset``, which leaves none for validation with 1-2 volumes at the
    default 0.2 (and with any number at 0); the served ``models/model.pt`` is replaced only by a model that validates
    better on the session's own images, so a session needs one. Then the last training volume is held out for
    validation (logged, naming it) when 2 or more were sent; with 1, the run stops before training, saying so (MONAI
    Label puts the last lines of a failed ``/train`` into the task's ``details``, which its clients show).
    A negative ``val_split`` (MONAI Label: "the bundle's own validation list", here the synthetic default, never read
    in a session) also stops. Outside MONAI Label, and when the request gave validation images, the items are
    returned unchanged."""
    from ..errors import InputError

    if not monai_label:
        return {"train": train_items, "validate": validation_items}
    if not data_supplied(validation_items):
        raise InputError(
            "MONAI Label's /train request asked for the bundle's own validation list (val_split < 0): "
            "unetr_segmentation validates a session on the session's own labelled volumes. Send val_split >= 0 "
            "(0.2, MONAI Label's default; with 1-2 volumes one is held out)"
        )
    train, validate = list(train_items or []), list(validation_items or [])
    if validate:
        return {"train": train, "validate": validate}
    if len(train) < 2:
        raise InputError(
            f"MONAI Label sent {len(train)} labelled volume(s) and no validation volume: label at least 2 volumes "
            "before /train (unetr_segmentation validates on one of them and replaces the served models/model.pt "
            "only with a model that scores better there)"
        )
    held = train.pop()
    name = held.get("image") if isinstance(held, dict) else held
    logger.warning(
        f"MONAI Label's /train request gave no validation volume (its val_split leaves none of {len(train) + 1} "
        f"labelled volumes): holding out {name} for validation; training on the other {len(train)}"
    )
    return {"train": train, "validate": [held]}


class ServedModelBaseline:
    """Attach to the trainer, after the checkpoint loaders. At ``STARTED``, unless the run resumed from a checkpoint
    (``resumed_from``) or is disabled: if ``save_dir/filename`` exists, load it (strictly) into ``network``, run
    ``validator`` once, make its key metric the evaluator's best (epoch 0 = "the served model"), then put the run's
    own starting weights back. ``best_model_saver`` is paused meanwhile (it must not rewrite the served file)."""

    def __init__(
        self,
        validator,
        network,
        best_model_saver,
        save_dir: str,
        filename: str = "model.pt",
        resumed_from: str | None = None,
        enabled: bool = True,
    ) -> None:
        self.validator = validator
        self.network = network
        self.best_model_saver = best_model_saver
        self.path = os.path.join(save_dir, filename)
        self.resumed_from = resumed_from
        self.enabled = enabled

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    @torch.no_grad()
    def __call__(self, engine: Engine) -> None:
        if not self.enabled or self.resumed_from or not os.path.isfile(self.path):
            return
        net = unwrap(self.network)
        start = {k: v.detach().clone() for k, v in net.state_dict().items()}
        served = read_state_dict(self.path)
        try:
            net.load_state_dict(served)
        except RuntimeError as e:
            raise RuntimeError(
                f"{self.path} (the model this bundle serves) does not fit this run's network, so a new model could not "
                f"be compared with it: {str(e).splitlines()[0]} Move it aside, or train with the settings it was "
                "trained with."
            ) from e
        self.best_model_saver.paused = True
        try:
            self.validator.run(1)
        finally:
            self.best_model_saver.paused = False
            net.load_state_dict(start)
        st = self.validator.state
        name = st.key_metric_name
        value = float(st.metrics.get(name, float("nan")))
        st.best_metric = value if math.isfinite(value) else -1.0
        st.best_metric_epoch = 0 if math.isfinite(value) else -1
        logger.info(
            f"served model {self.path}: validation {name}={value:.4f} on this run's validation data; "
            + (
                "it is replaced only by a better model"
                if math.isfinite(value)
                else "not finite, so the first finite validation of this run replaces it"
            )
        )


class EndOfRunValidation:
    """Attach to the trainer. At ``COMPLETED``: validate once more when the last epoch was not validated
    (``epoch % interval``), then, if ``save_dir/filename`` still does not exist, write ``network``'s final weights
    there (atomically, first process only) with a WARNING."""

    def __init__(self, validator, interval: int, network, save_dir: str, filename: str = "model.pt") -> None:
        self.validator = validator
        self.interval = max(1, int(interval))
        self.network = network
        self.save_dir = save_dir
        self.filename = filename

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        import ignite.distributed as idist

        if engine.state.epoch % self.interval:
            logger.info(
                f"epoch {engine.state.epoch} is the last and was not validated (val_interval "
                f"{self.interval}): validating it so that it can become {self.filename}"
            )
            self.validator.run(engine.state.epoch)
        path = os.path.join(self.save_dir, self.filename)
        if not os.path.isfile(path):
            if idist.get_rank() == 0:
                logger.warning(
                    f"no validation gave a finite metric, so no best model was chosen: {path} holds the "
                    "final weights of this run"
                )
            AtomicSaver(self.save_dir)(unwrap(self.network).state_dict(), self.filename)


def not_for_monai_label(use_click, config_chain) -> None:
    """Refuse to be served by MONAI Label, naming what it can serve instead (the 2D bundles' ``network_def``
    requires this). MONAI Label's bundle app loads every bundle given to ``--conf models`` as a segmentation model
    for 3D Slicer: a classifier's or an encoder's output is no label map (its ``/infer`` would fail with HTTP 500, and
    a pretraining bundle's ``channel_def`` would land in Slicer's label list). Its ``BundleInferTask`` sets the config
    id ``use_click`` in each bundle config it loads, before it builds ``network_def``; the bundles keep it ``null``,
    so MONAI's own tools, ``monai.bundle`` and the zoo checks build the network as before."""
    if use_click is None:
        return
    bundle = str(list(config_chain)[-1]).split("/")[0]
    from ..errors import InputError

    raise InputError(
        f"MONAI Label serves medmae's 3D segmentation bundle only (unetr_segmentation): {bundle} gives no label map "
        "for 3D Slicer. Start the server with --conf models unetr_segmentation; use "
        f"{bundle}'s inference.json with python -m monai.bundle run for its own outputs."
    )


def log_loaded_checkpoints(handlers, identity=None) -> list:
    """The trainer's handler list, as it is, after logging each plain MONAI ``CheckpointLoader`` in it: the weights it
    loads when training starts replace the initialisation logged while the network was built (``pretrained_ckpt``).
    MONAI Label adds one for its ``pretrained: true`` (the served ``models/model.pt``), so a session whose network was
    built "from RANDOM weights" or from an encoder says what it really starts from, and so does its run record:
    ``identity`` (the run's :class:`~medmae_ext.training.resume.RunIdentity`) gets it as ``started_from``, which the
    checkpoints and ``models/metadata.json`` carry beside ``init``. A resume is logged by
    :class:`~medmae_ext.training.checkpoints.ResumeCheckpointLoader` itself."""
    from monai.handlers import CheckpointLoader

    from .checkpoints import ResumeCheckpointLoader

    handlers = list(handlers or [])
    for h in handlers:
        if isinstance(h, CheckpointLoader) and not isinstance(h, ResumeCheckpointLoader):
            path = os.path.abspath(str(h.load_path))
            keys = ", ".join(sorted(getattr(h, "load_dict", {}) or {}))
            logger.warning(
                f"initialisation: training starts from {path} ({keys}), loaded by a "
                "CheckpointLoader in the trainer's handlers (MONAI Label: the served model, its 'pretrained' option); "
                "it replaces the initialisation logged above"
            )
            if identity is not None:
                identity.started_from = path
    return handlers
