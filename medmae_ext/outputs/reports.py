"""Classification reports (validation and evaluation) and prediction CSVs."""

from __future__ import annotations

import logging
import os

import numpy as np
import torch
from ignite.engine import Engine, Events

from .charts import confusion_matrix_png, reliability_png
from .statistics import as_vector, bootstrap_ci95, calibration, decided, scores

__all__ = ["ClassificationReport", "ProbabilityCSVSaver", "read_history"]

logger = logging.getLogger(__name__)


class ClassificationReport:
    """Attach to an evaluator whose decollated outputs hold class probabilities ``pred`` and one-hot / multi-hot
    ``label``. At the end of the run it writes to ``output_dir``:

    * ``metrics.json`` -- accuracy, macro F1, per-class and mean ROC AUC (multi-label: per-class AUC and F1 at 0.5);
    * ``per_class.csv`` -- per-class AUC, F1, support;
    * ``confusion_matrix.png`` and ``confusion_matrix.csv`` (multi-class only; rows = truth, columns = prediction);
    * with ``samples_file`` (evaluations): one row per sample -- ``id``, the true class(es), each class's probability,
      the predicted class(es) -- so that another operating point or a paired comparison needs no new inference;
    * with ``bootstrap`` N > 0 (evaluations): ``ci95``, the 95% percentile interval of accuracy, macro F1, mean AUC
      and each class's recall over N resamples of the samples with replacement (seeded: the same file gives the
      same interval); a resample missing a class leaves that AUC / recall out of its draw;
    * single-label: ``calibration`` -- the expected calibration error (``ece``: 10 equal-width bins of the top
      probability, the sample-weighted gap between mean confidence and accuracy per bin; ``reliability.png``) and the
      mean probability of each class against its observed frequency, which shows a model that over-calls a class;
    * with ``decision`` (evaluations: the run record's operating point, :mod:`~medmae_ext.outputs.operating_point`)
      the decisions are that point's and the probabilities are prior-corrected as it says (``operating_point``).

    The numbers (accuracy, macro F1, mean AUC, ``recall_<class>``) are put in ``engine.state.metrics`` at the end of
    the epoch, so that a ``StatsHandler`` / ``TensorBoardStatsHandler`` listed *after* this handler logs them at every
    validation. A model that predicts a single class for every sample is warned about: its AUC can look fine.

    ``metrics.json`` names what it scored: ``split`` (the split's name: ``selection`` -- the cut of training that
    chooses the checkpoint --, ``validation``, ``test``), ``data_source`` and, for an evaluation, ``model_file``.
    Training-time reports go to ``eval/<selection split>/``, evaluations to ``eval/<split>/``, so two reports of
    different splits never share a folder.

    ``history_file`` (``history.csv``; None: none) gets one row per call (``epoch`` = the evaluator's epoch, which
    MONAI's ``ValidationHandler`` sets to the trainer's): the validation curve of the run, kept across a resume;
    rows of a later epoch than the one being written (left by an earlier run in the same folder) are dropped. With
    ``log_dir`` the confusion matrix is also logged to TensorBoard as the image ``<tag>/confusion_matrix`` at that
    epoch.
    """

    def __init__(
        self,
        output_dir: str,
        class_names=None,
        multi_label: bool = False,
        threshold: float = 0.5,
        log_dir: str | None = None,
        tag: str = "validation",
        history_file: str | None = "history.csv",
        split: str | None = None,
        data_source: str | None = None,
        model_file: str | None = None,
        samples_file: str | None = None,
        bootstrap: int = 0,
        decision=None,
    ) -> None:
        self.output_dir = output_dir
        self.decision = decision
        self.samples_file = samples_file
        self.bootstrap = int(bootstrap)
        self.split = split
        self.data_source = data_source
        self.model_file = model_file
        self.class_names = list(class_names) if class_names else None
        self.multi_label = multi_label
        self.threshold = threshold
        self.log_dir = log_dir
        self.tag = tag
        self.history_file = history_file
        self._writer = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def _reset(self, engine: Engine) -> None:
        self._pred, self._label, self._ids = [], [], []

    def _collect(self, engine: Engine) -> None:
        batch = getattr(engine.state, "batch", None)
        batch = batch if isinstance(batch, list) and len(batch) == len(engine.state.output) else None
        for i, item in enumerate(engine.state.output):
            self._pred.append(as_vector(item["pred"]))
            self._label.append(as_vector(item["label"]))
            source = batch[i] if batch is not None and isinstance(batch[i], dict) else item
            meta = getattr(source.get("image"), "meta", None) or {}
            self._ids.append(str(source.get("id", meta.get("filename_or_obj", len(self._ids)))))

    def _write_samples(self, prob: torch.Tensor, y: torch.Tensor, names: list[str]) -> None:
        import csv

        def classes(row):
            return ";".join(n for n, v in zip(names, row.tolist(), strict=False) if v > 0.5)

        hard, prob = decided(prob, self.multi_label, self.threshold, self.decision)
        path = os.path.join(self.output_dir, self.samples_file)
        with open(path + ".tmp", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["id", "label", *[f"p_{n}" for n in names], "predicted"])
            for i, p, t, h in zip(self._ids, prob, y, hard, strict=False):
                w.writerow([i, classes(t), *[f"{v:.6f}" for v in p.tolist()], classes(h)])
        os.replace(path + ".tmp", path)

    def compute(self) -> dict:
        prob, y = torch.stack(self._pred), torch.stack(self._label)
        c = prob.shape[1]
        names = self.class_names or [str(i) for i in range(c)]
        if len(names) != c:
            raise ValueError(f"{len(names)} class names given for {c} network outputs")
        overall, auc, f1, recall = scores(prob, y, self.multi_label, self.threshold, self.decision)
        support = y.sum(0).tolist()
        metrics = {
            "split": self.split,
            "data_source": self.data_source,
            "model_file": self.model_file,
            "num_samples": len(y),
            **overall,
            "per_class": {
                n: {"auc": a, "f1": f, "recall": r, "support": int(s)}
                for n, a, f, r, s in zip(names, auc, f1, recall, support, strict=False)
            },
        }
        if self.bootstrap > 0:
            metrics["ci95"] = bootstrap_ci95(
                prob, y, names, self.bootstrap, self.multi_label, self.threshold, self.decision
            )
            metrics["bootstrap_resamples"] = self.bootstrap
        if not self.multi_label:
            hard, prob = decided(prob, False, self.threshold, self.decision)
            hard = hard.argmax(1)
            cm = np.zeros((c, c), np.int64)
            np.add.at(cm, (y.argmax(1).numpy(), hard.numpy()), 1)
            metrics["confusion_matrix"] = cm.tolist()
            metrics["predicted_classes"] = sorted({names[i] for i in hard.tolist()})
            metrics["calibration"] = calibration(prob, y, names)
            if self.decision is not None:
                metrics["operating_point"] = self.decision.describe()
        return metrics

    def __call__(self, engine: Engine) -> dict:
        import json

        metrics = self.compute()
        epoch = getattr(engine.state, "epoch", 1)  # MONAI's ValidationHandler sets it to the trainer's epoch
        os.makedirs(self.output_dir, exist_ok=True)
        with open(os.path.join(self.output_dir, "metrics.json"), "w") as f:
            json.dump(metrics, f, indent=2)
        if self.samples_file:
            self._write_samples(torch.stack(self._pred), torch.stack(self._label), list(metrics["per_class"]))
        with open(os.path.join(self.output_dir, "per_class.csv"), "w") as f:
            f.write("class,auc,f1,recall,support\n")
            for n, v in metrics["per_class"].items():
                f.write(f"{n},{v['auc']:.4f},{v['f1']:.4f},{v['recall']:.4f},{v['support']}\n")
        if "confusion_matrix" in metrics:
            cm = np.asarray(metrics["confusion_matrix"])
            names = list(metrics["per_class"])
            np.savetxt(
                os.path.join(self.output_dir, "confusion_matrix.csv"),
                cm,
                fmt="%d",
                delimiter=",",
                header=",".join(names),
                comments="",
            )
            picture = confusion_matrix_png(cm, names, os.path.join(self.output_dir, "confusion_matrix.png"))
            reliability_png(metrics["calibration"]["reliability"], os.path.join(self.output_dir, "reliability.png"))
            if self.log_dir:
                if self._writer is None:
                    from torch.utils.tensorboard import SummaryWriter

                    self._writer = SummaryWriter(log_dir=self.log_dir)
                self._writer.add_image(f"{self.tag}/confusion_matrix", np.asarray(picture), epoch, dataformats="HWC")
                self._writer.flush()
        summary = {
            **{k: metrics[k] for k in ("accuracy", "macro_f1", "mean_auc")},
            **{f"recall_{n}": v["recall"] for n, v in metrics["per_class"].items()},
        }
        if self.history_file:
            self._append_history(epoch, summary)
        engine.state.metrics.update(summary)
        recalls = ", ".join(f"{n} {v['recall']:.3f}" for n, v in metrics["per_class"].items())
        if len(metrics.get("predicted_classes", ())) == 1 and len(metrics["per_class"]) > 1:
            logger.warning(
                f"the model predicts {metrics['predicted_classes'][0]!r} for all {metrics['num_samples']} samples "
                f"(per-class recall {recalls}): its AUC may look fine, its decisions are useless."
            )
        ci = metrics.get("ci95", {})

        def num(key):
            return f"{metrics[key]:.4f}" + (f" [{ci[key][0]:.4f}, {ci[key][1]:.4f}]" if key in ci else "")

        logger.info(
            f"accuracy {num('accuracy')}, macro F1 {num('macro_f1')}, mean AUC {num('mean_auc')}, recall {recalls} "
            f"on {metrics['num_samples']} samples"
            + (" (95% bootstrap intervals)" if ci else "")
            + f" -> {self.output_dir}"
        )
        return metrics

    def _append_history(self, epoch: int, summary: dict) -> None:
        import csv

        path = os.path.join(self.output_dir, self.history_file)
        row = {"epoch": epoch, **summary}
        fields = list(row)
        rows = []
        if os.path.isfile(path):
            with open(path, newline="") as f:
                old = list(csv.DictReader(f))
            if old and list(old[0]) == fields:
                rows = [r for r in old if int(r["epoch"]) < epoch]
        rows.append(row)
        tmp = path + ".tmp"
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            w.writerows(rows)
        os.replace(tmp, path)


def read_history(path: str) -> list[dict]:
    """Rows of a ``history.csv`` written by :class:`ClassificationReport`, numbers as floats (``epoch`` as int)."""
    import csv

    with open(path, newline="") as f:
        return [{k: int(v) if k == "epoch" else float(v) for k, v in r.items()} for r in csv.DictReader(f)]


class ProbabilityCSVSaver:
    """Attach to an inference evaluator: write ``predictions.csv`` with one row per image --
    ``image,<class 1>,...,<class K>,predicted`` (probabilities, then the decided class name: the most likely one, or
    ``decision``'s, the run record's operating point). Written once at the end, to a temporary file renamed into
    place."""

    def __init__(self, output_dir: str, class_names, filename: str = "predictions.csv", decision=None) -> None:
        self.output_dir = output_dir
        self.decision = decision
        self.class_names = list(class_names)
        self.filename = filename

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, lambda e: setattr(self, "_rows", []))
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self)

    def _collect(self, engine: Engine) -> None:
        for item in engine.state.output:
            prob = as_vector(item["pred"])
            if len(prob) != len(self.class_names):
                raise ValueError(f"network gives {len(prob)} outputs but {len(self.class_names)} class_names are set")
            meta = getattr(item.get("image"), "meta", {}) or {}
            self._rows.append((str(meta.get("filename_or_obj", len(self._rows))), prob.tolist()))

    def __call__(self, engine: Engine) -> str:
        import csv

        os.makedirs(self.output_dir, exist_ok=True)
        path = os.path.join(self.output_dir, self.filename)
        with open(path + ".tmp", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["image", *self.class_names, "predicted"])
            if self._rows:
                hard, prob = decided(torch.tensor([p for _, p in self._rows]), decide=self.decision)
                for (name, _), p, h in zip(self._rows, prob.tolist(), hard.argmax(1).tolist(), strict=True):
                    w.writerow([name, *[f"{v:.6f}" for v in p], self.class_names[h]])
        os.replace(path + ".tmp", path)
        logger.info(f"wrote {len(self._rows)} predictions to {path}")
        return path
