"""The model settings a config uses: its defaults overlaid by a run record (``inherit`` for fine-tuning from a
pretraining run, ``for_weights`` for a step that loads trained weights), and the check that stops a value which
contradicts the record. The defaults themselves are read from the train configs (``config_defaults``,
``pretraining_defaults``), so each is written once."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence

from ..errors import InputError
from .record import as_json, read_record, record_path

__all__ = [
    "ENCODER_KEYS",
    "Settings",
    "config_defaults",
    "for_weights",
    "inherit",
    "plain",
    "pretraining_defaults",
    "same",
]

logger = logging.getLogger(__name__)

#: the settings a pretraining run's record passes on to a fine-tuning run (the encoder and what its input must be);
#: classes and labels are the fine-tuning run's own
ENCODER_KEYS = (
    "spatial_dims",
    "in_channels",
    "img_size",
    "patch_size",
    "hidden_size",
    "mlp_dim",
    "num_layers",
    "num_heads",
    "modality",
    "a_min",
    "a_max",
    "pixdim",
    "orientation",
)


def plain(value):
    """JSON form of a value (tuples are lists, 2.0 is 2, dict keys are strings): how settings are recorded."""
    return as_json(value)


def same(a, b) -> bool:
    """Equal as settings (JSON form: tuples are lists, 2.0 is 2, dict keys are strings)."""
    return plain(a) == plain(b)


class Settings(Mapping):
    """The values a config uses for the ids of ``defaults``: the config's defaults, overlaid by the values of a run
    record (only ``keys`` of it, all of ``defaults`` when None). ``settings.img_size`` / ``settings["img_size"]``.

    :meth:`check` compares the values the run actually uses (after command-line overrides) with the record.
    """

    def __init__(
        self,
        defaults: Mapping,
        record: Mapping | None = None,
        keys: Sequence[str] | None = None,
        source: str = "",
        config_id: str = "",
    ) -> None:
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
            raise KeyError(f"{key!r} is not a model setting of this bundle (known: {sorted(self.values)})")
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
            raise InputError(
                f"intended_changes names {sorted(unknown)}, which are not model settings of this bundle "
                f"(they are: {sorted(cid.values())})"
            )
        clashes = [(k, used[k], v) for k, v in self.recorded.items() if k in used and not same(used[k], v)]
        meant = [c for c in clashes if c[0] in intended or cid[c[0]] in intended]
        for k, new, old in meant:
            logger.warning(
                f"--{cid[k]} {plain(new)} differs from the run record {self.source} ({k} {plain(old)}): "
                "kept, as intended_changes says"
            )
        wrong = [c for c in clashes if c not in meant]
        if wrong:
            lines = "\n".join(
                f"  {cid[k]}: this run has {plain(new)!r}, the record has {plain(old)!r}" for k, new, old in wrong
            )
            names = [cid[k] for k, _, _ in wrong]
            raise InputError(
                f"settings contradict the run record {self.source} (config id {self.config_id!r}): the weights were "
                f"trained with the record's values, which this run reads by default:\n{lines}\nDrop these flags, or "
                "say the change is intended: --intended_changes " + '"' + str(names) + '"'
            )
        return dict(used)

    def __repr__(self) -> str:
        return f"Settings({self.values}, recorded={sorted(self.recorded)}, source={self.source!r})"


def inherit(
    defaults: Mapping, pretrained, keys: Sequence[str] = ENCODER_KEYS, config_id: str = "pretrained_ckpt"
) -> Settings:
    """Settings of a fine-tuning run: ``defaults`` overlaid by the encoder part (``keys``) of the pretraining run's
    record beside ``pretrained`` (the config id ``pretrained``: a checkpoint path, or "scratch")."""
    from ..networks.weights import is_scratch

    if is_scratch(pretrained):
        return Settings(defaults, config_id=config_id)
    record = read_record(str(pretrained))
    if record is None:
        logger.warning(
            f"{pretrained} has no run record ({record_path(str(pretrained))}): the fine-tuning sizes and "
            "preprocessing are this config's, and cannot be checked against the pretraining run"
        )
        return Settings(defaults, config_id=config_id)
    s = Settings(defaults, record, keys, source=record["path"], config_id=config_id)
    if s.recorded:
        logger.info(
            "from the pretraining run record "
            + record["path"]
            + ": "
            + ", ".join(f"{k} {plain(v)}" for k, v in s.recorded.items())
        )
    return s


def for_weights(defaults: Mapping, weights: str, config_id: str = "ckpt_path") -> Settings:
    """Settings of a step that loads the trained ``weights`` (evaluate, inference, export): the record beside them,
    every key of ``defaults``. No record: the config's defaults, with a WARNING (they may not be what was trained)."""
    record = read_record(weights) if weights else None
    if record is None:
        if weights and os.path.isfile(weights):
            logger.warning(
                f"{weights} has no run record ({record_path(weights)}): using this config's settings "
                f"{dict(defaults)}; pass the training values if they differ"
            )
        return Settings(defaults, config_id=config_id)
    if record.get("status") != "finished":
        logger.warning(
            f"{record['path']}: the run that wrote {weights} has not finished (status "
            f"{record.get('status')!r}); its best model so far is used"
        )
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
        raise InputError(
            f"{missing} not found: the default model settings (config id {key!r}) are read from there. "
            "Run from a medmae checkout (pip install -e .) or a packed bundle (scripts/pack_bundle.py)."
        )
    parser = ConfigParser()
    parser.read_config(paths)
    parser["bundle_root"] = os.path.dirname(os.path.dirname(paths[0]))
    if key not in parser:
        raise InputError(f"{paths} define no {key!r}")
    return dict(parser.get_parsed_content(key))


def pretraining_defaults(
    files: Sequence[str] = ("mae_pretrain/train.json",), keys: Sequence[str] = ENCODER_KEYS
) -> dict:
    """The encoder part (``keys``) of the pretraining bundle's ``model_defaults``: a fine-tuning bundle's defaults for
    what it shares with its encoder (sizes, modality, window, spacing) are written there only."""
    d = config_defaults(files)
    return {k: d[k] for k in keys if k in d}
