"""Small waits the end-to-end tests share."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from temporalio.api.enums.v1 import EventType

from models.healing import IncidentState, IncidentStatus
from workflows.healing import HealingIncidentWorkflow

T = TypeVar("T")


async def eventually(check: Callable[[], T], what: str, timeout: float = 30.0) -> T:
    """Call the blocking `check` (in a thread) until it returns something truthy, and return
    it; fail naming `what` and the last value when `timeout` seconds pass first."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        seen = await asyncio.to_thread(check)
        if seen:
            return seen
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not {what} within {timeout:.0f}s (last: {seen!r})")
        await asyncio.sleep(0.2)


async def wait_for_state(
    handle: Any, *states: IncidentState, timeout: float = 120
) -> IncidentStatus:
    """Query the incident until it is in one of `states`; fail with its status otherwise."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        status: IncidentStatus = await handle.query(HealingIncidentWorkflow.status)
        if status.state in states:
            return status
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"incident still {status.state.value}: {status.timeline[-3:]}")
        await asyncio.sleep(0.2)


async def assert_replays(handle: Any) -> None:
    """Replay the run's recorded history through the current code; on a mismatch, keep the
    history next to the test run and show where it diverged."""
    from temporalio.contrib.pydantic import pydantic_data_converter
    from temporalio.worker import Replayer

    from workers import decisions, healing, maintenance

    history = await handle.fetch_history()
    replayer = Replayer(
        workflows=[*healing.WORKFLOWS, *decisions.WORKFLOWS, *maintenance.WORKFLOWS],
        data_converter=pydantic_data_converter,
    )
    result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
    if result.replay_failure is None:
        return
    kept = Path(tempfile.gettempdir()) / f"nondeterministic-{history.workflow_id}.json"
    kept.write_text(history.to_json())
    tail = [f"{e.event_id} {EventType.Name(e.event_type)}" for e in history.events[-40:]]
    raise AssertionError(f"{result.replay_failure}; history kept in {kept}; last events {tail}")
