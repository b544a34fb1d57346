"""Injecting faults into the staging fleet *on the record*.

Every injection and clearance through the CLI, the benchmarks or chaos experiments lands in
`fault_injections`: the ground truth that detection is scored against and the labels the learned
detector trains on. The fleet itself (pilot.fleet) knows nothing of the database for this.

Most faults are the fleet's (a signal, an in-process fault, a load generator); a bad
configuration push is the platform's, as a deploy would be: a new version through the
configuration provider (`nofx.providers.config`), which `clear` rolls back.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import text
from sqlalchemy.engine import Engine

from models.healing import FleetTarget
from nofx.logging import get_logger
from nofx.providers.config import ConfigError, ConfigStore
from pilot.fleet import FAULT_KINDS as FLEET_FAULT_KINDS
from pilot.fleet import FLEET_HOME_ANNOTATION, Fleet, FleetError, FleetSpec, ServiceSpec

FAULT_KINDS = (*FLEET_FAULT_KINDS[:3], "bad_config", *FLEET_FAULT_KINDS[3:])
# `config_versions.applied_by` of a version a bad_config injection pushes; clearing rolls back
# only versions it finds applied by this actor, never a change someone else made since.
FAULT_ACTOR = "nofx-faults:injection"
CLEAR_ACTOR = "nofx-faults:clear"
# What a bad_config injection pushes when given no values: half the requests fail and every one
# is a quarter of a second slower, a regression no detector should miss.
BAD_CONFIG_DEFAULTS: dict[str, Any] = {"error_rate": 0.5, "extra_latency_ms": 250}

log = get_logger(__name__)

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


def staging_fleet(target: FleetTarget, database_url: str | None) -> Fleet:
    """The staging fleet that runs `target` (as far as this one service goes), found by the
    annotation the fleet registers its services with.

    Raises:
        FleetError: the service is not one of a staging fleet.
    """
    home = (target.metadata.get("annotations") or {}).get(FLEET_HOME_ANNOTATION)
    if not home:
        raise FleetError(
            f"service {target.service!r} is not a staging-fleet service (no annotation"
            f" {FLEET_HOME_ANNOTATION} in the inventory)"
        )
    port = int(httpx.URL(target.endpoint).port or 80)
    return Fleet(
        Path(home),
        FleetSpec(services=[ServiceSpec(name=target.service, port=port)]),
        database_url=database_url,
    )


def inject(fleet: Fleet, engine: Engine, kind: str, service: str, **params: Any) -> dict[str, Any]:
    """Inject a real fault of `kind` into `service` (see `Fleet.inject` for the fleet's kinds;
    ``bad_config`` pushes `params`, default `BAD_CONFIG_DEFAULTS`, as a new version).

    Raises:
        FleetError: the fault was refused; the message names why.
    """
    if kind != "bad_config":
        return fleet.inject(kind, service, **params)
    fleet.spec.get(service)
    changes = params or dict(BAD_CONFIG_DEFAULTS)
    summary = ", ".join(f"{key}={value}" for key, value in sorted(changes.items()))
    injected_at = time.time()
    try:
        previous, pushed = ConfigStore.of(engine, service).push(
            changes,
            applied_by=FAULT_ACTOR,
            reason=f"fault injection: bad config push ({summary})",
            refuse_over=FAULT_ACTOR,
        )
    except ConfigError as err:
        raise FleetError(f"bad_config on {service}: {err}") from None
    log.info("fault injected", fault=kind, service=service, params=changes)
    return {
        "kind": kind,
        "service": service,
        "injected_at": injected_at,
        "pid": fleet.pid(service),
        "version": pushed.version,
        "previous_version": previous.version,
        "config": changes,
    }


def clear(fleet: Fleet, engine: Engine, service: str, kind: str | None = None) -> list[str]:
    """Remove faults from `service` (all with `kind` None), one line per removal; a bad config
    is rolled back to the latest version no injection pushed.

    Raises:
        FleetError: unknown kind or service, or a fault could not be removed.
    """
    if kind is not None and kind not in FAULT_KINDS:
        raise FleetError(f"unknown fault kind {kind!r}; expected one of {', '.join(FAULT_KINDS)}")
    done = fleet.clear(service, kind) if kind != "bad_config" else []
    if kind in (None, "bad_config"):
        fleet.spec.get(service)
        try:
            store = _store(engine, service, explicit=kind is not None)
            changed = store and store.rollback(
                applied_by=CLEAR_ACTOR,
                reason="clear bad_config",
                skipping=FAULT_ACTOR,
                only_over=FAULT_ACTOR,
            )
        except ConfigError as err:
            raise FleetError(f"cannot clear bad_config on {service}: {err}") from None
        if changed:
            bad, restored = changed
            done.append(
                f"bad_config: rolled back v{bad.version} to v{restored.rolled_back_to}"
                f" as v{restored.version}"
            )
            log.info("faults cleared", service=service, cleared=done[-1:])
    return done


def active_faults(fleet: Fleet, engine: Engine, service: str) -> dict[str, dict[str, Any]]:
    """The faults `service` has now, by kind: the fleet's, and an injected config version."""
    found = fleet.active_faults(service)
    store = _store(engine, service, explicit=False)
    active = store.active() if store is not None else None
    if active is not None and active.applied_by == FAULT_ACTOR:
        found["bad_config"] = {"version": active.version, "reason": active.reason}
    return found


def _store(engine: Engine, service: str, *, explicit: bool) -> ConfigStore | None:
    """The service's configuration store; None (unless `explicit`) when it has none."""
    try:
        return ConfigStore.of(engine, service)
    except ConfigError:
        if explicit:
            raise
        return None


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
    outcome = inject(fleet, engine, kind, service, **params)
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
    undone = clear(fleet, engine, service, kind)
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
