"""Activities that talk to Temporal itself: opening an incident for a confirmed failure."""

from __future__ import annotations

from temporalio import activity
from temporalio.client import Client

from models.healing import IncidentInput, OpenIncidentResult
from nofx.client import start_incident


class IncidentActivities:
    def __init__(self, client: Client) -> None:
        self._client = client

    @activity.defn
    async def open_incident(self, inp: IncidentInput) -> OpenIncidentResult:
        """Start `HealingIncidentWorkflow`, or join the one already running for this failure."""
        handle, started = await start_incident(self._client, inp)
        return OpenIncidentResult(
            workflow_id=handle.id, run_id=handle.result_run_id, joined_existing=not started
        )
