"""The operating point of a two-class classifier: how its probabilities become a decision, chosen on validation and
kept in the run record, so that evaluation and inference decide as the trained model was tuned to.

* ``operating_point`` (a training config id) is the rule: ``"argmax"`` (the most likely class; the default),
  ``"youden"`` (the threshold on the second class's probability that maximises sensitivity + specificity - 1), or
  ``"sensitivity:<x>"`` / ``"specificity:<x>"`` (the threshold with the highest specificity whose sensitivity is at
  least x, and the other way round). The second class of ``class_names`` is the positive one ("pneumonia" in
  ``['normal', 'pneumonia']``).
* :class:`OperatingPointChooser` (on the validation evaluator) applies the rule to the validation outputs of each
  epoch and keeps the one of the best epoch, the epoch whose ``model.pt`` is kept. It is stored with the best-model
  state in every checkpoint (a resumed run keeps it) and written to the run record as ``operating_point``, with the
  validation split's prevalence of the positive class.
* ``temperature_scaling`` (a training config id, off by default): the chooser also fits a temperature ``T`` on those
  validation outputs (minimum negative log-likelihood of ``softmax(log p / T)``, Guo et al. 2017) and records it;
  evaluation and inference then report ``softmax(log p / T)``. It changes the probabilities and their calibration,
  never a decision of the model alone (argmax and the rank of the second class's probability stay).
* :func:`from_record` gives evaluation and inference their :class:`Decision`. With ``prevalence`` (the deployment's
  positive-class frequency, stated by the user) the probabilities are corrected for the prior shift by Bayes' rule
  (the odds scaled by the ratio of the prior odds, Saerens et al. 2002) from the recorded validation prevalence; a
  threshold is moved with them, so the decision of a threshold rule does not change (sensitivity and specificity do
  not depend on the prior) while argmax decisions and the reported probabilities do. This assumes the model's
  probabilities follow the validation prior: not so for a model trained with ``class_weighting`` or balanced
  sampling, whose record says so.
"""

from __future__ import annotations

import logging

import torch
from ignite.engine import Engine, Events

from ..errors import InputError
from .statistics import as_vector

__all__ = ["Decision", "OperatingPointChooser", "choose_threshold", "fit_temperature", "from_record", "parse_rule"]

logger = logging.getLogger(__name__)

RULES = ("argmax", "youden", "sensitivity:<x>", "specificity:<x>")


def parse_rule(rule, class_names=None, multi_label: bool = False, config_id: str = "operating_point"):
    """``(kind, target)`` of a rule string; stops naming ``config_id`` for anything else, and for a threshold rule
    on a model that is not a two-class, single-label one."""
    text = str(rule).strip().lower()
    kind, _, target = text.partition(":")
    ok = (kind in ("argmax", "youden") and not target) or (kind in ("sensitivity", "specificity") and target)
    try:
        value = float(target) if target else None
    except ValueError:
        ok = False
    if not ok or (value is not None and not 0 < value <= 1):
        raise InputError(f"config id {config_id!r} must be one of {', '.join(RULES)} (0 < x <= 1), got {rule!r}")
    if kind != "argmax" and (multi_label or len(list(class_names or [])) != 2):
        raise InputError(
            f"config id {config_id!r}={rule!r} needs two classes, single-label (a threshold on the second class's "
            f"probability); this model has class_names {list(class_names or [])}, multi_label {multi_label}"
        )
    return kind, value


def choose_threshold(score: torch.Tensor, positive: torch.Tensor, kind: str, target: float | None = None) -> dict:
    """The threshold ``t`` (decide positive where ``score >= t``; ``t`` is one of the scores) that the rule picks,
    with its sensitivity and specificity. Ties go to the higher threshold."""
    score, positive = score.double().reshape(-1), positive.bool().reshape(-1)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if not n_pos or not n_neg:
        raise ValueError(f"the validation outputs hold {n_pos} positive and {n_neg} negative samples: no threshold")
    best = None
    for t in torch.unique(score).flip(0).tolist():  # from the highest threshold down
        called = score >= t
        sens = float((called & positive).sum()) / n_pos
        spec = float((~called & ~positive).sum()) / n_neg
        if kind == "youden":
            key = sens + spec - 1
        elif kind == "sensitivity":
            key = spec if sens >= target else None
        else:
            key = sens if spec >= target else None
        if key is not None and (best is None or key > best[0]):
            best = (key, t, sens, spec)
    if best is None:
        raise ValueError(f"no threshold reaches {kind} {target}")
    return {"threshold": best[1], "sensitivity": best[2], "specificity": best[3]}


def fit_temperature(prob: torch.Tensor, label: torch.Tensor) -> float:
    """The temperature ``T`` minimising the negative log-likelihood of ``softmax(log prob / T)`` for the class indices
    ``label`` (a grid over 0.05..20, then a finer one around the best: deterministic)."""
    logp = prob.double().clamp_min(1e-12).log()

    def nll(t):
        return float(torch.nn.functional.cross_entropy(logp / t, label.long()))

    grid = torch.logspace(-1.3, 1.3, 105, dtype=torch.float64).tolist()
    best = min(grid, key=nll)
    fine = torch.linspace(best / 1.06, best * 1.06, 41, dtype=torch.float64).tolist()
    return float(min(fine, key=nll))


def with_temperature(prob: torch.Tensor, temperature: float | None) -> torch.Tensor:
    """``softmax(log prob / temperature)`` (``prob`` itself for None or 1)."""
    if not temperature or temperature == 1:
        return prob
    return torch.softmax(prob.double().clamp_min(1e-12).log() / temperature, 1).to(prob.dtype)


def shift_prior(prob: torch.Tensor, source: float, target: float) -> torch.Tensor:
    """Two-class probabilities ``[N, 2]`` under the positive-class prior ``source``, corrected to the prior
    ``target`` (Bayes' rule: the odds times the ratio of the prior odds)."""
    w = torch.tensor([(1 - target) / (1 - source), target / source], dtype=prob.dtype)
    shifted = prob * w
    return shifted / shifted.sum(1, keepdim=True)


class Decision:
    """Class probabilities -> the decided class as a one-hot tensor (see the module doc). ``threshold`` is on the
    second class's probability as the model gives it; ``prior`` is ``(validation prevalence, deployment
    prevalence)`` or None; ``temperature`` (None: none) is applied before the prior correction."""

    def __init__(self, threshold=None, prior: tuple[float, float] | None = None, temperature=None) -> None:
        self.threshold = threshold
        self.prior = prior
        self.temperature = temperature

    def probabilities(self, prob: torch.Tensor) -> torch.Tensor:
        prob = with_temperature(prob, self.temperature)
        return shift_prior(prob, *self.prior) if self.prior else prob

    def __call__(self, prob: torch.Tensor) -> torch.Tensor:
        """Decisions for ``prob`` *as the model gives it* (before any prior correction)."""
        if self.threshold is None:
            return torch.nn.functional.one_hot(self.probabilities(prob).argmax(1), prob.shape[1]).float()
        return torch.nn.functional.one_hot((prob[:, 1] >= self.threshold).long(), 2).float()

    def describe(self) -> dict:
        return {
            "threshold": self.threshold,
            "prior_shift": list(self.prior) if self.prior else None,
            "temperature": self.temperature,
        }


class OperatingPointChooser:
    """Attach to the validation evaluator (after the key metric): collects ``pred`` (probabilities) and ``label``
    (one-hot) of each validation run; when that run's key metric is the best so far (the epoch whose weights become
    ``model.pt``), applies ``rule`` to them and keeps the result, :meth:`record`. Pass it to
    :class:`~medmae_ext.training.checkpoints.BestModelSaver` (``operating_point``) so that checkpoints carry it."""

    def __init__(
        self,
        rule: str = "argmax",
        class_names=None,
        multi_label: bool = False,
        split: str = "validation",
        temperature: bool = False,
    ):
        self.names = list(class_names or [])
        self.temperature = bool(temperature)
        self.kind, self.target = parse_rule(rule, self.names, multi_label)
        self.rule, self.split = str(rule), split
        self.enabled = len(self.names) == 2 and not multi_label
        self.chosen: dict | None = None

    def attach(self, engine: Engine) -> None:
        if self.enabled:
            engine.add_event_handler(Events.EPOCH_STARTED, lambda e: setattr(self, "_seen", []))
            engine.add_event_handler(
                Events.ITERATION_COMPLETED,
                lambda e: self._seen.extend(
                    torch.stack([as_vector(o["pred"])[1], as_vector(o["label"])[1]]) for o in e.state.output
                ),
            )
            engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if engine.state.best_metric_epoch != engine.state.epoch:
            return
        # every process validates the whole split (the multi-GPU config shards training only): same outputs, same point
        seen = torch.stack(self._seen) if self._seen else torch.zeros(0, 2)
        score, positive = seen[:, 0], seen[:, 1] > 0.5
        point = {"rule": self.rule, "positive_class": self.names[1], "split": self.split}
        point.update(epoch=int(engine.state.epoch), prevalence=float(positive.float().mean()))
        try:
            point.update(choose_threshold(score, positive, self.kind, self.target) if self.kind != "argmax" else {})
        except ValueError as e:
            logger.warning(f"operating point {self.rule!r} not chosen at epoch {engine.state.epoch}: {e}; argmax")
        if self.temperature:
            point["temperature"] = fit_temperature(torch.stack([1 - score, score], 1), positive)
            logger.info(f"temperature scaling: T = {point['temperature']:.3f} (fitted on {self.split})")
        self.chosen = point
        if "threshold" in point:
            logger.info(
                f"operating point {self.rule}: decide {self.names[1]!r} at p >= {point['threshold']:.4f} (sensitivity "
                f"{point['sensitivity']:.3f}, specificity {point['specificity']:.3f} on {self.split})"
            )

    def state_dict(self) -> dict:
        return dict(self.chosen or {})

    def load_state_dict(self, state: dict) -> None:
        self.chosen = dict(state) if state else None


def from_record(record, class_names=None, prevalence=None, config_id: str = "prevalence") -> Decision:
    """The :class:`Decision` of the weights whose run record is ``record`` (None: argmax, no prior correction), with
    the prior corrected to ``prevalence`` (the deployment's frequency of the second class) when given."""
    point = (record or {}).get("operating_point") or {}
    threshold, temperature = point.get("threshold"), point.get("temperature")
    if prevalence is None:
        return Decision(threshold, None, temperature)
    p = float(prevalence)
    if not 0 < p < 1 or len(list(class_names or [])) != 2:
        raise InputError(
            f"config id {config_id!r}={prevalence!r}: the deployment's frequency of the second class, 0 < p < 1, for "
            f"a two-class model (class_names {list(class_names or [])})"
        )
    source = point.get("prevalence")
    if not source or not 0 < source < 1:
        raise InputError(
            f"config id {config_id!r} needs the validation prevalence the model was tuned on, from its run record "
            f"('operating_point' in {(record or {}).get('path', 'models/metadata.json')}); these weights have none: "
            "train them with this medmae version"
        )
    decision = Decision(threshold, (float(source), p), temperature)
    if threshold is not None:
        moved = decision.probabilities(torch.tensor([[1 - threshold, threshold]], dtype=torch.float64))
        logger.info(f"prevalence {source:.3f} -> {p:.3f}: threshold {threshold:.4f} is {float(moved[0, 1]):.4f}")
    return decision
