"""Each healing strategy end to end against its real component, and its compensation restoring the
prior state: configuration rollback (config_versions + the pilot's reload), stuck database
sessions (the real PostgreSQL), cache invalidation (the real Redis), disk quarantine after a
restart (supervisord + the file system), pool resizing rolled back by the saga when validation
fails.

A fault is injected for real, the incident is started as the monitor would start it, the seeded
playbook heals it; then the recorded step is undone through the same activity the saga uses, and
the prior (faulty) state must be back — proof that the rollback path restores what was there.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
import psycopg
import pytest
from sqlalchemy import Engine, text
from temporalio.client import Client, WorkflowFailureError
from temporalio.testing import ActivityEnvironment

from activities.actions import ActionActivities
from activities.store import get_fleet_target
from models.actions import ActionRequest, ServiceCapabilities
from models.healing import IncidentInput, IncidentResult, IncidentState, PlaybookCandidate
from nofx.client import start_incident
from nofx.db import to_libpq_url
from nofx.healing.actions import capabilities
from nofx.settings import Settings
from pilot.config import application_name
from pilot.fleet import Fleet
from workflows.decisions import rank_playbooks
from workflows.healing import HealingIncidentWorkflow

pytestmark = pytest.mark.e2e


async def heal(client: Client, service: str, incident_type: str) -> tuple[IncidentResult, str]:
    """Open an incident as the monitor would and wait for its end; returns it and its id."""
    handle, _ = await start_incident(
        client,
        IncidentInput(
            service=service,
            incident_type=incident_type,  # type: ignore[arg-type]
            detection_method="test",
            detected_at=datetime.now(UTC),
        ),
    )
    try:
        result: IncidentResult = await asyncio.wait_for(handle.result(), timeout=150)
    except (TimeoutError, WorkflowFailureError):
        status = await handle.query(HealingIncidentWorkflow.status)
        raise AssertionError(f"incident did not heal: {status.error} {status.timeline}") from None
    return result, handle.id


def step_request(
    workflow_id: str,
    incident_id: str,
    index: int,
    action: str,
    service: str,
    params: dict[str, Any] | None = None,
) -> ActionRequest:
    """The request the saga built for step `index` (same idempotency key), to undo it."""
    return ActionRequest(
        idempotency_key=f"{workflow_id}/{incident_id}/{index}-{action}",
        workflow_id=workflow_id,
        step=f"{index}-{action}",
        service=service,
        action=action,  # type: ignore[arg-type]
        params=params or {},
        not_before=datetime.now(UTC),
    )


def actions_of(result: IncidentResult) -> list[str]:
    return [a.action for a in result.actions]


def work(fleet: Fleet, service: str, n: int = 10) -> list[dict[str, Any]]:
    """n real GET / on the service: status code and body."""
    out = []
    with httpx.Client(timeout=5) as http:
        for _ in range(n):
            response = http.get(fleet.url(service, "/"))
            body = (
                response.json()
                if response.headers.get("content-type", "").startswith("application/json")
                else {}
            )
            out.append({"status": response.status_code, **body})
    return out


def served_version(fleet: Fleet, service: str) -> int:
    """The config version the running pilot says it serves."""
    return int(httpx.get(fleet.health_url(service), timeout=2).json()["config_version"])


@pytest.fixture
def undo(db_engine: Engine, database_url: str) -> Any:
    activities = ActionActivities(db_engine, Settings(database_url=database_url))

    async def run(request: ActionRequest) -> Any:
        env = ActivityEnvironment()
        return await asyncio.to_thread(env.run, activities.undo_action, request)

    return run


def test_capabilities_come_from_the_inventory(db_engine: Engine, live_fleet: Fleet) -> None:
    target = get_fleet_target(db_engine, live_fleet.spec.services[0].name)
    offered = capabilities(target)
    for needed in (
        "process.restart",
        "disk.cleanup",
        "config.rollback",
        "db.terminate_idle",
        "cache.invalidate",
        "probe.http",
    ):
        assert needed in offered, (needed, offered)
    assert "traffic.drain" not in offered  # no HAProxy in front of this fleet: never faked
    drain = PlaybookCandidate(
        playbook_id="x",
        playbook_name="drain-it",
        automation_level="full-auto",
        required_permissions=[],
        recovery_steps=[{"action": "drain_traffic", "params": {}}],
    )
    usable, rejected = rank_playbooks(
        [drain], ServiceCapabilities(service="s", known=True, capabilities=offered)
    )
    assert usable == []
    assert rejected == [{"playbook": "drain-it", "rejected": "s does not offer traffic.drain"}]


async def test_bad_config_is_rolled_back_and_the_undo_restores_it(
    client: Client, healing_worker: None, live_fleet: Fleet, undo: Any
) -> None:
    service = live_fleet.spec.services[1].name
    live_fleet.inject("bad_config", service, error_rate=0.6)
    bad = live_fleet.active_config(service)
    assert bad is not None
    assert sum(r["status"] >= 500 for r in work(live_fleet, service, 20)) > 3

    result, workflow_id = await heal(client, service, "error_spike_after_config_change")
    assert result.state is IncidentState.RESOLVED
    assert actions_of(result) == ["rollback_config"]
    healed = live_fleet.active_config(service)
    assert healed is not None
    assert healed.config["error_rate"] == 0.0
    assert healed.applied_by == "nofx-healing"
    assert all(r["status"] == 200 for r in work(live_fleet, service, 20))

    undone = await undo(
        step_request(workflow_id, result.incident_id, 0, "rollback_config", service)
    )
    assert undone.performed
    restored = live_fleet.active_config(service)
    assert restored is not None
    assert restored.config == bad.config  # the prior (bad) configuration is back
    live_fleet.clear(service)


async def test_stuck_sessions_are_ended_but_sessions_with_writes_are_spared(
    client: Client, healing_worker: None, live_fleet: Fleet, database_url: str, undo: Any
) -> None:
    service = live_fleet.spec.services[0].name
    # A session of the service's own application that has written (it holds a transaction id):
    # ending it would lose its writes, so healing must leave it alone.
    writer = psycopg.connect(to_libpq_url(database_url), application_name=application_name(service))
    try:
        writer.execute("BEGIN")
        writer_pid = writer.execute("SELECT pg_backend_pid()").fetchone()[0]  # type: ignore[index]
        writer.execute("SELECT txid_current()")
        live_fleet.inject("connection_leak", service, interval_s=0.05)
        await asyncio.sleep(1.5)
        assert any(r["status"] == 503 for r in work(live_fleet, service, 5))
        await asyncio.sleep(2.5)  # the leaked sessions must be idle long enough to count as stuck

        result, workflow_id = await heal(client, service, "db_pool_exhaustion")
        assert result.state is IncidentState.RESOLVED
        ended = result.actions[0].detail
        assert ended["terminated"], ended
        assert writer_pid in ended["spared_with_writes"]
        assert writer_pid not in ended["terminated"]
        assert writer.execute("SELECT 1").fetchone() == (1,)  # still alive, writes intact
        assert all(r["status"] == 200 for r in work(live_fleet, service, 10))

        undone = await undo(
            step_request(workflow_id, result.incident_id, 0, "terminate_idle_connections", service)
        )
        assert not undone.performed
        assert "nothing to restore" in undone.detail["reason"]
    finally:
        writer.close()
        live_fleet.clear(service)


async def test_stale_cache_is_invalidated_and_the_undo_restores_the_entries(
    client: Client, healing_worker: None, live_fleet: Fleet, undo: Any
) -> None:
    service = live_fleet.spec.services[1].name
    live_fleet.inject("stale_cache", service)
    await asyncio.sleep(2.5)  # the source moves on every second; the pinned entry does not
    assert any(r["cache"]["stale"] for r in work(live_fleet, service, 3))

    result, workflow_id = await heal(client, service, "stale_cache")
    assert result.state is IncidentState.RESOLVED
    assert actions_of(result) == ["invalidate_cache"]
    assert result.actions[0].detail["deleted"] >= 2  # the entry and the stuck refresh lock
    await asyncio.sleep(2.5)  # invalidation works again as the source moves on
    assert not any(r["cache"]["stale"] for r in work(live_fleet, service, 5))

    undone = await undo(
        step_request(workflow_id, result.incident_id, 0, "invalidate_cache", service)
    )
    assert undone.performed
    await asyncio.sleep(2.5)
    assert any(r["cache"]["stale"] for r in work(live_fleet, service, 3))  # prior state is back
    live_fleet.clear(service)
    assert not any(r["cache"]["stale"] for r in work(live_fleet, service, 3))


async def test_disk_fill_stops_the_writer_quarantines_its_files_and_the_undo_puts_them_back(
    client: Client, healing_worker: None, live_fleet: Fleet, undo: Any
) -> None:
    service = live_fleet.spec.services[0].name
    data = live_fleet.data_dir(service)
    live_fleet.inject("disk_fill", service, rate_mb_s=20, quota_mb=40)
    await asyncio.sleep(1.0)
    filled = sorted(p.name for p in data.iterdir() if p.name.startswith("fill-"))
    assert filled

    result, workflow_id = await heal(client, service, "disk_filling")
    assert result.state is IncidentState.RESOLVED
    assert actions_of(result) == ["restart_service", "cleanup_disk"]
    left = [p.name for p in data.iterdir() if p.name.startswith("fill-")]
    assert left == []  # the writer is gone (restart) and its files are out of the quota
    moved = result.actions[1].detail["moved"]
    assert set(filled) <= set(moved)

    undone = await undo(
        step_request(
            workflow_id, result.incident_id, 1, "cleanup_disk", service, {"patterns": ["fill-*"]}
        )
    )
    assert sorted(undone.detail["restored"]) == sorted(moved)
    assert sorted(p.name for p in data.iterdir() if p.name.startswith("fill-")) == sorted(moved)
    live_fleet.clear(service)


async def test_memory_leak_is_healed_by_a_restart(
    client: Client, healing_worker: None, live_fleet: Fleet
) -> None:
    service = live_fleet.spec.services[1].name
    pid = live_fleet.pid(service)
    live_fleet.inject("memory_leak", service, rate_mb_s=50, limit_mb=60)
    result, _ = await heal(client, service, "memory_leak")
    assert result.state is IncidentState.RESOLVED
    assert actions_of(result) == ["restart_service"]
    assert live_fleet.pid(service) != pid
    assert "memory_leak" not in live_fleet.active_faults(service)


async def test_a_failed_rung_is_rolled_back_and_the_ladder_goes_on(
    client: Client, healing_worker: None, live_fleet: Fleet, db_engine: Engine
) -> None:
    """The saga and the escalation ladder end to end: rung 1 resizes the pool, its validation
    fails, the compensation restores the size; rung 2 restarts the service and resolves."""
    service = live_fleet.spec.services[0].name
    tag = uuid.uuid4().hex[:6]
    ladder = [
        (
            f"test-resize-{tag}",
            1,
            [
                {"action": "resize_pool", "params": {"factor": 2}},
                # impossible on purpose: no real request answers in a microsecond
                {
                    "action": "validate_requests",
                    "params": {
                        "max_p95_ms": 0.001,
                        "attempts": 2,
                        "requests": 3,
                        "interval_seconds": 0.2,
                    },
                },
            ],
        ),
        (f"test-restart-{tag}", 2, [{"action": "restart_service"}, {"action": "validate_health"}]),
    ]
    with db_engine.begin() as conn:
        for name, rank, steps in ladder:
            conn.execute(
                text(
                    "INSERT INTO recovery_playbooks (incident_type, playbook_name, recovery_steps,"
                    " automation_level, required_permissions, escalation_rank) VALUES"
                    " ('overload', :n, CAST(:s AS jsonb), 'full-auto', '{healing:config}', :r)"
                ),
                {"n": name, "s": json.dumps(steps), "r": rank},
            )
    try:
        before = live_fleet.active_config(service)
        size = (before.config if before else {}).get("db_pool_size", 5)
        pid = live_fleet.pid(service)
        result, _ = await heal(client, service, "overload")
        assert result.state is IncidentState.RESOLVED
        assert actions_of(result) == ["resize_pool", "undo_resize_pool", "restart_service"]
        assert result.actions[0].detail["to"] == size * 2
        assert result.actions[1].performed
        after = live_fleet.active_config(service)
        assert after is not None
        assert after.config["db_pool_size"] == size  # the prior size is back
        assert served_version(live_fleet, service) == after.version  # and the pilot runs it
        assert live_fleet.pid(service) != pid  # rung 2 restarted it
        with db_engine.connect() as conn:
            chosen = (
                conn.execute(
                    text(
                        "SELECT chosen_action FROM autonomous_decisions"
                        " WHERE context_data->>'incident_id' = :i ORDER BY created_at"
                    ),
                    {"i": result.incident_id},
                )
                .scalars()
                .all()
            )
        assert chosen == [f"test-resize-{tag}", f"test-restart-{tag}"]
    finally:
        with db_engine.begin() as conn:
            conn.execute(
                text("DELETE FROM recovery_playbooks WHERE playbook_name = ANY(:n)"),
                {"n": [name for name, _, _ in ladder]},
            )
