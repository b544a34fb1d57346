"""The decision engine's operations (nofx.operations.autonomous), through the Python client's
faces and the CLI, on a real Temporal dev server and a real PostgreSQL: decide, simulate,
explain, pending, approve, reject, override, and their typed refusals."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pydantic import ValidationError
from sqlalchemy import text
from sqlalchemy.engine import Engine
from temporalio.client import Client
from temporalio.worker import Worker

from models.decisions import (
    Approve,
    DecideRequest,
    DecisionOutcome,
    Operator,
    Override,
    Reject,
    SimulateRequest,
)
from nofx.decisions import store
from nofx.operations.autonomous import AutonomousOperations
from nofx.operations.errors import InvalidRequest, NotFound, NotPermitted, RuleConflict
from nofx.settings import TASK_QUEUE_DECISIONS, get_settings
from workers import decisions
from workers.common import Dependencies, build_worker

SERVICE = "svc-a"


def add_service(engine: Engine, name: str = SERVICE) -> None:
    """A service the supervisord provider can restart (the socket is never used: no action
    runs here) and whose configuration is versioned."""
    meta = {
        "supervisor_socket": "/nonexistent.sock",
        "process": name,
        "config": {"kind": "file", "path": "/nonexistent/config.json", "reload": "signal"},
    }
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO services (name, tier, owner, provider, endpoint, metadata)"
                " VALUES (:n, 'tier-2', 'sre', 'supervisor', 'http://127.0.0.1:1',"
                " CAST(:m AS jsonb))"
            ),
            {"n": name, "m": json.dumps(meta)},
        )


def decision_rows(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM autonomous_decisions")).scalar_one())


async def serve(client: Client, engine: Engine, queue: str) -> Worker:
    deps = Dependencies(engine=engine, client=client, settings=get_settings())
    return build_worker(deps, queue, decisions.WORKFLOWS, decisions.activities)


@pytest.fixture
async def ops(client: Client, fresh_engine: Engine) -> AsyncIterator[AutonomousOperations]:
    queue = f"decisions-{uuid.uuid4().hex[:8]}"
    add_service(fresh_engine)
    store.add_operator(
        fresh_engine, Operator(name="alice", permissions=["healing:*"]), actor="test"
    )
    store.add_operator(fresh_engine, Operator(name="bob", permissions=["*"]), actor="test")
    store.add_operator(fresh_engine, Operator(name="mallory", permissions=[]), actor="test")
    async with await serve(client, fresh_engine, queue):
        yield AutonomousOperations(client, fresh_engine, task_queue=queue)


async def test_simulate_scores_every_candidate_and_records_nothing(
    ops: AutonomousOperations, fresh_engine: Engine
) -> None:
    result = await ops.simulate(SimulateRequest(service=SERVICE, incident_type="service_down"))
    assert result.chosen is not None
    assert len(result.ranked) >= 2
    assert result.explanation.text.startswith(f"Chose {result.chosen}")
    assert result.would_act is (not result.approval.required)
    assert result.context.current_state.service == SERVICE
    assert decision_rows(fresh_engine) == 0
    only = await ops.simulate(
        SimulateRequest(
            service=SERVICE,
            incident_type="service_down",
            candidates=[result.ranked[-1].candidate.name],
        )
    )
    assert [c.candidate.name for c in only.ranked] == [result.ranked[-1].candidate.name]
    with pytest.raises(NotFound, match="service: 'nope' is not in the inventory"):
        await ops.simulate(SimulateRequest(service="nope", incident_type="service_down"))
    with pytest.raises(InvalidRequest, match="candidates: 'reboot-the-world'"):
        await ops.simulate(
            SimulateRequest(
                service=SERVICE, incident_type="service_down", candidates=["reboot-the-world"]
            )
        )
    with pytest.raises(ValidationError, match="incident_type"):
        DecideRequest(service=SERVICE, incident_type="the_sky_is_falling")  # type: ignore[arg-type]


async def test_decide_in_assist_waits_then_approve_and_explain(
    ops: AutonomousOperations, fresh_engine: Engine
) -> None:
    store.set_mode(fresh_engine, "assist")
    made = await ops.decide(DecideRequest(service=SERVICE, incident_type="service_down"))
    assert (made.status, made.running, made.mode) == ("awaiting_approval", True, "assist")
    assert made.created_at is not None
    waiting = await ops.pending()
    assert [w.decision_id for w in waiting] == [made.decision_id]
    by_workflow = await ops.explain(made.workflow_id)
    assert by_workflow.decision_id == made.decision_id
    assert by_workflow.explanation.why_not.keys() == {
        a.candidate.name for a in by_workflow.alternatives if a.rank != 1
    }
    with pytest.raises(NotPermitted, match="mallory lacks permission"):
        await ops.approve(made.decision_id, Approve(approver="mallory"))
    with pytest.raises(NotPermitted, match="'zed' is not an operator"):
        await ops.approve(made.decision_id, Approve(approver="zed"))
    ack = await ops.approve(made.decision_id, Approve(approver="alice", reason="seen it"))
    assert (ack.status, ack.outcome, ack.approvals) == ("approved", "approved", 1)
    closed = await until_closed(ops, made.decision_id)
    assert (closed.status, closed.decided_by, closed.act) == ("approved", "alice", True)
    assert await ops.pending() == []
    with pytest.raises(RuleConflict, match="is approved: nothing to approve") as again:
        await ops.approve(made.decision_id, Approve(approver="bob"))
    assert again.value.rule == "not_waiting"
    with pytest.raises(NotFound, match="no decision has this id"):
        await ops.explain(str(uuid.uuid4()))


async def until_closed(ops: AutonomousOperations, ref: str, timeout: float = 60) -> Any:
    """The decision once its workflow has ended (read back from its stored row)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        record = await ops.explain(ref)
        if not record.running:
            return record
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"decision {ref} still running: {record.status}")
        await asyncio.sleep(0.2)


async def test_override_and_reject_through_the_operations(
    ops: AutonomousOperations, fresh_engine: Engine
) -> None:
    store.set_mode(fresh_engine, "assist")
    first = await ops.decide(
        DecideRequest(service=SERVICE, incident_type="latency_regression", cause="configuration")
    )
    other = next(
        a.candidate.name
        for a in first.alternatives
        if a.candidate.name != first.chosen and not a.pruned_by
    )
    with pytest.raises(InvalidRequest, match="action: 'reboot-the-world' is not a candidate"):
        await ops.override(
            first.decision_id, Override(approver="alice", action="reboot-the-world", reason="x")
        )
    ack = await ops.override(
        first.decision_id, Override(approver="alice", action=other, reason="I know this one")
    )
    assert (ack.outcome, ack.chosen) == ("overridden", other)
    overridden = await until_closed(ops, first.decision_id)
    assert (overridden.chosen, overridden.engine_choice) == (other, first.chosen)
    second = await ops.decide(DecideRequest(service=SERVICE, incident_type="service_down"))
    rejected = await ops.reject(second.workflow_id, Reject(approver="bob", reason="not now"))
    assert rejected.status == "rejected"
    assert (await until_closed(ops, second.decision_id)).status == "rejected"
    with fresh_engine.connect() as conn:
        kinds = sorted(
            conn.execute(
                text("SELECT feedback_type FROM learning_feedback WHERE decision_id IN (:a, :b)"),
                {"a": first.decision_id, "b": second.decision_id},
            ).scalars()
        )
    assert kinds == ["override", "rejection"]


async def test_overrides_the_outcome_confirms_move_the_next_choice(
    ops: AutonomousOperations, fresh_engine: Engine
) -> None:
    """Learning from people on real decisions: each time the engine's pick is overridden and
    the person's action then fixes the subject (the outcome healing records), the next decision
    in the same context leans further toward the person's choice, until it makes it itself."""
    store.set_mode(fresh_engine, "assist")
    asked = DecideRequest(
        service=SERVICE, incident_type="latency_regression", cause="configuration"
    )
    first = await ops.decide(asked)
    engine_pick = first.chosen
    person = next(
        a.candidate.name
        for a in first.alternatives
        if a.candidate.name != engine_pick and not a.pruned_by
    )
    decision, overrides = first, 0
    while decision.chosen == engine_pick:
        assert overrides < 15, f"still {engine_pick} after {overrides} confirmed overrides"
        await ops.override(
            decision.decision_id, Override(approver="alice", action=person, reason="works here")
        )
        assert (await until_closed(ops, decision.decision_id)).chosen == person
        store.record_outcome(
            fresh_engine,
            DecisionOutcome(decision_id=decision.decision_id, resolved=True, recovery_seconds=9),
        )
        overrides += 1
        decision = await ops.decide(asked)
    assert decision.chosen == person
    assert overrides >= 1
    ranked = {a.candidate.name: a for a in decision.alternatives}
    turned_down = ranked[engine_pick].success
    assert turned_down is not None
    assert f"rejected by people {overrides}x" in turned_down.source
    # a rejection of the engine's (new) pick counts against it at once, with no outcome
    await ops.reject(decision.decision_id, Reject(approver="bob", reason="not now"))
    await until_closed(ops, decision.decision_id)
    after = await ops.simulate(
        SimulateRequest(service=SERVICE, incident_type="latency_regression", cause="configuration")
    )
    scored = next(c for c in after.ranked if c.candidate.name == person)
    assert scored.success is not None
    assert "rejected by people 1x" in scored.success.source


async def test_decide_in_autonomous_mode_returns_the_made_decision(
    ops: AutonomousOperations, fresh_engine: Engine
) -> None:
    made = await ops.decide(
        DecideRequest(service=SERVICE, incident_type="service_down", cause="self")
    )
    assert (made.status, made.mode, made.act) == ("approved", "autonomous", True)
    assert not made.approval.required
    with fresh_engine.connect() as conn:
        stored = conn.execute(
            text(
                "SELECT context_data->'current_state'->>'cause' FROM autonomous_decisions"
                " WHERE id = :i"
            ),
            {"i": made.decision_id},
        ).scalar_one()
    assert stored == "self"
    with pytest.raises(NotFound, match="service: 'ghost'"):
        await ops.decide(DecideRequest(service="ghost", incident_type="service_down"))
    assert decision_rows(fresh_engine) == 1


async def test_the_cli_decides_lists_and_approves(
    client: Client, fresh_engine: Engine, autonomous_cli: Any
) -> None:
    add_service(fresh_engine)
    store.add_operator(
        fresh_engine, Operator(name="alice", permissions=["healing:*"]), actor="test"
    )
    store.set_mode(fresh_engine, "assist")
    cli = autonomous_cli

    async with await serve(client, fresh_engine, TASK_QUEUE_DECISIONS):
        simulated = await asyncio.to_thread(
            cli, "simulate", "--service", SERVICE, "--incident-type", "service_down"
        )
        assert simulated.exit_code == 0, simulated.output
        assert "would ask a person" in simulated.output
        made = await asyncio.to_thread(
            cli, "decide", "--service", SERVICE, "--incident-type", "service_down", "--json"
        )
        assert made.exit_code == 0, made.output
        decision = json.loads(made.output)
        assert decision["status"] == "awaiting_approval"
        listed = await asyncio.to_thread(cli, "pending")
        assert decision["decision_id"] in listed.output
        refused = await asyncio.to_thread(cli, "approve", decision["decision_id"], "--as", "eve")
        assert refused.exit_code == 1
        assert "'eve' is not an operator" in refused.output
        approved = await asyncio.to_thread(
            cli, "approve", decision["decision_id"], "--as", "alice", "--reason", "ok"
        )
        assert approved.exit_code == 0, approved.output
        assert "approved" in approved.output
        explained = await asyncio.to_thread(cli, "explain", decision["workflow_id"])
        assert explained.exit_code == 0, explained.output
        assert f"Chose {decision['chosen']}" in explained.output
        bad = await asyncio.to_thread(
            cli, "decide", "--service", SERVICE, "--incident-type", "nonsense"
        )
        assert bad.exit_code == 1
        assert "--incident-type:" in bad.output


async def test_someone_made_an_operator_during_the_wait_can_approve_by_update(
    ops: AutonomousOperations, fresh_engine: Engine
) -> None:
    store.set_mode(fresh_engine, "assist")
    made = await ops.decide(DecideRequest(service=SERVICE, incident_type="service_down"))
    with pytest.raises(NotPermitted, match="'dana' is not an operator"):
        await ops.approve(made.decision_id, Approve(approver="dana"))
    store.add_operator(fresh_engine, Operator(name="dana", permissions=["healing:*"]), actor="test")
    ack = await ops.approve(made.decision_id, Approve(approver="dana", reason="new on call"))
    assert (ack.status, ack.outcome) == ("approved", "approved")
    closed = await until_closed(ops, made.decision_id)
    assert closed.decided_by == "dana"
    # The refused answer never reached history; the accepted one did, once.
    verdicts = [v for v in closed.approval.verdicts if v.approver == "dana"]
    assert [(v.accepted, v.via) for v in verdicts] == [(True, "update")]
