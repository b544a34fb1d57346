"""Guardrails: each one decides on real data (a fresh database per test), every verdict is
recorded; end to end, the kill switch holds a real restart until resumed, and an alert storm
over 20 real services opens 20 incidents, stops for a person while most of the fleet is down,
then never runs more actions at once than the limit."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text
from temporalio.client import Client

from models.common import ApprovalRequest
from models.decisions import Operator
from models.guardrails import GuardrailCheck
from models.healing import IncidentInput, IncidentState, OpenIncidentInput
from nofx import inventory
from nofx.client import start_incident
from nofx.db import make_engine
from nofx.decisions.store import add_operator
from nofx.healing.guardrails import (
    add_freeze,
    check_guardrails,
    read_controls,
    recent_verdicts,
    release_lease,
    set_paused,
    set_policy,
)
from nofx.inventory import register_fleet, unregister
from pilot.fleet import Fleet, FleetSpec, ServiceSpec, free_port
from tests.fixtures_db import TEST_POLICY
from workflows.healing import HealingIncidentWorkflow


@pytest.fixture
def engine(fresh_engine: Engine) -> Engine:
    return fresh_engine


def add_services(engine: Engine, names: list[str], group: str | None = None) -> None:
    with engine.begin() as conn:
        for name in names:
            conn.execute(
                text(
                    "INSERT INTO services (name, tier, owner, provider, endpoint, metadata)"
                    " VALUES (:n, 'tier-2', 'sre', 'supervisor', 'http://127.0.0.1:1',"
                    " CAST(:m AS jsonb))"
                ),
                {"n": name, "m": json.dumps({"group": group} if group else {})},
            )


def ask(engine: Engine, service: str, key: str, approved_by: str | None = None) -> Any:
    return check_guardrails(
        engine,
        GuardrailCheck(
            idempotency_key=f"incident-{service}/inc-{key}/0-restart_service",
            workflow_id=f"incident-{service}",
            service=service,
            action="restart_service",
            approved_by=approved_by,
        ),
    )


def test_concurrency_is_a_lease_held_until_released(engine: Engine) -> None:
    add_services(engine, ["a", "b", "c"])
    set_policy(engine, {"max_concurrent_actions": 2})
    assert ask(engine, "a", "1").verdict == "allow"
    assert ask(engine, "a", "1").reason == "lease already held by this step"  # a retry
    assert ask(engine, "b", "1").verdict == "allow"
    held = ask(engine, "c", "1")
    assert (held.verdict, held.guardrail) == ("wait", "concurrency")
    assert "2 actions in flight" in held.reason
    assert release_lease(engine, "incident-a/inc-1/0-restart_service")
    assert ask(engine, "c", "1").verdict == "allow"


def test_blast_radius_acts_on_at_most_a_share_of_a_group(engine: Engine) -> None:
    add_services(engine, ["api-1", "api-2", "api-3", "api-4"], group="api")
    set_policy(engine, {"blast_radius_share": 0.5})
    assert ask(engine, "api-1", "1").verdict == "allow"
    assert ask(engine, "api-2", "1").verdict == "allow"
    held = ask(engine, "api-3", "1")
    assert (held.verdict, held.guardrail) == ("wait", "blast_radius")
    assert "2 of 4 replica(s) of api" in held.reason


def test_kill_switch_and_freezes_hold_even_an_approved_step(engine: Engine) -> None:
    add_services(engine, ["a", "b"])
    set_paused(engine, True, actor="alice", reason="database migration")
    held = ask(engine, "a", "1", approved_by="bob")
    assert (held.verdict, held.guardrail) == ("wait", "kill_switch")
    assert held.reason == "automation paused by alice: database migration"
    set_paused(engine, False, actor="alice", reason="done")
    now = datetime.now(UTC)
    add_freeze(
        engine,
        now - timedelta(minutes=1),
        now + timedelta(hours=1),
        scope="a",
        reason="peak sales",
        actor="carol",
    )
    frozen = ask(engine, "a", "2", approved_by="bob")
    assert (frozen.verdict, frozen.guardrail) == ("wait", "change_freeze")
    assert "peak sales" in frozen.reason
    assert ask(engine, "b", "2").verdict == "allow"  # the freeze is scoped to a
    with pytest.raises(ValueError, match="ends"):
        add_freeze(engine, now, now - timedelta(seconds=1), scope="*", reason="x", actor="c")


def test_breaker_cooldown_rate_and_unhealthy_fleet_ask_a_person(engine: Engine) -> None:
    add_services(engine, ["a", "b", "c", "d"])
    set_policy(
        engine,
        {
            "breaker_failures": 2,
            "cooldown_seconds": 300,
            "max_actions_per_hour": 2,
            "unhealthy_share_stop": 0.5,
        },
    )
    with engine.begin() as conn:
        # another incident restarted b a minute ago, and twice within the hour
        for minutes in (1, 20):
            conn.execute(
                text(
                    "INSERT INTO action_log (idempotency_key, workflow_id, step, action, target,"
                    " status, started_at) VALUES (:k, 'incident-b-x', '0-restart_service',"
                    " 'restart_service', 'b', 'succeeded', now() - make_interval(mins => :m))"
                ),
                {"k": f"incident-b-x/old-{minutes}/0-restart_service", "m": minutes},
            )
    cooled = ask(engine, "b", "1")
    assert (cooled.verdict, cooled.guardrail) == ("ask", "cooldown")
    set_policy(engine, {"cooldown_seconds": 0})
    limited = ask(engine, "b", "2")
    assert (limited.verdict, limited.guardrail) == ("ask", "rate_limit")
    approved = ask(engine, "b", "3", approved_by="dave")
    assert approved.verdict == "allow"
    assert approved.reason.startswith("approved by dave over:")

    with engine.begin() as conn:
        for service in ("a", "b", "c"):  # three of four services have open incidents
            conn.execute(
                text(
                    "INSERT INTO healing_incidents (incident_type, detection_method, root_cause,"
                    " healing_strategy, status) VALUES ('service_down', 'test',"
                    " CAST(:rc AS jsonb), 'restart-service', 'healing')"
                ),
                {"rc": json.dumps({"service": service})},
            )
    stopped = ask(engine, "c", "1")
    assert (stopped.verdict, stopped.guardrail) == ("ask", "fleet_unhealthy")
    assert "3 of 4 services are unhealthy" in stopped.reason
    with engine.begin() as conn:
        conn.execute(text("UPDATE healing_incidents SET status = 'failed'"))
    broken = ask(engine, "d", "1")
    assert (broken.verdict, broken.guardrail) == ("ask", "circuit_breaker")
    verdicts = recent_verdicts(engine)
    assert [v["guardrail"] for v in verdicts if v["verdict"] != "allow"] == [
        "cooldown",
        "rate_limit",
        "fleet_unhealthy",
        "circuit_breaker",
    ]


def test_a_bad_policy_is_refused_field_by_field(engine: Engine) -> None:
    with pytest.raises(ValueError, match="max_concurrent_actions"):
        set_policy(engine, {"max_concurrent_actions": 0})
    with pytest.raises(ValueError, match="Extra inputs"):
        set_policy(engine, {"max_concurent_actions": 2})
    with engine.connect() as conn:
        assert read_controls(conn).policy.max_concurrent_actions == 3  # unchanged


@pytest.fixture
def session_policy(db_engine: Engine) -> Iterator[Engine]:
    """Tests that change the session database's controls put the test policy back."""
    try:
        yield db_engine
    finally:
        set_paused(db_engine, False, actor="pytest", reason="test over")
        set_policy(db_engine, TEST_POLICY)


@pytest.mark.e2e
async def test_kill_switch_holds_a_real_restart_until_resumed(
    client: Client, healing_worker: None, live_fleet: Fleet, session_policy: Engine
) -> None:
    engine = session_policy
    service = live_fleet.spec.services[0].name
    set_policy(engine, {"recheck_seconds": 0.5})
    set_paused(engine, True, actor="alice", reason="investigating")
    live_fleet.inject("kill", service)
    handle, _ = await start_incident(
        client,
        IncidentInput(service=service, incident_type="service_down", detected_at=datetime.now(UTC)),
    )
    await asyncio.sleep(5)
    status = await handle.query(HealingIncidentWorkflow.status)
    assert status.state is IncidentState.HEALING
    assert any("held by guardrail kill_switch" in e.message for e in status.timeline)
    assert status.actions == []
    assert live_fleet.pid(service) is None  # still down: nothing was done
    set_paused(engine, False, actor="alice", reason="go ahead")
    result = await asyncio.wait_for(handle.result(), timeout=60)
    assert result.state is IncidentState.RESOLVED
    assert live_fleet.pid(service) is not None


@pytest.fixture
def storm_fleet(tmp_path: Path, db_engine: Engine, database_url: str) -> Iterator[Fleet]:
    tag = uuid.uuid4().hex[:5]
    fleet = Fleet(
        tmp_path,
        FleetSpec(
            services=[ServiceSpec(name=f"s{tag}-{i:02d}", port=free_port()) for i in range(20)]
        ),
        database_url=database_url,
    )
    fleet.start(timeout=120)
    names = register_fleet(db_engine, fleet)  # once up: starting is not down
    try:
        yield fleet
    finally:
        unregister(db_engine, names)
        fleet.stop()


def max_overlap(intervals: list[tuple[datetime, datetime]]) -> int:
    events = sorted([(a, 1) for a, _ in intervals] + [(b, -1) for _, b in intervals])
    running = peak = 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    return peak


@pytest.mark.e2e
@pytest.mark.timeout(600)
async def test_alert_storm_opens_one_incident_per_service_and_respects_the_limits(
    client: Client, healing_worker: None, storm_fleet: Fleet, session_policy: Engine
) -> None:
    from temporalio.testing import ActivityEnvironment

    from activities.incidents import IncidentActivities

    engine = session_policy
    names = [s.name for s in storm_fleet.spec.services]
    set_policy(
        engine, {"unhealthy_share_stop": 0.5, "max_concurrent_actions": 3, "recheck_seconds": 0.5}
    )
    for name in names:
        storm_fleet.inject("kill", name)
    started = datetime.now(UTC)
    opener = IncidentActivities(client)

    async def probe_fails(name: str) -> str:
        incident = IncidentInput(service=name, incident_type="service_down", detected_at=started)
        opened = await ActivityEnvironment().run(
            opener.open_incident, OpenIncidentInput(incident=incident)
        )
        return opened.workflow_id

    # 200 failing probes for 20 services within seconds
    opened = await asyncio.gather(*(probe_fails(n) for _ in range(10) for n in names))
    assert len(opened) == 200
    assert len(set(opened)) == 20

    # Most of the fleet is down: automated remediation stops and asks a person.
    handles = [client.get_workflow_handle(w) for w in sorted(set(opened))]
    deadline = asyncio.get_running_loop().time() + 60
    while True:
        states = [(await h.query(HealingIncidentWorkflow.status)).state for h in handles]
        if all(s is IncidentState.AWAITING_APPROVAL for s in states):
            break
        assert asyncio.get_running_loop().time() < deadline, states
        await asyncio.sleep(0.5)
    with engine.connect() as conn:
        acted = conn.execute(
            text("SELECT count(*) FROM action_log WHERE target = ANY(:n)"), {"n": names}
        ).scalar_one()
    assert acted == 0
    asked = [v for v in recent_verdicts(engine, names) if v["verdict"] == "ask"]
    assert {v["guardrail"] for v in asked} == {"fleet_unhealthy"}

    # A person approves them all (each its own decision): they go ahead, never more than 3 at once.
    add_operator(engine, Operator(name="erin", permissions=["healing:*"]), actor="test")
    leases_seen: list[int] = []
    for handle in handles:
        await handle.signal("approve", ApprovalRequest(approver="erin", reason="storm reviewed"))

    async def watch_leases() -> None:
        while True:
            with engine.connect() as conn:
                leases_seen.append(
                    conn.execute(text("SELECT count(*) FROM action_leases")).scalar_one()
                )
            await asyncio.sleep(0.1)

    watcher = asyncio.ensure_future(watch_leases())
    try:
        results = await asyncio.wait_for(asyncio.gather(*(h.result() for h in handles)), 300)
    finally:
        watcher.cancel()
    assert all(r["state"] == "resolved" for r in results), results
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT started_at, finished_at FROM action_log WHERE target = ANY(:n)"
                " AND action = 'restart_service'"
            ),
            {"n": names},
        ).all()
    assert len(rows) == 20  # one restart per service, none repeated
    assert max_overlap([(a, b) for a, b in rows]) <= 3
    assert max(leases_seen) <= 3
    assert any(v["guardrail"] == "concurrency" for v in recent_verdicts(engine, names))


def test_pause_resume_and_policy_from_the_cli(fresh_database_url: str, nofx_cli: Any) -> None:
    def run(*args: str) -> Any:
        return nofx_cli(fresh_database_url, *args)

    unknown = run("guardrails", "freeze", "add", "--reason", "peak", "--scope", "api")
    assert unknown.exit_code == 1  # a freeze of a service nobody has protects nothing
    assert "'api' is not in the inventory" in unknown.output
    engine = make_engine(fresh_database_url)
    try:
        service = {"name": "api", "endpoint": "http://127.0.0.1:1"}
        inventory.apply(engine, inventory.parse({"services": [service]}))
    finally:
        engine.dispose()
    paused = run("pause", "--reason", "db upgrade")
    assert paused.exit_code == 0, paused.output
    assert "PAUSED" in paused.output
    shown = run("guardrails", "show")
    assert "automation: PAUSED" in shown.output
    refused = run("guardrails", "set", "max_concurrent_actions=0")
    assert refused.exit_code == 1
    assert "max_concurrent_actions" in refused.output
    changed = run("guardrails", "set", "max_concurrent_actions=2")
    assert changed.exit_code == 0, changed.output
    frozen = run(
        "guardrails", "freeze", "add", "--reason", "peak", "--hours", "1", "--scope", "api"
    )
    assert frozen.exit_code == 0, frozen.output
    assert run("resume").exit_code == 0
    engine = make_engine(fresh_database_url)
    try:
        with engine.connect() as conn:
            controls = read_controls(conn)
        assert not controls.paused
        assert controls.policy.max_concurrent_actions == 2
        assert (ask(engine, "api", "1").guardrail) == "change_freeze"
    finally:
        engine.dispose()
