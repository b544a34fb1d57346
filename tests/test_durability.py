"""Durability: kill -9 the healing worker in the middle of the saga, start it again — the incident
completes and the action happened exactly once: the restart (counted from the pilot's own start
log) and a configuration rollback (counted in config_versions)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from models.healing import IncidentState
from nofx import faults
from nofx.providers.config import ConfigStore
from pilot.fleet import Fleet
from tests.helpers import WorkerProcess, heal_once


@pytest.fixture
def worker_process(
    temporal_env: WorkflowEnvironment, database_url: str, tmp_path: Path
) -> Iterator[WorkerProcess]:
    worker = WorkerProcess(
        temporal_env, database_url, tmp_path / "worker-healing.log", "workers.healing"
    )
    try:
        yield worker
    finally:
        worker.stop()


def logged_statuses(engine: Engine, workflow_id: str, action: str) -> list[str]:
    """The `action_log` rows of one action of a workflow: one per step, however many attempts."""
    with engine.connect() as conn:
        return list(
            conn.execute(
                text("SELECT status FROM action_log WHERE workflow_id = :wf AND action = :a"),
                {"wf": workflow_id, "a": action},
            ).scalars()
        )


async def wait_until(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def test_worker_killed_mid_saga_heals_once(
    client: Client,
    decisions_worker: None,
    worker_process: WorkerProcess,
    live_fleet: Fleet,
    db_engine: Engine,
) -> None:
    service = live_fleet.spec.services[1].name
    starts_before = len(live_fleet.starts(service))
    worker_process.start()
    live_fleet.inject("kill", service)
    handle = await heal_once(
        client, service, "service_down", detail="injected by the durability test"
    )

    # The moment the pilot logs its new start, the restart activity is in flight or just done:
    # kill the worker there, before the workflow can record the step's completion.
    await wait_until(
        lambda: len(live_fleet.starts(service)) > starts_before, 90, "the restart to happen"
    )
    worker_process.kill_9()
    await asyncio.sleep(1.0)
    worker_process.start()

    result = await asyncio.wait_for(handle.result(), timeout=180)
    assert result.state is IncidentState.RESOLVED
    assert len(live_fleet.starts(service)) == starts_before + 1, "restarted more than once"
    with db_engine.connect() as conn:
        row = conn.execute(
            text("SELECT status, resolution_time_ms FROM healing_incidents WHERE id = :id"),
            {"id": result.incident_id},
        ).one()
    assert row.status == "resolved"
    assert row.resolution_time_ms > 0
    logged = logged_statuses(db_engine, handle.id, "restart_service")
    assert len(logged) == 1  # one idempotency key for the step, however many attempts ran it
    # The kill landed while the restart was in flight: its activity needed a second attempt,
    # which found the goal already met and did nothing.
    restart_attempts = [
        event.activity_task_started_event_attributes.attempt
        async for event in handle.fetch_history_events()
        if event.HasField("activity_task_started_event_attributes")
        and event.activity_task_started_event_attributes.attempt > 1
    ]
    if logged == ["skipped"]:
        assert restart_attempts, "a skipped restart must come from a retried attempt"


async def test_worker_killed_mid_rollback_rolls_back_once(
    client: Client,
    decisions_worker: None,
    worker_process: WorkerProcess,
    live_fleet: Fleet,
    db_engine: Engine,
) -> None:
    """The same for a configuration rollback: the retried attempt finds its own rollback in
    place (its step key is in the version's reason) and does not roll back again."""
    service = live_fleet.spec.services[0].name
    faults.inject(live_fleet, db_engine, "bad_config", service, error_rate=0.6)
    worker_process.start()
    handle = await heal_once(client, service, "error_spike_after_config_change")

    def healing_versions() -> list[int]:
        with db_engine.connect() as conn:
            return list(
                conn.execute(
                    text(
                        "SELECT version FROM config_versions WHERE service = :s"
                        " AND applied_by = 'nofx-healing'"
                    ),
                    {"s": service},
                ).scalars()
            )

    await wait_until(lambda: bool(healing_versions()), 90, "the rollback to be recorded")
    worker_process.kill_9()
    await asyncio.sleep(1.0)
    worker_process.start()

    result = await asyncio.wait_for(handle.result(), timeout=180)
    assert result.state is IncidentState.RESOLVED
    assert len(healing_versions()) == 1, "rolled back more than once"
    active = ConfigStore.of(db_engine, service).active()
    assert active is not None
    assert active.config["error_rate"] == 0.0
    logged = logged_statuses(db_engine, handle.id, "rollback_config")
    assert logged == ["succeeded"]  # one row for the step, however many attempts ran it
    faults.clear(live_fleet, db_engine, service)
