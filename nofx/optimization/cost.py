"""What the fleet costs an hour, what the open recommendations would save, and at what risk.

The cost model is three prices (settings `NOFX_COST_VCPU_HOUR`, `NOFX_COST_GIB_HOUR`,
`NOFX_COST_REPLICA_HOUR`) and each service's `resources` in the inventory (vCPU and memory per
replica; `capacity` replicas): a service costs replicas * (replica + vCPU * price + GiB * price)
an hour. A service without `resources` costs its replicas only, and the report says so.

An open rightsizing recommendation on the service's memory metric (`resources.memory_metric`, or
the first limited metric with 'mem' or 'rss' in its name ending in `_bytes`) is priced as the
memory it frees per replica (limit - recommended size) at the GiB price; one that grows the limit
is a negative saving. Its risk — the share of steps usage would have passed the new size — stands
beside it, so a saving is never shown without what it costs in SLO. Realised savings are the
measured improvements of applied recommendations (`realised_improvement.saving_per_hour`).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Engine

from models.optimization import CostModel, CostReport, RecommendedSaving, ServiceCost
from nofx.optimization.recommendations import RIGHTSIZING

GIB = float(1 << 30)
HOURS_PER_MONTH = 730.0


def memory_metric(metadata: dict[str, Any]) -> str | None:
    """The limited metric that measures the service's memory, in bytes (None if none)."""
    resources = metadata.get("resources") or {}
    if resources.get("memory_metric"):
        return str(resources["memory_metric"])
    for metric in sorted(metadata.get("limits") or {}):
        name = metric.lower()
        if ("mem" in name or "rss" in name) and name.endswith("_bytes"):
            return str(metric)
    return None


def memory_saving_per_hour(replicas: int, before: float, after: float, model: CostModel) -> float:
    """What shrinking each replica's memory from `before` to `after` bytes saves an hour."""
    return round(replicas * (before - after) / GIB * model.gib_hour, 6)


def report(engine: Engine, model: CostModel, service: str | None = None) -> CostReport:
    """The cost report of every service of the inventory (or one)."""
    with engine.connect() as conn:
        services = conn.execute(
            text(
                "SELECT name, capacity, metadata FROM services"
                " WHERE CAST(:s AS text) IS NULL OR name = :s ORDER BY name"
            ),
            {"s": service},
        ).all()
        rows = conn.execute(
            text(
                "SELECT id, service, target, status, current_state, recommended_state,"
                " risk_assessment, realised_improvement FROM optimization_recommendations"
                " WHERE optimization_type = :t AND status IN ('open', 'applied')"
                " AND (CAST(:s AS text) IS NULL OR service = :s)"
            ),
            {"t": RIGHTSIZING, "s": service},
        ).mappings()
        by_service: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            by_service.setdefault(row["service"], []).append(dict(row))
    lines = [
        _service_cost(name, capacity, metadata or {}, by_service.get(name, []), model)
        for name, capacity, metadata in services
    ]
    spend = sum(line.per_hour for line in lines)
    recommended = sum(line.recommended_per_hour for line in lines)
    risks = [
        r.exceed_probability
        for line in lines
        for r in line.recommended
        if r.exceed_probability is not None
    ]
    return CostReport(
        model=model,
        services=lines,
        per_hour=round(spend, 6),
        per_month=round(spend * HOURS_PER_MONTH, 2),
        recommended_per_hour=round(recommended, 6),
        recommended_ratio=round(recommended / spend, 4) if spend > 0 else 0.0,
        realised_per_hour=round(sum(line.realised_per_hour for line in lines), 6),
        worst_exceed_probability=max(risks) if risks else None,
    )


def _service_cost(
    name: str,
    capacity: int,
    metadata: dict[str, Any],
    recommendations: list[dict[str, Any]],
    model: CostModel,
) -> ServiceCost:
    resources = metadata.get("resources") or {}
    replicas = int(capacity or 1)
    vcpu = resources.get("vcpu")
    memory = resources.get("memory_bytes")
    notes = []
    if not resources:
        notes.append("no resources in the inventory: its replicas are priced, not their size")
    per_replica = (
        model.replica_hour
        + (float(vcpu) * model.vcpu_hour if vcpu else 0.0)
        + (float(memory) / GIB * model.gib_hour if memory else 0.0)
    )
    metric = memory_metric(metadata)
    priced: list[RecommendedSaving] = []
    realised = 0.0
    for row in recommendations:
        if row["status"] == "applied":
            realised += float((row["realised_improvement"] or {}).get("saving_per_hour") or 0.0)
            continue
        if row["target"] != metric:
            notes.append(f"{row['target']}: not a memory metric in bytes, not priced")
            continue
        before = float((row["current_state"] or {}).get("limit") or 0.0)
        after = float((row["recommended_state"] or {}).get("limit") or 0.0)
        priced.append(
            RecommendedSaving(
                recommendation_id=str(row["id"]),
                target=row["target"],
                per_hour=memory_saving_per_hour(replicas, before, after, model),
                exceed_probability=(row["risk_assessment"] or {}).get("exceed_probability"),
            )
        )
    return ServiceCost(
        service=name,
        replicas=replicas,
        vcpu=float(vcpu) if vcpu else None,
        memory_gib=round(float(memory) / GIB, 4) if memory else None,
        per_hour=round(replicas * per_replica, 6),
        recommended=priced,
        recommended_per_hour=round(sum(r.per_hour for r in priced), 6),
        realised_per_hour=round(realised, 6),
        notes=notes,
    )
