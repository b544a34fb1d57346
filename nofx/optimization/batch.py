"""Batch windows: the platform's own heavy jobs (training, validation with its backtests) moved
into the fleet's forecast troughs.

Each heavy job is a Temporal Schedule that starts it every `every` (nofx.stack, nofx.client);
an interval schedule's `offset` is its phase, the time of day (for a daily job) it starts at.
The fleet's load is the sum of each service's forecast load metric (the one its maintenance
policy names, as maintenance windows use). For each phase in steps of `STEP_SECONDS` the job's
runs over the next day are laid on that forecast, and the phase whose runs meet the least load
(mean forecast over each run's duration) is the trough. A `batch` recommendation keeps the
phase now and the trough's, with the forecast load at each; the service it belongs to is the
platform itself (`PLATFORM`), so it is applied with `nofx predictive batch --apply`, which moves
the Schedule (and `--restore` moves it back), not through a decision about a service.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy import text
from sqlalchemy.engine import Engine

from nofx.forecasting.service import ForecastError
from nofx.logging import get_logger
from nofx.maintenance.jobs import load_forecast, policy_of
from nofx.optimization.recommendations import Draft
from nofx.telemetry.sources import MetricSource, MetricSourceError

log = get_logger(__name__)

BATCH = "batch"
PLATFORM = "nofx"  # the service a batch recommendation belongs to: the platform itself
STEP_SECONDS = 300.0
HORIZON = timedelta(days=1)


@dataclass(frozen=True)
class HeavyJob:
    """A heavy job of the platform: its Schedule, how often it runs and how long a run takes."""

    schedule_id: str
    what: str
    every: timedelta
    duration: timedelta


@dataclass(frozen=True)
class FleetLoad:
    """The fleet's forecast load on a grid of `STEP_SECONDS` (UTC epoch seconds)."""

    times: np.ndarray
    load: np.ndarray
    services: list[str]
    notes: list[str]


@dataclass(frozen=True)
class Phase:
    offset_s: float
    expected_load: float  # mean forecast load over the job's runs in the horizon
    next_run: datetime


def fleet_load(
    engine: Engine, source: MetricSource, now: datetime, horizon: timedelta = HORIZON
) -> FleetLoad:
    """The sum of every service's forecast load metric over the horizon; a service whose load
    cannot be forecast is left out, and the notes say so.

    Raises:
        ValueError: no service's load could be forecast (nothing to find a trough in).
    """
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT name, metadata FROM services ORDER BY name")).all()
    steps = math.ceil(horizon.total_seconds() / STEP_SECONDS)
    times = now.timestamp() + STEP_SECONDS * np.arange(1, steps + 1, dtype=np.float64)
    total = np.zeros_like(times)
    used: list[str] = []
    notes: list[str] = []
    for name, meta in rows:
        metric = policy_of(meta or {}).load_metric
        if metric is None:
            continue
        try:
            at, means, how = load_forecast(source, name, metric, now, now + horizon)
        except (ForecastError, MetricSourceError) as err:
            notes.append(f"{name}: no load forecast ({err})")
            continue
        total += np.interp(times, at, np.nan_to_num(means, nan=0.0))
        used.append(name)
        notes.append(f"{name}: {how}")
    if not used:
        raise ValueError(
            "no service's load could be forecast (a load_metric in its maintenance policy and"
            " its telemetry): no trough to move the platform's jobs into"
            + (f"; {'; '.join(notes)}" if notes else "")
        )
    return FleetLoad(times, total, used, notes)


def phase_load(load: FleetLoad, job: HeavyJob, offset_s: float) -> Phase:
    """The mean forecast load the job's runs meet over the horizon when it starts at
    `offset_s` into each period (Temporal's interval schedule: epoch + offset + k * every)."""
    every = job.every.total_seconds()
    first = load.times[0] - STEP_SECONDS
    start = offset_s + every * math.ceil((first - offset_s) / every)
    runs = np.arange(start, load.times[-1], every)
    if len(runs) == 0:
        runs = np.array([start])
    samples = []
    for run in runs:
        window = np.arange(run, run + max(job.duration.total_seconds(), STEP_SECONDS), STEP_SECONDS)
        samples.append(np.interp(window, load.times, load.load).mean())
    return Phase(
        offset_s=float(offset_s % every),
        expected_load=float(np.mean(samples)),
        next_run=datetime.fromtimestamp(float(runs[0]), tz=UTC),
    )


def trough(load: FleetLoad, job: HeavyJob) -> Phase:
    """The phase whose runs meet the least forecast load (the earliest of equals)."""
    every = job.every.total_seconds()
    candidates = np.arange(0.0, every, STEP_SECONDS)
    phases = [phase_load(load, job, float(o)) for o in candidates]
    return min(phases, key=lambda p: (round(p.expected_load, 9), p.offset_s))


def batch_draft(load: FleetLoad, job: HeavyJob, current_offset_s: float) -> tuple[Draft, str]:
    """The recommendation to move `job` from its phase now into the trough."""
    now_phase = phase_load(load, job, current_offset_s)
    best = trough(load, job)
    ratio = best.expected_load / now_phase.expected_load if now_phase.expected_load > 0 else 1.0
    draft = Draft(
        BATCH,
        job.schedule_id,
        "offset_s",
        {
            "offset_s": now_phase.offset_s,
            "expected_load": round(now_phase.expected_load, 6),
            "next_run": now_phase.next_run.isoformat(),
        },
        {
            "offset_s": best.offset_s,
            "expected_load": round(best.expected_load, 6),
            "next_run": best.next_run.isoformat(),
            "every_s": job.every.total_seconds(),
        },
        {
            "load_ratio": round(ratio, 4),
            "load_avoided": round(now_phase.expected_load - best.expected_load, 6),
        },
        [
            {
                "action": "move_schedule",
                "params": {"schedule_id": job.schedule_id, "offset_s": best.offset_s},
            }
        ],
        {
            "services": load.services,
            "forecast": load.notes,
            "duration_s": job.duration.total_seconds(),
        },
    )
    reason = (
        f"{job.what}: start {_clock(best.offset_s)} into each {_clock(job.every.total_seconds())}"
        f" (now {_clock(now_phase.offset_s)}): forecast fleet load {now_phase.expected_load:.3g}"
        f" -> {best.expected_load:.3g} ({ratio:.0%})"
    )
    return draft, reason


def _clock(seconds: float) -> str:
    hours, rest = divmod(round(seconds), 3600)
    return f"{hours:02d}:{rest // 60:02d}"


def heavy_jobs() -> list[HeavyJob]:
    """The platform's heavy scheduled jobs and how long a run takes (generous estimates: a
    move only needs the run to fit the trough). `every` here is the shipped period; a refresh
    reads each Schedule's own."""
    from nofx.client import PREDICTION_VALIDATION_SCHEDULE_ID
    from nofx.stack import DECISION_TRAINING_SCHEDULE_ID, TRAINING_SCHEDULE_ID

    return [
        HeavyJob(
            DECISION_TRAINING_SCHEDULE_ID,
            "success-model training",
            timedelta(days=1),
            timedelta(minutes=10),
        ),
        HeavyJob(
            PREDICTION_VALIDATION_SCHEDULE_ID,
            "prediction validation and failure-model training",
            timedelta(days=1),
            timedelta(minutes=15),
        ),
        HeavyJob(
            TRAINING_SCHEDULE_ID,
            "anomaly-detector training",
            timedelta(hours=6),
            timedelta(minutes=5),
        ),
    ]


def batch_row(engine: Engine, recommendation_id: str) -> dict[str, Any]:
    """A batch recommendation's row.

    Raises:
        ValueError: no such recommendation, or not a batch window.
    """
    with engine.connect() as conn:
        row = (
            conn.execute(
                text(
                    "SELECT id, service, optimization_type, target, status, current_state,"
                    " recommended_state FROM optimization_recommendations"
                    " WHERE id = CAST(:i AS uuid)"
                ),
                {"i": recommendation_id},
            )
            .mappings()
            .first()
        )
    if row is None:
        raise ValueError(f"no recommendation {recommendation_id}")
    if row["optimization_type"] != BATCH:
        raise ValueError(
            f"recommendation {recommendation_id} is a {row['optimization_type']} one:"
            f" nofx predictive optimize apply {recommendation_id}"
        )
    return dict(row)


def mark(
    engine: Engine,
    recommendation_id: str,
    *,
    was: str,
    status: str,
    realised: dict[str, Any],
    now: datetime,
) -> bool:
    """Move a batch recommendation from `was` to `status` with what happened; False when it
    was no longer `was` (someone else moved it)."""
    with engine.begin() as conn:
        changed = conn.execute(
            text(
                "UPDATE optimization_recommendations SET status = :st,"
                " realised_improvement = CAST(:r AS jsonb), applied_at = :n, updated_at = :n"
                " WHERE id = CAST(:i AS uuid) AND status = :was"
            ),
            {
                "st": status,
                "r": json.dumps(realised),
                "n": now,
                "i": recommendation_id,
                "was": was,
            },
        ).rowcount
    log.info("batch window " + status, id=recommendation_id, realised=realised)
    return bool(changed)
