"""The numbers of a classification report, from class probabilities ``prob`` ``[N, C]`` and one-hot / multi-hot labels
``y`` ``[N, C]``: decisions, scores, bootstrap intervals, calibration (:class:`~medmae_ext.outputs.reports.ClassificationReport`).
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["as_vector", "decisions", "decided", "scores", "bootstrap_ci95", "calibration", "mcnemar"]


def as_vector(value) -> torch.Tensor:
    """One sample's output (``pred`` or ``label`` of a decollated engine output) as a flat float tensor on the CPU: a
    plain tensor, not MONAI's ``MetaTensor``, whose per-operation metadata bookkeeping made the bootstrap's thousand
    rescorings 2-3x slower."""
    return torch.as_tensor(value).detach().float().cpu().reshape(-1).as_subclass(torch.Tensor)


def decisions(prob: torch.Tensor, multi_label: bool = False, threshold: float = 0.5, decide=None) -> torch.Tensor:
    """The decided class(es) as a 0/1 tensor like ``y``: ``decide(prob)`` when given (a
    :class:`~medmae_ext.outputs.operating_point.Decision`), else the most likely class, or (multi-label) each class
    at or over ``threshold``."""
    if decide is not None:
        return decide(prob)
    if multi_label:
        return (prob >= threshold).float()
    return torch.nn.functional.one_hot(prob.argmax(1), prob.shape[1]).float()


def decided(prob: torch.Tensor, multi_label: bool = False, threshold: float = 0.5, decide=None):
    """``(decisions, probabilities to report)`` for ``prob`` as the model gives it: :func:`decisions`, and ``prob``
    corrected as ``decide`` says (its temperature and prior shift; ``prob`` itself without ``decide``)."""
    hard = decisions(prob, multi_label, threshold, decide)
    return hard, (decide.probabilities(prob) if decide is not None else prob)


def scores(prob: torch.Tensor, y: torch.Tensor, multi_label: bool = False, threshold: float = 0.5, decide=None):
    """``({accuracy, macro_f1, mean_auc}, per-class AUC, per-class F1, per-class recall)``; nan where a class has no
    positive (or no negative, for AUC). ``prob`` as the model gives it: ``decide`` (see :func:`decisions`) corrects it
    for AUC when it shifts the prior."""
    from monai.metrics import compute_roc_auc

    hard, prob = decided(prob, multi_label, threshold, decide)
    c = prob.shape[1]
    auc = []
    for k in range(c):
        has_both = 0 < y[:, k].sum() < len(y)
        auc.append(float(compute_roc_auc(prob[:, k], y[:, k])) if has_both else float("nan"))
    tp = (hard * y).sum(0)
    f1 = (2 * tp / (hard.sum(0) + y.sum(0)).clamp_min(1e-8)).tolist()
    recall = [float(t / s) if s > 0 else float("nan") for t, s in zip(tp.tolist(), y.sum(0).tolist(), strict=False)]
    valid_auc = [a for a in auc if a == a]
    overall = {
        "accuracy": float((hard == y).all(1).float().mean()),
        "macro_f1": float(np.mean(f1)),
        "mean_auc": float(np.mean(valid_auc)) if valid_auc else float("nan"),
    }
    return overall, auc, f1, recall


def bootstrap_ci95(prob, y, names, resamples: int, multi_label=False, threshold=0.5, decide=None) -> dict:
    """95% percentile intervals of accuracy, macro F1, mean AUC and each class's recall over ``resamples`` draws of
    the samples with replacement (seed 0: the same data gives the same interval); a draw missing a class leaves that
    AUC / recall out."""
    rng = np.random.default_rng(0)
    draws: dict[str, list[float]] = {}
    for _ in range(int(resamples)):
        idx = torch.as_tensor(rng.integers(0, len(y), len(y)))
        overall, _, _, recall = scores(prob[idx], y[idx], multi_label, threshold, decide)
        for k, v in [*overall.items(), *((f"recall_{n}", r) for n, r in zip(names, recall, strict=False))]:
            if v == v:
                draws.setdefault(k, []).append(v)
    return {k: [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))] for k, v in draws.items()}


def calibration(prob: torch.Tensor, y: torch.Tensor, names, bins: int = 10) -> dict:
    """Single-label: the expected calibration error of the top probability (``bins`` equal-width bins, the
    sample-weighted gap between mean confidence and accuracy per bin), the bins themselves (``reliability``: count,
    mean confidence, accuracy; drawn by :func:`~medmae_ext.outputs.charts.reliability_png`) and each class's mean
    probability against its observed frequency (a model that over-calls a class shows it)."""
    conf, pred = prob.max(1)
    correct = (pred == y.argmax(1)).float()
    edges = torch.linspace(0, 1, bins + 1)
    which = torch.bucketize(conf, edges[1:-1], right=True)
    ece, table = 0.0, []
    for b in range(bins):
        sel = which == b
        if sel.any():
            ece += float(sel.float().mean() * (conf[sel].mean() - correct[sel].mean()).abs())
            table.append([int(sel.sum()), float(conf[sel].mean()), float(correct[sel].mean())])
        else:
            table.append([0, None, None])
    return {
        "ece": ece,
        "bins": bins,
        "reliability": table,
        "mean_probability": {n: float(prob[:, k].mean()) for k, n in enumerate(names)},
        "observed_frequency": {n: float(y[:, k].mean()) for k, n in enumerate(names)},
    }


def mcnemar(a_correct, b_correct) -> tuple[int, int, float]:
    """Exact McNemar test of two classifiers on the same samples: ``(b, c, p)`` -- the samples only A gets right, only
    B gets right, and the two-sided p-value of ``b`` vs ``c`` under "equally often" (binomial, n = b + c)."""
    from scipy.stats import binomtest

    a, b_ = np.asarray(a_correct, bool), np.asarray(b_correct, bool)
    if a.shape != b_.shape:
        raise ValueError(f"McNemar needs the same samples: {a.shape} vs {b_.shape}")
    only_a, only_b = int((a & ~b_).sum()), int((~a & b_).sum())
    p = binomtest(min(only_a, only_b), only_a + only_b, 0.5).pvalue if only_a + only_b else 1.0
    return only_a, only_b, float(p)
