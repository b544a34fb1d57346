"""Applying a recommendation: take it (`claim`), measure the service before and after the
change (`measure`), judge whether it regressed (`judge`) and write what happened (`release`).

The orchestration is `workflows.optimization.OptimizationWorkflow`: a decision of type
`optimization` approves by risk, the steps run through the shared remediation runner (guardrails,
saga), and after a settling period the measurement is repeated. These functions are its I/O.

A measurement is what users see: `requests` real requests to the service (`concurrency` at
once; through its load balancer for a scaling change), their p95 latency and error ratio, and
the type's own counters read fresh around them (a cache's hits, misses and stale reads give the
hit ratio and the stale share of that stretch). A change regressed when, after it, the error
ratio rose by more than `max_error_increase`, or the p95 grew by more than `tolerance` and is
over the service's SLO latency (or it has none), or a cache serves more stale answers than its
budget allows and more than before. A regression is rolled back by the workflow.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import httpx
from pydantic import ValidationError
from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine

from models.healing import PlaybookStep
from models.optimization import (
    ApplyRecord,
    ApplyVerdict,
    ClaimedRecommendation,
    ClaimInput,
    CostModel,
    JudgeInput,
    MeasureInput,
    Measurement,
    Objective,
)
from nofx.inventory import find_target
from nofx.logging import get_logger
from nofx.maintenance.jobs import fresh_reading
from nofx.operations.errors import InvalidRequest, NotFound, RuleConflict
from nofx.optimization.cost import memory_metric, memory_saving_per_hour
from nofx.optimization.recommendations import CACHE, RIGHTSIZING
from nofx.telemetry.sources import MetricSource

log = get_logger(__name__)

WINDOWED = frozenset({"index"})  # built in a low-impact window
VIA_FRONTEND = frozenset({"scaling"})  # a replica group: measured through its load balancer
REQUEST_TIMEOUT_S = 10.0
P95_SLACK_MS = 5.0  # a p95 that grows by less than this is noise, whatever the ratio


class ApplyError(ValueError):
    """The recommendation cannot be applied (not found, not open, not runnable); says why."""


def _row(conn: Connection, recommendation_id: str) -> Any:
    return conn.execute(
        text(
            "SELECT r.id, r.service, r.optimization_type, r.target, r.status, r.current_state,"
            " r.recommended_state, r.expected_improvement, r.risk_assessment,"
            " r.implementation_steps, r.realised_improvement, s.metadata, s.slo_targets"
            " FROM optimization_recommendations r LEFT JOIN services s ON s.name = r.service"
            " WHERE r.id = CAST(:i AS uuid) FOR UPDATE OF r"
        ),
        {"i": recommendation_id},
    ).first()


def claim(engine: Engine, inp: ClaimInput, now: datetime | None = None) -> ClaimedRecommendation:
    """Take an open recommendation for applying: its status becomes `applying`. The same
    workflow claiming again (a retried activity) gets the same answer.

    Raises:
        ApplyError: no such recommendation, one that is not open, a service no longer in the
            inventory, or steps that no longer validate.
    """
    moment = now or datetime.now(UTC)
    with engine.begin() as conn:
        row = _row(conn, inp.recommendation_id)
        if row is None:
            raise ApplyError(f"no recommendation {inp.recommendation_id}")
        claimed_by = (row.realised_improvement or {}).get("claimed_by") or {}
        retried = row.status == "applying" and claimed_by.get("workflow_id") == inp.workflow_id
        if row.status != "open" and not retried:
            raise ApplyError(
                f"recommendation {inp.recommendation_id} is {row.status}, not open"
                + (f" (by {claimed_by.get('workflow_id')})" if row.status == "applying" else "")
            )
        claimed = _claimed(engine, row)
        if not retried:
            conn.execute(
                text(
                    "UPDATE optimization_recommendations SET status = 'applying',"
                    " realised_improvement = CAST(:c AS jsonb), updated_at = :n WHERE id = :i"
                ),
                {
                    "c": json.dumps(
                        {
                            "claimed_by": {
                                "workflow_id": inp.workflow_id,
                                "requested_by": inp.requested_by,
                                "at": moment.isoformat(),
                            }
                        }
                    ),
                    "n": moment,
                    "i": row.id,
                },
            )
    log.info("recommendation claimed", id=inp.recommendation_id, workflow=inp.workflow_id)
    return claimed


def measurable(engine: Engine, recommendation_id: str) -> ClaimedRecommendation:
    """What a measurement of the recommendation's service needs, whatever its status.

    Raises:
        ApplyError: no such recommendation, or its service is no longer in the inventory.
    """
    with engine.begin() as conn:
        row = _row(conn, recommendation_id)
    if row is None:
        raise ApplyError(f"no recommendation {recommendation_id}")
    return _claimed(engine, row)


def _claimed(engine: Engine, row: Any) -> ClaimedRecommendation:
    target = find_target(engine, row.service)
    if target is None or row.metadata is None:
        raise ApplyError(f"service {row.service!r} is no longer in the inventory")
    meta: dict[str, Any] = row.metadata or {}
    if row.optimization_type == "batch":
        raise ApplyError(
            f"recommendation {row.id} moves a job of the platform itself, not a service:"
            f" nofx predictive batch --apply {row.id}"
        )
    try:
        steps = [PlaybookStep.model_validate(s) for s in row.implementation_steps or []]
    except ValidationError as err:
        raise ApplyError(f"recommendation {row.id}: a step does not validate: {err}") from None
    if not steps:
        raise ApplyError(f"recommendation {row.id} has no steps")
    endpoint = target.endpoint
    if row.optimization_type in VIA_FRONTEND:
        endpoint = str(target.metadata.get("haproxy_frontend") or "")
        if not endpoint:
            raise ApplyError(
                f"service {row.service!r} has no load balancer frontend in the inventory"
                " (providers.traffic.frontend): a replica group is measured through it"
            )
    path = next(
        (
            str(s.params["path"])
            for s in steps
            if s.action == "validate_requests" and s.params.get("path")
        ),
        "/",
    )
    objective = Objective()
    tuning = (meta.get("optimization") or {}).get("cache") or {}
    if row.optimization_type == CACHE and tuning:
        objective = Objective(
            counters={k: str(tuning[k]) for k in ("hits", "misses", "stale")},
            stale_budget=float(tuning.get("stale_budget", 0.01)),
        )
    query = (meta.get("optimization") or {}).get("index") or {}
    if row.optimization_type == "index" and query.get("query_seconds"):
        histogram = str(query["query_seconds"])
        objective = Objective(counters={"sum": f"{histogram}_sum", "count": f"{histogram}_count"})
    slo = (row.slo_targets or {}).get("latency_p95_ms")
    return ClaimedRecommendation(
        id=str(row.id),
        service=row.service,
        optimization_type=row.optimization_type,
        target=row.target,
        current_state=row.current_state or {},
        recommended_state=row.recommended_state or {},
        expected_improvement=row.expected_improvement or {},
        risk_assessment=row.risk_assessment or {},
        steps=steps,
        endpoint=endpoint,
        path=path,
        objective=objective,
        latency_p95_ms=float(slo) if slo else None,
        windowed=row.optimization_type in WINDOWED,
    )


def _send(endpoint: str, path: str, count: int) -> tuple[list[float], int]:
    latencies: list[float] = []
    errors = 0
    with httpx.Client(timeout=REQUEST_TIMEOUT_S) as client:
        for _ in range(count):
            began = time.perf_counter()
            try:
                response = client.get(f"{endpoint}{path}")
            except httpx.HTTPError:
                errors += 1
                continue
            latencies.append((time.perf_counter() - began) * 1000)
            errors += response.status_code >= 500
    return latencies, errors


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure(
    source: MetricSource,
    inp: MeasureInput,
    refresh: Callable[[], None] | None = None,
    *,
    reading_timeout_s: float = 120.0,
) -> Measurement:
    """Real requests to the service and the type's counters around them (module doc)."""
    claimed = inp.claimed
    started = datetime.now(UTC)
    counters = claimed.objective.counters
    first = {
        role: fresh_reading(
            source, claimed.service, m, started, refresh=refresh, timeout_s=reading_timeout_s
        )
        for role, m in counters.items()
    }
    shares = [inp.requests // inp.concurrency] * inp.concurrency
    for i in range(inp.requests % inp.concurrency):
        shares[i] += 1
    with ThreadPoolExecutor(max_workers=inp.concurrency) as pool:
        results = list(pool.map(lambda n: _send(claimed.endpoint, claimed.path, n), shares))
    latencies = [v for lat, _ in results for v in lat]
    errors = sum(e for _, e in results)
    ended = datetime.now(UTC)
    objective: dict[str, float] = {}
    notes: list[str] = []
    if counters:
        last = {
            role: fresh_reading(
                source, claimed.service, m, ended, refresh=refresh, timeout_s=reading_timeout_s
            )
            for role, m in counters.items()
        }
        objective, notes = _objective(first, last)
    p95 = _percentile(latencies, 0.95)
    ratio = errors / inp.requests
    detail = (
        f"{inp.requests} requests ({inp.concurrency} at once): error ratio {ratio:.3f},"
        f" p95 {'n/a' if p95 is None else f'{p95:.1f} ms'}"
        + "".join(f", {k} {v:.4f}" for k, v in sorted(objective.items()))
        + "".join(f"; {n}" for n in notes)
    )
    return Measurement(
        label=inp.label,
        at=ended,
        requests=inp.requests,
        errors=errors,
        error_ratio=round(ratio, 6),
        p95_ms=None if p95 is None else round(p95, 3),
        objective=objective,
        detail=detail,
    )


def _objective(first: dict[str, Any], last: dict[str, Any]) -> tuple[dict[str, float], list[str]]:
    """Between two readings of the counters: a cache's hit ratio and stale share, or a query
    histogram's mean time."""
    missing = sorted(r for r in first if first[r] is None or last[r] is None)
    if missing:
        return {}, [f"no fresh reading of {', '.join(missing)}: not measured"]
    delta = {r: last[r].value - first[r].value for r in first}
    if any(v < 0 for v in delta.values()):
        return {}, ["a counter went down (the service restarted): not measured"]
    if "count" in delta:
        if delta["count"] <= 0:
            return {}, ["no query counted during the requests"]
        return {
            "query_mean_ms": round(1000 * delta["sum"] / delta["count"], 4),
            "queries": delta["count"],
        }, []
    reads = delta.get("hits", 0.0) + delta.get("misses", 0.0)
    if reads <= 0:
        return {}, ["no cache read counted during the requests"]
    return {
        "hit_ratio": round(delta.get("hits", 0.0) / reads, 6),
        "stale_share": round(delta.get("stale", 0.0) / reads, 6),
        "cache_reads": reads,
    }, []


def judge(inp: JudgeInput) -> ApplyVerdict:
    """Did the change regress the service (module doc)? What it achieved, beside what it was
    expected to, either way."""
    before, after, claimed = inp.before, inp.after, inp.claimed
    reasons: list[str] = []
    if after.error_ratio > before.error_ratio + inp.max_error_increase:
        reasons.append(
            f"error ratio {before.error_ratio:.3f} -> {after.error_ratio:.3f}"
            f" (more than +{inp.max_error_increase:g})"
        )
    slo = claimed.latency_p95_ms
    if before.p95_ms is not None and after.p95_ms is not None:
        grew = after.p95_ms > before.p95_ms * (1 + inp.tolerance) + P95_SLACK_MS
        if grew and (slo is None or after.p95_ms > slo):
            reasons.append(
                f"p95 {before.p95_ms:.1f} -> {after.p95_ms:.1f} ms (more than"
                f" +{inp.tolerance:.0%}" + (f", over the SLO's {slo:g} ms)" if slo else ")")
            )
    elif after.p95_ms is None and before.p95_ms is not None:
        reasons.append("no request answered after the change")
    budget = claimed.objective.stale_budget
    stale_before, stale_after = (
        before.objective.get("stale_share"),
        after.objective.get("stale_share"),
    )
    if (
        budget is not None
        and stale_after is not None
        and stale_after > budget * (1 + inp.tolerance)
    ) and (stale_before is None or stale_after > stale_before):
        reasons.append(
            f"stale answers {stale_after:.2%} over the budget {budget:.2%}"
            + (f" (before: {stale_before:.2%})" if stale_before is not None else "")
        )
    q_before, q_after = before.objective.get("query_mean_ms"), after.objective.get("query_mean_ms")
    if (
        q_before is not None
        and q_after is not None
        and q_after > q_before * (1 + inp.tolerance) + P95_SLACK_MS
    ):
        reasons.append(f"query mean {q_before:.2f} -> {q_after:.2f} ms")
    realised: dict[str, Any] = {
        "measured": {
            "before": before.model_dump(mode="json"),
            "after": after.model_dump(mode="json"),
        },
        "expected": claimed.expected_improvement,
        "error_ratio_change": round(after.error_ratio - before.error_ratio, 6),
    }
    if before.p95_ms is not None and after.p95_ms is not None:
        realised["p95_ms_change"] = round(after.p95_ms - before.p95_ms, 3)
        if before.p95_ms > 0:
            realised["p95_ratio"] = round(after.p95_ms / before.p95_ms, 4)
    for key in sorted(set(before.objective) & set(after.objective)):
        realised[f"{key}_change"] = round(after.objective[key] - before.objective[key], 6)
    realised["verdict"] = "regressed: " + "; ".join(reasons) if reasons else "kept"
    return ApplyVerdict(regressed=bool(reasons), reasons=reasons, realised=realised)


def release(
    engine: Engine,
    record: ApplyRecord,
    *,
    cost: CostModel | None = None,
    now: datetime | None = None,
) -> None:
    """Write how applying ended on the recommendation (only while it is `applying`; a retry
    finds it written and changes nothing). An applied rightsizing of the service's memory gets
    the saving it realises an hour at the `cost` prices."""
    moment = now or datetime.now(UTC)
    with engine.begin() as conn:
        row = _row(conn, record.recommendation_id)
        if row is None or row.status != "applying":
            return
        realised = dict(record.realised or {})
        realised["detail"] = record.detail
        if record.status == "applied" and row.optimization_type == RIGHTSIZING and cost:
            saving = _memory_saving(conn, row, cost)
            if saving is not None:
                realised["saving_per_hour"] = saving
        conn.execute(
            text(
                "UPDATE optimization_recommendations SET status = :st,"
                " decision_id = CAST(:d AS uuid), realised_improvement = CAST(:r AS jsonb),"
                " applied_at = CASE WHEN :st IN ('applied', 'rolled_back') THEN :n"
                " ELSE applied_at END, updated_at = :n WHERE id = :i"
            ),
            {
                "st": record.status,
                "d": record.decision_id,
                "r": json.dumps(realised) if record.status != "open" else None,
                "n": moment,
                "i": row.id,
            },
        )
    log.info(
        "recommendation " + record.status,
        id=record.recommendation_id,
        decision=record.decision_id,
        detail=record.detail,
    )


def _memory_saving(conn: Connection, row: Any, cost: CostModel) -> float | None:
    meta = row.metadata or {}
    if row.target != memory_metric(meta):
        return None
    capacity = conn.execute(
        text("SELECT capacity FROM services WHERE name = :s"), {"s": row.service}
    ).scalar()
    before = float((row.current_state or {}).get("limit") or 0.0)
    after = float((row.recommended_state or {}).get("limit") or 0.0)
    return memory_saving_per_hour(int(capacity or 1), before, after, cost)


def applicable(engine: Engine, recommendation_id: str) -> str:
    """The service of an open recommendation, checked before a workflow is started for it.

    Raises:
        InvalidRequest: not a recommendation id. NotFound: no such recommendation.
        RuleConflict: it is not open (rule `open`).
    """
    try:
        UUID(recommendation_id)
    except ValueError:
        raise InvalidRequest(
            [f"recommendation_id: {recommendation_id!r} is not a recommendation id (a UUID)"]
        ) from None
    with engine.connect() as conn:
        row = conn.execute(
            text(
                "SELECT service, status FROM optimization_recommendations"
                " WHERE id = CAST(:i AS uuid)"
            ),
            {"i": recommendation_id},
        ).first()
    if row is None:
        raise NotFound(
            f"recommendation: no recommendation {recommendation_id} (nofx predictive optimize)"
        )
    if row.status != "open":
        raise RuleConflict(
            f"recommendation {recommendation_id} is {row.status}, not open", rule="open"
        )
    return str(row.service)
