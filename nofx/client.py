"""The typed Python client: the same operations as the CLI, for SRE tooling and notebooks.

async with NofxClient.connect() as nofx:
    handle = await nofx.open_incident(IncidentInput(...))
    print(await nofx.incident_status(handle.id))
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

from temporalio.client import Client, WorkflowHandle
from temporalio.common import SearchAttributePair, TypedSearchAttributes, WorkflowIDConflictPolicy

from models.common import AbortRequest, ApprovalRequest
from models.detection import DetectorModelReport, TrainDetectorInput
from models.healing import IncidentInput, IncidentResult, IncidentStatus
from nofx.settings import TASK_QUEUE_HEALING, TASK_QUEUE_MAINTENANCE, Settings, get_settings
from nofx.temporal import SERVICE, STATUS, TRACK, connect


def training_workflow_id(started: datetime) -> str:
    return f"detector-training-{started:%Y%m%dT%H%M%S}"


def incident_workflow_id(service: str, incident_type: str) -> str:
    """One running incident per service and failure: repeated detections join it."""
    return f"incident-{service}-{incident_type}"


async def start_incident(
    client: Client, incident: IncidentInput
) -> tuple[WorkflowHandle[Any, Any], bool]:
    """Start `HealingIncidentWorkflow`, or join the run already open for this failure.

    Returns the handle and whether this call started a new run (False: it joined one).
    """
    handle = await client.start_workflow(
        "HealingIncidentWorkflow",
        incident,
        id=incident_workflow_id(incident.service, incident.incident_type),
        task_queue=TASK_QUEUE_HEALING,
        result_type=IncidentResult,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        search_attributes=TypedSearchAttributes(
            [
                SearchAttributePair(TRACK, "healing"),
                SearchAttributePair(SERVICE, incident.service),
                SearchAttributePair(STATUS, "detected"),
            ]
        ),
    )
    # The start response says whether a run was started or found running; the SDK keeps it on
    # the handle without a public accessor yet.
    response = getattr(handle, "_start_workflow_response", None)
    return handle, response is None or bool(response.started)


class NofxClient:
    """Operations on NOFX Autonomy's workflows, with pydantic models in and out."""

    def __init__(self, client: Client) -> None:
        self.temporal = client

    @classmethod
    @asynccontextmanager
    async def connect(cls, settings: Settings | None = None) -> AsyncIterator[NofxClient]:
        client = await connect(settings or get_settings())
        try:
            yield cls(client)
        finally:
            del client  # see nofx.temporal.temporal_client: avoid the exit-time crash

    async def open_incident(self, incident: IncidentInput) -> WorkflowHandle[Any, Any]:
        """Start healing an incident, or join the one running for the same service and type."""
        handle, _ = await start_incident(self.temporal, incident)
        return handle

    async def incident_status(self, workflow_id: str) -> IncidentStatus:
        handle = self.temporal.get_workflow_handle(workflow_id)
        status: IncidentStatus = await handle.query("status", result_type=IncidentStatus)
        return status

    async def abort_incident(self, workflow_id: str, request: AbortRequest) -> None:
        """Stop healing and roll back what was done."""
        await self.temporal.get_workflow_handle(workflow_id).signal("abort", request)

    async def approve_incident(self, workflow_id: str, request: ApprovalRequest) -> None:
        await self.temporal.get_workflow_handle(workflow_id).signal("approve", request)

    async def train_detector(self, request: TrainDetectorInput) -> DetectorModelReport:
        """Train the learned anomaly detector now and wait for its report (minutes at most)."""
        report: DetectorModelReport = await self.temporal.execute_workflow(
            "DetectorTrainingWorkflow",
            request,
            id=training_workflow_id(datetime.now(UTC)),
            task_queue=TASK_QUEUE_MAINTENANCE,
            result_type=DetectorModelReport,
            search_attributes=TypedSearchAttributes([SearchAttributePair(TRACK, "maintenance")]),
        )
        return report
