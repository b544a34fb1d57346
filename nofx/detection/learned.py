"""A learned anomaly detector: LightGBM over online features of one series.

The statistical members of the ensemble know nothing of what a fault looks like; this one learns
it from the platform's own labelled history (injected faults and resolved incidents, never a
benchmark's labels). Each sample is described by features computed only from the series up to
that sample — how far the value and its recent mean sit from the older baseline in robust units,
how fast it moves, whether it broke the older range — so the same `FeatureExtractor` serves
training (run over recorded history) and live scoring (fed one sample a tick): what the model
was evaluated on is exactly what it sees live.

Training is time-ordered: the model learns on the earlier part of the history and is judged on
the later part, point by point (ROC AUC, precision, recall) and per fault episode (share of
episodes flagged, delay to the first flag), because a detector that only looks good on shuffled
points has learned the past, not the next fault.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import lightgbm as lgb
import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

# The older part of the buffer is the baseline; the newest `RECENT` samples are "now".
BUFFER = 150
RECENT = 10
MIN_BASELINE = 15
FEATURES: tuple[str, ...] = (
    "series_kind",
    "z_value",
    "z_recent_mean",
    "z_over_max",
    "slope",
    "volatility",
    "share_above",
    "log_ratio",
)
PARAMS: dict[str, Any] = {
    "objective": "binary",
    "learning_rate": 0.05,
    "num_leaves": 15,
    "min_data_in_leaf": 20,
    "feature_fraction": 0.9,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "lambda_l2": 1.0,
    "is_unbalance": True,
    "verbosity": -1,
    "seed": 7,
    "num_threads": 2,
}
ROUNDS = 150
# Least-squares slope of the recent samples against their index, in closed form.
_CENTRED_STEPS = np.arange(RECENT, dtype=np.float64) - (RECENT - 1) / 2.0
_STEP_SPREAD = float(np.dot(_CENTRED_STEPS, _CENTRED_STEPS))


def _squash(z: float) -> float:
    """Signed log scale: robust z-scores of flat series can be huge, their order still matters."""
    return math.copysign(math.log1p(min(abs(z), 1e9)), z)


class FeatureExtractor:
    """Online features of one series (see module doc); `update` sees each sample once, in order."""

    def __init__(self, kind: int) -> None:
        self.kind = kind
        self._values: deque[float] = deque(maxlen=BUFFER)

    def update(self, value: float) -> list[float] | None:
        """The sample's features, or None while the baseline is too short (or the value is bad)."""
        if not math.isfinite(value):
            return None
        self._values.append(value)
        if len(self._values) < MIN_BASELINE + RECENT:
            return None
        values = np.fromiter(self._values, dtype=np.float64)
        base, recent = values[:-RECENT], values[-RECENT:]
        median = float(np.median(base))
        mad = 1.4826 * float(np.median(np.abs(base - median)))
        scale = max(mad, 1e-3 * abs(median), 1e-9)
        slope = float(np.dot(_CENTRED_STEPS, recent - recent.mean())) / _STEP_SPREAD
        return [
            float(self.kind),
            _squash((value - median) / scale),
            _squash((float(recent.mean()) - median) / scale),
            _squash((value - float(base.max())) / scale),
            _squash(slope / scale),
            _squash(float(recent.std()) / scale),
            float(np.mean(recent > median + 3.0 * scale)),
            math.log1p(max(value, 0.0)) - math.log1p(max(median, 0.0)),
        ]


def series_features(kind: int, values: Sequence[float]) -> tuple[FloatArray, npt.NDArray[np.bool_]]:
    """Features of every sample of a recorded series, exactly as live scoring would see them.

    Returns the feature matrix (one row per sample, NaN rows while learning) and which rows are
    usable.
    """
    extractor = FeatureExtractor(kind)
    rows = np.full((len(values), len(FEATURES)), np.nan)
    usable = np.zeros(len(values), dtype=bool)
    for index, value in enumerate(values):
        features = extractor.update(float(value))
        if features is not None:
            rows[index] = features
            usable[index] = True
    return rows, usable


@dataclass(frozen=True)
class Episode:
    """One labelled fault on one series: where its positive samples start and end (indices into
    the holdout arrays) — used to judge detection per fault, not per point."""

    key: str
    start: int
    end: int


@dataclass
class Dataset:
    """Training examples in time order: features, labels, timestamps and the episodes."""

    features: FloatArray
    labels: npt.NDArray[np.int8]
    timestamps: FloatArray
    episode_ids: list[str | None]

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class Evaluation:
    """How the model did on the later, held-out part of the history."""

    points: int
    positives: int
    roc_auc: float | None
    precision: float | None
    recall: float | None
    f1: float | None
    false_positive_rate: float | None
    episodes: int
    episodes_detected: int
    faults: int
    faults_detected: int
    detection_delay_p50_s: float | None
    level: float

    @property
    def episode_recall(self) -> float | None:
        return self.episodes_detected / self.episodes if self.episodes else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "points": self.points,
            "positives": self.positives,
            "roc_auc": self.roc_auc,
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
            "false_positive_rate": self.false_positive_rate,
            "episodes": self.episodes,
            "episodes_detected": self.episodes_detected,
            "episode_recall": self.episode_recall,
            "faults": self.faults,
            "faults_detected": self.faults_detected,
            "detection_delay_p50_s": self.detection_delay_p50_s,
            "level": self.level,
        }


def roc_auc(labels: npt.NDArray[np.int8], scores: FloatArray) -> float | None:
    """Area under the ROC curve (the Mann-Whitney statistic, ties counted half)."""
    positives = int(labels.sum())
    negatives = len(labels) - positives
    if positives == 0 or negatives == 0:
        return None
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    # average ranks over ties
    start = 0
    while start < len(scores):
        end = start
        while end + 1 < len(scores) and sorted_scores[end + 1] == sorted_scores[start]:
            end += 1
        ranks[order[start : end + 1]] = (start + end) / 2.0 + 1.0
        start = end + 1
    positive_ranks = float(ranks[labels == 1].sum())
    return (positive_ranks - positives * (positives + 1) / 2.0) / (positives * negatives)


def evaluate(probabilities: FloatArray, data: Dataset, level: float) -> Evaluation:
    """Point and episode metrics of `probabilities` against `data`'s labels at `level`."""
    labels = data.labels
    flagged = probabilities >= level
    positives = int(labels.sum())
    true_pos = int(np.sum(flagged & (labels == 1)))
    false_pos = int(np.sum(flagged & (labels == 0)))
    negatives = len(labels) - positives
    precision = true_pos / (true_pos + false_pos) if true_pos + false_pos else None
    recall = true_pos / positives if positives else None
    f1 = (
        2 * precision * recall / (precision + recall)
        if precision is not None and recall is not None and precision + recall > 0
        else None
    )
    by_episode: dict[str, list[int]] = {}
    for index, episode in enumerate(data.episode_ids):
        if episode is not None:
            by_episode.setdefault(episode, []).append(index)
    delays = []
    # An episode is one series of one fault ("fault:series"): a fault is caught when any of
    # the series it shows in is flagged.
    faults: dict[str, bool] = {}
    for episode, indices in by_episode.items():
        hits = [i for i in indices if flagged[i]]
        fault = episode.rsplit(":", 1)[0]
        faults[fault] = faults.get(fault, False) or bool(hits)
        if hits:
            delays.append(float(data.timestamps[hits[0]] - data.timestamps[indices[0]]))
    return Evaluation(
        points=len(labels),
        positives=positives,
        roc_auc=_round(roc_auc(labels, probabilities)),
        precision=_round(precision),
        recall=_round(recall),
        f1=_round(f1),
        false_positive_rate=_round(false_pos / negatives if negatives else None),
        episodes=len(by_episode),
        episodes_detected=len(delays),
        faults=len(faults),
        faults_detected=sum(faults.values()),
        detection_delay_p50_s=_round(float(np.median(delays)) if delays else None),
        level=level,
    )


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


@dataclass
class TrainedModel:
    """A trained booster with what it was trained on and how it did."""

    booster: lgb.Booster
    series: tuple[str, ...]
    evaluation: Evaluation
    training_points: int
    training_positives: int
    importance: dict[str, float] = field(default_factory=dict)

    def to_text(self) -> str:
        return str(self.booster.model_to_string())


def split_by_time(data: Dataset, cut: float) -> tuple[Dataset, Dataset]:
    """Everything before `cut` to learn on, everything from it to judge on."""
    before = data.timestamps < cut

    def take(mask: npt.NDArray[np.bool_]) -> Dataset:
        return Dataset(
            features=data.features[mask],
            labels=data.labels[mask],
            timestamps=data.timestamps[mask],
            episode_ids=[e for e, keep in zip(data.episode_ids, mask, strict=True) if keep],
        )

    return take(before), take(~before)


class TrainingError(ValueError):
    """The history cannot train a model (and why)."""


def train(
    data: Dataset, series: Sequence[str], cut: float, level: float = 0.5, rounds: int = ROUNDS
) -> TrainedModel:
    """Train on the samples before `cut`, evaluate on the ones from it (module doc)."""
    learn, judge = split_by_time(data, cut)
    if len(learn) == 0 or int(learn.labels.sum()) == 0:
        raise TrainingError(
            "no labelled fault before the holdout cut: the history has nothing to learn from"
        )
    if int(learn.labels.sum()) == len(learn):
        raise TrainingError("every training sample is labelled faulty: no normal behaviour")
    booster = lgb.train(
        PARAMS,
        lgb.Dataset(
            learn.features,
            label=learn.labels,
            feature_name=list(FEATURES),
            categorical_feature=["series_kind"],
            free_raw_data=False,
        ),
        num_boost_round=rounds,
    )
    probabilities = (
        np.asarray(booster.predict(judge.features), dtype=np.float64) if len(judge) else np.empty(0)
    )
    gains = booster.feature_importance(importance_type="gain")
    total = float(np.sum(gains)) or 1.0
    return TrainedModel(
        booster=booster,
        series=tuple(series),
        evaluation=evaluate(probabilities, judge, level),
        training_points=len(learn),
        training_positives=int(learn.labels.sum()),
        importance={
            name: round(float(gain) / total, 4) for name, gain in zip(FEATURES, gains, strict=True)
        },
    )


class LearnedScorer:
    """The ensemble's extra scorer for one series: probability that the series is faulty now."""

    def __init__(self, booster: lgb.Booster, kind: int, name: str = "lightgbm") -> None:
        self.name = name
        self._booster = booster
        self._extractor = FeatureExtractor(kind)

    def __call__(self, timestamp: float, value: float) -> float:
        features = self._extractor.update(value)
        if features is None:
            return 0.0
        row = np.asarray([features], dtype=np.float64)
        return float(self._booster.predict(row)[0])


class LearnedDetector:
    """A stored model, ready to hand each watched series its own scorer."""

    def __init__(self, model_id: str, version: str, model_text: str, series: Sequence[str]):
        self.model_id = model_id
        self.version = version
        self.series = tuple(series)
        self._booster = lgb.Booster(model_str=model_text)
        if self._booster.feature_name() != list(FEATURES):
            raise TrainingError(
                f"model {version} expects features {self._booster.feature_name()}, "
                f"this code computes {list(FEATURES)}"
            )

    def scorer(self, series_name: str) -> LearnedScorer | None:
        """A fresh scorer for the series, or None when the model was not trained on it."""
        if series_name not in self.series:
            return None
        return LearnedScorer(self._booster, self.series.index(series_name))

    def predict(self, features: FloatArray) -> FloatArray:
        return np.asarray(self._booster.predict(features), dtype=np.float64)


def describe(model: TrainedModel) -> Mapping[str, Any]:
    """The model's metrics as stored in `decision_models.performance_metrics`."""
    return {
        "holdout": model.evaluation.as_dict(),
        "training_points": model.training_points,
        "training_positives": model.training_positives,
        "feature_importance": model.importance,
        "features": list(FEATURES),
        "series": list(model.series),
    }
