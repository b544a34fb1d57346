"""Activities that talk to Temporal itself: opening an incident for a confirmed failure."""

from __future__ import annotations

from temporalio import activity
from temporalio.client import Client
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
)

from models.healing import IncidentInput, OpenIncidentResult
from nofx.settings import TASK_QUEUE_HEALING
from nofx.temporal import SERVICE, STATUS, TRACK


def incident_workflow_id(service: str, incident_type: str) -> str:
    """One running incident per service and failure: repeated detections join it."""
    return f"incident-{service}-{incident_type}"


class IncidentActivities:
    def __init__(self, client: Client) -> None:
        self._client = client

    @activity.defn
    async def open_incident(self, inp: IncidentInput) -> OpenIncidentResult:
        """Start `HealingIncidentWorkflow`, or join the one already running for this failure."""
        workflow_id = incident_workflow_id(inp.service, inp.incident_type)
        handle = await self._client.start_workflow(
            "HealingIncidentWorkflow",
            inp,
            id=workflow_id,
            task_queue=TASK_QUEUE_HEALING,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            search_attributes=TypedSearchAttributes(
                [
                    SearchAttributePair(TRACK, "healing"),
                    SearchAttributePair(SERVICE, inp.service),
                    SearchAttributePair(STATUS, "detected"),
                ]
            ),
        )
        # The start response says whether this call started a run or found one running; the SDK
        # keeps it on the handle without a public accessor yet.
        response = getattr(handle, "_start_workflow_response", None)
        joined = response is not None and not response.started
        return OpenIncidentResult(
            workflow_id=workflow_id, run_id=handle.result_run_id, joined_existing=joined
        )
