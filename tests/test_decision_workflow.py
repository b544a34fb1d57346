"""DecisionWorkflow on a real Temporal dev server and a real PostgreSQL: modes, approvals from
signals and updates, refusals before history, two approvers for critical risk, the timeout
default, overrides, observe mode and the explanation."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHandle, WorkflowUpdateFailedError
from temporalio.worker import Worker

from models.decisions import (
    Approve,
    Candidate,
    DecisionContext,
    DecisionRequest,
    DecisionResult,
    Operator,
    Override,
    Reject,
)
from nofx.decisions import store
from nofx.settings import get_settings
from tests.decision_cases import RESTART, ROLLBACK, SHIFT, context
from workers import decisions
from workers.common import Dependencies, build_worker
from workflows.decisions import DecisionWorkflow


@pytest.fixture
async def queue(client: Client, fresh_engine: Engine) -> AsyncIterator[str]:
    name = f"decisions-{uuid.uuid4().hex[:8]}"
    deps = Dependencies(engine=fresh_engine, client=client, settings=get_settings())
    worker: Worker = build_worker(deps, name, decisions.WORKFLOWS, decisions.activities)
    store.add_operator(
        fresh_engine, Operator(name="alice", permissions=["healing:*"]), actor="test"
    )
    store.add_operator(fresh_engine, Operator(name="bob", permissions=["*"]), actor="test")
    store.add_operator(
        fresh_engine, Operator(name="carol", permissions=["healing:restart"]), actor="test"
    )
    async with worker:
        yield name


async def start(
    client: Client, queue: str, ctx: DecisionContext, candidates: list[Candidate]
) -> WorkflowHandle[Any, DecisionResult]:
    return await client.start_workflow(
        DecisionWorkflow.run,
        DecisionRequest(
            subject="svc", problem="latency_regression", context=ctx, candidates=candidates
        ),
        id=f"decision-test-{uuid.uuid4()}",
        task_queue=queue,
    )


async def until(
    handle: WorkflowHandle[Any, DecisionResult], check: Any, timeout: float = 60
) -> DecisionResult:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        now: DecisionResult = await handle.query(DecisionWorkflow.status)
        if check(now):
            return now
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"decision still {now.status}: {now.approval}")
        await asyncio.sleep(0.2)


def waiting(result: DecisionResult) -> bool:
    return result.status == "awaiting_approval"


async def test_autonomous_low_risk_needs_nobody_and_is_recorded(
    client: Client, queue: str, fresh_engine: Engine
) -> None:
    handle = await start(client, queue, context(), [RESTART, ROLLBACK])
    result = await handle.result()
    assert (result.status, result.act, result.chosen) == ("approved", True, "rollback-config")
    assert result.approval.outcome == "not_needed"
    assert result.rollback_plan == ["undo_rollback_config(svc)"]
    assert "restart-service" in result.explanation.why_not
    with fresh_engine.connect() as conn:
        row = conn.execute(
            text("SELECT status, chosen_action, subject FROM autonomous_decisions WHERE id = :i"),
            {"i": result.decision_id},
        ).one()
        audited = (
            conn.execute(
                text("SELECT action FROM audit_events WHERE entity_id = :i"),
                {"i": result.decision_id},
            )
            .scalars()
            .all()
        )
    assert tuple(row) == ("approved", "rollback-config", "svc")
    assert "decision.made" in audited


async def test_assist_waits_and_a_signal_approves_this_decision_only(
    client: Client, queue: str, fresh_engine: Engine
) -> None:
    store.set_mode(fresh_engine, "assist")
    first = await start(client, queue, context(), [ROLLBACK])
    shown = await until(first, waiting)
    assert shown.approval.required
    assert shown.explanation.text.startswith("Chose rollback-config")
    described = await first.describe()
    assert described.search_attributes.get("NofxAwaitingApproval") == [True]
    await first.signal(DecisionWorkflow.approve, Approve(approver="alice", reason="looks right"))
    done = await first.result()
    assert (done.status, done.act, done.decided_by) == ("approved", True, "alice")
    second = await start(client, queue, context(), [ROLLBACK])
    still = await until(second, waiting)
    assert still.approval.verdicts == []  # the first approval does not cover it
    await second.signal(DecisionWorkflow.reject, Reject(approver="alice", reason="not now"))
    rejected = await second.result()
    assert (rejected.status, rejected.act) == ("rejected", False)
    with fresh_engine.connect() as conn:
        kinds = (
            conn.execute(
                text("SELECT feedback_type FROM learning_feedback WHERE decision_id IN (:a, :b)"),
                {"a": done.decision_id, "b": rejected.decision_id},
            )
            .scalars()
            .all()
        )
    assert sorted(kinds) == ["approval", "rejection"]


async def test_bad_and_unauthorised_updates_are_refused_before_history(
    client: Client, queue: str, fresh_engine: Engine
) -> None:
    store.set_mode(fresh_engine, "assist")
    handle = await start(client, queue, context(), [RESTART, ROLLBACK])
    await until(handle, waiting)
    with pytest.raises(WorkflowUpdateFailedError) as not_operator:
        await handle.execute_update(DecisionWorkflow.approve_decision, Approve(approver="mallory"))
    assert "not an operator" in str(not_operator.value.cause)
    with pytest.raises(WorkflowUpdateFailedError) as lacking:
        await handle.execute_update(DecisionWorkflow.approve_decision, Approve(approver="carol"))
    assert "lacks permission healing:config" in str(lacking.value.cause)
    with pytest.raises(WorkflowUpdateFailedError) as unknown:
        await handle.execute_update(
            DecisionWorkflow.override_decision,
            Override(approver="alice", action="reboot-the-world", reason="why not"),
        )
    assert "not a candidate" in str(unknown.value.cause)
    history = await handle.fetch_history()
    accepted = EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED
    assert not [e for e in history.events if e.event_type == accepted]
    # A signal from someone without the permission is recorded as refused; it keeps waiting.
    await handle.signal(DecisionWorkflow.approve, Approve(approver="carol", reason="me"))
    refused = await until(handle, lambda r: r.approval.verdicts)
    assert refused.status == "awaiting_approval"
    assert refused.approval.verdicts[0].accepted is False
    ack = await handle.execute_update(DecisionWorkflow.approve_decision, Approve(approver="alice"))
    assert (ack.status, ack.outcome) == ("approved", "approved")
    assert (await handle.result()).act


async def test_critical_risk_needs_two_distinct_approvers(client: Client, queue: str) -> None:
    handle = await start(
        client, queue, context("tier-0", freeze="release week", replicas=1), [SHIFT]
    )
    shown = await until(handle, waiting)
    assert shown.risk is not None
    assert shown.risk.level == "critical"
    assert shown.approval.approvers_needed == 2
    ack = await handle.execute_update(DecisionWorkflow.approve_decision, Approve(approver="alice"))
    assert (ack.status, ack.approvals) == ("awaiting_approval", 1)
    with pytest.raises(WorkflowUpdateFailedError) as again:
        await handle.execute_update(DecisionWorkflow.approve_decision, Approve(approver="alice"))
    assert "already answered" in str(again.value.cause)
    await handle.execute_update(DecisionWorkflow.approve_decision, Approve(approver="bob"))
    done = await handle.result()
    assert (done.status, done.decided_by) == ("approved", "alice, bob")


async def test_no_answer_in_time_rejects(client: Client, queue: str, fresh_engine: Engine) -> None:
    store.set_mode(fresh_engine, "assist")
    with fresh_engine.begin() as conn:
        conn.execute(
            text("UPDATE platform_controls SET decision_policy = CAST(:p AS jsonb)"),
            {"p": json.dumps({"mode": "assist", "timeouts": {"low": 2}})},
        )
    handle = await start(client, queue, context(), [ROLLBACK])
    result = await handle.result()
    assert (result.status, result.act, result.approval.outcome) == ("timed_out", False, "timed_out")
    with fresh_engine.connect() as conn:
        kinds = (
            conn.execute(
                text("SELECT feedback_type FROM learning_feedback WHERE decision_id = :d"),
                {"d": result.decision_id},
            )
            .scalars()
            .all()
        )
    assert kinds == ["timeout"]


async def test_an_override_runs_the_persons_choice_and_keeps_the_engines(
    client: Client, queue: str, fresh_engine: Engine
) -> None:
    store.set_mode(fresh_engine, "assist")
    handle = await start(client, queue, context(), [RESTART, ROLLBACK])
    await until(handle, waiting)
    await handle.signal(
        DecisionWorkflow.override,
        Override(approver="alice", action="restart-service", reason="I know this one"),
    )
    done = await handle.result()
    assert (done.chosen, done.engine_choice, done.act) == (
        "restart-service",
        "rollback-config",
        True,
    )
    assert [s.action for s in done.steps] == ["restart_service", "validate_health"]
    with fresh_engine.connect() as conn:
        lessons = conn.execute(
            text("SELECT lessons_learned FROM learning_feedback WHERE decision_id = :d"),
            {"d": done.decision_id},
        ).scalar_one()
    assert lessons["engine_choice"] == "rollback-config"
    assert lessons["person_choice"] == "restart-service"


async def test_observe_mode_decides_and_never_acts(
    client: Client, queue: str, fresh_engine: Engine
) -> None:
    store.set_mode(fresh_engine, "observe")
    done = await (await start(client, queue, context("tier-0"), [RESTART, ROLLBACK])).result()
    assert (done.status, done.act, done.chosen) == ("observed", False, "rollback-config")
    assert not done.approval.required


def test_operators_and_modes_from_the_cli(nofx_cli: Any, fresh_database_url: str) -> None:
    added = nofx_cli(fresh_database_url, "operators", "add", "dana", "-p", "healing:*")
    assert added.exit_code == 0, added.output
    listed = nofx_cli(fresh_database_url, "operators", "list")
    assert "dana" in listed.output
    assert "healing:*" in listed.output
    bad = nofx_cli(fresh_database_url, "operators", "add", "no spaces", "-p", "x")
    assert bad.exit_code == 1
    assert "name:" in bad.output
    assert nofx_cli(fresh_database_url, "autonomous", "mode", "set", "assist").exit_code == 0
    shown = nofx_cli(fresh_database_url, "autonomous", "mode", "show")
    assert "global mode: assist" in shown.output
    wrong = nofx_cli(fresh_database_url, "autonomous", "mode", "set", "yolo")
    assert wrong.exit_code == 1
    assert "mode: 'yolo'" in wrong.output
    unknown = nofx_cli(fresh_database_url, "autonomous", "mode", "set", "observe", "--service", "x")
    assert "service: 'x' is not in the inventory" in unknown.output
    assert nofx_cli(fresh_database_url, "operators", "remove", "dana").exit_code == 0
    assert nofx_cli(fresh_database_url, "operators", "remove", "dana").exit_code == 1
