"""A LightGBM failure classifier trained on the platform's own history: is an exhaustion failure
of this service coming within the next `HORIZON`?

The forecast (`nofx.forecasting`) says when a metric reaches its limit if it goes on as it has;
the classifier says how likely a failure is, having seen how past failures began. Its labels
are the platform's own records (`nofx.diagnosis.training.label_windows`): injected faults and
resolved incidents of the exhaustion patterns (memory leak → `oom`, disk filling →
`disk_full`, pool exhaustion → `pool_exhausted`). A moment of a limited metric is positive when
a failure of its issue was under way then (an injected ramp, from its start to its end) or came
within `HORIZON` (an incident, from `HORIZON` before it opened). Features are generic — the level
against the inventory's limit, its rise over the last 5, 15 and 30 minutes, its wobble, the time
left at the recent rate — so a new metric needs no code.

It is held out in time (the latest share of fault episodes, as the detector is) and goes live
only when it ranks well there; the forecasting pass then uses it where the forecast sees no
exhaustion, writing a prediction with its probability and the horizon as its interval.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import lightgbm as lgb
import numpy as np
import numpy.typing as npt
from sqlalchemy.engine import Engine

from nofx import model_registry as registry
from nofx.detection.learned import TrainingError, roc_auc
from nofx.diagnosis.training import LabelWindow, holdout_cut, label_windows
from nofx.inventory import limited_metrics
from nofx.logging import get_logger
from nofx.maintenance.predictions import HORIZON, issue_of
from nofx.maintenance.validation import INCIDENT_OF
from nofx.telemetry.sources import MetricSource, MetricSourceError, SeriesNotFoundError

log = get_logger(__name__)

MODEL_TYPE = "failure_classifier"
STEP = timedelta(seconds=60)
LAGS = (5, 15, 30)  # steps of STEP
ISSUES = tuple(INCIDENT_OF)
FEATURES = (
    "level",
    *(f"rise_{k}m" for k in LAGS),
    "wobble_15m",
    "log_minutes_left",
    "issue",
)
ACTIVATION = {"roc_auc": 0.8}
PARAMS: dict[str, Any] = {
    "objective": "binary",
    "learning_rate": 0.05,
    "num_leaves": 15,
    "min_data_in_leaf": 20,
    "feature_fraction": 1.0,
    "verbose": -1,
    "seed": 7,
    "deterministic": True,
}
ROUNDS = 200

FloatArray = npt.NDArray[np.float64]


def features(values: FloatArray, limit: float, issue: str) -> FloatArray:
    """One row per step of `values` (a metric on the STEP grid; NaN where unknown)."""
    level = values / limit
    rows = [level]
    for k in LAGS:
        back = np.full_like(level, np.nan)
        back[k:] = level[:-k]
        rows.append((level - back) / k)  # share of the limit per minute
    wobble = np.full_like(level, np.nan)
    for i in range(15, len(level) + 1):
        window = level[i - 15 : i]
        if np.isfinite(window).sum() >= 5:
            wobble[i - 1] = float(np.nanstd(window))
    rows.append(wobble)
    rate = np.where(rows[2] > 1e-6, rows[2], np.nan)
    rows.append(np.log1p(np.clip((1 - level) / rate, 0, 10_000)))
    rows.append(np.full_like(level, float(ISSUES.index(issue) if issue in ISSUES else -1)))
    return np.column_stack(rows)


def _labels(times: FloatArray, windows: Sequence[LabelWindow]) -> npt.NDArray[np.int8]:
    out = np.zeros(len(times), dtype=np.int8)
    for w in windows:
        if w.origin == "injection":
            lo, hi = w.start.timestamp(), w.end.timestamp()
        else:
            lo, hi = (w.start - HORIZON).timestamp(), w.start.timestamp()
        out[(times >= lo) & (times <= hi)] = 1
    return out


def _grid(
    source: MetricSource, service: str, metric: str, since: datetime, until: datetime
) -> tuple[FloatArray, FloatArray] | None:
    try:
        series = source.query_range(service, metric, since, until, STEP)
    except (SeriesNotFoundError, MetricSourceError):
        return None
    if series.dropna().empty:
        return None
    times = np.array([t.timestamp() for t in series.index], dtype=np.float64)
    return times, series.to_numpy(dtype=np.float64)


def _limited(engine: Engine, services: Sequence[str] | None) -> list[tuple[str, str, float]]:
    return [
        (name, metric, limit)
        for name, metric, limit in limited_metrics(engine, list(services) if services else None)
        if issue_of(metric)[0] in INCIDENT_OF
    ]


@dataclass(frozen=True)
class Dataset:
    x: FloatArray
    y: npt.NDArray[np.int8]
    t: FloatArray


def build_dataset(
    engine: Engine,
    source: MetricSource,
    since: datetime,
    until: datetime,
    services: Sequence[str] | None = None,
) -> tuple[Dataset, list[LabelWindow], dict[str, Any]]:
    windows = label_windows(engine, since, until)
    xs, ys, ts = [], [], []
    summary: dict[str, Any] = {"series": 0, "by_series": {}}
    for service, metric, limit in _limited(engine, services):
        issue = issue_of(metric)[0]
        pattern = INCIDENT_OF[issue]
        grid = _grid(source, service, metric, since, until)
        if grid is None:
            continue
        times, values = grid
        x = features(values, limit, issue)
        y = _labels(times, [w for w in windows if w.service == service and w.pattern == pattern])
        keep = np.isfinite(x[:, 0])
        xs.append(x[keep])
        ys.append(y[keep])
        ts.append(times[keep])
        summary["series"] += 1
        summary["by_series"][f"{service}/{metric}"] = {
            "points": int(keep.sum()),
            "positives": int(y[keep].sum()),
        }
    if not xs:
        raise TrainingError("no limited exhaustion metric has samples in the window")
    data = Dataset(np.vstack(xs), np.concatenate(ys), np.concatenate(ts))
    summary["points"] = len(data.y)
    summary["positives"] = int(data.y.sum())
    return data, windows, summary


@dataclass(frozen=True)
class TrainedClassifier:
    model_id: str
    version: str
    active: bool
    verdict: str
    metrics: dict[str, Any]
    training: dict[str, Any]


def _scores(y: npt.NDArray[np.int8], p: FloatArray) -> dict[str, Any]:
    flagged = p >= 0.5
    tp = int((flagged & (y == 1)).sum())
    return {
        "points": len(y),
        "positives": int(y.sum()),
        "roc_auc": roc_auc(y, p),
        "brier": float(np.mean((p - y) ** 2)) if len(y) else None,
        "precision": tp / int(flagged.sum()) if flagged.any() else None,
        "recall": tp / int(y.sum()) if y.any() else None,
    }


def train_classifier(
    engine: Engine,
    source: MetricSource,
    since: datetime,
    until: datetime,
    *,
    holdout_share: float = 0.3,
    services: Sequence[str] | None = None,
    now: datetime | None = None,
) -> TrainedClassifier:
    """Train on the earlier history, judge on the later, store; live only when it ranks well.

    Raises:
        TrainingError: nothing to learn from (no samples, no failure, one episode only).
    """
    data, windows, summary = build_dataset(engine, source, since, until, services)
    relevant = [w for w in windows if w.pattern in INCIDENT_OF.values()]
    if not relevant or not data.y.any():
        raise TrainingError("no exhaustion failure in the window: nothing to learn")
    cut = holdout_cut(relevant, holdout_share).timestamp()
    train_mask = data.t < cut
    if not data.y[train_mask].any() or not data.y[~train_mask].any():
        raise TrainingError("the held-out split leaves no failure on one side")
    booster = lgb.train(
        PARAMS,
        lgb.Dataset(data.x[train_mask], data.y[train_mask], feature_name=list(FEATURES)),
        num_boost_round=ROUNDS,
    )
    held = np.asarray(booster.predict(data.x[~train_mask]), dtype=np.float64)
    holdout = _scores(data.y[~train_mask], held)
    metrics: dict[str, Any] = {"holdout": holdout, "features": list(FEATURES)}
    auc = holdout["roc_auc"]
    active = auc is not None and auc >= ACTIVATION["roc_auc"]
    verdict = (
        (f"held-out ROC AUC {auc:.3f}" if auc is not None else "held-out ROC AUC undefined")
        + (" clears" if active else " does not clear")
        + f" {ACTIVATION['roc_auc']}"
    )
    moment = now or datetime.now(UTC)
    version = f"failure-lgbm-{moment:%Y%m%dT%H%M%S}"
    training = {
        "since": since.isoformat(),
        "until": until.isoformat(),
        "holdout_from": datetime.fromtimestamp(cut, UTC).isoformat(),
        "horizon_minutes": HORIZON.total_seconds() / 60,
        **summary,
    }
    model_id = registry.store(
        engine,
        MODEL_TYPE,
        version,
        booster.model_to_string(),
        "lightgbm-text",
        training,
        {**metrics, "activation": {"active": active, "verdict": verdict}},
        activate=active,
        now=moment,
    )
    log.info("failure classifier trained", version=version, active=active, verdict=verdict)
    return TrainedClassifier(str(model_id), version, active, verdict, metrics, training)


class FailureClassifier:
    """The active classifier, scoring the latest moment of a limited metric."""

    def __init__(self, model_id: str, version: str, model_text: str) -> None:
        self.model_id = model_id
        self.version = version
        self._booster = lgb.Booster(model_str=model_text)

    @classmethod
    def active(cls, engine: Engine) -> FailureClassifier | None:
        model_id = registry.active_id(engine, MODEL_TYPE)
        if model_id is None:
            return None
        info, artifact = registry.load_artifact(engine, model_id)
        return cls(model_id, info.version, artifact)

    def probability(
        self, source: MetricSource, service: str, metric: str, limit: float, now: datetime
    ) -> float | None:
        """P(a failure of `metric`'s issue within HORIZON), or None without recent samples."""
        issue = issue_of(metric)[0]
        if issue not in INCIDENT_OF:
            return None
        grid = _grid(source, service, metric, now - timedelta(minutes=45), now)
        if grid is None:
            return None
        row = features(grid[1], limit, issue)[-1:]
        if not np.isfinite(row[0, 0]):
            return None
        return float(self._booster.predict(row)[0])
