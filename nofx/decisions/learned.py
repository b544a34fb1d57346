"""The learned success model: LightGBM on (decision context, candidate) → fixed or not.

Behind the same `SuccessModel` interface as the Beta model (`nofx.decisions.success`), and on
top of it. A candidate the training data saw `n` times gets the Beta prior's pseudo-counts plus
`min(n, EVIDENCE_CAP)` pseudo-observations split by the model's probability:

    alpha = prior.alpha + m * p_model,   beta = prior.beta + m * (1 - p_model),   m = min(n, cap)

so an action the model has too little data on stays near its prior (never tried: exactly the
prior), one it knows well follows the model, and the posterior's width (the engine's
confidence) grows with the evidence. The prior's own counts of recorded outcomes (per pattern,
tier and candidate, `HistoricalMetrics.outcomes`) are the same evidence the model learnt from:
the bundle keeps what it was trained on per pattern, tier and candidate, and only the outcomes
and rejections recorded beyond those (after training, or held out to judge it) still count in
the prior — evidence is counted once, and a new outcome moves the estimate before the next
training does. The expected time to recover comes from a second LightGBM model (natural log of
the seconds, floored at `MIN_SECONDS`, so a 0.05 s fix and a 0.09 s one are as far apart as 5 s
and 9 s; trained on the fixed examples) when there were enough of them, else from the prior.
Features come from `nofx.decisions.features`, so a new metric needs no code; `explain` gives
each feature's contribution (LightGBM `pred_contrib`, log-odds).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import lightgbm as lgb
import numpy as np

from models.decisions import Candidate, DecisionContext, OutcomeCount, SuccessEstimate
from nofx.decisions.features import CATEGORICAL, Features, extract
from nofx.decisions.success import SuccessModel

MODEL_TYPE = "decision_success"
ARTIFACT_FORMAT = "nofx-success-bundle"
EVIDENCE_CAP = 200  # pseudo-observations the model adds at most
MIN_RECOVERY_EXAMPLES = 20  # fixed examples with a time needed for the recovery model
MIN_SECONDS = 0.01  # recovery times are floored here before their log is taken
PARAMS: dict[str, Any] = {
    "objective": "binary",
    "learning_rate": 0.05,
    "num_leaves": 15,
    "min_data_in_leaf": 5,
    "min_data_per_group": 5,
    "cat_smooth": 5.0,
    "feature_fraction": 0.9,
    "lambda_l2": 1.0,
    "verbosity": -1,
    "seed": 7,
    "deterministic": True,
    "num_threads": 1,
}
ROUNDS = 150


class LearningError(Exception):
    """Too little or unusable training data."""


@dataclass(frozen=True)
class Example:
    """One piece of evidence: choosing `candidate` in `context` fixed the subject or not."""

    context: Mapping[str, Any]  # a DecisionContext as recorded (JSON)
    candidate: Candidate
    success: bool
    recovery_seconds: float | None = None
    weight: float = 1.0
    source: str = "outcome"  # outcome | override | rejection | …
    # the probability the engine's policy chose this candidate (exploration); 1 when greedy
    propensity: float = 1.0


@dataclass
class Encoder:
    """Fixed feature columns: the numeric paths seen in training, then the categorical ones."""

    numeric: list[str]
    categories: dict[str, list[str]]

    @classmethod
    def fit(cls, rows: Sequence[Features]) -> Encoder:
        numeric = sorted({k for r in rows for k in r.numeric})
        categories = {c: sorted({r.categorical[c] for r in rows}) for c in CATEGORICAL}
        return cls(numeric, categories)

    @property
    def columns(self) -> list[str]:
        return [*self.numeric, *CATEGORICAL]

    @cached_property
    def _where(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.numeric)}

    @cached_property
    def _codes(self) -> dict[str, dict[str, int]]:
        return {c: {v: i for i, v in enumerate(vs)} for c, vs in self.categories.items()}

    def matrix(self, rows: Sequence[Features]) -> np.ndarray:
        out = np.full((len(rows), len(self.numeric) + len(CATEGORICAL)), np.nan)
        where, codes = self._where, self._codes
        for r, row in enumerate(rows):
            for name, value in row.numeric.items():
                i = where.get(name)
                if i is not None:  # a path training never saw: the model cannot use it
                    out[r, i] = value
            for j, c in enumerate(CATEGORICAL):
                code = codes[c].get(row.categorical[c])
                if code is not None:  # an unseen category is missing, as LightGBM expects
                    out[r, len(self.numeric) + j] = code
        return out


@dataclass
class Bundle:
    """What training produces and the registry stores (`to_text` / `from_text`)."""

    encoder: Encoder
    classifier: lgb.Booster
    recovery: lgb.Booster | None
    counts: dict[str, int]  # training examples per candidate name
    summary: dict[str, Any] = field(default_factory=dict)
    # what the prior's outcome counts would hold of the training data: "pattern|tier|candidate"
    # -> [resolved, failed, rejected]
    learnt: dict[str, list[int]] = field(default_factory=dict)
    # what the recovery model predicts: "log" seconds; bundles before it was written, log1p
    recovery_target: str = "log"

    def seconds(self, predicted: float) -> float:
        if self.recovery_target == "log1p":
            return max(MIN_SECONDS, math.expm1(max(predicted, 0.0)))
        return max(MIN_SECONDS, math.exp(predicted))

    def to_text(self) -> str:
        return json.dumps(
            {
                "numeric": self.encoder.numeric,
                "categories": self.encoder.categories,
                "classifier": self.classifier.model_to_string(),
                "recovery": None if self.recovery is None else self.recovery.model_to_string(),
                "counts": self.counts,
                "summary": self.summary,
                "learnt": self.learnt,
                "recovery_target": self.recovery_target,
            }
        )

    @classmethod
    def from_text(cls, artifact: str) -> Bundle:
        data = json.loads(artifact)
        return cls(
            Encoder(data["numeric"], data["categories"]),
            lgb.Booster(model_str=data["classifier"]),
            None if data["recovery"] is None else lgb.Booster(model_str=data["recovery"]),
            {k: int(v) for k, v in data["counts"].items()},
            data.get("summary") or {},
            {k: [int(n) for n in v] for k, v in (data.get("learnt") or {}).items()},
            data.get("recovery_target", "log1p"),
        )

    def unlearnt(self, context: DecisionContext) -> DecisionContext:
        """`context` with the outcome counts the model was trained on taken out (module doc)."""
        state = context.current_state
        outcomes = []
        for seen in context.historical_data.outcomes:
            known = self.learnt.get(learnt_key(state.pattern, state.tier, seen.playbook))
            if known is None:
                outcomes.append(seen)
                continue
            left = OutcomeCount(
                playbook=seen.playbook,
                resolved=max(0, seen.resolved - known[0]),
                failed=max(0, seen.failed - known[1]),
                rejected=max(0, seen.rejected - known[2]),
            )
            if left.resolved or left.failed or left.rejected:
                outcomes.append(left)
        history = context.historical_data.model_copy(update={"outcomes": outcomes})
        return context.model_copy(update={"historical_data": history})

    def probabilities(self, rows: Sequence[Features]) -> np.ndarray:
        return np.asarray(self.classifier.predict(self.encoder.matrix(rows)), dtype=float)


def learnt_key(pattern: str | None, tier: str | None, candidate: str) -> str:
    return f"{pattern}|{tier}|{candidate}"


def _learnt(examples: Sequence[Example]) -> dict[str, list[int]]:
    """Per pattern, tier and candidate, the counts `context.outcomes_of` keeps of `examples`:
    outcomes as resolved or failed, a person's verdict against the engine's pick as rejected."""
    out: dict[str, list[int]] = {}
    for e in examples:
        state = e.context.get("current_state") or {}
        key = learnt_key(state.get("pattern"), state.get("tier"), e.candidate.name)
        counts = out.setdefault(key, [0, 0, 0])
        counts[0 if e.source == "outcome" and e.success else 1 if e.source == "outcome" else 2] += 1
    return out


def _dataset(
    encoder: Encoder, rows: Sequence[Features], y: Sequence[float], w: Sequence[float]
) -> lgb.Dataset:
    return lgb.Dataset(
        encoder.matrix(rows),
        label=np.asarray(y, dtype=float),
        weight=np.asarray(w, dtype=float),
        feature_name=[c.replace(".", "__") for c in encoder.columns],
        categorical_feature=list(range(len(encoder.numeric), len(encoder.columns))),
        free_raw_data=True,
    )


def train(examples: Sequence[Example], rounds: int = ROUNDS) -> Bundle:
    """Fit the success and recovery models on `examples` (one configuration for all data).

    Raises:
        LearningError: fewer than 10 examples, or only successes or only failures.
    """
    if len(examples) < 10:
        raise LearningError(f"{len(examples)} example(s): at least 10 are needed to train")
    labels = [1.0 if e.success else 0.0 for e in examples]
    if len(set(labels)) < 2:
        raise LearningError("every example has the same outcome: nothing to tell apart")
    rows = [extract(e.context, e.candidate) for e in examples]
    encoder = Encoder.fit(rows)
    weights = [max(e.weight, 0.0) for e in examples]
    classifier = lgb.train(PARAMS, _dataset(encoder, rows, labels, weights), rounds)
    timed = [
        (r, math.log(max(e.recovery_seconds, MIN_SECONDS)), w)
        for r, e, w in zip(rows, examples, weights, strict=True)
        if e.success and e.recovery_seconds is not None and e.recovery_seconds >= 0
    ]
    recovery = None
    if len(timed) >= MIN_RECOVERY_EXAMPLES:
        recovery = lgb.train(
            {**PARAMS, "objective": "regression"},
            _dataset(encoder, [t[0] for t in timed], [t[1] for t in timed], [t[2] for t in timed]),
            rounds,
        )
    counts: dict[str, int] = {}
    for e in examples:
        counts[e.candidate.name] = counts.get(e.candidate.name, 0) + 1
    dropped = sorted({d for r in rows for d in r.dropped})
    summary = {
        "examples": len(examples),
        "successes": int(sum(labels)),
        "by_source": _count(e.source for e in examples),
        "features": len(encoder.columns),
        "recovery_examples": len(timed),
        "dropped_non_finite": dropped,
    }
    return Bundle(encoder, classifier, recovery, counts, summary, _learnt(examples))


def _count(values: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return out


class LearnedSuccessModel:
    """`SuccessModel` from a trained bundle on top of a prior model (module doc)."""

    def __init__(self, bundle: Bundle, prior: SuccessModel, version: str = "unsaved") -> None:
        self.bundle = bundle
        self.prior = prior
        self.version = version

    def estimate(self, context: DecisionContext, candidate: Candidate) -> SuccessEstimate:
        base = self.prior.estimate(self.bundle.unlearnt(context), candidate)
        seen = self.bundle.counts.get(candidate.name, 0)
        if seen == 0:
            note = f"{base.source} (model {self.version} never saw it)"
            return base.model_copy(update={"source": note})
        row = extract(context, candidate)
        p_model = float(self.bundle.probabilities([row])[0])
        m = float(min(seen, EVIDENCE_CAP))
        alpha = base.alpha + m * p_model
        beta = base.beta + m * (1.0 - p_model)
        recovery = base.expected_recovery_seconds
        if self.bundle.recovery is not None:
            log_seconds = float(self.bundle.recovery.predict(self.bundle.encoder.matrix([row]))[0])
            recovery = self.bundle.seconds(log_seconds)
        return SuccessEstimate(
            probability=alpha / (alpha + beta),
            alpha=alpha,
            beta=beta,
            expected_recovery_seconds=recovery,
            source=f"model {self.version} p {p_model:.2f} over {seen} example(s) + {base.source}",
        )

    def explain(
        self, context: DecisionContext, candidate: Candidate, top: int = 5
    ) -> list[tuple[str, float]]:
        """The features that moved the model's log-odds most for this pair, largest first."""
        return self._contributions(extract(context, candidate), top)

    def _contributions(self, row: Features, top: int) -> list[tuple[str, float]]:
        x = self.bundle.encoder.matrix([row])
        contrib = np.asarray(self.bundle.classifier.predict(x, pred_contrib=True))[0][:-1]
        named = zip(self.bundle.encoder.columns, contrib, strict=True)
        ranked = sorted(((n, float(c)) for n, c in named if c != 0), key=lambda t: -abs(t[1]))
        return [(n, round(c, 4)) for n, c in ranked[:top]]
