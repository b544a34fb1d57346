"""Small waits the end-to-end tests share."""

from __future__ import annotations

import asyncio
from typing import Any

from models.healing import IncidentState, IncidentStatus
from workflows.healing import HealingIncidentWorkflow


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
