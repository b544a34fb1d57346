"""The platform side of a maintenance job: its window, its row, and whether it averted the failure.

`MaintenanceJobWorkflow` orchestrates; these functions do the reading and writing its activities
need. A window is planned from the service's maintenance policy (inventory `maintenance`: job
length, lead time, the metric that stands for its load, daily blackouts, the replica group's
disruption budget), the change freezes in force and the forecast of the load metric over the
time left before the predicted failure (`choose_window`). A window a person asks for is checked
against the same constraints and refused with the reason, so a reschedule cannot land in a
freeze. Afterwards the metric that was running out is read again, fresh: the failure is averted
when no incident of the service opened during the job and the metric is back below both its
limit and where it stood before; only then is the prediction labelled `averted`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine

from models.forecasting import ForecastRequest
from models.inventory import WEEKDAYS, MaintenancePolicy
from models.maintenance import (
    Captured,
    OutcomeCheck,
    OutcomeVerdict,
    ScheduleRecord,
    WindowPlan,
    WindowRequest,
)
from nofx.forecasting.service import ForecastError, forecast_metric
from nofx.logging import get_logger
from nofx.maintenance.windows import Constraint, DisruptionBudget, Interval, choose_window
from nofx.telemetry.sources import MetricSource, MetricSourceError, Sample

log = get_logger(__name__)

STEP_SECONDS = 300.0
MAX_HORIZON_STEPS = 4032  # two weeks of 5-minute steps: as far as a load forecast reaches
# Jobs of the group that count against its disruption budget (those that ran or will run).
BOOKED = ("scheduled", "running", "awaiting_approval", "verifying", "completed", "rolled_back")


class JobError(ValueError):
    """The job cannot be planned as asked; the message names why."""


def policy_of(meta: dict[str, Any]) -> MaintenancePolicy:
    return MaintenancePolicy.model_validate(meta.get("maintenance") or {})


def _service(conn: Connection, name: str) -> dict[str, Any]:
    row = (
        conn.execute(text("SELECT name, metadata FROM services WHERE name = :s"), {"s": name})
        .mappings()
        .first()
    )
    if row is None:
        raise JobError(f"{name} is not in the inventory")
    return dict(row)


def blackout_intervals(policy: MaintenancePolicy, start: float, end: float) -> list[Interval]:
    """The policy's daily blackouts as intervals over [start, end] (UTC epoch seconds)."""
    out: list[Interval] = []
    first = datetime.fromtimestamp(start, UTC).date() - timedelta(days=1)
    days = int((end - start) // 86_400) + 3
    for offset in range(days):
        day = first + timedelta(days=offset)
        weekday = WEEKDAYS[day.weekday()]
        for b in policy.blackouts:
            if weekday not in b.days:
                continue
            lo = datetime.combine(day, b.start, UTC)
            hi = datetime.combine(day, b.end, UTC)
            if hi <= lo:
                hi += timedelta(days=1)
            if hi.timestamp() > start and lo.timestamp() < end:
                out.append(
                    Interval(
                        lo.timestamp(),
                        hi.timestamp(),
                        f"blackout {b.start:%H:%M}-{b.end:%H:%M} UTC: {b.reason}",
                    )
                )
    return out


def _freezes(conn: Connection, service: str, start: datetime, end: datetime) -> list[Interval]:
    rows = conn.execute(
        text(
            "SELECT starts_at, ends_at, reason FROM change_freezes"
            " WHERE scope IN ('*', :s) AND ends_at > :a AND starts_at < :b ORDER BY starts_at"
        ),
        {"s": service, "a": start, "b": end},
    ).all()
    return [
        Interval(r.starts_at.timestamp(), r.ends_at.timestamp(), f"change freeze: {r.reason}")
        for r in rows
    ]


def _booked(
    conn: Connection, service: str, group: str | None, workflow_id: str, start: datetime
) -> list[float]:
    """Starts of the other jobs of the service's replica group (or of the service alone)."""
    rows = conn.execute(
        text(
            "SELECT m.scheduled_at FROM maintenance_schedules m"
            " JOIN services s ON s.name = m.component_id"
            " WHERE (s.name = :s OR (CAST(:g AS text) IS NOT NULL AND s.metadata->>'group' = :g))"
            " AND m.status = ANY(:booked) AND m.workflow_id IS DISTINCT FROM :wf"
            " AND m.scheduled_at >= :since"
        ),
        {
            "s": service,
            "g": group,
            "booked": list(BOOKED),
            "wf": workflow_id,
            "since": start - timedelta(days=1),
        },
    ).scalars()
    return [t.timestamp() for t in rows]


def load_forecast(
    source: MetricSource, service: str, metric: str, now: datetime, deadline: datetime
) -> tuple[np.ndarray, np.ndarray, str]:
    """Times and mean forecast of the load metric up to the deadline, and what was done."""
    steps = max(
        1, min(MAX_HORIZON_STEPS, math.ceil((deadline - now).total_seconds() / STEP_SECONDS))
    )
    report = forecast_metric(
        source,
        ForecastRequest(
            service=service, metric=metric, step_seconds=STEP_SECONDS, horizon_steps=steps
        ),
        now=now,
    )
    times = np.array([p.ts.timestamp() for p in report.points], dtype=np.float64)
    means = np.array([p.mean for p in report.points], dtype=np.float64)
    return times, means, f"{metric} forecast by {report.model}"


def plan_window(engine: Engine, source: MetricSource, req: WindowRequest) -> WindowPlan:
    """The job's window: the one a person asked for if the constraints allow it, else the
    quietest allowed start before the deadline (the earliest allowed one when there is no load
    forecast, or no time to wait for a trough).

    Raises:
        JobError: the service is unknown, or the start a person asked for is not allowed.
    """
    now, deadline = req.now, req.deadline
    with engine.connect() as conn:
        row = _service(conn, req.component)
        meta = row["metadata"] or {}
        policy = policy_of(meta)
        duration_s = (req.duration_minutes or policy.duration_minutes) * 60
        horizon_end = max(deadline, req.requested_start or deadline) + timedelta(seconds=duration_s)
        constraints: list[Constraint] = [
            *(
                i.refuses
                for i in blackout_intervals(policy, now.timestamp(), horizon_end.timestamp())
            ),
            *(i.refuses for i in _freezes(conn, req.component, now, horizon_end)),
            DisruptionBudget(
                policy.disruption_budget_per_day,
                tuple(_booked(conn, req.component, meta.get("group"), req.workflow_id, now)),
            ).refuses,
        ]
    minutes = duration_s / 60
    if req.requested_start is not None:
        start = req.requested_start.timestamp()
        if start < now.timestamp() - 60:
            raise JobError(f"{req.requested_start.isoformat()} is in the past")
        why = next(
            (r for c in constraints if (r := c(start, start + duration_s)) is not None), None
        )
        if why is not None:
            raise JobError(f"{req.requested_start.isoformat()} is not allowed: {why}")
        late = start + duration_s > deadline.timestamp()
        return WindowPlan(
            start=req.requested_start,
            end=req.requested_start + timedelta(seconds=duration_s),
            duration_minutes=minutes,
            reason="the start a person asked for"
            + (" (after the predicted failure)" if late else ""),
            candidates=1,
        )
    load_metric, note = policy.load_metric, ""
    times = np.arange(now.timestamp(), deadline.timestamp(), STEP_SECONDS, dtype=np.float64)
    load = np.zeros_like(times)
    if load_metric is not None and deadline > now:
        try:
            times, load, note = load_forecast(source, req.component, load_metric, now, deadline)
        except (ForecastError, MetricSourceError) as err:
            note = f"no load forecast ({err}): the earliest allowed start"
            load_metric = None
    elif load_metric is None:
        note = "no load metric in the service's maintenance policy: the earliest allowed start"
    choice = choose_window(
        now.timestamp(),
        deadline.timestamp(),
        duration_s,
        times,
        load,
        constraints,
        lead_s=policy.lead_minutes * 60,
        spare=policy.spare,
    )
    reason = choice.reason + (f"; {note}" if note else "")
    if choice.start is None:
        return WindowPlan(
            start=None,
            end=None,
            duration_minutes=minutes,
            urgent=True,
            reason=reason,
            refused=choice.refused,
        )
    start_at = datetime.fromtimestamp(choice.start, UTC)
    return WindowPlan(
        start=start_at,
        end=start_at + timedelta(seconds=duration_s),
        duration_minutes=minutes,
        expected_load=choice.expected_load if load_metric else None,
        load_metric=load_metric,
        load_rank=choice.load_rank if load_metric else None,
        urgent=choice.urgent,
        reason=reason,
        refused=choice.refused,
        candidates=choice.candidates,
    )


def record_schedule(engine: Engine, rec: ScheduleRecord, now: datetime | None = None) -> None:
    """Write the job's row as it is now (insert once, then update: safe to retry)."""
    moment = now or datetime.now(UTC)
    values = {
        "id": rec.schedule_id,
        "pid": rec.prediction_id,
        "at": rec.scheduled_at or moment,
        "type": rec.maintenance_type or "pending",
        "minutes": round(rec.window.duration_minutes) if rec.window else None,
        "status": rec.status,
        "done": moment if rec.completed else None,
        "wf": rec.workflow_id,
        "c": rec.component,
        "i": rec.issue,
        "deadline": rec.deadline,
        "did": rec.decision_id,
        "window": rec.window.model_dump_json() if rec.window else None,
        "detail": rec.detail,
        "now": moment,
    }
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO maintenance_schedules (id, prediction_id, scheduled_at,"
                " maintenance_type, estimated_duration_minutes, required_resources, status,"
                " completed_at, workflow_id, component_id, predicted_issue, deadline,"
                " decision_id, window_plan, detail, updated_at) VALUES (:id, :pid, :at, :type,"
                " :minutes, NULL, :status, :done, :wf, :c, :i, :deadline, :did,"
                " CAST(:window AS jsonb), :detail, :now)"
                " ON CONFLICT (id) DO UPDATE SET prediction_id = EXCLUDED.prediction_id,"
                " scheduled_at = EXCLUDED.scheduled_at, maintenance_type ="
                " EXCLUDED.maintenance_type, estimated_duration_minutes ="
                " EXCLUDED.estimated_duration_minutes, status = EXCLUDED.status, completed_at ="
                " EXCLUDED.completed_at, deadline = EXCLUDED.deadline, decision_id ="
                " EXCLUDED.decision_id, window_plan = EXCLUDED.window_plan, detail ="
                " EXCLUDED.detail, updated_at = EXCLUDED.updated_at"
            ),
            values,
        )
    log.info(
        "maintenance schedule", workflow_id=rec.workflow_id, status=rec.status, at=str(values["at"])
    )


def fresh_reading(
    source: MetricSource,
    service: str,
    metric: str,
    after: datetime,
    *,
    refresh: Callable[[], None] | None = None,
    timeout_s: float = 120.0,
    poll_s: float = 2.0,
) -> Sample | None:
    """The metric's first sample taken after `after`, waiting for one up to `timeout_s`.

    `refresh` takes a reading now where the platform keeps its own samples (a scrape)."""
    deadline = time.monotonic() + timeout_s
    while True:
        if refresh is not None:
            refresh()
        sample = source.latest(service, metric)
        if sample is not None and sample.ts > after:
            return sample
        if time.monotonic() > deadline:
            return None
        time.sleep(poll_s)


def capture(
    source: MetricSource,
    check: OutcomeCheck,
    refresh: Callable[[], None] | None = None,
) -> Captured:
    """The metric just before the maintenance."""
    if check.metric is None:
        return Captured(value=None, detail="no metric to watch")
    sample = fresh_reading(source, check.component, check.metric, check.started_at, refresh=refresh)
    if sample is None:
        return Captured(value=None, detail=f"no fresh sample of {check.metric}")
    return Captured(value=sample.value, detail=f"{check.metric} = {sample.value:g} at {sample.ts}")


def judge_outcome(
    engine: Engine,
    source: MetricSource,
    check: OutcomeCheck,
    finished_at: datetime,
    refresh: Callable[[], None] | None = None,
) -> OutcomeVerdict:
    """Did the maintenance avert the failure? Labels the prediction `averted` when it did."""
    with engine.connect() as conn:
        meta = _service(conn, check.component)["metadata"] or {}
        incidents = conn.execute(
            text(
                "SELECT count(*) FROM healing_incidents"
                " WHERE root_cause->>'service' = :s AND started_at >= :since"
            ),
            {"s": check.component, "since": check.started_at},
        ).scalar_one()
    limit = (meta.get("limits") or {}).get(check.metric) if check.metric else None
    after: float | None = None
    problems: list[str] = []
    if incidents:
        problems.append(f"{incidents} incident(s) of {check.component} opened during the job")
    if check.metric is not None:
        sample = fresh_reading(source, check.component, check.metric, finished_at, refresh=refresh)
        if sample is None:
            problems.append(f"no sample of {check.metric} since the job finished")
        else:
            after = sample.value
            if limit is not None and after >= float(limit):
                problems.append(f"{check.metric} {after:g} is at its limit {float(limit):g}")
            if check.before is not None and after >= check.before:
                problems.append(
                    f"{check.metric} did not fall ({check.before:g} before, {after:g} after)"
                )
    averted = not problems
    detail = (
        "averted: "
        + (
            f"{check.metric} {check.before:g} → {after:g}"
            if check.metric and check.before is not None and after is not None
            else "no incident"
        )
        if averted
        else "not shown averted: " + "; ".join(problems)
    )
    if averted and check.prediction_id is not None:
        with engine.begin() as conn:
            conn.execute(
                text(
                    "UPDATE maintenance_predictions SET status = 'averted', updated_at = now()"
                    " WHERE id = :id AND status = 'open'"
                ),
                {"id": check.prediction_id},
            )
    log.info("maintenance outcome", service=check.component, issue=check.issue, detail=detail)
    return OutcomeVerdict(
        averted=averted,
        before=check.before,
        after=after,
        limit=float(limit) if limit is not None else None,
        incidents=int(incidents),
        detail=detail,
    )


def list_schedules(
    engine: Engine, service: str | None = None, limit: int = 20
) -> list[dict[str, Any]]:
    """The latest maintenance jobs, soonest start first among those still to run."""
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT id, workflow_id, component_id AS service, predicted_issue, status,"
                " scheduled_at, deadline, maintenance_type, decision_id, window_plan, detail,"
                " completed_at, updated_at FROM maintenance_schedules"
                " WHERE (CAST(:s AS text) IS NULL OR component_id = :s)"
                " ORDER BY (status IN ('scheduled', 'deciding', 'running')) DESC,"
                " scheduled_at DESC LIMIT :n"
            ),
            {"s": service, "n": limit},
        ).mappings()
        return [dict(r) for r in rows]
