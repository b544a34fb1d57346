"""Maintenance predictions: which service runs out of what, when, and what to do before then.

For every service whose inventory entry sets `limits`, each limited metric is forecast
(`nofx.forecasting.service.forecast_metric`) and its time to exhaustion assessed; an alarm
(`nofx.forecasting.exhaustion.alarming`) becomes an open row of `maintenance_predictions` with
its probability, when the limit is reached (with the interval around it), the recommended
action and the business impact (tier, owner, SLO). A prediction that changes updates its row;
one a later pass no longer sees is withdrawn — never deleted, so validation can judge it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine

from models.forecasting import ExhaustionEstimate, ForecastRequest
from nofx.forecasting.exhaustion import ALARM_PROBABILITY
from nofx.forecasting.service import ForecastError, forecast_metric
from nofx.inventory import limited_metrics
from nofx.logging import get_logger
from nofx.telemetry.sources import MetricSource, MetricSourceError

if TYPE_CHECKING:
    from nofx.maintenance.failure_model import FailureClassifier

log = get_logger(__name__)
# The failure classifier's horizon (nofx.maintenance.failure_model.HORIZON).
HORIZON = timedelta(minutes=30)
# A failure predicted again this soon after maintenance averted it is the same one coming back.
RECURRENCE = timedelta(hours=6)

COMPONENT = "service"
# What running out of a metric is called and what heals it before it happens, by the words a
# metric's name contains (the first that matches); anything else is "<metric>_exhausted".
ISSUES: tuple[tuple[tuple[str, ...], str, str], ...] = (
    (("rss", "memory", "mem"), "oom", "restart_service"),
    (("disk",), "disk_full", "cleanup_disk"),
    (("pool", "connection"), "pool_exhausted", "resize_pool"),
)


def issue_of(metric: str) -> tuple[str, str | None]:
    """The predicted issue and the recommended action for exhausting `metric`."""
    name = metric.lower()
    for words, issue, action in ISSUES:
        if any(w in name for w in words):
            return issue, action
    return f"{metric}_exhausted", None


@dataclass(frozen=True)
class Recorded:
    service: str
    metric: str
    issue: str
    change: str  # opened, updated, withdrawn, quiet
    prediction_id: str | None
    estimate: ExhaustionEstimate | None
    recurring: str | None = None  # set on an opening: the same failure came back after an aversion


def record(
    engine: Engine, service: str, metric: str, estimate: ExhaustionEstimate | None, now: datetime
) -> Recorded:
    """Open, update or withdraw the service's prediction for `metric` from `estimate`."""
    issue, action = issue_of(metric)
    alarm = _alarms(estimate)
    with engine.begin() as conn:
        row = conn.execute(
            text(
                "SELECT s.tier, s.owner, s.slo_targets, p.id FROM services s"
                " LEFT JOIN maintenance_predictions p ON p.component_id = s.name"
                " AND p.component_type = :c AND p.predicted_issue = :i AND p.status = 'open'"
                " WHERE s.name = :s FOR UPDATE OF s"
            ),
            {"s": service, "c": COMPONENT, "i": issue},
        ).first()
        if row is None:
            raise ForecastError(f"{service} is not in the inventory")
        open_id = str(row.id) if row.id else None
        if not alarm:
            if open_id is None:
                return Recorded(service, metric, issue, "quiet", None, estimate)
            conn.execute(
                text(
                    "UPDATE maintenance_predictions SET status = 'withdrawn', updated_at = :now"
                    " WHERE id = :id"
                ),
                {"id": open_id, "now": now},
            )
            log.info("prediction withdrawn", service=service, issue=issue)
            return Recorded(service, metric, issue, "withdrawn", open_id, estimate)
        assert estimate is not None
        assert estimate.eta is not None
        values = {
            "c": COMPONENT,
            "s": service,
            "i": issue,
            "m": metric,
            "p": round(min(estimate.probability, 0.99), 2),
            "ttf": int(max(0.0, (estimate.eta - now).total_seconds()) // 3600),
            "eta": estimate.eta,
            "lo": estimate.earliest,
            "hi": estimate.latest,
            "src": estimate.source,
            "action": json.dumps(
                {
                    "action": action,
                    "reason": f"{metric} reaches its limit {estimate.limit:g}"
                    f" ({estimate.source}, p={estimate.probability:.2f})",
                    "before": (estimate.earliest or estimate.eta).isoformat(),
                }
            ),
            "impact": json.dumps(
                {"tier": row.tier, "owner": row.owner, "slo": row.slo_targets or {}}
            ),
            "now": now,
        }
        recurring: str | None = None
        if open_id is None:
            open_id = str(
                conn.execute(
                    text(
                        "INSERT INTO maintenance_predictions (component_type, component_id,"
                        " predicted_issue, metric, probability, time_to_failure_hours, eta,"
                        " eta_earliest, eta_latest, source, recommended_action, business_impact,"
                        " created_at, updated_at) VALUES (:c, :s, :i, :m, :p, :ttf, :eta, :lo,"
                        " :hi, :src, CAST(:action AS jsonb), CAST(:impact AS jsonb), :now, :now)"
                        " RETURNING id"
                    ),
                    values,
                ).scalar_one()
            )
            change = "opened"
            recurring = _recurrence(conn, service, issue, now)
        else:
            conn.execute(
                text(
                    "UPDATE maintenance_predictions SET probability = :p,"
                    " time_to_failure_hours = :ttf, eta = :eta, eta_earliest = :lo,"
                    " eta_latest = :hi, source = :src, recommended_action = CAST(:action AS"
                    " jsonb), business_impact = CAST(:impact AS jsonb), updated_at = :now"
                    " WHERE id = :id"
                ),
                {**values, "id": open_id},
            )
            change = "updated"
    log.info("prediction " + change, service=service, issue=issue, eta=str(estimate.eta))
    return Recorded(service, metric, issue, change, open_id, estimate, recurring)


def _recurrence(conn: Connection, service: str, issue: str, now: datetime) -> str | None:
    """Why a prediction just opened is the same failure coming back: maintenance averted one of
    `issue` on `service` less than `RECURRENCE` ago. Maintenance then only buys time (the leak is
    in the code, the fill goes on): doing it again is for a person to decide."""
    last = conn.execute(
        text(
            "SELECT updated_at FROM maintenance_predictions WHERE component_type = :c"
            " AND component_id = :s AND predicted_issue = :i AND status = 'averted'"
            " AND updated_at > :since ORDER BY updated_at DESC LIMIT 1"
        ),
        {"c": COMPONENT, "s": service, "i": issue, "since": now - RECURRENCE},
    ).scalar_one_or_none()
    if last is None:
        return None
    minutes = max(0.0, (now - last).total_seconds() / 60)
    return (
        f"{issue} of {service} is predicted again {minutes:.0f} min after maintenance averted it"
        f" ({last:%Y-%m-%d %H:%M} UTC): the cause is still there, maintenance only buys time"
    )


def predict(
    engine: Engine,
    source: MetricSource,
    *,
    now: datetime | None = None,
    services: list[str] | None = None,
    step_seconds: float = 300.0,
    horizon_steps: int = 288,
    history_hours: float = 168.0,
    classifier: FailureClassifier | None = None,
) -> list[Recorded]:
    """One prediction pass over the services with limits (or `services`); with `classifier`
    (nofx.maintenance.failure_model), its warnings where the forecast sees no exhaustion."""
    moment = now or datetime.now(UTC)
    out: list[Recorded] = []
    for name, metric, limit in limited_metrics(engine, services):
        request = ForecastRequest(
            service=name,
            metric=metric,
            step_seconds=step_seconds,
            horizon_steps=horizon_steps,
            history_hours=history_hours,
            until=moment,
        )
        estimate: ExhaustionEstimate | None = None
        try:
            report = forecast_metric(source, request, limit=float(limit), now=moment)
            estimate = report.exhaustion
        except (ForecastError, MetricSourceError) as err:
            log.warning("no forecast", service=name, metric=metric, error=str(err))
            if classifier is None:
                continue
        if classifier is not None and not _alarms(estimate):
            estimate = _classified(classifier, source, name, metric, float(limit), moment) or (
                estimate
            )
        out.append(record(engine, name, metric, estimate, moment))
    return out


def _alarms(estimate: ExhaustionEstimate | None) -> bool:
    return (
        estimate is not None
        and estimate.eta is not None
        and estimate.probability >= ALARM_PROBABILITY
    )


def _classified(
    classifier: FailureClassifier,
    source: MetricSource,
    service: str,
    metric: str,
    limit: float,
    now: datetime,
) -> ExhaustionEstimate | None:
    """The failure classifier's warning where the forecast sees none: its probability, and the
    classifier's horizon as the interval of the failure time."""
    p = classifier.probability(source, service, metric, limit, now)
    if p is None or p < ALARM_PROBABILITY:
        return None
    return ExhaustionEstimate(
        limit=limit,
        probability=p,
        eta=now + HORIZON,
        earliest=now,
        latest=now + HORIZON,
        source=f"classifier {classifier.version}",
    )


def open_predictions(engine: Engine, service: str | None = None) -> list[dict[str, Any]]:
    """The open predictions, soonest failure first."""
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT id, component_id AS service, predicted_issue, metric, probability,"
                " time_to_failure_hours, eta, eta_earliest, eta_latest, source,"
                " recommended_action, business_impact, created_at, updated_at"
                " FROM maintenance_predictions WHERE status = 'open'"
                " AND (CAST(:s AS text) IS NULL OR component_id = :s) ORDER BY eta NULLS LAST"
            ),
            {"s": service},
        ).mappings()
        return [dict(r) for r in rows]
