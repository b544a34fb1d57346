"""Injecting faults into the staging fleet *on the record*.

Every injection and clearance through the CLI, the benchmarks or chaos experiments lands in
`fault_injections`: the ground truth that detection is scored against and the labels the learned
detector trains on. The fleet itself (pilot.fleet) knows nothing of the database for this.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Engine

from pilot.fleet import Fleet

# The problem pattern each fault should be diagnosed as.
EXPECTED_PATTERN: dict[str, str] = {
    "kill": "service_down",
    "crash": "service_down",
    "hang": "service_hung",
    "bad_config": "error_spike_after_config_change",
    "connection_leak": "db_pool_exhaustion",
    "stale_cache": "stale_cache",
    "overload": "overload",
    "memory_leak": "memory_leak",
    "disk_fill": "disk_filling",
}


# One run of every fault type, each on its own service (role -> (kind, parameters)), so no fault
# hides in another's wake; the tests and benchmarks/detection.py use the same plan. The anomaly
# stage runs first; the probe stage reuses two of its services once they are quiet again.
ANOMALY_STAGE: dict[str, tuple[str, dict[str, Any]]] = {
    "cfg": ("bad_config", {"error_rate": 0.4}),
    "slow": ("bad_config", {"error_rate": 0, "extra_latency_ms": 300}),
    "pool": ("connection_leak", {}),
    "busy": ("overload", {"concurrency": 32}),
    "cache": ("stale_cache", {}),
    "mem": ("memory_leak", {"rate_mb_s": 4, "limit_mb": 200}),
    "disk": ("disk_fill", {"rate_mb_s": 4, "quota_mb": 300}),
}
PROBE_STAGE: dict[str, tuple[str, dict[str, Any]]] = {
    "cache": ("hang", {}),
    "mem": ("crash", {}),
    "cfg": ("kill", {}),
}


def expected_pattern(kind: str, params: dict[str, Any]) -> str:
    """The pattern a fault should be named as; a config push that only slows is a regression."""
    if kind == "bad_config" and params.get("error_rate", 0.5) == 0:
        return "latency_regression"
    return EXPECTED_PATTERN[kind]


def inject_recorded(
    fleet: Fleet,
    engine: Engine,
    kind: str,
    service: str,
    *,
    source: str,
    actor: str,
    **params: Any,
) -> dict[str, Any]:
    """Inject a fault for real, then record it (a refused injection records nothing)."""
    outcome = fleet.inject(kind, service, **params)
    with engine.begin() as conn:
        injection_id = conn.execute(
            text(
                "INSERT INTO fault_injections (service, kind, params, injected_by, source,"
                " expected_pattern, injected_at) VALUES (:service, :kind, CAST(:params AS jsonb),"
                " :actor, :source, :pattern, :at) RETURNING id"
            ),
            {
                "service": service,
                "kind": kind,
                "params": json.dumps(params, default=str),
                "actor": actor,
                "source": source,
                "pattern": expected_pattern(kind, params),
                "at": datetime.fromtimestamp(float(outcome["injected_at"]), UTC),
            },
        ).scalar_one()
    return {**outcome, "injection_id": str(injection_id)}


def clear_recorded(
    fleet: Fleet, engine: Engine, service: str, kind: str | None = None
) -> list[str]:
    """Remove faults from a service and close their open records."""
    undone = fleet.clear(service, kind)
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE fault_injections SET cleared_at = now() WHERE service = :service"
                " AND cleared_at IS NULL AND (CAST(:kind AS text) IS NULL OR kind = :kind)"
            ),
            {"service": service, "kind": kind},
        )
    return undone


def incidents_opened(engine: Engine, services: list[str], since: datetime) -> list[dict[str, Any]]:
    """Incidents the platform opened on `services` since a moment, oldest first: what an
    injection is scored against (and, with no injection, the false incidents)."""
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT id, incident_type, status, detection_method, root_cause, started_at"
                " FROM healing_incidents WHERE root_cause->>'service' = ANY(:s)"
                " AND started_at >= :since ORDER BY started_at"
            ),
            {"s": services, "since": since},
        ).mappings()
        return [dict(r) for r in rows]
