"""Activities that talk to Temporal itself: opening an incident for a confirmed failure."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from temporalio import activity
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from models.healing import IncidentState, OpenIncidentInput, OpenIncidentResult
from nofx.client import incident_workflow_id, start_incident
from nofx.temporal import STATUS

UNHEALED = {IncidentState.FAILED.value, IncidentState.ESCALATED.value}


class IncidentActivities:
    def __init__(self, client: Client) -> None:
        self._client = client

    async def _recently_unhealed(self, workflow_id: str, cooldown: timedelta) -> str | None:
        """Why not to reopen now: the last run for this failure ended unhealed too recently."""
        try:
            described = await self._client.get_workflow_handle(workflow_id).describe()
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                return None
            raise
        if described.status == WorkflowExecutionStatus.RUNNING or described.close_time is None:
            return None
        state = described.typed_search_attributes.get(STATUS)
        until = described.close_time + cooldown
        if state in UNHEALED and until > datetime.now(UTC):
            return (
                f"previous incident ended {state} at {described.close_time:%H:%M:%S};"
                f" cooldown until {until:%H:%M:%S}"
            )
        return None

    @activity.defn
    async def open_incident(self, inp: OpenIncidentInput) -> OpenIncidentResult:
        """Start `HealingIncidentWorkflow`, join the one already running for this failure, or
        hold back while a recent attempt that failed or escalated is cooling down."""
        incident = inp.incident
        workflow_id = incident_workflow_id(incident.service, incident.incident_type)
        reason = await self._recently_unhealed(
            workflow_id, timedelta(seconds=inp.reopen_cooldown_seconds)
        )
        if reason is not None:
            activity.logger.info("incident %s held back: %s", workflow_id, reason)
            return OpenIncidentResult(
                workflow_id=workflow_id,
                run_id=None,
                joined_existing=False,
                suppressed_reason=reason,
            )
        handle, started = await start_incident(self._client, incident)
        return OpenIncidentResult(
            workflow_id=handle.id, run_id=handle.result_run_id, joined_existing=not started
        )
