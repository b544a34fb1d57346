"""Healing end to end through the decision engine, on the live fleet, a real Temporal dev server
and a real PostgreSQL: in assist mode the incident waits for its decision and a signal from the
Web UI (one JSON object) approves it; an override runs the person's choice through the
guardrails; in observe mode nothing is done. Autonomous mode is the other e2e tests' default."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, text
from temporalio.client import Client

from models.decisions import Approve, DecisionResult, Operator, Override
from models.healing import TERMINAL_STATES, IncidentInput, IncidentState, IncidentStatus
from nofx.client import start_incident
from nofx.decisions import store
from pilot.fleet import Fleet
from tests.helpers import wait_for_state
from workflows.decisions import DecisionWorkflow
from workflows.healing import HealingIncidentWorkflow

APPROVER = "webui-alice"


@pytest.fixture
def operator(db_engine: Engine) -> str:
    store.add_operator(db_engine, Operator(name=APPROVER, permissions=["healing:*"]), actor="test")
    return APPROVER


def service_mode(engine: Engine, service: str, mode: str) -> None:
    store.set_mode(engine, mode, service=service)  # type: ignore[arg-type]


def rows(engine: Engine, sql: str, **params: Any) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(text(sql), params)]


async def feedback_kinds(
    engine: Engine, decision_id: str, *, until_has: str, timeout: float = 60
) -> list[str]:
    """The decision's feedback rows in order, once one of kind `until_has` is there (the outcome
    is recorded just after the incident ends)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        kinds = [
            r[0]
            for r in rows(
                engine,
                "SELECT feedback_type FROM learning_feedback WHERE decision_id = :d"
                " ORDER BY created_at",
                d=decision_id,
            )
        ]
        if until_has in kinds or asyncio.get_running_loop().time() > deadline:
            return kinds
        await asyncio.sleep(0.2)


async def open_incident(client: Client, service: str, incident_type: str) -> Any:
    handle, started = await start_incident(
        client,
        IncidentInput(service=service, incident_type=incident_type, detected_at=datetime.now(UTC)),
    )
    assert started
    return handle


async def waiting_decision(client: Client, engine: Engine, incident: Any) -> Any:
    """The incident's decision once it waits for a person (its workflow handle)."""
    status = await wait_for_state(incident, IncidentState.AWAITING_APPROVAL)
    deadline = asyncio.get_running_loop().time() + 60
    while (await incident.describe()).search_attributes.get("NofxAwaitingApproval") != [True]:
        assert asyncio.get_running_loop().time() < deadline, "NofxAwaitingApproval never set"
        await asyncio.sleep(0.2)
    # The incident may still show the previous wait while its next decision is being made (a
    # busy worker): wait for the decision that waits now, not for the first sight of the state.
    while True:
        found = rows(
            engine,
            "SELECT workflow_id FROM autonomous_decisions WHERE status = 'awaiting_approval'"
            " AND context_data->>'incident_id' = :i",
            i=status.incident_id,
        )
        if len(found) == 1:
            return client.get_workflow_handle_for(DecisionWorkflow.run, found[0][0])
        assert asyncio.get_running_loop().time() < deadline, found
        await asyncio.sleep(0.2)


async def test_assist_mode_waits_and_a_web_ui_signal_approves_then_it_heals(
    client: Client, healing_worker: None, live_fleet: Fleet, db_engine: Engine, operator: str
) -> None:
    service = live_fleet.spec.services[0].name
    service_mode(db_engine, service, "assist")
    live_fleet.inject("kill", service)
    incident = await open_incident(client, service, "service_down")
    decision = await waiting_decision(client, db_engine, incident)
    shown: DecisionResult = await decision.query(DecisionWorkflow.explain)
    assert (shown.status, shown.mode) == ("awaiting_approval", "assist")
    assert shown.rollback_plan
    # What the Web UI sends: the incident's `approve` signal with one JSON object.
    await incident.signal("approve", Approve(approver=operator, reason="seen the page"))
    ended = await wait_for_state(incident, *TERMINAL_STATES, timeout=180)
    assert ended.state is IncidentState.RESOLVED, ended.timeline
    async with httpx.AsyncClient() as http:
        assert (await http.get(live_fleet.health_url(service), timeout=2)).status_code == 200
    made: DecisionResult = await decision.result()
    assert (made.status, made.decided_by, made.act) == ("approved", operator, True)
    kinds = await feedback_kinds(db_engine, made.decision_id, until_has="outcome")
    assert kinds == ["approval", "outcome"]
    audited = rows(
        db_engine,
        "SELECT action, actor FROM audit_events WHERE entity_id = :d ORDER BY id",
        d=made.decision_id,
    )
    assert ("decision.approve", operator) in audited


async def test_an_override_runs_through_the_guardrails_and_the_next_rung_asks_again(
    client: Client, healing_worker: None, live_fleet: Fleet, db_engine: Engine, operator: str
) -> None:
    """A person overrides the engine's cache invalidation with a restart of the refresher (which
    cannot clear a stale cache): the restart runs through the guardrails, fails validation and
    is rolled back; the next rung is a decision of its own, waiting for its own answer."""
    service = live_fleet.spec.services[1].name
    service_mode(db_engine, service, "assist")
    live_fleet.inject("stale_cache", service)
    incident = await open_incident(client, service, "stale_cache")
    decision = await waiting_decision(client, db_engine, incident)
    shown: DecisionResult = await decision.query(DecisionWorkflow.explain)
    assert shown.chosen == "invalidate-cache"
    # The decision's own `override` signal, as the Web UI sends it on the decision workflow.
    await decision.signal(
        "override",
        Override(approver=operator, action="restart-cache-refresher", reason="refresher stuck"),
    )
    made: DecisionResult = await decision.result()
    assert (made.chosen, made.engine_choice) == ("restart-cache-refresher", "invalidate-cache")
    second = await waiting_decision(client, db_engine, incident)
    assert second.id != decision.id
    asked: DecisionResult = await second.query(DecisionWorkflow.explain)
    assert asked.approval.verdicts == []  # the override answered the first decision only
    assert asked.chosen == "invalidate-cache"
    await second.signal("approve", Approve(approver=operator, reason="now the engine's way"))
    ended = await wait_for_state(incident, *TERMINAL_STATES, timeout=180)
    assert ended.state is IncidentState.RESOLVED, ended.timeline
    status: IncidentStatus = await incident.query(HealingIncidentWorkflow.status)
    assert [a.action for a in status.actions] == [
        "restart_service",
        "restore_service_running",
        "invalidate_cache",
    ]
    guarded = rows(
        db_engine,
        "SELECT action FROM guardrail_verdicts WHERE workflow_id = :w AND verdict = 'allow'"
        " ORDER BY id",
        w=incident.id,
    )
    assert [g[0] for g in guarded] == ["restart_service", "invalidate_cache"]
    assert await feedback_kinds(db_engine, made.decision_id, until_has="outcome") == [
        "override",
        "outcome",
    ]
    lessons = rows(
        db_engine,
        "SELECT lessons_learned FROM learning_feedback WHERE decision_id = :d"
        " AND feedback_type = 'override'",
        d=made.decision_id,
    )
    assert lessons[0][0]["engine_choice"] == "invalidate-cache"


async def test_observe_mode_decides_and_records_but_never_acts(
    client: Client, healing_worker: None, live_fleet: Fleet, db_engine: Engine
) -> None:
    service = live_fleet.spec.services[0].name
    service_mode(db_engine, service, "observe")
    starts = len(live_fleet.starts(service))
    live_fleet.inject("kill", service)
    incident = await open_incident(client, service, "service_down")
    ended = await wait_for_state(incident, *TERMINAL_STATES, timeout=180)
    assert ended.state is IncidentState.ESCALATED, ended.timeline
    assert "observe mode: the engine would have run restart-service" in ended.timeline[-1].message
    status: IncidentStatus = await incident.query(HealingIncidentWorkflow.status)
    assert status.actions == []
    decided = rows(
        db_engine,
        "SELECT status, chosen_action FROM autonomous_decisions"
        " WHERE context_data->>'incident_id' = :i",
        i=status.incident_id,
    )
    assert [d[0] for d in decided] == ["observed"]
    assert len(live_fleet.starts(service)) == starts  # nothing restarted it
    live_fleet.clear(service)
