"""The service inventory (table `services`): what the monitor probes and how providers reach it."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Engine

from models.healing import FleetTarget
from pilot.config import application_name, cache_prefix, data_dir
from pilot.fleet import Fleet


def service_metadata(fleet: Fleet, name: str) -> dict[str, Any]:
    """How the providers reach one pilot service: each key is what a capability needs
    (nofx.healing.actions.capabilities)."""
    return {
        "supervisor_socket": str(fleet.socket_path),
        "process": name,
        "fleet_home": str(fleet.home),
        "data_dir": str(data_dir(fleet.state_dir, name)),
        "application_name": application_name(name),
        "redis_url": fleet.redis_url,
        "cache_prefix": cache_prefix(fleet.root, name),
        **fleet.traffic_metadata(name),
    }


def register_fleet(engine: Engine, fleet: Fleet, *, owner: str = "platform-sre") -> list[str]:
    """Upsert every pilot service of `fleet` as a supervisord-managed service; return the names."""
    with engine.begin() as conn:
        for service in fleet.spec.services:
            conn.execute(
                text(
                    "INSERT INTO services (name, tier, owner, provider, endpoint, dependencies,"
                    " capacity, slo_targets, metadata) VALUES (:name, 'tier-2', :owner,"
                    " 'supervisor', :endpoint, :deps, 1, CAST(:slo AS jsonb),"
                    " CAST(:meta AS jsonb)) ON CONFLICT (name) DO UPDATE SET"
                    " provider = EXCLUDED.provider, endpoint = EXCLUDED.endpoint,"
                    " dependencies = EXCLUDED.dependencies, metadata = EXCLUDED.metadata,"
                    " updated_at = now()"
                ),
                {
                    "name": service.name,
                    "owner": owner,
                    "endpoint": f"http://127.0.0.1:{service.port}",
                    "deps": service.depends_on,
                    "slo": json.dumps({"availability": 0.999, "recovery_time_objective_s": 120}),
                    "meta": json.dumps(service_metadata(fleet, service.name)),
                },
            )
    return [s.name for s in fleet.spec.services]


def unregister(engine: Engine, names: list[str]) -> None:
    """Remove services from the inventory so nothing probes them any more."""
    with engine.begin() as conn:
        # Their configuration history goes with them (config_versions references services).
        conn.execute(
            text("DELETE FROM config_versions WHERE service = ANY(:names)"), {"names": names}
        )
        conn.execute(text("DELETE FROM services WHERE name = ANY(:names)"), {"names": names})


def list_targets(engine: Engine) -> list[FleetTarget]:
    """Services of the inventory that have a health endpoint to probe."""
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT name, endpoint, provider, metadata FROM services "
                "WHERE endpoint IS NOT NULL ORDER BY name"
            )
        ).mappings()
        return [
            FleetTarget(
                service=r["name"],
                endpoint=r["endpoint"],
                provider=r["provider"],
                metadata=r["metadata"] or {},
            )
            for r in rows
        ]


def find_target(engine: Engine, service: str) -> FleetTarget | None:
    """The inventory entry of one service, None when it has none (or no endpoint)."""
    return next((t for t in list_targets(engine) if t.service == service), None)
