"""Optimisation recommendations: what a service could change, what it would gain, what it risks.

A pass (`refresh`) goes over the services whose inventory entry sets `limits` and, for each
limited metric, sizes it from the telemetry of its last days (`nofx.optimization.rightsizing`):
the size the service needs at each hour of the day, and the single size that covers the day,
against the limit it has. The result is a row of `optimization_recommendations` (type
`rightsizing`, target the metric) with the current and recommended state, the expected
improvement (capacity freed, or added where the limit is too tight), the steps, and the risk:
the share of steps usage would have passed the new size on the days seen, next to the target.

A pass that recommends a different size supersedes the open row (status `superseded`, the new
one `open`); the same size only touches the row. Too little history (under a day) makes no
recommendation and says so; nothing here raises on messy telemetry.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy import text
from sqlalchemy.engine import Engine

from models.forecasting import ForecastRequest
from nofx.forecasting.forecaster import Forecaster
from nofx.forecasting.series import regular
from nofx.forecasting.service import ForecastError, history
from nofx.inventory import limited_metrics
from nofx.logging import get_logger
from nofx.optimization.cache import recommend_ttl
from nofx.optimization.indexes import INDEX, KEY, IndexAdvisorError, index_drafts
from nofx.optimization.pool import holding_time, judge, recommend_pool
from nofx.optimization.rightsizing import Rightsizing, recommend
from nofx.optimization.scaling import SCALING, policy_of, recommend_scaling
from nofx.telemetry.derived import increase, rate
from nofx.telemetry.sources import MetricSource, MetricSourceError

log = get_logger(__name__)

RIGHTSIZING = "rightsizing"
POOL = "pool"
CACHE = "cache"
POOL_STEP = timedelta(minutes=1)
BUSY_HOUR = 0.95  # the pool is sized for the hour at this quantile of hourly request rates
STEP_SECONDS = 300.0
SAME_SIZE = 0.01  # a new size within 1% of the open one is the same recommendation


@dataclass(frozen=True)
class Written:
    """What a pass did for one (service, target)."""

    service: str
    optimization_type: str
    target: str
    change: str  # opened | replaced | unchanged | skipped
    id: str | None
    reason: str


def refresh(
    engine: Engine,
    source: MetricSource,
    *,
    now: datetime | None = None,
    services: list[str] | None = None,
    days: float = 7.0,
    risk: float = 0.01,
) -> list[Written]:
    """One recommendation pass over the services with limits (or only `services`)."""
    moment = now or datetime.now(UTC)
    out: list[Written] = []
    for name, metric, limit in limited_metrics(engine, services):
        request = ForecastRequest(
            service=name,
            metric=metric,
            step_seconds=STEP_SECONDS,
            history_hours=24 * days,
            until=moment,
        )
        try:
            series = history(source, request, moment)
            sized = recommend(series, days=days, risk=risk)
        except (ForecastError, MetricSourceError, ValueError) as err:
            out.append(Written(name, RIGHTSIZING, metric, "skipped", None, str(err)))
            log.warning("no recommendation", service=name, metric=metric, error=str(err))
            continue
        if sized.days == 0:  # under a whole day seen
            reason = f"{len(series.values)} steps of telemetry: less than a whole day"
            out.append(Written(name, RIGHTSIZING, metric, "skipped", None, reason))
            continue
        out.append(_save(engine, name, metric, float(limit), sized, moment))
    for name, tuning, size in _pools(engine, services):
        target = str(tuning["in_use"])
        try:
            draft, reason = _pool_draft(source, name, tuning, size, moment, days)
        except (MetricSourceError, ValueError) as err:
            out.append(Written(name, POOL, target, "skipped", None, str(err)))
            log.warning("no pool recommendation", service=name, error=str(err))
            continue
        out.append(store(engine, name, draft, reason, moment))
    for name, tuning in _tuned(engine, services, SCALING):
        try:
            scaled = _scaling_draft(engine, source, name, tuning, moment, days)
        except (ForecastError, MetricSourceError, ValueError) as err:
            out.append(Written(name, SCALING, "replicas", "skipped", None, str(err)))
            log.warning("no scaling recommendation", service=name, error=str(err))
            continue
        out.append(store(engine, name, *scaled, moment))
    for name, tuning in _tuned(engine, services, "cache"):
        try:
            draft, reason = _cache_draft(source, name, tuning, moment, days)
        except (MetricSourceError, ValueError) as err:
            out.append(Written(name, CACHE, "ttl_s", "skipped", None, str(err)))
            log.warning("no cache recommendation", service=name, error=str(err))
            continue
        out.append(store(engine, name, draft, reason, moment))
    for name, tuning in _tuned(engine, services, INDEX):
        try:  # the service's database is the platform's, as for terminate_idle_connections
            found = index_drafts(engine, tuning)
        except IndexAdvisorError as err:
            out.append(Written(name, INDEX, INDEX, "skipped", None, str(err)))
            log.warning("no index recommendation", service=name, error=str(err))
            continue
        for f in found:
            draft = Draft(
                INDEX, f.target, KEY, f.current, f.recommended, f.improvement, f.steps, f.risk
            )
            out.append(store(engine, name, draft, f.reason, moment))
    return out


def _tuned(
    engine: Engine, services: list[str] | None, kind: str
) -> list[tuple[str, dict[str, Any]]]:
    """(service, its `optimization.<kind>` tuning) for services that ask for one."""
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT name, metadata->'optimization'->:k AS tuning FROM services"
                " WHERE metadata->'optimization'->:k IS NOT NULL"
                " AND (CAST(:only AS text[]) IS NULL OR name = ANY(:only)) ORDER BY name"
            ),
            {"only": services, "k": kind},
        ).all()
    return [(name, tuning) for name, tuning in rows]


def _cache_draft(
    source: MetricSource, service: str, tuning: dict[str, Any], now: datetime, days: float
) -> tuple[Draft, str]:
    """The longest TTL within the stale budget (nofx.optimization.cache), from the hit ratio and
    stale share the counters show over the last `days` at the current TTL.

    Raises:
        ValueError: no read counted, or counts no TTL explains (the message says which).
    """
    start = now - timedelta(days=days)
    counted = {}
    for key in ("hits", "misses", "stale"):
        series = source.query_range(service, tuning[key], start, now, POOL_STEP).dropna()
        counted[key] = float(increase(series).sum())
    reads = counted["hits"] + counted["misses"]
    if reads <= 0:
        raise ValueError(f"{service}: no cache read counted since {start.isoformat()}")
    hit, stale = counted["hits"] / reads, counted["stale"] / reads
    ttl = float(tuning["ttl_s"])
    budget = float(tuning.get("stale_budget", 0.01))
    found = recommend_ttl(
        hit, stale, ttl, stale_budget=budget, max_ttl_s=float(tuning.get("max_ttl_s", 86_400.0))
    )
    draft = Draft(
        CACHE,
        "ttl_s",
        "ttl_s",
        {"ttl_s": ttl, "hit_ratio": round(hit, 6), "stale_share": round(stale, 6)},
        {
            "ttl_s": round(found.ttl_s, 3),
            "hit_ratio": round(found.hit_ratio, 6),
            "stale_share": round(found.stale_share, 6),
        },
        {
            "hit_ratio_gain": round(found.hit_ratio - hit, 6),
            "stale_share_change": round(found.stale_share - stale, 6),
            "direction": "longer" if found.ttl_s > ttl else "shorter",
        },
        [
            {
                "action": "set_cache_ttl",
                "params": {"ttl_s": round(found.ttl_s, 3), "default_ttl_s": ttl},
            },
            {"action": "validate_requests", "params": {}},
        ],
        {
            "stale_share": round(found.stale_share, 6),
            "stale_budget": budget,
            "reads_seen": int(reads),
            "requests_per_key_per_s": round(found.request_rate_per_key, 6),
            "changes_per_key_per_s": round(found.change_rate_per_key, 9),
        },
    )
    reason = (
        f"cache TTL {ttl:g} s -> {found.ttl_s:.0f} s: hit ratio {hit:.1%} -> {found.hit_ratio:.1%},"
        f" stale answers {stale:.2%} -> {found.stale_share:.2%} (budget {budget:.1%})"
    )
    return draft, reason


def _scaling_draft(
    engine: Engine,
    source: MetricSource,
    service: str,
    tuning: dict[str, Any],
    now: datetime,
    days: float,
) -> tuple[Draft, str]:
    """The replica plan of the service's group (nofx.optimization.scaling) over the next
    `horizon_hours`, from the platform's forecast of its load metric over the last `days` (a
    counter's rate; the upper edge of the band `quantile`), starting from the replicas the
    inventory says it runs (`capacity`).

    Raises:
        ForecastError, MetricSourceError, ValueError: no usable load history or a bad setting.
    """
    metric = str(tuning["load_metric"])
    start = now - timedelta(days=days)
    series = source.query_range(service, metric, start, now, timedelta(seconds=STEP_SECONDS))
    if metric.endswith("_total"):
        series = rate(series.dropna())
    series = series.dropna()
    if len(series) < 2:
        raise ForecastError(f"{service}: no history of {metric} since {start.isoformat()}")
    stamps = np.array([t.timestamp() for t in series.index], dtype=np.float64)
    load = regular(stamps, series.to_numpy(dtype=np.float64), STEP_SECONDS)
    horizon = max(1, round(float(tuning.get("horizon_hours", 24)) * 3600 / STEP_SECONDS))
    made = Forecaster((horizon,)).forecast([(service, load)])[horizon][0]
    quantile = int(tuning.get("quantile", 95))
    with engine.connect() as conn:
        current = conn.execute(
            text("SELECT capacity FROM services WHERE name = :s"), {"s": service}
        ).scalar()
    found = recommend_scaling(
        made.times(),
        np.maximum(made.upper(quantile), 0.0),
        policy_of(tuning),
        current=int(current or 1),
        step_s=STEP_SECONDS,
        metric=metric,
        model=made.model,
        quantile=quantile,
    )
    draft = Draft(
        SCALING,
        "replicas",
        "replica_hours",
        found.current,
        found.recommended,
        found.improvement,
        found.steps,
        found.risk,
    )
    return draft, found.reason


def _pools(engine: Engine, services: list[str] | None) -> list[tuple[str, dict[str, Any], float]]:
    """(service, its pool tuning, the pool's size now: its gauge's limit)."""
    limits = {(s, m): v for s, m, v in limited_metrics(engine, services)}
    return [
        (name, tuning, limits[(name, tuning["in_use"])])
        for name, tuning in _tuned(engine, services, "pool")
        if (name, tuning["in_use"]) in limits
    ]


def _pool_draft(
    source: MetricSource,
    service: str,
    tuning: dict[str, Any],
    size: float,
    now: datetime,
    days: float,
) -> tuple[Draft, str]:
    """The pool size for the busy hour of the last `days`, by Erlang C (nofx.optimization.pool):
    the arrival rate is the busy hour's request rate, the holding time Little's law over the
    whole span (mean connections in use / mean request rate).

    Raises:
        ValueError: no request or no sample of the gauge in the span (the message says which).
    """
    start = now - timedelta(days=days)
    held = tuning.get("hold_seconds")
    if held:
        # Every use of a connection is timed: the arrivals are the uses, the holding time
        # their mean (exact, where a sampled in-use gauge misses short holds).
        total = source.query_range(service, f"{held}_count", start, now, POOL_STEP).dropna()
        spent = source.query_range(service, f"{held}_sum", start, now, POOL_STEP).dropna()
        uses, seconds = float(increase(total).sum()), float(increase(spent).sum())
        if uses <= 0:
            raise ValueError(f"{service}: no use of the pool timed since {start.isoformat()}")
        rates, hold = rate(total).dropna(), seconds / uses
        how = f"{held} (mean of {uses:.0f} timed uses)"
    else:
        in_use = source.query_range(service, tuning["in_use"], start, now, POOL_STEP).dropna()
        total = source.query_range(service, tuning["requests"], start, now, POOL_STEP).dropna()
        rates = rate(total).dropna()
        if in_use.empty or rates.empty:
            missing = tuning["in_use"] if in_use.empty else tuning["requests"]
            raise ValueError(f"{service}: no samples of {missing} since {start.isoformat()}")
        if float(rates.mean()) <= 0:
            raise ValueError(f"{service}: no requests counted since {start.isoformat()}")
        hold = holding_time(float(in_use.mean()), float(rates.mean()))
        how = f"Little's law from sampled {tuning['in_use']} (short holds may be missed)"
    if rates.empty:
        raise ValueError(f"{service}: under two samples of {held} since {start.isoformat()}")
    hourly = rates.resample("1h").mean().dropna()
    busy = float(np.quantile(hourly.to_numpy(), BUSY_HOUR))
    wait_s = float(tuning.get("max_wait_ms", 50.0)) / 1000
    quantile = float(tuning.get("quantile", 0.95))
    sized = recommend_pool(busy, hold, max_wait_s=wait_s, quantile=quantile)
    before = judge(max(1, int(size)), busy, hold, wait_s)
    target = str(tuning["in_use"])
    draft = Draft(
        POOL,
        target,
        "size",
        {"metric": target, "size": size},
        {"metric": target, "size": sized.size},
        {
            "connections_freed": round(size - sized.size, 3),
            "direction": "shrink" if sized.size < size else "grow",
            "p_wait_over_now": round(before.p_wait_over, 6),
            "p_wait_over_after": round(sized.p_wait_over, 6),
            "mean_wait_ms_now": round(before.mean_wait_s * 1000, 3),
            "mean_wait_ms_after": round(sized.mean_wait_s * 1000, 3),
        },
        [
            {"action": "resize_pool", "params": {"size": sized.size}},
            {"action": "validate_requests", "params": {}},
        ],
        {
            "p_wait_over": round(sized.p_wait_over, 6),
            "target": round(1 - quantile, 6),
            "max_wait_ms": wait_s * 1000,
            "busy_rate_per_s": round(busy, 6),
            "holding_time_ms": round(hold * 1000, 3),
            "holding_time_from": how,
            "offered_load": round(sized.offered_load, 4),
            "utilisation": round(sized.utilisation, 4),
            "hours_seen": len(hourly),
        },
    )
    reason = (
        f"{target}: pool {size:g} -> {sized.size} for {busy:.1f} requests/s holding a connection"
        f" {hold * 1000:.1f} ms (waits over {wait_s * 1000:g} ms: {sized.p_wait_over:.1%})"
    )
    return draft, reason


def _limit_setting(engine: Engine, service: str, metric: str) -> dict[str, Any]:
    """The `set_limit` parameters naming the setting that enforces `metric`'s limit, if any."""
    with engine.connect() as conn:
        found = conn.execute(
            text(
                "SELECT metadata->'optimization'->'limit_settings'->:m FROM services"
                " WHERE name = :s"
            ),
            {"m": metric, "s": service},
        ).scalar()
    if not found:
        return {}
    return {"config_key": found["key"], "config_scale": float(found.get("scale", 1.0))}


def _states(
    metric: str, limit: float, sized: Rightsizing, setting: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], list[dict[str, Any]], dict[str, Any]]:
    size = sized.static()
    per_hour = round(3600 / sized.step)
    hourly = [float(sized.profile[h * per_hour : (h + 1) * per_hour].max()) for h in range(24)]
    current = {"metric": metric, "limit": limit}
    recommended = {
        "metric": metric,
        "limit": round(size, 6),
        "by_hour_utc": [round(v, 6) for v in hourly],
        "trend_per_day": round(sized.trend_per_day, 6),
    }
    change = 1 - size / limit if limit > 0 else 0.0
    improvement = {
        "capacity_freed_ratio": round(change, 4),
        "by_hour_freed_ratio": round(1 - sum(hourly) / (24 * limit), 4) if limit > 0 else 0.0,
        "direction": "shrink" if size < limit else "grow",
    }
    steps = [
        {
            "action": "set_limit",
            "params": {"metric": metric, "from": limit, "to": round(size, 6), **setting},
        },
        {"action": "validate_requests", "params": {}},
    ]
    risk = {
        "exceed_probability": sized.exceed_probability,
        "risk_target": sized.risk,
        "headroom": round(sized.headroom, 6),
        "days_seen": sized.days,
        "notes": sized.notes,
    }
    return current, recommended, improvement, steps, risk


def _save(
    engine: Engine, service: str, metric: str, limit: float, sized: Rightsizing, now: datetime
) -> Written:
    setting = _limit_setting(engine, service, metric)
    current, recommended, improvement, steps, risk = _states(metric, limit, sized, setting)
    size = recommended["limit"]
    reason = (
        f"{metric}: {improvement['direction']} the limit {limit:g} to {size:g}"
        f" (usage above it in {risk['exceed_probability'] or 0:.1%} of the steps seen)"
    )
    draft = Draft(RIGHTSIZING, metric, "limit", current, recommended, improvement, steps, risk)
    return store(engine, service, draft, reason, now)


@dataclass(frozen=True)
class Draft:
    """A recommendation before it is stored; `key` names the recommended state's size."""

    optimization_type: str
    target: str
    key: str
    current: dict[str, Any]
    recommended: dict[str, Any]
    improvement: dict[str, Any]
    steps: list[dict[str, Any]]
    risk: dict[str, Any]


def store(engine: Engine, service: str, draft: Draft, reason: str, now: datetime) -> Written:
    """Open `draft` as the service's recommendation for its type and target: the open one of
    the same size (within 1%) is kept, one of another size superseded."""
    kind, target = draft.optimization_type, draft.target
    size = float(draft.recommended[draft.key])
    with engine.begin() as conn:
        conn.execute(text("SELECT name FROM services WHERE name = :s FOR UPDATE"), {"s": service})
        applying = conn.execute(
            text(
                "SELECT id FROM optimization_recommendations WHERE service = :s"
                " AND optimization_type = :t AND target = :m AND status = 'applying'"
            ),
            {"s": service, "t": kind, "m": target},
        ).scalar()
        if applying is not None:  # measured against what it changes: nothing new meanwhile
            why = f"recommendation {applying} is being applied"
            return Written(service, kind, target, "skipped", str(applying), why)
        found = conn.execute(
            text(
                "SELECT id, recommended_state FROM optimization_recommendations"
                " WHERE service = :s AND optimization_type = :t AND target = :m"
                " AND status = 'open'"
            ),
            {"s": service, "t": kind, "m": target},
        ).first()
        if found is not None:
            before = float((found.recommended_state or {}).get(draft.key) or 0.0)
            if abs(before - size) <= SAME_SIZE * max(abs(before), abs(size), 1e-12):
                conn.execute(
                    text("UPDATE optimization_recommendations SET updated_at = :n WHERE id = :i"),
                    {"n": now, "i": found.id},
                )
                return Written(service, kind, target, "unchanged", str(found.id), reason)
            conn.execute(
                text(
                    "UPDATE optimization_recommendations SET status = 'superseded',"
                    " updated_at = :n WHERE id = :i"
                ),
                {"n": now, "i": found.id},
            )
        new_id = conn.execute(
            text(
                "INSERT INTO optimization_recommendations (optimization_type, service, target,"
                " current_state, recommended_state, expected_improvement, implementation_steps,"
                " risk_assessment, created_at, updated_at) VALUES (:t, :s, :m,"
                " CAST(:cur AS jsonb), CAST(:rec AS jsonb), CAST(:imp AS jsonb),"
                " (SELECT array_agg(e) FROM jsonb_array_elements(CAST(:steps AS jsonb)) e),"
                " CAST(:risk AS jsonb), :n, :n) RETURNING id"
            ),
            {
                "t": kind,
                "s": service,
                "m": target,
                "cur": json.dumps(draft.current),
                "rec": json.dumps(draft.recommended),
                "imp": json.dumps(draft.improvement),
                "steps": json.dumps(draft.steps),
                "risk": json.dumps(draft.risk),
                "n": now,
            },
        ).scalar_one()
    change = "opened" if found is None else "replaced"
    log.info("recommendation " + change, service=service, type=kind, target=target, size=size)
    return Written(service, kind, target, change, str(new_id), reason)


def open_recommendations(engine: Engine, service: str | None = None) -> list[dict[str, Any]]:
    """The open recommendations, by service and type."""
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT id, service, optimization_type, target, current_state,"
                " recommended_state, expected_improvement, implementation_steps,"
                " risk_assessment, status, created_at, updated_at"
                " FROM optimization_recommendations WHERE status = 'open'"
                " AND (CAST(:s AS text) IS NULL OR service = :s)"
                " ORDER BY service, optimization_type, target"
            ),
            {"s": service},
        ).mappings()
        return [dict(r) for r in rows]
