"""End to end: a real fault in the live fleet is detected, healed and recorded."""

from __future__ import annotations

import asyncio
import socket
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import Engine, text
from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowUpdateFailedError,
)
from temporalio.service import RPCError
from temporalio.testing import ActivityEnvironment

from activities.incidents import IncidentActivities
from models.common import AbortRequest
from models.detection import Diagnosis, PatternMatch, RootCauseCandidate
from models.healing import (
    IncidentInput,
    IncidentResult,
    IncidentState,
    IncidentStatus,
    MonitorInput,
    OpenIncidentInput,
)
from nofx.audit import verify_chain
from nofx.client import incident_workflow_id, start_incident
from nofx.operations.oversight import OversightOperations
from nofx.settings import TASK_QUEUE_HEALING
from pilot.fleet import Fleet
from tests.helpers import assert_replays, wait_for_state
from workflows.healing import HealingIncidentWorkflow
from workflows.monitor import FleetMonitorWorkflow


async def wait_for_workflow(client: Client, workflow_id: str, timeout: float = 60.0) -> None:
    """Wait until a workflow with this id exists (the monitor starts it on its own)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            await client.get_workflow_handle(workflow_id).describe()
            return
        except RPCError:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.2)


def incident_rows(engine: Engine, incident_id: str) -> dict[str, object]:
    with engine.connect() as conn:
        row = (
            conn.execute(
                text("SELECT * FROM healing_incidents WHERE id = :id"), {"id": incident_id}
            )
            .mappings()
            .one()
        )
        audit = (
            conn.execute(
                text("SELECT action FROM audit_events WHERE entity_id = :id ORDER BY id"),
                {"id": incident_id},
            )
            .scalars()
            .all()
        )
    return {"row": dict(row), "audit": list(audit)}


async def test_killed_process_is_detected_healed_and_recorded(
    client: Client, healing_worker: None, live_fleet: Fleet, db_engine: Engine
) -> None:
    service = live_fleet.spec.services[0].name
    starts_before = len(live_fleet.starts(service))
    monitor = await client.start_workflow(
        FleetMonitorWorkflow.run,
        MonitorInput(interval_seconds=0.5, iterations_before_continue_as_new=50),
        id=f"monitor-test-{uuid.uuid4().hex[:8]}",
        task_queue=TASK_QUEUE_HEALING,
    )
    try:
        injected_at = datetime.now(UTC)
        live_fleet.inject("kill", service)
        workflow_id = incident_workflow_id(service, "service_down")
        await wait_for_workflow(client, workflow_id)
        handle = client.get_workflow_handle(workflow_id, result_type=IncidentResult)
        result = await asyncio.wait_for(handle.result(), timeout=120)
    finally:
        await monitor.cancel()

    assert result.state is IncidentState.RESOLVED
    status = await handle.query(HealingIncidentWorkflow.status)
    assert isinstance(status, IncidentStatus)
    assert [
        e.state.value
        for e in status.timeline
        if e.state.value in ("detected", "healing", "validating", "resolved")
    ][:1] == ["detected"]
    assert status.detected_at >= injected_at.replace(microsecond=0)

    # The process is healthy again, restarted exactly once.
    async with httpx.AsyncClient() as http:
        assert (await http.get(live_fleet.health_url(service), timeout=2)).status_code == 200
    assert len(live_fleet.starts(service)) == starts_before + 1

    recorded = incident_rows(db_engine, result.incident_id)
    row = recorded["row"]
    assert row["status"] == "resolved"
    assert row["incident_type"] == "service_down"
    assert row["healing_strategy"] == "restart-service"
    assert row["resolved_at"] is not None
    assert row["resolution_time_ms"] > 0
    actions = row["healing_actions"]
    assert [a["action"] for a in actions] == ["restart_service"]
    assert actions[0]["performed"] is True
    assert recorded["audit"] == [
        "incident.detected",
        "incident.diagnosing",
        "incident.healing",
        "incident.validating",
        "incident.resolved",
    ]
    with db_engine.connect() as conn:
        assert verify_chain(conn).ok
        decision = conn.execute(
            text(
                "SELECT chosen_action, confidence_score FROM autonomous_decisions"
                " WHERE context_data->>'incident_id' = :id"
            ),
            {"id": result.incident_id},
        ).one()
    assert decision.chosen_action == "restart-service"
    described = await handle.describe()
    assert described.status == WorkflowExecutionStatus.COMPLETED

    # What the dashboard and /api/incidents/{id} show: the same story, from the audit trail
    shown = await OversightOperations(client, db_engine).incident(result.incident_id)
    assert (shown.status, shown.running, shown.workflow_id) == ("resolved", False, workflow_id)
    assert [e.action for e in shown.timeline] == recorded["audit"]
    assert [a["action"] for a in shown.actions] == ["restart_service"]
    assert shown.decision_id is not None


async def test_repeated_detection_joins_the_running_incident(
    client: Client, healing_worker: None, live_fleet: Fleet, db_engine: Engine
) -> None:
    service = live_fleet.spec.services[0].name
    live_fleet.inject("kill", service)
    detection = IncidentInput(
        service=service, incident_type="service_down", detected_at=datetime.now(UTC)
    )
    opened = [await start_incident(client, detection) for _ in range(3)]
    assert [started for _, started in opened] == [True, False, False]
    assert len({handle.result_run_id for handle, _ in opened}) == 1
    result = await asyncio.wait_for(opened[0][0].result(), timeout=120)
    assert result.state is IncidentState.RESOLVED
    with db_engine.connect() as conn:
        rows = conn.execute(
            text("SELECT count(*) FROM healing_incidents WHERE root_cause->>'workflow_id' = :wf"),
            {"wf": opened[0][0].id},
        ).scalar_one()
    assert rows >= 1
    assert len(live_fleet.starts(service)) == 2  # the first start and one restart


async def test_failed_restart_rolls_back_and_restores_the_service(
    client: Client, healing_worker: None, live_fleet: Fleet, db_engine: Engine
) -> None:
    """The restart cannot work while another program holds the service's port: the saga fails,
    rolls back, and its compensation brings the service back once the port is free again."""
    spec = live_fleet.spec.services[1]
    live_fleet.inject("kill", spec.name)
    squatter = socket.socket()
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    squatter.bind(("127.0.0.1", spec.port))
    squatter.listen()
    handle, _ = await start_incident(
        client,
        IncidentInput(
            service=spec.name, incident_type="service_down", detected_at=datetime.now(UTC)
        ),
    )
    try:
        deadline = asyncio.get_running_loop().time() + 90
        while True:
            status = await handle.query(HealingIncidentWorkflow.status)
            if status.state is IncidentState.ROLLING_BACK:
                break
            assert asyncio.get_running_loop().time() < deadline, status
            await asyncio.sleep(0.2)
    finally:
        squatter.close()
    # The only playbook failed and was rolled back: the ladder hands the incident to a person.
    waiting = await wait_for_state(handle, IncidentState.AWAITING_APPROVAL)
    assert "every playbook failed (restart-service)" in waiting.timeline[-1].message
    await handle.signal("abort", AbortRequest(requested_by="frank", reason="will fix by hand"))
    with pytest.raises(WorkflowFailureError) as failure:
        await asyncio.wait_for(handle.result(), timeout=120)
    assert "not healed" in str(failure.value.cause)

    status = await handle.query(HealingIncidentWorkflow.status)
    assert status.state is IncidentState.FAILED
    assert status.rollback_plan == []  # every compensation ran
    # The restart either fails outright or "succeeds" (supervisord saw it start) and the pilot
    # then dies on the taken port, failing validation; on a busy machine both happen. Either way
    # the compensation is the last action.
    actions = [a.action for a in status.actions]
    assert actions in (
        ["restore_service_running"],
        ["restart_service", "restore_service_running"],
    ), actions
    async with httpx.AsyncClient() as http:
        assert (await http.get(live_fleet.health_url(spec.name), timeout=2)).status_code == 200
    recorded = incident_rows(db_engine, status.incident_id)
    assert recorded["row"]["status"] == "failed"
    assert recorded["row"]["root_cause"]["compensated"] == [f"restore_service_running({spec.name})"]
    assert recorded["audit"][-2:] == ["incident.rolling_back", "incident.failed"]


async def test_abort_mid_saga_rolls_back_and_a_second_abort_is_refused(
    client: Client, healing_worker: None, live_fleet: Fleet, db_engine: Engine
) -> None:
    service = live_fleet.spec.services[0].name
    live_fleet.inject("kill", service)
    handle, _ = await start_incident(
        client,
        IncidentInput(service=service, incident_type="service_down", detected_at=datetime.now(UTC)),
    )
    deadline = asyncio.get_running_loop().time() + 60
    while (
        await handle.query(HealingIncidentWorkflow.status)
    ).state is not IncidentState.VALIDATING:
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.05)
    accepted = await handle.execute_update(
        HealingIncidentWorkflow.request_abort,
        AbortRequest(requested_by="alice", reason="wrong service"),
    )
    assert accepted.will_undo == [f"restore_service_running({service})"]
    # A second abort is refused with a reason, never silently dropped (the server itself
    # refuses once the run has closed).
    with pytest.raises((WorkflowUpdateFailedError, RPCError)) as refused:
        await handle.execute_update(
            HealingIncidentWorkflow.request_abort,
            AbortRequest(requested_by="bob", reason="again"),
        )
    reason = str(getattr(refused.value, "cause", None) or refused.value)
    assert "already requested by alice" in reason or "already completed" in reason, reason
    with pytest.raises(WorkflowFailureError):
        await asyncio.wait_for(handle.result(), timeout=60)
    await assert_replays(handle)  # an abort racing a step's end replays as it ran

    status = await handle.query(HealingIncidentWorkflow.status)
    assert status.state is IncidentState.FAILED
    assert status.error == "aborted by alice: wrong service"
    assert [a.action for a in status.actions] == ["restart_service", "restore_service_running"]
    assert status.actions[-1].performed is False  # the service was running: nothing to restore
    recorded = incident_rows(db_engine, status.incident_id)
    assert recorded["row"]["status"] == "failed"
    assert recorded["audit"][-2:] == ["incident.rolling_back", "incident.failed"]


async def test_incident_without_playbook_is_escalated_with_its_diagnosis(
    client: Client, healing_worker: None, db_engine: Engine
) -> None:
    now = datetime.now(UTC)
    diagnosis = Diagnosis(
        service="checkout",
        pattern=PatternMatch(pattern="stale_cache", confidence=0.6, matched=["cache_stale"]),
        root_causes=[
            RootCauseCandidate(
                service="checkout", cause="self", score=1.0, detail="checkout itself"
            )
        ],
    )
    handle_input = IncidentInput(
        service=f"checkout-{uuid.uuid4().hex[:6]}",
        incident_type="stale_cache",
        detection_method="anomaly_ensemble",
        detected_at=now,
        diagnosis=diagnosis,
    )
    handle, _ = await start_incident(client, handle_input)
    result = await asyncio.wait_for(handle.result(), timeout=60)
    assert result.state is IncidentState.ESCALATED
    assert result.actions == []
    status = await handle.query(HealingIncidentWorkflow.status)
    assert status.diagnosis == diagnosis
    assert "no usable playbook" in (status.error or "")
    row = incident_rows(db_engine, result.incident_id)["row"]
    assert row["status"] == "escalated"

    # The monitor does not reopen it on every tick while it cools down, but does afterwards.
    opener = ActivityEnvironment()
    again = OpenIncidentInput(incident=handle_input, reopen_cooldown_seconds=300)
    held = await opener.run(IncidentActivities(client).open_incident, again)
    assert held.suppressed_reason is not None
    assert "ended escalated" in held.suppressed_reason
    reopened = await opener.run(
        IncidentActivities(client).open_incident,
        again.model_copy(update={"reopen_cooldown_seconds": 0}),
    )
    assert reopened.suppressed_reason is None
    assert reopened.run_id != handle.result_run_id
    await client.get_workflow_handle(reopened.workflow_id).result()
    assert row["detection_method"] == "anomaly_ensemble"
    assert row["root_cause"]["ranked"][0]["detail"] == "checkout itself"
    assert row["root_cause"]["pattern"]["pattern"] == "stale_cache"


async def test_a_lagging_signal_right_after_a_fix_does_not_reopen_the_incident(
    client: Client, healing_worker: None, live_fleet: Fleet
) -> None:
    service = live_fleet.spec.services[1].name
    incident = IncidentInput(
        service=service, incident_type="stale_cache", detected_at=datetime.now(UTC)
    )
    handle, _ = await start_incident(client, incident)
    result = await asyncio.wait_for(handle.result(), timeout=90)
    assert result.state is IncidentState.RESOLVED  # invalidate + fresh reads on a real cache

    opener = ActivityEnvironment()
    again = OpenIncidentInput(
        incident=incident.model_copy(update={"detected_at": datetime.now(UTC)})
    )
    held = await opener.run(IncidentActivities(client).open_incident, again)
    # A state signal has no onset: for a while after the fix it is the healed episode's tail.
    assert held.suppressed_reason is not None
    assert "signals settle until" in held.suppressed_reason
    # A deviation that began after the fix is new, and so is anything once the signals settled.
    fresh = again.model_copy(
        update={
            "incident": again.incident.model_copy(
                update={"evidence": {"anomalies": [{"onset": datetime.now(UTC).isoformat()}]}}
            )
        }
    )
    for reopen in (fresh, again.model_copy(update={"settle_seconds": 0})):
        opened = await opener.run(IncidentActivities(client).open_incident, reopen)
        assert opened.suppressed_reason is None
        await client.get_workflow_handle(opened.workflow_id).result()

    # The healed episode's lagging rates may take another pattern's shape: an anomaly that began
    # before the fix is its tail, whatever pattern it matches now.
    before_fix = (await handle.describe()).start_time
    assert before_fix is not None
    other = OpenIncidentInput(
        incident=IncidentInput(
            service=service,
            incident_type="error_spike_after_config_change",
            detected_at=datetime.now(UTC),
            evidence={"anomalies": [{"onset": before_fix.isoformat()}]},
        )
    )
    tail = await opener.run(IncidentActivities(client).open_incident, other)
    assert tail.suppressed_reason is not None
    assert "the tail of the healed episode" in tail.suppressed_reason
    assert await IncidentActivities(client)._tail_of_last_heal(service, datetime.now(UTC)) is None


def probed_down(service: str) -> OpenIncidentInput:
    """The monitor's request to open a `service_down` incident its probes saw, now."""
    return OpenIncidentInput(
        incident=IncidentInput(
            service=service,
            incident_type="service_down",
            detection_method="probe",
            detected_at=datetime.now(UTC),
        )
    )


async def test_a_service_another_incident_is_acting_on_opens_no_second_incident(
    client: Client, db_engine: Engine
) -> None:
    """While an incident's restart holds its action lease, the probes see the service down: that
    is the healing's doing, not a new failure. The lease is read from the database, so a
    busy Temporal visibility store cannot let a second incident through."""
    service = f"svc-{uuid.uuid4().hex[:6]}"
    hung = incident_workflow_id(service, "service_hung")
    key = f"{hung}/lease-test"
    with db_engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO action_leases (idempotency_key, service, service_group, workflow_id,"
                " action, expires_at) VALUES (:k, :s, :s, :w, 'restart_service',"
                " now() + interval '5 minutes')"
            ),
            {"k": key, "s": service, "w": hung},
        )
    down = probed_down(service)
    opener = ActivityEnvironment()
    try:
        held = await opener.run(IncidentActivities(client, db_engine).open_incident, down)
        assert held.run_id is None
        assert held.suppressed_reason == f"{hung} is acting on {service} (restart_service)"
    finally:
        with db_engine.begin() as conn:
            conn.execute(text("DELETE FROM action_leases WHERE idempotency_key = :k"), {"k": key})
    # the lease released, the same detection opens its incident
    opened = await opener.run(IncidentActivities(client, db_engine).open_incident, down)
    assert opened.suppressed_reason is None
    assert opened.run_id is not None
    await client.get_workflow_handle(opened.workflow_id).terminate(reason="test done")


async def test_a_service_a_maintenance_job_is_working_on_opens_no_incident(
    client: Client, db_engine: Engine
) -> None:
    """Between its steps a maintenance job holds no lease, but a drained, restarted or cleaned
    replica is its doing: while its row says running (within its planned duration plus a
    margin) no incident opens, and an anomaly that began before it ended is its tail. A job
    that overran its plan, or one waiting for a person, holds nothing back."""
    service = f"svc-{uuid.uuid4().hex[:6]}"
    job = f"maintenance-{service}-oom"
    row = uuid.uuid4()
    with db_engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO maintenance_schedules (id, scheduled_at, maintenance_type,"
                " estimated_duration_minutes, status, workflow_id, component_id,"
                " predicted_issue) VALUES (:id, now(), 'drain-restart-before-oom', 3,"
                " 'running', :w, :s, 'oom')"
            ),
            {"id": row, "w": job, "s": service},
        )
    down = probed_down(service)
    opener = ActivityEnvironment()
    activities = IncidentActivities(client, db_engine)

    def job_is(status: str, *, updated: str = "now()", completed: str = "NULL") -> None:
        with db_engine.begin() as conn:
            conn.execute(
                text(
                    f"UPDATE maintenance_schedules SET status = :st, updated_at = {updated},"
                    f" completed_at = {completed} WHERE id = :id"
                ),
                {"st": status, "id": row},
            )

    try:
        held = await opener.run(activities.open_incident, down)
        assert held.run_id is None
        assert held.suppressed_reason == f"maintenance job {job} is running on {service}"
        job_is("awaiting_approval")
        assert activities._acting_on(service, "incident-x") is None
        job_is("running", updated="now() - interval '14 minutes'")  # 3 planned + 10: overran
        assert activities._acting_on(service, "incident-x") is None
        began = datetime.now(UTC) - timedelta(minutes=1)
        job_is("completed", completed="now()")
        tail = activities._tail_of_maintenance(service, began)
        assert tail is not None
        assert f"before maintenance job {job} ended" in tail
        after = datetime.now(UTC) + timedelta(seconds=1)
        assert activities._tail_of_maintenance(service, after) is None
    finally:
        with db_engine.begin() as conn:
            conn.execute(text("DELETE FROM maintenance_schedules WHERE id = :id"), {"id": row})
    opened = await opener.run(activities.open_incident, down)
    assert opened.suppressed_reason is None
    assert opened.run_id is not None
    await client.get_workflow_handle(opened.workflow_id).terminate(reason="test done")
