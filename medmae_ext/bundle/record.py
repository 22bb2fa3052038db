"""A trained model's run record: what its weights mean, written beside them and read by every later step.

Training writes ``models/metadata.json`` (beside ``models/model.pt``): the bundle's metadata with the run's own
``network_data_format`` (:mod:`~medmae_ext.bundle.metadata`) and, under ``"medmae_run"``, the record:

* ``settings`` -- the config ids that give the weights their meaning (``run_settings`` of each train config):
  sizes, patch and network shape, channels, class names in label order or label names and ``label_map``,
  modality and the intensity window, orientation and spacing, pooling;
* ``identity`` -- the run's :class:`~medmae_ext.training.checkpoints.RunIdentity` (also in every checkpoint);
* ``label_source``, ``data_source``, ``trained_on``, ``status`` (``training`` from the first iteration on,
  ``finished`` at the end, with ``model_sha256`` of the ``model.pt`` it describes), the epochs run, the best
  validation metric.

Every later step reads the record instead of starting from the config's defaults (:class:`Settings`): evaluate and
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
from collections.abc import Mapping, Sequence

from ..errors import InputError

__all__ = [
    "RECORD_KEY", "ENCODER_KEYS", "Settings", "RunRecordWriter", "config_defaults", "for_weights", "inherit",
    "plain", "pretraining_defaults", "read_record", "record_path", "same",
]

logger = logging.getLogger(__name__)

RECORD_KEY = "medmae_run"
RECORD_VERSION = 1

#: the settings a pretraining run's record passes on to a fine-tuning run (the encoder and what its input must be);
#: classes and labels are the fine-tuning run's own
ENCODER_KEYS = ("spatial_dims", "in_channels", "img_size", "patch_size", "hidden_size", "mlp_dim", "num_layers",
                "num_heads", "modality", "a_min", "a_max", "pixdim", "orientation")


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


def plain(value):
    """JSON form of a value, so that (1.5, 2) and [1.5, 2.0] compare equal."""
    v = json.loads(json.dumps(value, default=str))
    if isinstance(v, float) and v == int(v):
        return int(v)
    if isinstance(v, list):
        return [plain(x) for x in v]
    if isinstance(v, dict):
        return {str(k): plain(x) for k, x in v.items()}
    return v


def same(a, b) -> bool:
    """Equal as settings (JSON form: tuples are lists, 2.0 is 2, dict keys are strings)."""
    return plain(a) == plain(b)


class Settings(Mapping):
    """The values a config uses for the ids of ``defaults``: the config's defaults, overlaid by the values of a run
    record (only ``keys`` of it, all of ``defaults`` when None). ``settings.img_size`` / ``settings["img_size"]``.

    :meth:`check` compares the values the run actually uses (after command-line overrides) with the record.
    """

    def __init__(self, defaults: Mapping, record: Mapping | None = None, keys: Sequence[str] | None = None,
                 source: str = "", config_id: str = "") -> None:
        self.defaults = dict(defaults)
        stored = dict((record or {}).get("settings") or {})
        wanted = self.defaults if keys is None else [k for k in keys if k in self.defaults]
        self.recorded = {k: stored[k] for k in wanted if k in stored}
        self.values = {**self.defaults, **self.recorded}
        self.record = dict(record) if record else None
        self.source = source or (record or {}).get("path", "")
        self.config_id = config_id

    def __getitem__(self, key):
        if key not in self.values:
            raise KeyError(f"'{key}' is not a model setting of this bundle (known: {sorted(self.values)})")
        return self.values[key]

    def __getattr__(self, key):
        if key.startswith("_") or key in ("defaults", "recorded", "values", "record", "source", "config_id"):
            raise AttributeError(key)
        try:
            return self[key]
        except KeyError as e:
            raise AttributeError(str(e)) from None

    def __iter__(self):
        return iter(self.values)

    def __len__(self) -> int:
        return len(self.values)

    def check(self, used: Mapping, intended: Sequence[str] = (), ids: Mapping[str, str] | None = None) -> dict:
        """Stop when a value the run uses contradicts the record, naming the config id, both values and the record;
        ids listed in ``intended`` (config id ``intended_changes``) are changed knowingly (logged). ``ids`` maps a
        record key to the config id that holds it where they differ (UNETR: ``img_size`` is ``roi_size``).
        Returns ``used``."""
        ids = dict(ids or {})
        cid = {k: ids.get(k, k) for k in self.values}
        intended = set(intended or ())
        unknown = intended - set(cid.values()) - set(cid)
        if unknown:
            raise InputError(f"intended_changes names {sorted(unknown)}, which are not model settings of this bundle "
                             f"(they are: {sorted(cid.values())})")
        clashes = [(k, used[k], v) for k, v in self.recorded.items() if k in used and not same(used[k], v)]
        meant = [c for c in clashes if c[0] in intended or cid[c[0]] in intended]
        for k, new, old in meant:
            logger.warning(f"--{cid[k]} {plain(new)} differs from the run record {self.source} ({k} {plain(old)}): "
                           "kept, as intended_changes says")
        wrong = [c for c in clashes if c not in meant]
        if wrong:
            lines = "\n".join(f"  {cid[k]}: this run has {plain(new)!r}, the record has {plain(old)!r}"
                              for k, new, old in wrong)
            names = [cid[k] for k, _, _ in wrong]
            raise InputError(
                f"settings contradict the run record {self.source} (config id '{self.config_id}'): the weights were "
                f"trained with the record's values, which this run reads by default:\n{lines}\nDrop these flags, or "
                f"say the change is intended: --intended_changes \"{names}\"")
        return dict(used)

    def __repr__(self) -> str:
        return f"Settings({self.values}, recorded={sorted(self.recorded)}, source={self.source!r})"


def inherit(defaults: Mapping, pretrained, keys: Sequence[str] = ENCODER_KEYS,
            config_id: str = "pretrained_ckpt") -> Settings:
    """Settings of a fine-tuning run: ``defaults`` overlaid by the encoder part (``keys``) of the pretraining run's
    record beside ``pretrained`` (the config id ``pretrained``: a checkpoint path, or "scratch")."""
    from ..networks.weights import is_scratch

    if is_scratch(pretrained):
        return Settings(defaults, config_id=config_id)
    record = read_record(str(pretrained))
    if record is None:
        logger.warning(f"{pretrained} has no run record ({record_path(str(pretrained))}): the fine-tuning sizes and "
                       "preprocessing are this config's, and cannot be checked against the pretraining run")
        return Settings(defaults, config_id=config_id)
    s = Settings(defaults, record, keys, source=record["path"], config_id=config_id)
    if s.recorded:
        logger.info("from the pretraining run record " + record["path"] + ": " + ", ".join(
            f"{k} {plain(v)}" for k, v in s.recorded.items()))
    return s


def for_weights(defaults: Mapping, weights: str, config_id: str = "ckpt_path") -> Settings:
    """Settings of a step that loads the trained ``weights`` (evaluate, inference, export): the record beside them,
    every key of ``defaults``. No record: the config's defaults, with a WARNING (they may not be what was trained)."""
    record = read_record(weights) if weights else None
    if record is None:
        if weights and os.path.isfile(weights):
            logger.warning(f"{weights} has no run record ({record_path(weights)}): using this config's settings "
                           f"{dict(defaults)}; pass the training values if they differ")
        return Settings(defaults, config_id=config_id)
    if record.get("status") != "finished":
        logger.warning(f"{record['path']}: the run that wrote {weights} has not finished (status "
                       f"{record.get('status')!r}); its best model so far is used")
    return Settings(defaults, record, source=record["path"], config_id=config_id)


def config_defaults(files: Sequence[str], key: str = "model_defaults") -> dict:
    """The ``model_defaults`` that train configs define, ``files`` given as ``"<bundle>/<file>"`` (e.g.
    ``["mae_pretrain/train.json", "mae_pretrain/train_3d.json"]``) and merged in order, as MONAI merges them. The
    standalone inference configs read the training defaults from there, so they are written once; a packed bundle's
    configs hold the trained run's values instead (``scripts/pack_bundle.py``). The files are found from
    ``medmae_ext``'s own location (:func:`~medmae_ext.bundle.paths.configs_dir`), not from ``bundle_root`` (which may
    be any output folder)."""
    from monai.bundle import ConfigParser

    from .paths import configs_dir

    paths = [os.path.join(configs_dir(f.split("/")[0]), f.split("/", 1)[1]) for f in files]
    missing = [f for f in paths if not os.path.isfile(f)]
    if missing:
        raise InputError(f"{missing} not found: the default model settings (config id '{key}') are read from there. "
                         "Run from a medmae checkout (pip install -e .) or a packed bundle (scripts/pack_bundle.py).")
    parser = ConfigParser()
    parser.read_config(paths)
    parser["bundle_root"] = os.path.dirname(os.path.dirname(paths[0]))
    if key not in parser:
        raise InputError(f"{paths} define no '{key}'")
    return dict(parser.get_parsed_content(key))


def pretraining_defaults(files: Sequence[str] = ("mae_pretrain/train.json",), keys: Sequence[str] = ENCODER_KEYS) -> dict:
    """The encoder part (``keys``) of the pretraining bundle's ``model_defaults``: a fine-tuning bundle's defaults for
    what it shares with its encoder (sizes, modality, window, spacing) are written there only."""
    d = config_defaults(files)
    return {k: d[k] for k in keys if k in d}


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
        best_model_saver: its evaluator's best key metric goes into the record (vit / unetr).
        resumed_from: the checkpoint the run resumed from (config id ``resume_ckpt``), if any.
    """

    def __init__(self, path: str, metadata_file, settings: Mapping, identity, kind: str,
                 trained_on: str, data_source: str, label_source: str | None = None, model_file: str = "model.pt",
                 best_model_saver=None, resumed_from: str | None = None) -> None:
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
            "version": RECORD_VERSION, "status": status, "kind": self.kind, "settings": plain(self.settings),
            "identity": self.identity.state_dict() if hasattr(self.identity, "state_dict") else dict(self.identity),
            "trained_on": self.trained_on, "data_source": self.data_source, "started": self.started,
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
