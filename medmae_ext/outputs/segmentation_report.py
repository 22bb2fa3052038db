"""Segmentation evaluation output that names what it measured: one Dice per organ of ``label_names`` (background
excluded, and said so), per item and on average, in files and in the log.

MONAI's ``MetricsSaver`` wrote ``class0..class3`` columns where ``class0`` was the liver (background dropped, so every
column was off by one against ``label_names``) and the log said only the mean Dice.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os

import torch
from ignite.engine import Engine, Events

__all__ = ["SegmentationReport"]

logger = logging.getLogger(__name__)


class SegmentationReport:
    """Attach to an evaluator whose decollated outputs hold one-hot ``pred`` and ``label`` ``[C, *spatial]``.

    At each run's end it puts ``dice_<organ>`` into ``engine.state.metrics`` (a ``StatsHandler`` listed after it logs
    them), logs one line naming every organ, and with ``output_dir`` writes ``dice_per_item.csv`` (``item`` + one
    column per organ + ``mean``; an organ absent from an item's label and prediction is empty) and ``metrics.json``
    (``split``, ``data_source``, ``model_file``, ``background``: "excluded", the mean Dice per organ and over organs).

    Args:
        label_names: ``{"0": "background", "1": "liver", ...}`` (config id ``label_names``); index 0 is background.
        output_dir: where to write (None: log and metrics only).
        split / data_source / model_file: what was scored, for the files.
    """

    def __init__(
        self,
        label_names,
        output_dir: str | None = None,
        split: str | None = None,
        data_source: str | None = None,
        model_file: str | None = None,
    ) -> None:
        names = {int(k): str(v) for k, v in dict(label_names).items()}
        self.organs = [names[k] for k in sorted(names) if k != 0]
        self.output_dir = output_dir
        self.split = split
        self.data_source = data_source
        self.model_file = model_file

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def _reset(self, engine: Engine) -> None:
        self.rows: list[tuple[str, list[float]]] = []

    def _collect(self, engine: Engine) -> None:
        from monai.metrics import compute_dice

        for item in engine.state.output:
            pred, label = torch.as_tensor(item["pred"]).float(), torch.as_tensor(item["label"]).float()
            if pred.shape[0] != len(self.organs) + 1:
                raise ValueError(
                    f"prediction has {pred.shape[0]} channels but label_names name {len(self.organs) + 1} "
                    "classes (background included)"
                )
            dice = compute_dice(pred[None], label[None], include_background=False, ignore_empty=True)[0]
            meta = getattr(item.get("image"), "meta", None) or getattr(item.get("label"), "meta", None) or {}
            name = os.path.basename(str(meta.get("filename_or_obj", len(self.rows))))
            self.rows.append((name, [float(v) for v in dice.tolist()]))

    def summary(self) -> dict:
        per_organ = {}
        for j, organ in enumerate(self.organs):
            values = [r[1][j] for r in self.rows if not math.isnan(r[1][j])]
            per_organ[organ] = sum(values) / len(values) if values else float("nan")
        finite = [v for v in per_organ.values() if not math.isnan(v)]
        return {
            "split": self.split,
            "data_source": self.data_source,
            "model_file": self.model_file,
            "background": "excluded",
            "num_items": len(self.rows),
            "dice_per_organ": per_organ,
            "mean_dice": sum(finite) / len(finite) if finite else float("nan"),
        }

    def __call__(self, engine: Engine) -> dict:
        import ignite.distributed as idist

        s = self.summary()
        for organ, v in s["dice_per_organ"].items():
            engine.state.metrics[f"dice_{organ}"] = v
        if idist.get_rank() != 0:
            return s
        logger.info(
            f"{self.split or 'validation'} Dice per organ (background excluded): "
            + ", ".join(f"{o} {v:.4f}" for o, v in s["dice_per_organ"].items())
            + f"; mean {s['mean_dice']:.4f}"
        )
        if self.output_dir:
            os.makedirs(self.output_dir, exist_ok=True)
            with open(os.path.join(self.output_dir, "dice_per_item.csv"), "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["item"] + self.organs + ["mean"])
                for name, values in self.rows:
                    finite = [v for v in values if not math.isnan(v)]
                    w.writerow(
                        [name]
                        + ["" if math.isnan(v) else f"{v:.4f}" for v in values]
                        + [f"{sum(finite) / len(finite):.4f}" if finite else ""]
                    )
            with open(os.path.join(self.output_dir, "metrics.json"), "w") as f:
                json.dump(s, f, indent=2)
        return s
