"""Healing operations through the CLI and the Python client: status, patterns (kept current from
outcomes), playbooks CRUD with field-by-field refusals, simulate (nothing touched), metrics."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text

from nofx.healing import operations as ops
from nofx.healing.guardrails import set_paused
from nofx.operations.errors import NotFound
from nofx.providers.config import ConfigStore
from pilot.fleet import Fleet


@pytest.fixture
def engine(fresh_engine: Engine) -> Engine:
    return fresh_engine


@pytest.fixture
def cli(fresh_database_url: str, nofx_cli: Any) -> Any:
    def run(*args: str, stdin: str | None = None) -> Any:
        return nofx_cli(fresh_database_url, *args, stdin=stdin)

    return run


def incident(
    engine: Engine,
    service: str,
    kind: str,
    status: str,
    ms: int | None,
    strategy: str,
    started: datetime,
) -> str:
    with engine.begin() as conn:
        return str(
            conn.execute(
                text(
                    "INSERT INTO healing_incidents (incident_type, detection_method, root_cause,"
                    " healing_strategy, status, started_at, resolution_time_ms) VALUES (:k, 'test',"
                    " CAST(:rc AS jsonb), :p, :s, :t, :ms) RETURNING id"
                ),
                {
                    "k": kind,
                    "rc": json.dumps({"service": service}),
                    "p": strategy,
                    "s": status,
                    "t": started,
                    "ms": ms,
                },
            ).scalar_one()
        )


def test_patterns_are_kept_current_from_outcomes(engine: Engine) -> None:
    now = datetime.now(UTC)
    for status, ms in (("resolved", 4000), ("resolved", 6000), ("failed", None)):
        incident(engine, "api", "service_down", status, ms, "restart-service", now)
    ops.refresh_pattern(engine, "service_down")
    found = {p["problem_signature"]: p for p in ops.patterns(engine)}["service_down"]
    assert float(found["success_rate"]) == 0.67
    assert found["average_resolution_time_ms"] == 5000
    assert found["proven_solutions"] == [{"playbook": "restart-service", "resolved": 2}]
    assert found["incidents"] == 3


def test_playbooks_are_created_updated_disabled_and_bad_input_is_refused_field_by_field(
    cli: Any, engine: Engine, tmp_path: Path
) -> None:
    bad = {
        "incident_type": "no_such_pattern",
        "playbook_name": "Bad Name",
        "recovery_steps": [{"action": "resize_pool", "params": {"factor": 0.5}}],
        "automation_level": "sometimes",
    }
    refused = cli("healing", "playbooks", "create", "--file", "-", stdin=json.dumps(bad))
    assert refused.exit_code == 1
    for field in ("playbook_name", "automation_level", "recovery_steps.0", "params.factor"):
        assert field in refused.output, (field, refused.output)
    # nothing half-written: only the seeded playbooks (016, 018) are there
    assert [p["playbook_name"] for p in ops.list_playbooks(engine, "overload")] == [
        "shift-traffic-off-overloaded-replica",
        "grow-pool-under-overload",
        "restart-overloaded-service",
    ]

    good = {
        "incident_type": "overload",
        "playbook_name": "grow-pool",
        "recovery_steps": [
            {"action": "resize_pool", "params": {"factor": 2}},
            {"action": "validate_requests"},
        ],
        "automation_level": "semi-auto",
        "required_permissions": ["healing:config"],
    }
    path = tmp_path / "pb.json"
    path.write_text(json.dumps(good))
    created = cli("healing", "playbooks", "create", "--file", str(path))
    assert created.exit_code == 0, created.output
    again = cli("healing", "playbooks", "create", "--file", str(path))
    assert "already exists" in again.output

    changes = tmp_path / "changes.json"
    changes.write_text(json.dumps({"escalation_rank": 0}))
    refused = cli("healing", "playbooks", "update", "grow-pool", "--file", str(changes))
    assert refused.exit_code == 1
    assert "escalation_rank" in refused.output
    changes.write_text(json.dumps({"automation_level": "full-auto", "escalation_rank": 2}))
    assert cli("healing", "playbooks", "update", "grow-pool", "--file", str(changes)).exit_code == 0
    assert cli("healing", "playbooks", "disable", "grow-pool").exit_code == 0
    book = ops.get_playbook(engine, "grow-pool")
    assert (book["automation_level"], book["escalation_rank"], book["enabled"]) == (
        "full-auto",
        2,
        False,
    )
    listed = cli("healing", "playbooks", "list", "--type", "overload")
    assert "grow-pool" in listed.output
    assert "DISABLED" in listed.output
    assert "resize_pool → validate_requests" in listed.output
    missing = cli("healing", "playbooks", "show", "nope")
    assert missing.exit_code == 1
    assert "no playbook named 'nope'" in missing.output


def test_status_and_metrics_from_recorded_faults_and_incidents(cli: Any, engine: Engine) -> None:
    now = datetime.now(UTC)
    with engine.begin() as conn:
        for service, delay in (("a", 3), ("b", 7)):
            conn.execute(
                text(
                    "INSERT INTO fault_injections (service, kind, injected_by, source,"
                    " expected_pattern, injected_at) VALUES (:s, 'kill', 't', 'test',"
                    " 'service_down', :t)"
                ),
                {"s": service, "t": now - timedelta(seconds=delay)},
            )
        conn.execute(
            text(
                "INSERT INTO fault_injections (service, kind, injected_by, source,"
                " expected_pattern, injected_at) VALUES ('c', 'hang', 't', 'test', 'service_hung',"
                " :t)"
            ),
            {"t": now},
        )
    incident(engine, "a", "service_down", "resolved", 4000, "restart-service", now)
    incident(engine, "b", "service_down", "healing", None, "restart-service", now)
    report = ops.healing_metrics(engine, timedelta(hours=1))
    rows = {r["pattern"]: r for r in report["table"]}
    assert rows["service_down"]["detection_rate"] == 1.0
    assert rows["service_down"]["mttd_p50_s"] == pytest.approx(5.0, abs=0.1)
    assert rows["service_hung"]["detection_rate"] == 0.0
    assert rows["overall"]["faults_injected"] == 3
    assert rows["overall"]["detected"] == 2
    assert rows["overall"]["auto_resolution_rate"] == 0.5
    assert rows["overall"]["mttr_p50_s"] == 4.0
    status = cli("healing", "status")
    assert status.exit_code == 0, status.output
    lines = status.output.splitlines()
    assert "healing" in lines[0]  # running incidents come first
    shown = cli("healing", "metrics", "--hours", "1")
    assert "service_down" in shown.output
    assert "overall" in shown.output


def test_simulate_touches_nothing_and_reports_guardrails(
    db_engine: Engine,
    live_fleet: Fleet,
    database_url: str,
    nofx_cli: Any,
) -> None:
    service = live_fleet.spec.services[0].name
    before = ConfigStore.of(db_engine, service).active()

    def counts() -> tuple[int, int, int]:
        with db_engine.connect() as conn:
            row = conn.execute(
                text(
                    "SELECT (SELECT count(*) FROM action_log),"
                    " (SELECT count(*) FROM action_leases),"
                    " (SELECT count(*) FROM guardrail_verdicts)"
                )
            ).one()
        return (row[0], row[1], row[2])

    recorded = counts()
    plan = ops.simulate(db_engine, "rollback-config", service)
    assert [s["action"] for s in plan["steps"]] == ["rollback_config", "validate_requests"]
    assert plan["steps"][0]["supported"]
    assert plan["steps"][0]["guardrail"]["verdict"] == "allow"
    assert plan["rollback_plan"] == ["re-apply the configuration it replaced"]
    assert plan["expected_outcome"].startswith("would run 2 step(s)")
    assert counts() == recorded  # no action, no lease, no recorded verdict
    assert ConfigStore.of(db_engine, service).active() == before

    set_paused(db_engine, True, actor="ivy", reason="maintenance")
    try:
        shown = nofx_cli(
            database_url,
            "healing",
            "simulate",
            "--playbook",
            "restart-service",
            "--service",
            service,
        )
        assert shown.exit_code == 0, shown.output
        assert "guardrail: wait — automation paused by ivy" in shown.output
        assert "expected: would wait at step 0" in shown.output
    finally:
        set_paused(db_engine, False, actor="ivy", reason="done")
    assert counts() == recorded


async def test_the_python_client_offers_the_same_operations(
    client: Any, db_engine: Engine, live_fleet: Fleet
) -> None:
    from nofx.client import NofxClient

    nofx = NofxClient(client, db_engine)
    books = await nofx.healing_playbooks("service_down")
    assert [b.playbook_name for b in books] == [
        "restart-service",
        "drain-and-restart-dead-replica",
        "shift-traffic-off-dead-replica",
    ]
    plan = await nofx.healing_simulate("restart-service", live_fleet.spec.services[0].name)
    assert plan.touched == "nothing"
    assert plan.rollback_plan  # a restart is undone by starting it again
    assert {p.problem_signature for p in await nofx.healing_patterns()} >= {"service_down"}
    assert (await nofx.healing_metrics()).table[-1].pattern == "overall"
    with pytest.raises(NotFound, match="no playbook named"):
        await nofx.healing_playbook("nope")
    without_db = NofxClient(client)
    with pytest.raises(RuntimeError, match="NOFX_DATABASE_URL"):
        await without_db.healing_status()
