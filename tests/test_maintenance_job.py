"""The maintenance job end to end on the live fleet: the window, the decision, the durable timer,
what a person may ask of it (by signal and by update), the saga's rollback, and a worker killed
while the job waits. Real pilot processes, real supervisord, real HAProxy, real PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import Engine, text
from temporalio.api.enums.v1 import EventType
from temporalio.client import (
    Client,
    WorkflowFailureError,
    WorkflowHandle,
    WorkflowUpdateFailedError,
)
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

from models.decisions import Candidate, DecisionResult, Operator, Reject
from models.healing import PlaybookStep
from models.maintenance import (
    CancelJob,
    JobStatusView,
    MaintenanceJobInput,
    PredictionPassInput,
    PredictionPassReport,
    Reschedule,
    RunNow,
    ValidationInput,
    ValidationReport,
    job_workflow_id,
)
from nofx.client import start_maintenance_job
from nofx.decisions import store
from nofx.healing.guardrails import add_freeze
from nofx.settings import TASK_QUEUE_MAINTENANCE
from pilot.fleet import Fleet
from tests.fixtures_traffic import Traffic
from tests.helpers import WorkerProcess, assert_replays, eventually, query_until
from workers import maintenance
from workers.common import Dependencies, build_worker
from workflows.decisions import DecisionWorkflow
from workflows.maintenance import (
    MaintenanceJobWorkflow,
    PredictionPassWorkflow,
    PredictionValidationWorkflow,
)

MEMORY = "process_resident_memory_bytes"


def set_policy(engine: Engine, service: str, **policy: Any) -> None:
    """The service's inventory maintenance policy and its memory limit."""
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE services SET metadata = metadata || CAST(:m AS jsonb) WHERE name = :n"),
            {"n": service, "m": json.dumps({"maintenance": policy, "limits": {MEMORY: 4e9}})},
        )


def open_prediction(engine: Engine, service: str, eta: datetime) -> str:
    with engine.begin() as conn:
        return str(
            conn.execute(
                text(
                    "INSERT INTO maintenance_predictions (component_type, component_id,"
                    " predicted_issue, metric, probability, eta, eta_earliest, eta_latest,"
                    " source) VALUES ('service', :s, 'oom', :m, 0.9, :eta, :eta, :eta, 'test')"
                    " RETURNING id"
                ),
                {"s": service, "m": MEMORY, "eta": eta},
            ).scalar_one()
        )


def prediction_status(engine: Engine, prediction_id: str) -> str:
    with engine.connect() as conn:
        return str(
            conn.execute(
                text("SELECT status FROM maintenance_predictions WHERE id = :id"),
                {"id": prediction_id},
            ).scalar_one()
        )


def schedule_row(engine: Engine, workflow_id: str) -> dict[str, Any]:
    with engine.connect() as conn:
        row = (
            conn.execute(
                text(
                    "SELECT * FROM maintenance_schedules WHERE workflow_id = :wf"
                    " ORDER BY created_at DESC LIMIT 1"
                ),
                {"wf": workflow_id},
            )
            .mappings()
            .first()
        )
    assert row is not None, f"no schedule row for {workflow_id}"
    return dict(row)


def job(service: str, hours: float = 6.0, **extra: Any) -> MaintenanceJobInput:
    return MaintenanceJobInput(
        component=service,
        issue="oom",
        metric=MEMORY,
        deadline=datetime.now(UTC) + timedelta(hours=hours),
        **extra,
    )


async def wait_status(handle: WorkflowHandle[Any, Any], *wanted: str) -> JobStatusView:
    view: JobStatusView = await query_until(
        handle,
        MaintenanceJobWorkflow.status,
        lambda v: v.status in wanted,
        lambda v: f"job {handle.id} not {'/'.join(wanted)}: {v}",
    )
    return view


async def update_events(handle: WorkflowHandle[Any, Any]) -> int:
    history = await handle.fetch_history()
    return sum(
        1
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED
    )


@pytest.fixture
async def job_worker(deps: Dependencies, decisions_worker: None) -> AsyncIterator[None]:
    worker = build_worker(
        deps, TASK_QUEUE_MAINTENANCE, maintenance.WORKFLOWS, maintenance.activities
    )
    async with worker:
        yield


async def test_a_leaking_service_is_maintained_in_its_window_and_the_failure_averted(
    client: Client, job_worker: None, live_fleet: Fleet, db_engine: Engine
) -> None:
    service = live_fleet.spec.services[1].name
    set_policy(db_engine, service, duration_minutes=5)
    live_fleet.inject("memory_leak", service, rate_mb_s=64, limit_mb=192)
    starts = len(live_fleet.starts(service))
    prediction = open_prediction(db_engine, service, datetime.now(UTC) + timedelta(hours=6))
    handle, started = await start_maintenance_job(client, job(service, prediction_id=prediction))
    assert started
    again, started_again = await start_maintenance_job(client, job(service))
    assert (again.id, started_again) == (handle.id, False)  # USE_EXISTING: one job per issue

    done: JobStatusView = await handle.result()
    assert done.status == "completed", done.timeline
    # No traffic provider: the drain-first plan is pruned, the in-place restart chosen.
    assert done.chosen == "restart-before-oom"
    assert done.outcome is not None
    assert done.outcome.averted, done.outcome
    assert done.outcome.after is not None
    assert done.outcome.before is not None
    assert done.outcome.after < done.outcome.before
    assert len(live_fleet.starts(service)) == starts + 1
    assert prediction_status(db_engine, prediction) == "averted"
    row = schedule_row(db_engine, handle.id)
    assert (row["status"], row["maintenance_type"]) == ("completed", "restart-before-oom")
    assert row["completed_at"] is not None
    assert row["decision_id"] is not None
    assert "no load metric" in row["window_plan"]["reason"]
    await assert_replays(handle)


async def test_updates_refuse_bad_input_before_history_and_signals_move_the_job(
    client: Client, job_worker: None, live_fleet: Fleet, db_engine: Engine
) -> None:
    service = live_fleet.spec.services[1].name
    set_policy(db_engine, service, lead_minutes=600)  # the window opens in 10 hours
    starts = len(live_fleet.starts(service))
    handle, _ = await start_maintenance_job(client, job(service, hours=24))
    waiting = await wait_status(handle, "scheduled")
    assert waiting.scheduled_at is not None
    assert waiting.scheduled_at > datetime.now(UTC) + timedelta(hours=9)
    accepted = await update_events(handle)

    # In the past: refused by the validator, nothing in history.
    with pytest.raises(WorkflowUpdateFailedError) as refused:
        await handle.execute_update(
            MaintenanceJobWorkflow.reschedule_job,
            Reschedule(
                requested_by="alice", at=datetime.now(UTC) - timedelta(hours=1), reason="oops"
            ),
        )
    assert "in the past" in str(refused.value.cause)
    assert await update_events(handle) == accepted

    # Into a change freeze: the plan refuses it with the freeze's reason; the window stays.
    freeze_from = datetime.now(UTC) + timedelta(hours=2)
    add_freeze(
        db_engine,
        freeze_from,
        freeze_from + timedelta(hours=1),
        scope=service,
        reason="quarter-end close",
        actor="test",
    )
    with pytest.raises(WorkflowUpdateFailedError) as refused:
        await handle.execute_update(
            MaintenanceJobWorkflow.reschedule_job,
            Reschedule(
                requested_by="alice", at=freeze_from + timedelta(minutes=10), reason="earlier"
            ),
        )
    assert "quarter-end close" in str(refused.value.cause.__cause__ or refused.value.cause)
    kept: JobStatusView = await handle.query(MaintenanceJobWorkflow.status)
    assert kept.scheduled_at == waiting.scheduled_at
    assert schedule_row(db_engine, handle.id)["scheduled_at"] == waiting.scheduled_at

    # A good reschedule by update moves the timer and the row.
    target = datetime.now(UTC) + timedelta(hours=4)
    ack = await handle.execute_update(
        MaintenanceJobWorkflow.reschedule_job,
        Reschedule(requested_by="alice", at=target, reason="after the release"),
    )
    assert ack.scheduled_at == target
    assert ack.status == "scheduled"
    assert schedule_row(db_engine, handle.id)["scheduled_at"] == target

    # The Web UI's signal with one JSON object moves it too; run_now then runs it at once.
    later = datetime.now(UTC) + timedelta(hours=5)
    await handle.signal(
        MaintenanceJobWorkflow.reschedule,
        Reschedule(requested_by="bob", at=later, reason="from the Web UI"),
    )
    moved = await eventually(
        lambda: schedule_row(db_engine, handle.id)["scheduled_at"] == later or None,
        "the signal moves the job",
    )
    assert moved
    await handle.signal(MaintenanceJobWorkflow.run_now, RunNow(requested_by="bob", reason="now"))
    done: JobStatusView = await handle.result()
    assert done.status == "completed", done.timeline
    assert len(live_fleet.starts(service)) == starts + 1

    # After the end the server itself refuses every update.
    accepted = await update_events(handle)
    with pytest.raises(RPCError, match="already completed"):
        await handle.execute_update(
            MaintenanceJobWorkflow.cancel_job, CancelJob(requested_by="alice", reason="late")
        )
    assert await update_events(handle) == accepted
    await assert_replays(handle)


async def test_the_cli_lists_refuses_and_cancels_a_waiting_job(
    client: Client,
    job_worker: None,
    live_fleet: Fleet,
    db_engine: Engine,
    database_url: str,
    nofx_cli: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("NOFX_TEMPORAL_ADDRESS", client.service_client.config.target_host)

    async def cli(*args: str) -> Any:
        return await asyncio.to_thread(nofx_cli, database_url, "predictive", "schedule", *args)

    service = live_fleet.spec.services[1].name
    set_policy(db_engine, service, lead_minutes=600)
    starts = len(live_fleet.starts(service))
    handle, _ = await start_maintenance_job(client, job(service, hours=24))
    await wait_status(handle, "scheduled")
    listed = await cli("--service", service)
    assert listed.exit_code == 0, listed.output
    assert handle.id in listed.output
    assert "scheduled" in listed.output
    past = (datetime.now(UTC) - timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%S")
    refused = await cli("--reschedule", handle.id, "--at", past)
    assert refused.exit_code != 0
    assert "in the past" in refused.output
    cancelled = await cli("--cancel", handle.id, "--reason", "replaced by a new release")
    assert cancelled.exit_code == 0, cancelled.output
    done: JobStatusView = await handle.result()
    assert done.status == "cancelled"
    assert "replaced by a new release" in done.timeline[-1].message
    assert schedule_row(db_engine, handle.id)["status"] == "cancelled"
    assert len(live_fleet.starts(service)) == starts


async def test_a_failed_verify_rolls_the_maintenance_back(
    client: Client, job_worker: None, traffic: Traffic, db_engine: Engine
) -> None:
    service = traffic.replicas[0]
    set_policy(db_engine, service)
    prediction = open_prediction(db_engine, service, datetime.now(UTC) + timedelta(hours=6))
    plan = Candidate(
        name="drain-then-check-an-impossible-latency",
        steps=[
            PlaybookStep(action="drain_traffic", timeout_seconds=30),
            # The check can never pass (no request answers in a microsecond): the saga must
            # undo the drain.
            PlaybookStep(
                action="validate_requests",
                params={"max_p95_ms": 0.001, "requests": 5, "attempts": 2},
                timeout_seconds=60,
            ),
            PlaybookStep(action="admit_traffic", timeout_seconds=30),
        ],
    )
    handle, _ = await start_maintenance_job(
        client, job(service, prediction_id=prediction, candidates=[plan])
    )
    with pytest.raises(WorkflowFailureError) as failure:
        await handle.result()
    assert "rolled back" in str(failure.value.cause)
    view: JobStatusView = await handle.query(MaintenanceJobWorkflow.status)
    assert view.status == "rolled_back"
    assert any("undo_drain_traffic" in n.message for n in view.timeline), view.timeline
    assert traffic.setting(service)[1] == "ready"  # back in rotation
    traffic.assert_split()
    assert prediction_status(db_engine, prediction) == "open"  # not averted
    assert schedule_row(db_engine, handle.id)["status"] == "rolled_back"
    await assert_replays(handle)


async def test_a_worker_killed_while_the_job_waits_on_its_timer_loses_nothing(
    client: Client,
    decisions_worker: None,
    live_fleet: Fleet,
    db_engine: Engine,
    temporal_env: WorkflowEnvironment,
    database_url: str,
    tmp_path: Path,
) -> None:
    service = live_fleet.spec.services[1].name
    set_policy(db_engine, service, lead_minutes=600)
    starts = len(live_fleet.starts(service))
    worker = WorkerProcess(
        temporal_env, database_url, tmp_path / "worker-maintenance.log", "workers.maintenance"
    )
    worker.start()
    try:
        handle, _ = await start_maintenance_job(client, job(service, hours=24))
        await wait_status(handle, "scheduled")
        soon = datetime.now(UTC) + timedelta(seconds=8)
        await handle.execute_update(
            MaintenanceJobWorkflow.reschedule_job,
            Reschedule(requested_by="alice", at=soon, reason="soon"),
        )
        worker.kill_9()  # the timer is running and nobody is there when it fires
        worker.start()
        done: JobStatusView = await handle.result()
    finally:
        worker.stop()
    assert done.status == "completed", done.timeline
    assert done.scheduled_at == soon
    assert len(live_fleet.starts(service)) == starts + 1  # it ran once
    assert schedule_row(db_engine, handle.id)["status"] == "completed"
    assert uuid.UUID(str(schedule_row(db_engine, handle.id)["decision_id"]))


def seed_memory(engine: Engine, service: str, *, leak: bool) -> None:
    """Three days of the service's memory on a daily cycle up to now, the last three hours
    leaking (or not), as the embedded telemetry would have scraped them."""
    step = 300
    now = int(datetime.now(UTC).timestamp()) // step * step
    t = np.arange(3 * 288)
    values = 1e8 + 2e7 * np.sin(2 * np.pi * t / 288)
    if leak:
        values[-36:] += 5e6 * np.arange(36)
    stamps = [datetime.fromtimestamp(now - (len(t) - 1 - i) * step, UTC) for i in range(len(t))]
    with engine.begin() as conn:
        conn.execute(
            text("DELETE FROM metric_samples WHERE service = :s AND metric = :m"),
            {"s": service, "m": MEMORY},
        )
        conn.execute(
            text(
                "INSERT INTO metric_samples (service, metric, labels, ts, value)"
                " VALUES (:s, :m, '{}', :ts, :v)"
            ),
            [
                {"s": service, "m": MEMORY, "ts": ts, "v": float(v)}
                for ts, v in zip(stamps, values, strict=True)
            ],
        )


async def forecasting_pass(client: Client, service: str) -> PredictionPassReport:
    report: PredictionPassReport = await client.execute_workflow(
        PredictionPassWorkflow.run,
        PredictionPassInput(services=[service]),
        id=f"pass-{uuid.uuid4()}",
        task_queue=TASK_QUEUE_MAINTENANCE,
    )
    return report


async def test_the_forecasting_pass_starts_moves_and_stands_down_the_job(
    client: Client, job_worker: None, live_fleet: Fleet, db_engine: Engine
) -> None:
    service = live_fleet.spec.services[1].name
    # A short lead: the job must find room for its window before the deadline (the earliest
    # ETA less the lead). With 30 min, a CI run's earliest ETA 36 min out left 6 min, less than
    # the 10-minute window, and the job rightly ran at once instead of being scheduled.
    set_policy(db_engine, service, lead_minutes=10)
    with db_engine.begin() as conn:
        conn.execute(
            text("UPDATE services SET metadata = metadata || CAST(:m AS jsonb) WHERE name = :n"),
            {"n": service, "m": json.dumps({"limits": {MEMORY: 4e8}})},
        )
    seed_memory(db_engine, service, leak=True)
    starts = len(live_fleet.starts(service))

    first = await forecasting_pass(client, service)
    assert [(c.issue, c.change) for c in first.changes] == [("oom", "opened")]
    job_id = job_workflow_id(service, "oom")
    assert first.jobs_started == [job_id]
    handle = client.get_workflow_handle(job_id, result_type=JobStatusView)
    scheduled = await wait_status(handle, "scheduled")
    change = first.changes[0]
    assert change.deadline is not None
    assert scheduled.deadline == change.deadline
    assert scheduled.scheduled_at is not None
    assert scheduled.scheduled_at <= change.deadline  # before the failure

    again = await forecasting_pass(client, service)
    assert [c.change for c in again.changes] == ["updated"]
    assert again.jobs_moved == [job_id]

    seed_memory(db_engine, service, leak=False)  # the leak was a false alarm after all
    calm = await forecasting_pass(client, service)
    assert [c.change for c in calm.changes] == ["withdrawn"]
    done: JobStatusView = await handle.result()
    assert done.status == "cancelled"
    assert "withdrawn" in done.timeline[-1].message
    assert len(live_fleet.starts(service)) == starts  # nothing was done

    # The daily validation settles what it can and retrains the failure classifier.
    report: ValidationReport = await client.execute_workflow(
        PredictionValidationWorkflow.run,
        ValidationInput(days=1),
        id=f"validate-{uuid.uuid4()}",
        task_queue=TASK_QUEUE_MAINTENANCE,
    )
    assert report.by_status.get("withdrawn", 0) >= 1
    assert report.classifier is not None
    assert report.classifier.verdict


async def test_a_failure_back_after_an_aversion_waits_for_a_person(
    client: Client, job_worker: None, live_fleet: Fleet, db_engine: Engine
) -> None:
    """A prediction opened soon after maintenance averted the same failure is recurring: the
    job shows `awaiting_approval` (its row too) while its decision waits, and a rejection
    declines it without touching the service."""
    service = live_fleet.spec.services[1].name
    set_policy(db_engine, service, duration_minutes=5)
    approver = f"op-{uuid.uuid4().hex[:6]}"
    store.add_operator(db_engine, Operator(name=approver, permissions=["*"]), actor="test")
    starts = len(live_fleet.starts(service))
    why = f"oom of {service} is predicted again 20 min after maintenance averted it"
    handle, _ = await start_maintenance_job(client, job(service, recurring=why))
    waiting = await wait_status(handle, "awaiting_approval")
    assert any(why in note.message for note in waiting.timeline)
    row = await eventually(
        lambda: (r := schedule_row(db_engine, handle.id))["status"] == "awaiting_approval" and r,
        "the job's row says it waits",
    )
    assert why in row["detail"]
    decision = client.get_workflow_handle(f"decision-{handle.id}")
    deadline = asyncio.get_running_loop().time() + 60
    while True:  # the child decision starts right after the row is written
        with contextlib.suppress(RPCError):
            shown: DecisionResult = await decision.query(DecisionWorkflow.status)
            if shown.status == "awaiting_approval":
                break
        assert asyncio.get_running_loop().time() < deadline, "the decision never waited"
        await asyncio.sleep(0.2)
    assert why in " ".join(shown.approval.why)
    await decision.signal(DecisionWorkflow.reject, Reject(approver=approver, reason="fix the leak"))
    done: JobStatusView = await handle.result()
    assert done.status == "declined", done.timeline
    assert len(live_fleet.starts(service)) == starts
    assert schedule_row(db_engine, handle.id)["status"] == "declined"
