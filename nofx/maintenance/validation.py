"""Stored predictions against what happened: each prediction's fate, precision and recall of
failure predictions, lead time, and the forecasts' recent error.

A prediction's fate is settled once it is known: `happened` when an incident of its kind opened
on the component while it stood (or within a grace period after its latest predicted time),
`did_not_happen` when its latest time passed quietly without maintenance. `averted` (set by the
maintenance job when its reading showed the risk gone) is never turned into either: whether the
failure would have come is not observable, so the report keeps averted predictions apart —
precision with them counted as right, and without them.

Recall is over the failures themselves: of the exhaustion incidents of the period, the share a
prediction opened before they started. Lead time is how long before the failure the warning
came (incident start, or for an averted one its predicted time, minus when it opened).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from statistics import median
from typing import Any

import numpy as np
from sqlalchemy import text
from sqlalchemy.engine import Engine

from models.forecasting import ForecastRequest
from models.maintenance import ForecastErrorRow, ValidationReport
from nofx.forecasting.service import ForecastError, forecast_metric, history
from nofx.logging import get_logger
from nofx.telemetry.sources import MetricSource, MetricSourceError

log = get_logger(__name__)

# The healing incident type that is the failure each predicted issue foretells.
INCIDENT_OF: dict[str, str] = {
    "oom": "memory_leak",
    "disk_full": "disk_filling",
    "pool_exhausted": "db_pool_exhaustion",
}
GRACE = timedelta(hours=1)


def settle(engine: Engine, now: datetime) -> dict[str, int]:
    """Label the predictions whose fate is known; how many got each label."""
    labelled = {"happened": 0, "did_not_happen": 0}
    with engine.begin() as conn:
        for issue, incident_type in INCIDENT_OF.items():
            happened = conn.execute(
                text(
                    "UPDATE maintenance_predictions p SET status = 'happened', updated_at = :now"
                    " WHERE p.status IN ('open', 'withdrawn') AND p.predicted_issue = :i"
                    " AND EXISTS (SELECT 1 FROM healing_incidents h WHERE h.incident_type = :t"
                    " AND h.root_cause->>'service' = p.component_id AND h.started_at >="
                    " p.created_at AND h.started_at <= coalesce(p.eta_latest, p.eta) + :grace)"
                ),
                {"i": issue, "t": incident_type, "now": now, "grace": GRACE},
            )
            labelled["happened"] += happened.rowcount
        quiet = conn.execute(
            text(
                "UPDATE maintenance_predictions SET status = 'did_not_happen', updated_at = :now"
                " WHERE status IN ('open', 'withdrawn')"
                " AND coalesce(eta_latest, eta) + :grace < :now"
            ),
            {"now": now, "grace": GRACE},
        )
        labelled["did_not_happen"] += quiet.rowcount
    return labelled


def _rows(engine: Engine, since: datetime) -> tuple[list[Any], list[Any]]:
    with engine.connect() as conn:
        predictions = conn.execute(
            text(
                "SELECT id, component_id, predicted_issue, status, created_at, eta,"
                " eta_earliest, eta_latest FROM maintenance_predictions WHERE created_at >= :s"
            ),
            {"s": since},
        ).all()
        incidents = conn.execute(
            text(
                "SELECT root_cause->>'service' AS service, incident_type, started_at"
                " FROM healing_incidents WHERE started_at >= :s AND incident_type = ANY(:t)"
            ),
            {"s": since, "t": list(INCIDENT_OF.values())},
        ).all()
    return list(predictions), list(incidents)


def forecast_errors(
    engine: Engine, source: MetricSource, now: datetime, *, horizon_steps: int = 12
) -> list[ForecastErrorRow]:
    """For each limited metric, the forecast made `horizon_steps` ago against what came, next to
    the naive forecast's error (the last value carried on): a ratio under 1 beats it."""
    step = 300.0
    origin = now - timedelta(seconds=step * horizon_steps)
    with engine.connect() as conn:
        limited = conn.execute(
            text(
                "SELECT name, metadata->'limits' AS limits FROM services"
                " WHERE metadata->'limits' IS NOT NULL ORDER BY name"
            )
        ).all()
    out: list[ForecastErrorRow] = []
    for name, limits in limited:
        for metric in sorted(limits or {}):
            request = ForecastRequest(
                service=name,
                metric=metric,
                step_seconds=step,
                horizon_steps=horizon_steps,
                until=origin,
            )
            try:
                report = forecast_metric(source, request, now=origin)
                actual = history(
                    source,
                    request.model_copy(update={"until": now, "history_hours": 24.0}),
                    now,
                )
            except (ForecastError, MetricSourceError) as err:
                log.info("no forecast error", service=name, metric=metric, error=str(err))
                continue
            times = actual.start + actual.step * np.arange(len(actual.values))
            known = np.isfinite(actual.values)
            pairs = [
                (p.mean, float(np.interp(p.ts.timestamp(), times[known], actual.values[known])))
                for p in report.points
                if known.any() and times[known][0] <= p.ts.timestamp() <= times[known][-1]
            ]
            if not pairs or not report.history:
                continue
            last = report.history[-1].value
            mae = float(np.mean([abs(f - a) for f, a in pairs]))
            naive = float(np.mean([abs(last - a) for _, a in pairs]))
            out.append(
                ForecastErrorRow(
                    service=name,
                    metric=metric,
                    origin=origin,
                    horizon_steps=horizon_steps,
                    points=len(pairs),
                    mae=mae,
                    naive_mae=naive,
                    ratio_to_naive=mae / naive if naive > 0 else None,
                    model=report.model,
                )
            )
    return out


def validate(
    engine: Engine,
    source: MetricSource | None,
    *,
    days: float = 30.0,
    now: datetime | None = None,
) -> ValidationReport:
    """Settle what is known, then judge the predictions of the last `days`."""
    moment = now or datetime.now(UTC)
    labelled = settle(engine, moment)
    since = moment - timedelta(days=days)
    predictions, incidents = _rows(engine, since)
    by_status: dict[str, int] = {}
    for p in predictions:
        by_status[p.status] = by_status.get(p.status, 0) + 1
    happened = by_status.get("happened", 0)
    averted = by_status.get("averted", 0)
    quiet = by_status.get("did_not_happen", 0)
    leads: list[float] = []
    eta_errors: list[float] = []
    caught = 0
    for incident in incidents:
        issue = next(i for i, t in INCIDENT_OF.items() if t == incident.incident_type)
        warned = [
            p
            for p in predictions
            if p.component_id == incident.service
            and p.predicted_issue == issue
            and p.created_at <= incident.started_at
        ]
        if not warned:
            continue
        caught += 1
        first = min(warned, key=lambda p: p.created_at)
        leads.append((incident.started_at - first.created_at).total_seconds() / 60)
        if first.eta is not None:
            eta_errors.append(abs((incident.started_at - first.eta).total_seconds()) / 3600)
    for p in predictions:
        if p.status == "averted" and p.eta is not None:
            leads.append((p.eta - p.created_at).total_seconds() / 60)
    judged = happened + averted + quiet
    return ValidationReport(
        since=since,
        until=moment,
        labelled=labelled,
        predictions=len(predictions),
        by_status=by_status,
        failures=len(incidents),
        failures_predicted=caught,
        precision=(happened + averted) / judged if judged else None,
        precision_without_averted=happened / (happened + quiet) if happened + quiet else None,
        recall=caught / len(incidents) if incidents else None,
        lead_minutes_median=median(leads) if leads else None,
        eta_error_hours_median=median(eta_errors) if eta_errors else None,
        forecast_error=forecast_errors(engine, source, moment) if source is not None else [],
    )
