"""Re-admission after a traffic mitigation, against a real haproxy in front of two real pilots.

A replica taken out of rotation by a real `shift_weight` / `drain_traffic` step (through
`ActionActivities.perform_action`, so its prior state is in `action_log`) must come back once it
is well and the mitigation is old enough — and stay out while it is young, while an incident is
open on it, while it is still slow under a real overload, or when the saga already undid it.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, text
from temporalio.client import Client

from models.actions import ActionRequest
from models.readmission import ReadmissionVerdict, TrafficReadmissionInput, TrafficReadmissionReport
from nofx.healing.readmission import readmit_traffic
from nofx.settings import TASK_QUEUE_MAINTENANCE
from pilot.fleet import Fleet
from tests.fixtures_traffic import Traffic, step_request, traffic_step
from workflows.maintenance import TrafficReadmissionWorkflow

pytestmark = pytest.mark.e2e

# Old enough at once, and quick checks: the tests wait for the replica, not for the policy.
QUICK = TrafficReadmissionInput(min_age_seconds=0, check_interval_seconds=0.2)


def take_out(traffic: Traffic, act: Any, action: str = "shift_weight") -> ActionRequest:
    """Mitigate on the first replica through the real activity: weight 0 (or drain)."""
    params = {"weight": 0} if action == "shift_weight" else {}
    step = traffic_step(traffic.replicas[0], action, params)
    assert act(step).performed
    return step


def verdict_of(report: TrafficReadmissionReport, step: ActionRequest) -> ReadmissionVerdict | None:
    """This test's mitigation in a report (the session database holds other tests' steps too)."""
    found = [
        v for v in [*report.readmitted, *report.held] if v.idempotency_key == step.idempotency_key
    ]
    assert len(found) <= 1, found
    return found[0] if found else None


def readmit(db_engine: Engine, policy: TrafficReadmissionInput = QUICK) -> TrafficReadmissionReport:
    return readmit_traffic(db_engine, policy, readmitted_by="test-readmission")


def readmit_until_back(
    db_engine: Engine, step: ActionRequest, timeout: float = 30.0
) -> ReadmissionVerdict:
    """Pass after pass until the step is re-admitted: a loaded CI machine may be slow at first."""
    deadline = time.monotonic() + timeout
    while True:
        verdict = verdict_of(readmit(db_engine), step)
        assert verdict is not None, "the mitigation is no longer in force, yet not re-admitted"
        if verdict.readmitted:
            return verdict
        assert time.monotonic() < deadline, verdict.reason
        time.sleep(0.5)


def wait_until_slow(url: str, p95_ms: float, timeout: float = 60.0) -> None:
    """Until ten GETs of `url` have a p95 over `p95_ms` (fail after `timeout` seconds)."""
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=10.0) as client:
        while True:
            took = []
            for _ in range(10):
                began = time.perf_counter()
                client.get(url)
                took.append((time.perf_counter() - began) * 1000)
            seen = sorted(took)[8]
            if seen > p95_ms:
                return
            assert time.monotonic() < deadline, f"not slow yet: p95 {seen:.0f} ms"
            time.sleep(0.2)


def records(db_engine: Engine, step: ActionRequest) -> tuple[list[Any], list[Any]]:
    """The `<key>/readmit` rows of action_log and of the audit trail."""
    key = f"{step.idempotency_key}/readmit"
    with db_engine.connect() as conn:
        logged = conn.execute(
            text(
                "SELECT action, target, status, detail FROM action_log WHERE idempotency_key = :k"
            ),
            {"k": key},
        ).all()
        audited = conn.execute(
            text(
                "SELECT actor, action, entity_id, workflow_id, details FROM audit_events"
                " WHERE idempotency_key = :k"
            ),
            {"k": key},
        ).all()
    return list(logged), list(audited)


def test_a_well_replica_is_readmitted_once_when_the_mitigation_is_old_enough(
    db_engine: Engine, traffic: Traffic, act: Any
) -> None:
    away, other = traffic.replicas
    step = take_out(traffic, act)
    assert traffic.setting(away) == (0, "ready")

    young = verdict_of(readmit(db_engine, TrafficReadmissionInput()), step)  # default: 60 s
    assert young is not None
    assert not young.readmitted
    assert "re-admitted after 60s" in young.reason
    assert traffic.setting(away) == (0, "ready")
    assert records(db_engine, step) == ([], [])

    # Two passes at once (a schedule run and a retried attempt): the replica comes back once.
    time.sleep(1.0)
    old_enough = QUICK.model_copy(update={"min_age_seconds": 1.0})
    with ThreadPoolExecutor(2) as pool:
        reports = list(pool.map(lambda _: readmit(db_engine, old_enough), range(2)))
    verdicts = [verdict_of(report, step) for report in reports]
    assert sorted(v.readmitted for v in verdicts if v is not None) == [False, True], verdicts
    back = next(v for v in verdicts if v is not None and v.readmitted)
    assert back.server == f"{traffic.backend}/{away}"
    assert "back at weight 1, ready" in back.reason
    assert traffic.setting(away) == (1, "ready")  # exactly the weight captured before the step
    traffic.assert_split()  # real requests through haproxy reach it again

    logged, audited = records(db_engine, step)
    assert [(a, t, s) for a, t, s, _ in logged] == [("readmit_shift_weight", away, "compensated")]
    detail = logged[0][3]
    assert detail["prior"]["weight"] == 1
    assert detail["outcome"]["performed"]
    assert detail["outcome"]["detail"]["prior_state_restored"]
    assert [(a, act_, e, w) for a, act_, e, w, _ in audited] == [
        ("nofx-readmission", "traffic.readmitted", away, "test-readmission")
    ]
    assert audited[0][4]["mitigation"] == step.idempotency_key

    # Done: later passes leave it alone, and the sibling can now be mitigated in its turn.
    assert verdict_of(readmit(db_engine), step) is None
    assert len(records(db_engine, step)[1]) == 1
    sibling = traffic_step(other, "shift_weight", {"weight": 0})
    assert act(sibling).performed
    act(sibling, undo=True)


def test_an_attempt_that_died_after_the_undo_is_completed(
    db_engine: Engine, traffic: Traffic, act: Any
) -> None:
    away, _ = traffic.replicas
    step = take_out(traffic, act, "drain_traffic")
    assert traffic.setting(away) == (1, "drain")
    # The undo ran, then the worker died before recording it: the server is ready, no record.
    traffic.runtime.set_state(traffic.backend, away, "ready")

    back = readmit_until_back(db_engine, step)
    assert "back at weight 1, ready" in back.reason
    logged, audited = records(db_engine, step)
    assert len(logged) == len(audited) == 1
    assert logged[0][0] == "readmit_drain_traffic"
    assert not logged[0][3]["outcome"]["performed"]  # nothing left to change, now recorded
    assert verdict_of(readmit(db_engine), step) is None


def test_a_replica_is_held_while_an_incident_is_open_on_it(
    db_engine: Engine, traffic: Traffic, act: Any
) -> None:
    away, _ = traffic.replicas
    step = take_out(traffic, act)
    incident = uuid.uuid4()
    with db_engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO healing_incidents (id, incident_type, detection_method, root_cause,"
                " healing_strategy, healing_actions, status) VALUES (:id, 'overload', 'test',"
                " CAST(:rc AS jsonb), 'shift-traffic', ARRAY[]::jsonb[], 'validating')"
            ),
            {"id": incident, "rc": f'{{"service": "{away}"}}'},
        )
    try:
        held = verdict_of(readmit(db_engine), step)
        assert held is not None
        assert not held.readmitted
        assert held.reason == f"1 incident(s) open on {away}"
        assert traffic.setting(away) == (0, "ready")

        with db_engine.begin() as conn:
            conn.execute(
                text("UPDATE healing_incidents SET status = 'resolved' WHERE id = :id"),
                {"id": incident},
            )
        readmit_until_back(db_engine, step)
        assert traffic.setting(away) == (1, "ready")
    finally:
        with db_engine.begin() as conn:
            conn.execute(text("DELETE FROM healing_incidents WHERE id = :id"), {"id": incident})


def test_a_replica_still_slow_under_a_real_overload_is_held(
    db_engine: Engine, live_fleet: Fleet, traffic: Traffic, act: Any
) -> None:
    hot, _ = traffic.replicas
    step = take_out(traffic, act)
    live_fleet.inject("overload", hot, concurrency=32)
    try:
        # The load generator is a process of its own: wait until it has the replica queueing,
        # so the pass judges an overloaded replica, not one the load has not reached yet.
        wait_until_slow(live_fleet.url(hot, "/"), QUICK.max_p95_ms)
        held = verdict_of(readmit(db_engine), step)
        assert held is not None
        assert not held.readmitted
        assert held.reason.startswith("still unwell on http://"), held.reason
        assert traffic.setting(hot) == (0, "ready")
        assert records(db_engine, step) == ([], [])
    finally:
        live_fleet.clear(hot)
    back = readmit_until_back(db_engine, step)
    assert "checks in a row passed" in back.reason
    assert traffic.setting(hot) == (1, "ready")


def test_a_step_the_saga_undid_is_never_touched(
    db_engine: Engine, traffic: Traffic, act: Any
) -> None:
    away, _ = traffic.replicas
    step = take_out(traffic, act)
    assert act(step, undo=True).performed
    # Someone sets the weight to 0 by hand afterwards: that is not healing's to put back.
    traffic.runtime.set_weight(traffic.backend, away, 0)
    try:
        assert verdict_of(readmit(db_engine), step) is None
        assert traffic.setting(away) == (0, "ready")
        assert records(db_engine, step) == ([], [])
    finally:
        traffic.runtime.set_weight(traffic.backend, away, 1)


def test_a_replica_its_own_playbook_admitted_back_is_left_alone(
    db_engine: Engine, traffic: Traffic, act: Any
) -> None:
    """Drain-and-restart ends with `admit_traffic`: the pass must not re-admit it a second time,
    and the admission's undo (a later step failed) drains the replica again."""
    away, _ = traffic.replicas
    step = take_out(traffic, act, "drain_traffic")
    assert traffic.setting(away) == (1, "drain")
    incident = step.idempotency_key.split("/")[1]
    admit = step_request(step.workflow_id, incident, 3, "admit_traffic", away)
    try:
        admitted = act(admit)
        assert admitted.performed, admitted.detail
        assert traffic.setting(away) == (1, "ready")
        assert traffic.hits(20)[away] > 0
        assert verdict_of(readmit(db_engine), step) is None
        assert records(db_engine, step) == ([], [])

        undone = act(admit, undo=True)
        assert undone.performed, undone.detail
        assert undone.detail["prior_state_restored"], undone.detail
        assert traffic.setting(away) == (1, "drain")
    finally:
        traffic.runtime.set_state(traffic.backend, away, "ready")


async def test_the_maintenance_workflow_readmits_and_reports(
    client: Client, maintenance_worker: None, db_engine: Engine, traffic: Traffic, act: Any
) -> None:
    away, _ = traffic.replicas
    step = await asyncio.to_thread(take_out, traffic, act)

    deadline = time.monotonic() + 30
    while True:  # as the schedule does: pass after pass until the replica is well
        report: TrafficReadmissionReport = await client.execute_workflow(
            TrafficReadmissionWorkflow.run,
            QUICK,
            id=f"readmission-{uuid.uuid4().hex[:8]}",
            task_queue=TASK_QUEUE_MAINTENANCE,
        )
        back = verdict_of(report, step)
        assert back is not None
        if back.readmitted:
            break
        assert time.monotonic() < deadline, back.reason
        await asyncio.sleep(0.5)
    assert traffic.setting(away) == (1, "ready")
    _, audited = records(db_engine, step)
    assert len(audited) == 1
    assert audited[0][3].startswith("readmission-")  # the run that re-admitted it
