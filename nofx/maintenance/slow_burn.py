"""A slow burn is maintenance, not an incident.

The monitor sees a memory leak or a filling disk within a minute or two of its start, long before
anything fails. When the service's inventory declares the limit that metric runs out at, nobody
feels it yet (no latency or error signal is up) and, at the rate it rises, the limit is still far
off, restarting the service now — at whatever load it has — is the wrong answer: the predictive
track forecasts when the limit is reached and books the fix into the quietest window before then
(`MaintenanceJobWorkflow`). So the incident is held back, and says why.

It is only held back while all of that stays true. Once the metric passes `MAX_SHARE` of its
limit, or users feel it, or the limit at its current rise comes sooner than the booked job ends
(`MIN_MINUTES_LEFT` away when no job is booked yet), the monitor opens the incident as before and
healing acts: the reactive path stays the safety net under the predictive one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from scipy.stats import theilslopes
from sqlalchemy import text
from sqlalchemy.engine import Engine

from models.maintenance import TERMINAL
from nofx.maintenance.predictions import COMPONENT, issue_of
from nofx.telemetry.sources import MetricSource, MetricSourceError

# The incident patterns that are a resource running out, and the predicted issue of each.
SLOW_BURNS = {"memory_leak": "oom", "disk_filling": "disk_full"}
# Signals that mean users already feel it: then it is an incident, however slow.
USER_FACING = frozenset({"latency_up", "error_ratio_up", "probe_timeout", "pool_saturated"})
MAX_SHARE = 0.9  # past this share of its limit, the metric is too close to wait
# The predictive track's lead-time goal: it acts at least this long before a limit. Closer than
# that with no job booked to end in time, healing acts instead.
MIN_MINUTES_LEFT = 10.0
LOOKBACK = timedelta(minutes=5)  # the rise is measured over this
STEP = timedelta(seconds=5)
MIN_POINTS = 6


@dataclass(frozen=True)
class SlowBurn:
    """Why an incident of `service` is the predictive track's: the metric, how far it is from
    its limit, and the prediction and job already taking care of it (when there are)."""

    service: str
    pattern: str
    metric: str
    value: float
    limit: float
    minutes_left: float | None  # at the current rise; None when it is not rising
    prediction_id: str | None
    job: str | None

    def reason(self) -> str:
        left = (
            "not rising now"
            if self.minutes_left is None
            else f"~{self.minutes_left:.0f} min to the limit at its current rise"
        )
        share = self.value / self.limit
        handled = (
            f"; prediction {self.prediction_id}" + (f", job {self.job}" if self.job else "")
            if self.prediction_id
            else "; no prediction yet: the forecasting pass will judge it"
        )
        return (
            f"slow burn, predictive maintenance's: {self.metric} at {share:.0%} of its limit,"
            f" {left}, no user-facing signal{handled}"
        )


def limited_metric(engine: Engine, service: str, issue: str) -> tuple[str, float] | None:
    """The metric of `service` whose inventory limit running out is `issue`, with the limit."""
    with engine.connect() as conn:
        limits: dict[str, Any] | None = conn.execute(
            text("SELECT metadata->'limits' FROM services WHERE name = :s"), {"s": service}
        ).scalar_one_or_none()
    for metric, limit in sorted((limits or {}).items()):
        if issue_of(metric)[0] == issue:
            return metric, float(limit)
    return None


def rise_per_second(times: np.ndarray, values: np.ndarray) -> float:
    """The Theil-Sen slope of the points (robust to a stray sample), per second."""
    slope, *_ = theilslopes(values, times)
    return float(slope)


def assess(
    engine: Engine,
    source: MetricSource,
    service: str,
    pattern: str,
    signals: list[str],
    now: datetime,
) -> SlowBurn | None:
    """The slow burn an incident of `pattern` on `service` is, or None when it is an incident:
    not a resource pattern, users feel it, no limit declared, too few samples to tell the rise,
    too close to the limit, or too fast to wait."""
    issue = SLOW_BURNS.get(pattern)
    if issue is None or USER_FACING & set(signals):
        return None
    limited = limited_metric(engine, service, issue)
    if limited is None:
        return None
    metric, limit = limited
    try:
        series = source.query_range(service, metric, now - LOOKBACK, now, STEP).dropna()
    except MetricSourceError:
        return None
    if len(series) < MIN_POINTS:
        return None
    times = np.array([t.timestamp() for t in series.index], dtype=np.float64)
    values = series.to_numpy(dtype=np.float64)
    value = float(values[-1])
    if not math.isfinite(value) or value >= MAX_SHARE * limit:
        return None
    slope = rise_per_second(times, values)
    minutes_left = (limit - value) / slope / 60 if slope > 0 else None
    prediction_id, job, job_ends = _taking_care(engine, service, issue)
    if minutes_left is not None:
        runs_out = now + timedelta(minutes=minutes_left)
        # A booked job that ends before the limit keeps it waiting; else it needs the time the
        # predictive track takes to book one.
        in_time = job_ends is not None and job_ends < runs_out
        if not in_time and minutes_left < MIN_MINUTES_LEFT:
            return None
    return SlowBurn(service, pattern, metric, value, limit, minutes_left, prediction_id, job)


def _taking_care(
    engine: Engine, service: str, issue: str
) -> tuple[str | None, str | None, datetime | None]:
    """The open prediction of `issue` on `service`, and its maintenance job (workflow id, when
    it is planned to end) when one is booked and has not ended."""
    with engine.connect() as conn:
        row = conn.execute(
            text(
                "SELECT p.id, s.workflow_id, s.scheduled_at"
                " + make_interval(mins => coalesce(s.estimated_duration_minutes, 0))"
                " FROM maintenance_predictions p"
                " LEFT JOIN maintenance_schedules s ON s.component_id = p.component_id"
                " AND s.predicted_issue = p.predicted_issue"
                " AND NOT (s.status = ANY(:ended))"
                " WHERE p.component_type = :c AND p.component_id = :s"
                " AND p.predicted_issue = :i AND p.status = 'open'"
                " ORDER BY p.created_at DESC LIMIT 1"
            ),
            {"c": COMPONENT, "s": service, "i": issue, "ended": sorted(TERMINAL)},
        ).first()
    return (None, None, None) if row is None else (str(row[0]), row[1], row[2])
