"""SIGTERM on a worker mid-activity loses nothing and repeats nothing (workers/common.py).

A real healing worker process restarts a real pilot process for a real incident; SIGTERM lands
while the restart runs. The worker stops taking tasks, lets the restart finish within its grace
period, reports it and exits 0; a new worker process takes the incident on from the next step.
What an operator would check: the service was restarted once, the restart's activity ran once
(one scheduling, attempt 1, completed), and the incident resolved.

An activity that outlasts the grace (a chaos experiment's heartbeating watch) is cancelled when
the grace ends, reported as a retryable `WorkerShutdown` failure and handed on at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import Engine, text
from temporalio.api.enums.v1 import PendingActivityState
from temporalio.client import Client, WorkflowHandle
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

from models.chaos import ChaosExperimentInput, ChaosFault
from models.healing import IncidentState
from nofx.settings import TASK_QUEUE_HEALING, Settings
from pilot.fleet import Fleet
from tests.helpers import ROOT, WorkerProcess, heal_once
from tests.test_durability import worker_process  # noqa: F401 - the fixture, shared
from workflows.chaos import ChaosExperimentWorkflow

GRACE = Settings().worker_shutdown_grace_seconds  # the product's default, which the test runs


async def running_activity(handle: WorkflowHandle[Any, Any], name: str, timeout: float) -> None:
    """Wait until the workflow's activity `name` has been picked up by a worker."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        description = await handle.describe()
        for pending in description.raw_description.pending_activities:
            if (
                pending.activity_type.name == name
                and pending.state == PendingActivityState.PENDING_ACTIVITY_STATE_STARTED
            ):
                return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{name} not running within {timeout:.0f}s")
        await asyncio.sleep(0.05)


async def exit_code(process: subprocess.Popen[bytes], timeout: float) -> tuple[int, float]:
    """The process's exit status and how long it took to exit, or fail after `timeout`."""
    started = time.monotonic()
    while (code := process.poll()) is None:
        if time.monotonic() - started > timeout:
            raise AssertionError(f"the worker did not exit within {timeout:.0f}s of SIGTERM")
        await asyncio.sleep(0.05)
    return code, time.monotonic() - started


ENDINGS = {
    "activity_task_completed_event_attributes": "completed",
    "activity_task_failed_event_attributes": "failed",
    "activity_task_timed_out_event_attributes": "timed_out",
    "activity_task_canceled_event_attributes": "cancelled",
}


async def runs_of(handle: WorkflowHandle[Any, Any], name: str) -> list[tuple[str, int]]:
    """Each time the workflow scheduled activity `name`: how it ended and on which attempt
    ("running" and attempt 0 while it has not ended)."""
    runs: dict[int, list[Any]] = {}
    async for event in handle.fetch_history_events():
        kind = event.WhichOneof("attributes")
        if kind is None:
            continue
        attributes = getattr(event, kind)
        if kind == "activity_task_scheduled_event_attributes":
            if attributes.activity_type.name == name:
                runs[event.event_id] = ["running", 0]
        elif kind == "activity_task_started_event_attributes":
            if attributes.scheduled_event_id in runs:
                runs[attributes.scheduled_event_id][1] = attributes.attempt
        elif kind in ENDINGS and attributes.scheduled_event_id in runs:
            runs[attributes.scheduled_event_id][0] = ENDINGS[kind]
    return [(outcome, attempt) for outcome, attempt in runs.values()]


def logged(log: Path, event: str) -> list[dict[str, Any]]:
    """The worker's JSON log lines of `event`."""
    lines = []
    for line in log.read_text().splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            if entry.get("event") == event:
                lines.append(entry)
    return lines


def restart_statuses(engine: Engine, workflow_id: str) -> list[str]:
    with engine.connect() as conn:
        return list(
            conn.execute(
                text(
                    "SELECT status FROM action_log WHERE workflow_id = :wf"
                    " AND action = 'restart_service'"
                ),
                {"wf": workflow_id},
            ).scalars()
        )


async def test_sigterm_mid_restart_finishes_the_restart_and_repeats_nothing(
    client: Client,
    decisions_worker: None,
    worker_process: WorkerProcess,  # noqa: F811 - the fixture imported above
    live_fleet: Fleet,
    db_engine: Engine,
    tmp_path: Path,
) -> None:
    service = live_fleet.spec.services[1].name
    starts_before = len(live_fleet.starts(service))
    worker_process.start()
    live_fleet.inject("kill", service)
    handle = await heal_once(
        client, service, "service_down", detail="injected by the worker shutdown test"
    )

    await running_activity(handle, "restart_service", timeout=90)
    process = worker_process.process
    assert process is not None
    process.send_signal(signal.SIGTERM)
    code, took = await exit_code(process, timeout=GRACE + 15)

    assert code == 0
    assert took < GRACE, f"exited after {took:.1f}s, past its {GRACE:g}s grace"
    log = tmp_path / "worker-healing.log"
    (stopping,) = logged(log, "worker stopping")
    assert any(s.startswith(f"restart_service of {handle.id}") for s in stopping["in_flight"]), (
        stopping
    )
    ended = [
        e for e in logged(log, "activity ended while stopping") if "restart_service" in e["what"]
    ]
    assert [e["outcome"] for e in ended] == ["completed"]
    # Reported before the process went: the restart is in the history as done, once.
    assert await runs_of(handle, "restart_service") == [("completed", 1)]
    assert len(live_fleet.starts(service)) == starts_before + 1

    worker_process.start()
    result = await asyncio.wait_for(handle.result(), timeout=120)

    assert result.state is IncidentState.RESOLVED
    assert await runs_of(handle, "restart_service") == [("completed", 1)]
    assert len(live_fleet.starts(service)) == starts_before + 1, "restarted more than once"
    assert restart_statuses(db_engine, handle.id) == ["succeeded"]


async def test_sigterm_cancels_what_outlasts_the_grace_and_hands_it_on(
    client: Client,
    live_fleet: Fleet,
    db_engine: Engine,
    temporal_env: WorkflowEnvironment,
    database_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A chaos experiment's watch for the incident heartbeats for minutes (no monitor runs here,
    so none opens): the worker waits its grace, cancels the watch, reports it and exits 0; the
    watch is up for its next attempt at once (not after its heartbeat timeout), and the fault
    the experiment injected before is not injected again."""
    grace = 2.0
    monkeypatch.setenv("NOFX_WORKER_SHUTDOWN_GRACE_SECONDS", str(grace))
    log = tmp_path / "worker-healing-short-grace.log"
    worker = WorkerProcess(temporal_env, database_url, log, "workers.healing")
    service = live_fleet.spec.services[1].name
    experiment = f"shutdown-{uuid.uuid4().hex[:8]}"
    worker.start()
    try:
        handle = await client.start_workflow(
            ChaosExperimentWorkflow.run,
            ChaosExperimentInput(
                experiment_id=experiment,
                suite="worker-shutdown",
                service=service,
                fault=ChaosFault(kind="kill"),
            ),
            id=f"chaos-{experiment}",
            task_queue=TASK_QUEUE_HEALING,
        )
        await running_activity(handle, "watch_incident", timeout=90)
        assert worker.process is not None
        worker.process.send_signal(signal.SIGTERM)
        code, took = await exit_code(worker.process, timeout=grace + 20)

        assert code == 0
        assert grace <= took < grace + 10, f"exited after {took:.1f}s with a {grace:g}s grace"
        (stopping,) = logged(log, "worker stopping")
        assert any(s.startswith(f"watch_incident of {handle.id}") for s in stopping["in_flight"]), (
            stopping
        )
        ended = [
            e["outcome"]
            for e in logged(log, "activity ended while stopping")
            if e["what"].startswith(f"watch_incident of {handle.id}")
        ]
        assert ended == ["cancelled"]
        description = await handle.describe()
        (pending,) = description.raw_description.pending_activities  # the watch, nothing else
        assert pending.activity_type.name == "watch_incident"
        assert pending.attempt == 2, pending
        assert pending.last_failure.application_failure_info.type == "WorkerShutdown"
        assert await runs_of(handle, "inject_fault") == [("completed", 1)]
        with db_engine.connect() as conn:
            injections = conn.execute(
                text("SELECT count(*) FROM fault_injections WHERE injected_by = :a"),
                {"a": f"chaos:{experiment}"},
            ).scalar_one()
        assert injections == 1
    finally:
        worker.stop()
        with contextlib.suppress(RPCError):
            await client.get_workflow_handle(f"chaos-{experiment}").terminate("test over")


def _seconds(duration: str) -> float:
    """A Compose duration ("1m30s", "60s") in seconds."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|us|m|s)", duration)
    assert parts, duration
    assert "".join(n + u for n, u in parts) == duration, duration
    return sum(float(n) * units[u] for n, u in parts)


def test_compose_waits_longer_for_a_worker_than_its_grace() -> None:
    """Docker kills a container `stop_grace_period` after SIGTERM: a shorter period would cut
    the worker's grace, and the activities it waits for, short."""
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    workers = {name: s for name, s in services.items() if name.startswith("worker-")}
    assert workers
    for name, worker in workers.items():
        env = worker.get("environment", {})
        grace = float(env.get("NOFX_WORKER_SHUTDOWN_GRACE_SECONDS", GRACE))
        assert _seconds(str(worker["stop_grace_period"])) > grace + 5, name
