"""A trained model's run record: what its weights mean, written beside them and read by every later step.

Training writes ``models/metadata.json`` (beside ``models/model.pt``): the bundle's metadata with the run's own
``network_data_format`` (:mod:`~medmae_ext.bundle.metadata`) and, under ``"medmae_run"``, the record:

* ``settings`` -- the config ids that give the weights their meaning (``run_settings`` of each train config):
  sizes, patch and network shape, channels, class names in label order or label names and ``label_map``,
  modality and the intensity window, orientation and spacing, pooling;
* ``identity`` -- the run's :class:`~medmae_ext.training.resume.RunIdentity` (also in every checkpoint);
* ``label_source``, ``data_source``, ``trained_on``, ``status`` (``training`` from the first iteration on,
  ``finished`` at the end, with ``model_sha256`` of the ``model.pt`` it describes), the epochs run, the best
  validation metric.

Every later step reads the record instead of starting from the config's defaults
(:class:`~medmae_ext.bundle.settings.Settings`): evaluate and
inference read the record beside the weights they load (``ckpt_path``), fine-tuning reads the pretraining encoder's
record (``pretrained_ckpt``: sizes, modality, window, spacing), ``scripts/pack_bundle.py`` writes it into the packed
configs. A command-line value that contradicts the record stops before any work, naming the config id and both
values; ``--intended_changes "['<id>', ...]"`` says the change is meant.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping

from ..errors import InputError

__all__ = ["RECORD_KEY", "RunRecordWriter", "as_json", "read_record", "record_path"]

logger = logging.getLogger(__name__)

RECORD_KEY = "medmae_run"
RECORD_VERSION = 1


def as_json(value):
    """JSON form of a value, so that (1.5, 2) and [1.5, 2.0] compare equal (the record's and the checks' form)."""
    v = json.loads(json.dumps(value, default=str))

    def norm(x):
        if isinstance(x, float) and x == int(x):
            return int(x)
        if isinstance(x, list):
            return [norm(y) for y in x]
        if isinstance(x, dict):
            return {str(k): norm(y) for k, y in x.items()}
        return x

    return norm(v)


def record_path(weights: str) -> str:
    """Where the record of the weights file ``weights`` is: ``metadata.json`` in the same folder."""
    return os.path.join(os.path.dirname(os.path.abspath(weights)), "metadata.json")


def read_record(weights: str) -> dict | None:
    """The run record beside ``weights`` (None when there is no ``metadata.json`` there or it holds no record)."""
    path = record_path(weights)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            meta = json.load(f)
    except (OSError, ValueError) as e:
        raise InputError(f"{path} (the run record of {weights}) cannot be read: {e}") from e
    record = meta.get(RECORD_KEY) if isinstance(meta, dict) else None
    return dict(record, path=path) if isinstance(record, dict) else None


class RunRecordWriter:
    """Attach to the trainer, as its last handler. Writes ``path`` (``models/metadata.json``) atomically, first
    process only, so that the record always describes the ``model_file`` beside it:

    * at ``STARTED`` and every ``EPOCH_COMPLETED`` with ``status`` "training" (a killed run leaves "training", which
      ``scripts/pack_bundle.py`` refuses) and the sha256 of ``model_file`` as it is then;
    * at ``COMPLETED`` with "finished", the epochs run and the best validation metric.

    A run that did not resume and finds a ``model_file`` it did not write (the model a bundle serves, MONAI Label)
    leaves that model's record alone until it replaces the file.

    Args:
        path: the record file.
        metadata_file: the bundle's ``configs/metadata.json`` the record extends (a list: merged in order, e.g. with
            ``metadata_3d.json``).
        settings: the settings the run uses (config id ``run_settings``).
        identity: the run's ``RunIdentity``.
        kind: "classification", "segmentation" or "embedding" (what ``network_data_format``'s output is).
        trained_on / data_source / label_source: where the training data and its labels came from.
        best_model_saver: its evaluator's best key metric goes into the record (vit / unetr), and its operating point
            (vit: ``operating_point``, chosen on validation at that epoch).
        resumed_from: the checkpoint the run resumed from (config id ``resume_ckpt``), if any.
    """

    def __init__(
        self,
        path: str,
        metadata_file,
        settings: Mapping,
        identity,
        kind: str,
        trained_on: str,
        data_source: str,
        label_source: str | None = None,
        model_file: str = "model.pt",
        best_model_saver=None,
        resumed_from: str | None = None,
    ) -> None:
        self.path = path
        self.metadata_file = metadata_file
        self.settings = dict(settings)
        self.identity = identity
        self.kind = kind
        self.trained_on = str(trained_on)
        self.data_source = str(data_source)
        self.label_source = label_source
        self.model_file = model_file
        self.best_model_saver = best_model_saver
        self.resumed_from = resumed_from
        self.started = time.strftime("%Y-%m-%dT%H:%M:%S")
        self._served: str | None = None

    @property
    def model_path(self) -> str:
        return os.path.join(os.path.dirname(self.path), self.model_file)

    def _model_sha(self) -> str | None:
        from ..networks.weights import file_sha256

        return file_sha256(self.model_path, None) if os.path.isfile(self.model_path) else None

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, self._start)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.write, "training")
        engine.add_event_handler(Events.COMPLETED, self.write, "finished")

    def _start(self, engine) -> None:
        self._served = None if self.resumed_from else self._model_sha()
        self.write(engine, "training")

    def record(self, status: str, engine=None, model_sha: str | None = None) -> dict:
        rec = {
            "version": RECORD_VERSION,
            "status": status,
            "kind": self.kind,
            "settings": as_json(self.settings),
            "identity": self.identity.state_dict() if hasattr(self.identity, "state_dict") else dict(self.identity),
            "trained_on": self.trained_on,
            "data_source": self.data_source,
            "started": self.started,
        }
        if self.label_source:
            rec["label_source"] = self.label_source
        if engine is not None:
            rec["epochs_run"] = int(engine.state.epoch)
            rec["iterations_run"] = int(engine.state.iteration)
        if model_sha:
            rec["model_file"] = self.model_file
            rec["model_sha256"] = model_sha
        if status == "finished":
            rec["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        best = self._best_metric()
        if best is not None:
            rec["best_metric"] = best
        point = getattr(self.best_model_saver, "operating_point", None)
        if point is not None and point.chosen:
            rec["operating_point"] = dict(point.chosen)  # read by evaluation and inference (outputs.operating_point)
        return rec

    def _best_metric(self) -> dict | None:
        return None if self.best_model_saver is None else self.best_model_saver.best()

    def write(self, engine=None, status: str = "finished") -> str | None:
        import ignite.distributed as idist

        from .metadata import run_metadata

        if idist.get_rank() != 0:
            return None
        sha = self._model_sha()
        if self._served is not None and sha == self._served:
            return None  # still the served model, described by its own record
        from monai.bundle import ConfigParser

        meta = ConfigParser.load_config_files(self.metadata_file)  # one file, or a list merged as MONAI merges them
        out = run_metadata(meta, self.settings, self.kind, self.trained_on)
        out[RECORD_KEY] = self.record(status, engine, sha)
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        tmp = f"{self.path}.medmae-tmp"
        with open(tmp, "w") as f:
            json.dump(out, f, indent=4)
        os.replace(tmp, self.path)
        return self.path
