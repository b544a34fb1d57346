"""Bad input ends a run at once with every wrong field named; it never holds a workflow id.

Starts go through an untyped client (raw JSON payloads, as the Temporal CLI and Web UI send them)
and through the real `temporal` CLI; the workers are the tracks' own (`build_worker`) on the real
dev server. A run that cannot progress for any other reason is replaced when the monitor opens
its incident, not joined.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from temporalio import workflow
from temporalio.api.common.v1 import Payload
from temporalio.api.enums.v1 import EventType
from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowHandle,
    WorkflowUpdateFailedError,
)
from temporalio.common import RawValue, SearchAttributePair, TypedSearchAttributes
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment
from temporalio.worker import Worker

from activities.incidents import STUCK_AFTER_ATTEMPTS, IncidentActivities
from models.healing import (
    TERMINAL_STATES,
    IncidentInput,
    IncidentResult,
    OpenIncidentInput,
)
from nofx.client import incident_workflow_id, start_incident
from nofx.settings import (
    TASK_QUEUE_DECISIONS,
    TASK_QUEUE_HEALING,
    TASK_QUEUE_MAINTENANCE,
)
from nofx.temporal import SERVICE, TRACK
from tests.fixtures_temporal import temporal_binary
from workers import decisions, healing, maintenance
from workers.common import Dependencies, build_worker
from workflows.healing import HealingIncidentWorkflow

DEADLINE = 30  # seconds for a run to end: generous for a busy 2-core machine, far below forever
EVERY_WORKFLOW = [
    (queue, defn.__name__)
    for queue, track in (
        (TASK_QUEUE_DECISIONS, decisions),
        (TASK_QUEUE_HEALING, healing),
        (TASK_QUEUE_MAINTENANCE, maintenance),
    )
    for defn in track.WORKFLOWS
]


def raw_json(value: Any) -> RawValue:
    """A payload exactly as the Temporal CLI sends `--input`: JSON, with no type behind it."""
    return RawValue(Payload(metadata={"encoding": b"json/plain"}, data=json.dumps(value).encode()))


async def failure_of(handle: WorkflowHandle[Any, Any]) -> ApplicationError:
    """The run's failure, once it ended within the deadline; its task never failed first."""
    with pytest.raises(WorkflowFailureError) as failed:
        await asyncio.wait_for(handle.result(), timeout=DEADLINE)
    cause = failed.value.cause
    assert isinstance(cause, ApplicationError), cause
    events = [e.event_type async for e in handle.fetch_history_events()]
    assert EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED not in events
    return cause


def assert_invalid_input(err: ApplicationError, *fragments: str) -> None:
    assert err.type == "InvalidInput", err
    assert err.non_retryable
    for fragment in fragments:
        assert fragment in err.message, err.message


@pytest.fixture
def all_workers(healing_worker: None, maintenance_worker: None) -> None:
    """Every track's real worker (healing brings decisions along)."""


def a_service() -> str:
    return f"bad-input-{uuid.uuid4().hex[:6]}"


@pytest.mark.parametrize(("queue", "workflow_type"), EVERY_WORKFLOW)
async def test_a_malformed_start_of_any_workflow_fails_the_run_at_once(
    client: Client, all_workers: None, queue: str, workflow_type: str
) -> None:
    handle = await client.start_workflow(
        workflow_type,
        raw_json({"not_a_field": 1}),
        id=f"bad-{workflow_type}-{uuid.uuid4().hex[:6]}",
        task_queue=queue,
    )
    err = await failure_of(handle)
    if workflow_type == "AuditChainVerificationWorkflow":  # takes no input at all
        assert_invalid_input(err, "takes 0 argument(s)", "got 1")
    else:
        assert_invalid_input(err, "not_a_field: Extra inputs are not permitted")


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        pytest.param(
            [{"service": "pilot-orders", "incident_type": "service_down", "detected_at": "x"}],
            ["invalid IncidentInput", "detected_at: Input should be a valid datetime", "'x'"],
            id="bad-datetime",
        ),
        pytest.param(
            [{"incident_type": "service_down"}],
            ["service: Field required", "detected_at: Field required"],
            id="missing-fields",
        ),
        pytest.param(
            [{"service": "s", "incident_type": "melted", "detected_at": "2026-01-01T00:00:00Z"}],
            ["incident_type: Input should be 'service_down'", "(got 'melted')"],
            id="wrong-enum-value",
        ),
        pytest.param(
            [{"service": ["s"], "incident_type": "service_down", "detected_at": "2026-01-01"}],
            ["service: Input should be a valid string"],
            id="wrong-json-type",
        ),
        pytest.param([], ["takes 1 argument(s) (IncidentInput), got 0"], id="no-input"),
        pytest.param([{}, {}], ["takes 1 argument(s) (IncidentInput), got 2"], id="two-inputs"),
    ],
)
async def test_a_malformed_incident_names_each_bad_field(
    client: Client, healing_worker: None, args: list[Any], fragments: list[str]
) -> None:
    handle = await client.start_workflow(
        "HealingIncidentWorkflow",
        args=[raw_json(a) for a in args],
        id=f"bad-incident-{uuid.uuid4().hex[:6]}",
        task_queue=TASK_QUEUE_HEALING,
    )
    assert_invalid_input(await failure_of(handle), *fragments)


async def test_the_readme_cli_start_with_a_bad_date_frees_the_incident_id(
    client: Client, healing_worker: None
) -> None:
    service = a_service()
    workflow_id = incident_workflow_id(service, "service_down")
    bad = {"service": service, "incident_type": "service_down", "detected_at": "yesterday"}
    cli = await asyncio.create_subprocess_exec(
        temporal_binary(), "workflow", "start",
        "--address", client.service_client.config.target_host,
        "--type", "HealingIncidentWorkflow", "--task-queue", TASK_QUEUE_HEALING,
        "--workflow-id", workflow_id, "--input", json.dumps(bad),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(cli.communicate(), timeout=DEADLINE)
    assert cli.returncode == 0, out.decode()
    malformed = client.get_workflow_handle(workflow_id)
    assert_invalid_input(await failure_of(malformed), "detected_at: Input should be a valid")
    malformed_run = (await malformed.describe()).run_id

    # The id is free: the monitor's own start opens a new run, which makes progress.
    good = IncidentInput(
        service=service, incident_type="service_down", detected_at=datetime.now(UTC)
    )
    handle, started = await start_incident(client, good)
    assert started
    assert handle.result_run_id != malformed_run
    result = await asyncio.wait_for(handle.result(), timeout=120)
    assert result.state in TERMINAL_STATES


@pytest.fixture
async def waiting_incident(
    client: Client, deps: Dependencies
) -> AsyncIterator[WorkflowHandle[Any, Any]]:
    """A real incident run on the real healing worker that stays running: its queue has no
    activity worker, so it waits on its first activity while messages reach it."""
    queue = f"bad-input-{uuid.uuid4().hex[:6]}"
    worker = build_worker(deps, queue, healing.WORKFLOWS, lambda _: [])
    incident = IncidentInput(
        service=a_service(), incident_type="service_down", detected_at=datetime.now(UTC)
    )
    async with worker:
        handle = await client.start_workflow(
            HealingIncidentWorkflow.run,
            incident,
            id=f"wait-{uuid.uuid4().hex[:6]}",
            task_queue=queue,
        )
        await asyncio.wait_for(_until_activity_pending(handle), timeout=DEADLINE)
        try:
            yield handle
        finally:
            await handle.terminate(reason="test over")


async def _until_activity_pending(handle: WorkflowHandle[Any, Any]) -> None:
    while True:
        if (await handle.describe()).raw_description.pending_activities:
            return
        await asyncio.sleep(0.2)


async def test_an_update_with_a_bad_payload_is_refused_before_history(
    waiting_incident: WorkflowHandle[Any, Any],
) -> None:
    with pytest.raises(WorkflowUpdateFailedError) as refused:
        await waiting_incident.execute_update("request_abort", raw_json({"requested_by": ""}))
    cause = refused.value.cause
    assert isinstance(cause, ApplicationError)
    assert_invalid_input(cause, "requested_by: String should have at least 1 character", "reason")
    events = [e.event_type async for e in waiting_incident.fetch_history_events()]
    assert EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED not in events
    assert (await waiting_incident.describe()).status == WorkflowExecutionStatus.RUNNING


async def test_a_signal_with_a_bad_payload_is_dropped_and_the_run_goes_on(
    waiting_incident: WorkflowHandle[Any, Any],
) -> None:
    await waiting_incident.signal("abort", raw_json({"requested_by": 7}))
    # The SDK drops a signal it cannot decode (and logs it): once a workflow task after the
    # signal completed, the run is still running, not aborting, and its task never failed.
    events = await asyncio.wait_for(_until_task_after_signal(waiting_incident), DEADLINE)
    assert EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED not in events
    status = await waiting_incident.query(HealingIncidentWorkflow.status)
    assert status.abort_requested is None
    assert status.state not in TERMINAL_STATES
    assert (await waiting_incident.describe()).status == WorkflowExecutionStatus.RUNNING


async def _until_task_after_signal(handle: WorkflowHandle[Any, Any]) -> list[EventType.ValueType]:
    while True:
        events = [e.event_type async for e in handle.fetch_history_events()]
        signaled = EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED
        if (
            signaled in events
            and EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED in events[events.index(signaled) :]
        ):
            return events
        await asyncio.sleep(0.2)


@workflow.defn(name="HealingIncidentWorkflow", sandboxed=False)
class IncidentThatFailsEveryTask:
    """Stands for any run that cannot progress (a bug, a nondeterministic change): its
    workflow task fails every attempt, which Temporal retries forever."""

    @workflow.run
    async def run(self, inp: dict[str, Any]) -> None:
        raise RuntimeError(f"a bug that fails every workflow task of {inp['service']}")


async def _until_stuck(handle: WorkflowHandle[Any, Any]) -> None:
    while True:
        described = await handle.describe()
        if described.raw_description.pending_workflow_task.attempt >= STUCK_AFTER_ATTEMPTS:
            return
        await asyncio.sleep(0.5)


async def test_the_monitor_replaces_a_stuck_incident_rather_than_joining_it(
    client: Client, healing_worker: None
) -> None:
    service = a_service()
    incident = IncidentInput(
        service=service, incident_type="service_down", detected_at=datetime.now(UTC)
    )
    stuck_queue = f"stuck-{uuid.uuid4().hex[:6]}"
    async with Worker(client, task_queue=stuck_queue, workflows=[IncidentThatFailsEveryTask]):
        stuck = [
            await client.start_workflow(
                "HealingIncidentWorkflow",
                incident.model_copy(update={"incident_type": pattern}),
                id=incident_workflow_id(service, pattern),
                task_queue=stuck_queue,
                search_attributes=TypedSearchAttributes(
                    [SearchAttributePair(TRACK, "healing"), SearchAttributePair(SERVICE, service)]
                ),
            )
            for pattern in ("service_down", "service_hung")  # this failure, and a sibling
        ]
        # Before its task has failed twice a run is not taken for stuck: the sibling still
        # holds the service (one incident per service at a time), and nothing is terminated.
        held = await ActivityEnvironment().run(
            IncidentActivities(client).open_incident, OpenIncidentInput(incident=incident)
        )
        assert held.suppressed_reason == f"incident {stuck[1].id} is healing {service}"
        assert held.replaced_stuck_runs == []

        await asyncio.wait_for(
            asyncio.gather(*(_until_stuck(h) for h in stuck)), timeout=DEADLINE * 2
        )
        opened = await ActivityEnvironment().run(
            IncidentActivities(client).open_incident, OpenIncidentInput(incident=incident)
        )
    assert not opened.joined_existing
    assert opened.suppressed_reason is None
    assert sorted(opened.replaced_stuck_runs) == sorted(f"{h.id}/{h.result_run_id}" for h in stuck)
    for handle in stuck:
        ended = await client.get_workflow_handle(handle.id, run_id=handle.result_run_id).describe()
        assert ended.status == WorkflowExecutionStatus.TERMINATED
    events = [
        e
        async for e in client.get_workflow_handle(
            stuck[0].id, run_id=stuck[0].result_run_id
        ).fetch_history_events()
    ]
    terminated = events[-1].workflow_execution_terminated_event_attributes
    assert "cannot progress" in terminated.reason
    assert "a bug that fails every workflow task" in terminated.reason

    # The fresh run is on the healing queue and makes progress.
    assert opened.run_id not in (h.result_run_id for h in stuck)
    fresh = client.get_workflow_handle(
        opened.workflow_id, run_id=opened.run_id, result_type=IncidentResult
    )
    result = await asyncio.wait_for(fresh.result(), timeout=120)
    assert result.state in TERMINAL_STATES
