"""The service inventory (table `services`): what the monitor probes and how providers reach it."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import yaml
from pydantic import ValidationError
from sqlalchemy import Connection, text
from sqlalchemy.engine import Engine

from models.healing import FleetTarget
from models.inventory import ApplyReport, ChangeKind, InventoryFile, ServiceChange, ServiceEntry
from nofx.audit import append_audit

INVENTORY_ACTOR = "nofx-inventory"
# the columns of `services` an inventory file sets (decision_mode is set by its own operation)
MANAGED = (
    "tier",
    "owner",
    "provider",
    "endpoint",
    "dependencies",
    "capacity",
    "slo_targets",
    "metadata",
)


class InventoryError(ValueError):
    """An inventory file that cannot be applied; the message names the file, service and field."""


def _where(loc: tuple[Any, ...], raw: Any) -> str:
    """`services[checkout].providers.traffic.socket` for a pydantic error location."""
    parts: list[str] = []
    for i, key in enumerate(loc):
        if isinstance(key, int) and i > 0 and loc[i - 1] == "services":
            name = None
            if isinstance(raw, Mapping):
                entries = raw.get("services")
                if isinstance(entries, list) and key < len(entries):
                    entry = entries[key]
                    name = entry.get("name") if isinstance(entry, Mapping) else None
            parts[-1] += f"[{name}]" if isinstance(name, str) and name else f"[{key}]"
        elif isinstance(key, int):
            parts[-1] += f"[{key}]"
        else:
            parts.append(str(key))
    return ".".join(parts) or "(file)"


def parse(raw: Any, source: str = "inventory") -> InventoryFile:
    """Validate an inventory document (the parsed YAML or JSON), every problem named by field.

    Raises:
        InventoryError: one line per problem, `source: services[NAME].field: what is wrong`.
    """
    try:
        return InventoryFile.model_validate(raw)
    except ValidationError as err:
        lines = [f"{source}: {_where(tuple(e['loc']), raw)}: {e['msg']}" for e in err.errors()]
        raise InventoryError("\n".join(lines)) from None


def load(path: Path) -> InventoryFile:
    """Read and validate an inventory file (YAML; JSON is YAML too).

    Raises:
        InventoryError: unreadable, not YAML, or invalid (see `parse`).
    """
    try:
        text_ = path.read_text()
    except OSError as err:
        raise InventoryError(f"{path}: cannot be read ({err.strerror})") from None
    try:
        raw = yaml.safe_load(text_)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise InventoryError(f"{path}: not YAML{where}: {getattr(err, 'problem', err)}") from None
    return parse(raw, str(path))


def row_of(entry: ServiceEntry) -> dict[str, Any]:
    """The `services` row an entry stands for; the providers' settings become the metadata keys
    the actions' capabilities read (nofx.healing.actions.capabilities)."""
    providers = entry.providers
    meta: dict[str, Any] = {}
    provider = "none"
    if providers.process is not None:
        provider = providers.process.kind
        meta["supervisor_socket"] = providers.process.socket
        meta["process"] = providers.process.program or entry.name
    if entry.group is not None:
        meta["group"] = entry.group
    if providers.traffic is not None:
        traffic = providers.traffic
        meta["haproxy_socket"] = traffic.socket
        meta["haproxy_backend"] = traffic.backend
        meta["haproxy_server"] = traffic.server
        if traffic.frontend is not None:
            meta["haproxy_frontend"] = str(traffic.frontend).rstrip("/")
    if providers.replicas is not None:
        meta["replica_slots"] = providers.replicas.model_dump(mode="json", exclude_none=True)
    if providers.database is not None:
        meta["application_name"] = providers.database.application_name
    if providers.cache is not None:
        meta["redis_url"] = providers.cache.url
        meta["cache_prefix"] = providers.cache.prefix
    if providers.files is not None:
        meta["data_dir"] = providers.files.data_dir
    if providers.config is not None:
        meta["config"] = providers.config.model_dump(mode="json", exclude_none=True)
    if entry.metrics is not None:
        meta["metrics"] = entry.metrics.model_dump(mode="json", exclude_none=True)
    if entry.limits:
        meta["limits"] = dict(entry.limits)
    if entry.maintenance is not None:
        meta["maintenance"] = entry.maintenance.model_dump(mode="json")
    if entry.optimization is not None:
        meta["optimization"] = entry.optimization.model_dump(mode="json", exclude_none=True)
    if entry.resources is not None:
        meta["resources"] = entry.resources.model_dump(mode="json", exclude_none=True)
    if entry.annotations:
        meta["annotations"] = dict(entry.annotations)
    return {
        "tier": entry.tier,
        "owner": entry.owner,
        "provider": provider,
        "endpoint": str(entry.endpoint).rstrip("/"),
        "dependencies": list(entry.dependencies),
        "capacity": entry.capacity,
        "slo_targets": entry.slo.model_dump(exclude_none=True),
        "metadata": meta,
    }


def _current(conn: Connection, names: list[str] | None = None) -> dict[str, dict[str, Any]]:
    rows = conn.execute(
        text(
            "SELECT name, " + ", ".join(MANAGED) + " FROM services"
            " WHERE CAST(:names AS text[]) IS NULL OR name = ANY(:names) ORDER BY name"
        ),
        {"names": names},
    ).mappings()
    return {r["name"]: {k: _plain(r[k]) for k in MANAGED} for r in rows}


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _changes(before: Mapping[str, Any] | None, after: Mapping[str, Any]) -> dict[str, Any]:
    if before is None:
        return {k: {"before": None, "after": v} for k, v in after.items()}
    return {
        k: {"before": before.get(k), "after": v} for k, v in after.items() if before.get(k) != v
    }


def plan(conn: Connection, inventory: InventoryFile) -> list[ServiceChange]:
    """What applying `inventory` would change, service by service (nothing is written).

    Raises:
        InventoryError: a dependency that is neither in the file nor in the inventory.
    """
    current = _current(conn)
    listed = {e.name for e in inventory.services}
    unknown = sorted(
        f"services[{e.name}].dependencies: {d} is neither in the file nor in the inventory"
        for e in inventory.services
        for d in e.dependencies
        if d not in listed and d not in current
    )
    if unknown:
        raise InventoryError("\n".join(unknown))
    out = []
    for entry in inventory.services:
        row = row_of(entry)
        before = current.get(entry.name)
        fields = _changes(before, row)
        change: ChangeKind = "add" if before is None else "change" if fields else "unchanged"
        out.append(ServiceChange(service=entry.name, change=change, fields=fields))
    return out


def apply(
    engine: Engine, inventory: InventoryFile, *, dry_run: bool = False, actor: str = INVENTORY_ACTOR
) -> ApplyReport:
    """Add or change the services of `inventory` in one transaction (all or none), each change
    audited; with `dry_run`, only the plan. Services the file does not list are left alone
    (`remove` takes them out).

    Raises:
        InventoryError: see `plan`; nothing is written then.
    """
    with engine.begin() as conn:
        # one apply at a time: two concurrent applies would each plan against the old rows
        conn.execute(text("SELECT pg_advisory_xact_lock(hashtext('nofx-inventory-apply'))"))
        changes = plan(conn, inventory)
        if dry_run:  # nothing written; the lock goes with the transaction
            return ApplyReport(dry_run=True, changes=changes)
        rows = {e.name: row_of(e) for e in inventory.services}
        for change in changes:
            if change.change == "unchanged":
                continue
            row = rows[change.service]
            conn.execute(
                text(
                    "INSERT INTO services (name, tier, owner, provider, endpoint, dependencies,"
                    " capacity, slo_targets, metadata) VALUES (:name, :tier, :owner, :provider,"
                    " :endpoint, :dependencies, :capacity, CAST(:slo AS jsonb),"
                    " CAST(:meta AS jsonb)) ON CONFLICT (name) DO UPDATE SET"
                    " tier = EXCLUDED.tier, owner = EXCLUDED.owner,"
                    " provider = EXCLUDED.provider, endpoint = EXCLUDED.endpoint,"
                    " dependencies = EXCLUDED.dependencies, capacity = EXCLUDED.capacity,"
                    " slo_targets = EXCLUDED.slo_targets, metadata = EXCLUDED.metadata"
                ),
                {
                    "name": change.service,
                    **{k: row[k] for k in ("tier", "owner", "provider", "endpoint", "capacity")},
                    "dependencies": row["dependencies"],
                    "slo": json.dumps(row["slo_targets"]),
                    "meta": json.dumps(row["metadata"]),
                },
            )
            append_audit(
                conn,
                actor=actor,
                action=f"inventory.{change.change}",
                entity_type="service",
                entity_id=change.service,
                reason="nofx services apply",
                details={"fields": sorted(change.fields)},
            )
    return ApplyReport(dry_run=False, changes=changes)


class FleetDocument(Protocol):
    """Anything that describes its services as an inventory document (the staging fleet does)."""

    def inventory(self, owner: str = ...) -> dict[str, Any]: ...


def register_fleet(
    engine: Engine, fleet: FleetDocument, *, owner: str = "platform-sre"
) -> list[str]:
    """Apply a fleet's own inventory document (the same format an SRE team writes); the names."""
    inventory = parse(fleet.inventory(owner=owner), "fleet inventory")
    apply(engine, inventory)
    return [e.name for e in inventory.services]


def describe(engine: Engine, name: str | None = None) -> list[dict[str, Any]]:
    """The inventory's services (or one), as their rows: name, the managed columns,
    decision_mode and when it last changed."""
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT name, " + ", ".join(MANAGED) + ", decision_mode, updated_at"
                " FROM services WHERE CAST(:n AS text) IS NULL OR name = :n ORDER BY name"
            ),
            {"n": name},
        ).mappings()
        return [{k: _plain(v) for k, v in r.items()} for r in rows]


def limited_metrics(
    engine: Engine, services: list[str] | None = None
) -> list[tuple[str, str, float]]:
    """(service, metric, limit) for every limit the inventory sets (on `services` only, if
    given), by service and metric."""
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT name, metadata->'limits' AS limits FROM services"
                " WHERE metadata->'limits' IS NOT NULL"
                " AND (CAST(:only AS text[]) IS NULL OR name = ANY(:only)) ORDER BY name"
            ),
            {"only": list(services) if services else None},
        ).all()
    return [
        (name, metric, float(limit))
        for name, limits in rows
        for metric, limit in sorted((limits or {}).items())
    ]


def _delete(conn: Connection, names: list[str]) -> None:
    # Their configuration history goes with them (config_versions references services).
    conn.execute(text("DELETE FROM config_versions WHERE service = ANY(:names)"), {"names": names})
    conn.execute(text("DELETE FROM services WHERE name = ANY(:names)"), {"names": names})


def unregister(engine: Engine, names: list[str]) -> None:
    """Remove services from the inventory so nothing probes them any more (no checks, no audit:
    the staging fleet's own teardown)."""
    with engine.begin() as conn:
        _delete(conn, names)


def remove(
    engine: Engine, names: list[str], *, actor: str = INVENTORY_ACTOR, dry_run: bool = False
) -> ApplyReport:
    """Take services out of the inventory, all or none, each removal audited.

    Raises:
        InventoryError: a name not in the inventory, or a service left behind that depends on
            one being removed; nothing is removed then.
    """
    wanted = sorted(set(names))
    with engine.begin() as conn:
        conn.execute(text("SELECT pg_advisory_xact_lock(hashtext('nofx-inventory-apply'))"))
        current = _current(conn)
        problems = [f"{n}: not in the inventory" for n in wanted if n not in current]
        problems += [
            f"{other}: depends on {n}; remove it too or change its dependencies first"
            for other, row in current.items()
            if other not in wanted
            for n in wanted
            if n in (row["dependencies"] or [])
        ]
        if problems:
            raise InventoryError("\n".join(problems))
        changes = [
            ServiceChange(
                service=n,
                change="remove",
                fields={k: {"before": v, "after": None} for k, v in current[n].items()},
            )
            for n in wanted
        ]
        if dry_run:  # nothing written; the lock goes with the transaction
            return ApplyReport(dry_run=True, changes=changes)
        _delete(conn, wanted)
        for n in wanted:
            append_audit(
                conn,
                actor=actor,
                action="inventory.remove",
                entity_type="service",
                entity_id=n,
                reason="nofx services remove",
                details={"row": current[n]},
            )
    return ApplyReport(dry_run=False, changes=changes)


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
