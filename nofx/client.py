"""The typed Python client: the same operations as the CLI, for SRE tooling and notebooks.

async with NofxClient.connect() as nofx:
    handle = await nofx.open_incident(IncidentInput(...))
    print(await nofx.incident_status(handle.id))
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy.engine import Engine
from temporalio.client import Client, WorkflowHandle
from temporalio.common import SearchAttributePair, TypedSearchAttributes, WorkflowIDConflictPolicy

from models.chaos import ChaosResult, ChaosSuiteInput, ChaosSuiteProgress
from models.common import AbortRequest, ApprovalRequest
from models.decisions import (
    Approve,
    DecideRequest,
    DecisionRecord,
    ExperimentReport,
    ExperimentSpec,
    ModelInfo,
    Override,
    Reject,
    SimulateRequest,
    Simulation,
    SuccessModelReport,
    TrainRequest,
    VerdictAck,
)
from models.detection import DetectorModelReport, TrainDetectorInput
from models.healing import IncidentInput, IncidentResult, IncidentStatus
from models.maintenance import (
    CancelJob,
    JobAck,
    JobStatusView,
    MaintenanceJobInput,
    PredictionPassInput,
    Reschedule,
    RunNow,
    ValidationInput,
    job_workflow_id,
)
from models.operations import (
    AutonomyMetrics,
    ControlsView,
    DecisionSummary,
    FreezeRequest,
    FreezeView,
    HealingMetrics,
    HealingSimulation,
    IncidentDetail,
    IncidentSummary,
    KillSwitch,
    ModeChange,
    PatternSummary,
    PlaybookChanges,
    PlaybookView,
    ScheduleView,
)
from models.optimization import ApplyInput, ApplyStatusView, apply_workflow_id
from nofx.db import make_engine
from nofx.healing import operations as ops
from nofx.operations.autonomous import AutonomousOperations
from nofx.operations.controls import ControlsOperations
from nofx.operations.healing import HealingOperations
from nofx.operations.oversight import OversightOperations
from nofx.settings import TASK_QUEUE_HEALING, TASK_QUEUE_MAINTENANCE, Settings, get_settings
from nofx.temporal import SERVICE, STATUS, TRACK, StandingJob, connect, ensure_schedules

T = TypeVar("T")
Row = dict[str, Any]


def local_database_url(settings: Settings) -> str | None:
    """The embedded database of a local stack (`nofx up`), if one runs."""
    from nofx.stack import Stack  # the stack imports this module's callers: import late

    url = Stack(settings).recorded().get("database_url")
    return str(url) if url else None


def training_workflow_id(started: datetime) -> str:
    return f"detector-training-{started:%Y%m%dT%H%M%S}"


def incident_workflow_id(service: str, incident_type: str) -> str:
    """One running incident per service and failure: repeated detections join it."""
    return f"incident-{service}-{incident_type}"


async def _start_or_join(
    client: Client,
    workflow: str,
    arg: Any,
    *,
    workflow_id: str,
    task_queue: str,
    result_type: type,
    track: str,
    service: str,
    status: str,
) -> tuple[WorkflowHandle[Any, Any], bool]:
    """Start `workflow` as `workflow_id`, or join the run already open under it (USE_EXISTING).

    Returns the handle and whether this call started a new run (False: it joined one).
    """
    handle = await client.start_workflow(
        workflow,
        arg,
        id=workflow_id,
        task_queue=task_queue,
        result_type=result_type,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        search_attributes=TypedSearchAttributes(
            [
                SearchAttributePair(TRACK, track),
                SearchAttributePair(SERVICE, service),
                SearchAttributePair(STATUS, status),
            ]
        ),
    )
    # The start response says whether a run was started or found running; the SDK keeps it on
    # the handle without a public accessor yet.
    response = getattr(handle, "_start_workflow_response", None)
    return handle, response is None or bool(response.started)


async def start_incident(
    client: Client, incident: IncidentInput
) -> tuple[WorkflowHandle[Any, Any], bool]:
    """Start `HealingIncidentWorkflow`, or join the run already open for this failure."""
    return await _start_or_join(
        client,
        "HealingIncidentWorkflow",
        incident,
        workflow_id=incident_workflow_id(incident.service, incident.incident_type),
        task_queue=TASK_QUEUE_HEALING,
        result_type=IncidentResult,
        track="healing",
        service=incident.service,
        status="detected",
    )


async def start_maintenance_job(
    client: Client, job: MaintenanceJobInput
) -> tuple[WorkflowHandle[Any, Any], bool]:
    """Start `MaintenanceJobWorkflow` `maintenance-{component}-{issue}`, or join the job already
    open for it; True when this call started it."""
    return await _start_or_join(
        client,
        "MaintenanceJobWorkflow",
        job,
        workflow_id=job_workflow_id(job.component, job.issue),
        task_queue=TASK_QUEUE_MAINTENANCE,
        result_type=JobStatusView,
        track="maintenance",
        service=job.component,
        status="planning",
    )


async def start_optimization(
    client: Client, inp: ApplyInput, service: str
) -> tuple[WorkflowHandle[Any, Any], bool]:
    """Start `OptimizationWorkflow` `optimize-<recommendation id>`, or join the one applying it."""
    return await _start_or_join(
        client,
        "OptimizationWorkflow",
        inp,
        workflow_id=apply_workflow_id(str(inp.recommendation_id)),
        task_queue=TASK_QUEUE_MAINTENANCE,
        result_type=ApplyStatusView,
        track="optimization",
        service=service,
        status="claimed",
    )


FORECASTING_SCHEDULE_ID = "predictive-forecast-pass"
PREDICTION_VALIDATION_SCHEDULE_ID = "predictive-validation"


def predictive_jobs(every: timedelta) -> list[StandingJob]:
    """Track C's Schedules: the forecasting pass every `every`, validation daily."""
    return [
        StandingJob(
            FORECASTING_SCHEDULE_ID,
            "PredictionPassWorkflow",
            [PredictionPassInput()],
            every,
            TASK_QUEUE_MAINTENANCE,
        ),
        StandingJob(
            PREDICTION_VALIDATION_SCHEDULE_ID,
            "PredictionValidationWorkflow",
            [ValidationInput()],
            timedelta(days=1),
            TASK_QUEUE_MAINTENANCE,
        ),
    ]


class NofxClient:
    """Operations on NOFX Autonomy's workflows and records, with pydantic models in and out.

    The healing operations (`healing_*`, playbooks) read and write the platform database; they
    need `engine` (given by `connect` when NOFX_DATABASE_URL is set or a local stack runs).
    """

    def __init__(self, client: Client, engine: Engine | None = None) -> None:
        self.temporal = client
        self.engine = engine

    @classmethod
    @asynccontextmanager
    async def connect(cls, settings: Settings | None = None) -> AsyncIterator[NofxClient]:
        settings = settings or get_settings()
        client = await connect(settings)
        url = settings.database_url or local_database_url(settings)
        engine = make_engine(url) if url else None
        try:
            yield cls(client, engine)
        finally:
            if engine is not None:
                engine.dispose()
            del client  # see nofx.temporal.temporal_client: avoid the exit-time crash

    # ---- Track C: maintenance jobs -----------------------------------------------------------

    async def start_maintenance_job(self, job: MaintenanceJobInput) -> JobStatusView:
        """Start (or join) the job of `job.component` and `job.issue`; its status now."""
        handle, _ = await start_maintenance_job(self.temporal, job)
        view: JobStatusView = await handle.query("status", result_type=JobStatusView)
        return view

    async def maintenance_job(self, workflow_id: str) -> JobStatusView:
        view: JobStatusView = await self.temporal.get_workflow_handle(workflow_id).query(
            "status", result_type=JobStatusView
        )
        return view

    async def reschedule_job(self, workflow_id: str, request: Reschedule) -> JobAck:
        """Move a waiting job (refused, before history, when it is past waiting or `at` is in
        the past; refused with the reason when a blackout, freeze or budget forbids `at`)."""
        return await self._job_update(workflow_id, "reschedule_job", request)

    async def run_job_now(self, workflow_id: str, request: RunNow) -> JobAck:
        return await self._job_update(workflow_id, "run_job_now", request)

    async def cancel_job(self, workflow_id: str, request: CancelJob) -> JobAck:
        """Cancel a job: a waiting one ends without acting, a running one rolls back."""
        return await self._job_update(workflow_id, "cancel_job", request)

    async def _job_update(self, workflow_id: str, update: str, request: Any) -> JobAck:
        ack: JobAck = await self.temporal.get_workflow_handle(workflow_id).execute_update(
            update, request, result_type=JobAck
        )
        return ack

    # ---- Track C: applying optimisation recommendations ---------------------------------------

    async def apply_recommendation(self, inp: ApplyInput, service: str = "") -> ApplyStatusView:
        """Apply a recommendation as a decision (OptimizationWorkflow); its status now."""
        handle, _ = await start_optimization(self.temporal, inp, service)
        view: ApplyStatusView = await handle.query("status", result_type=ApplyStatusView)
        return view

    async def optimization(self, recommendation_id: str) -> ApplyStatusView:
        handle = self.temporal.get_workflow_handle(apply_workflow_id(recommendation_id))
        view: ApplyStatusView = await handle.query("status", result_type=ApplyStatusView)
        return view

    async def abort_optimization(self, recommendation_id: str, request: AbortRequest) -> None:
        """Stop applying: before the change it ends declined, after it the change rolls back."""
        handle = self.temporal.get_workflow_handle(apply_workflow_id(recommendation_id))
        await handle.signal("abort", request)

    async def install_predictive_schedules(self, every: timedelta) -> list[str]:
        """The forecasting pass every `every` and daily validation (Schedules that exist
        already are left as they are); the ids created."""
        return await ensure_schedules(self.temporal, predictive_jobs(every))

    # ---- the decision engine (same names as `nofx autonomous ...`) ------------------------

    def _decisions(self) -> AutonomousOperations:
        if self.engine is None:
            raise RuntimeError(
                "no platform database: set NOFX_DATABASE_URL (or run `nofx up`) for decision"
                " operations"
            )
        return AutonomousOperations(self.temporal, self.engine)

    async def decide(self, request: DecideRequest) -> DecisionRecord:
        """Ask the engine about a service's problem; returns once it has decided."""
        return await self._decisions().decide(request)

    async def simulate(self, request: SimulateRequest) -> Simulation:
        """What the engine would decide now, and why; nothing is recorded or run."""
        return await self._decisions().simulate(request)

    async def explain(self, decision: str) -> DecisionRecord:
        """A decision by its id or its workflow's id, with its explanation."""
        return await self._decisions().explain(decision)

    async def pending(self) -> list[DecisionRecord]:
        """Decisions waiting for a person."""
        return await self._decisions().pending()

    async def approve(self, decision: str, answer: Approve) -> VerdictAck:
        return await self._decisions().approve(decision, answer)

    async def reject(self, decision: str, answer: Reject) -> VerdictAck:
        return await self._decisions().reject(decision, answer)

    async def override(self, decision: str, answer: Override) -> VerdictAck:
        """Run `answer.action` instead of the engine's choice (recorded as an override)."""
        return await self._decisions().override(decision, answer)

    async def train(
        self, request: TrainRequest, on_progress: Callable[[str], None] | None = None
    ) -> SuccessModelReport:
        """Train the success model now and wait for its report (promoted or kept, and why)."""
        return await self._decisions().train(request, on_progress)

    async def models(self, limit: int = 20) -> list[ModelInfo]:
        """The success models, newest first, the champion marked active."""
        return await self._decisions().models(limit)

    async def promote_model(self, model_id: str, *, actor: str, reason: str = "") -> ModelInfo:
        return await self._decisions().promote(model_id, actor=actor, reason=reason)

    async def rollback_model(self, *, actor: str, reason: str = "") -> ModelInfo:
        """Put back the previous champion."""
        return await self._decisions().rollback(actor=actor, reason=reason)

    async def experiment_start(self, spec: ExperimentSpec, *, actor: str) -> ExperimentSpec:
        """Start an A/B test of decision strategies."""
        return await self._decisions().experiment_start(spec, actor=actor)

    async def experiment_report(self, name: str) -> ExperimentReport:
        return await self._decisions().experiment_report(name)

    async def experiment_stop(self, name: str, *, actor: str, reason: str) -> ExperimentReport:
        return await self._decisions().experiment_stop(name, actor=actor, reason=reason)

    # ---- healing operations (same names as `nofx healing ...`) ----------------------------

    def _healing(self) -> HealingOperations:
        if self.engine is None:
            raise RuntimeError(
                "no platform database: set NOFX_DATABASE_URL (or run `nofx up`) for healing"
                " operations"
            )
        return HealingOperations(self.engine)

    async def healing_status(
        self, service: str | None = None, limit: int = 20
    ) -> list[IncidentSummary]:
        return await self._healing().status(service, limit)

    async def healing_patterns(self) -> list[PatternSummary]:
        return await self._healing().patterns()

    async def healing_playbooks(self, incident_type: str | None = None) -> list[PlaybookView]:
        return await self._healing().playbooks(incident_type)

    async def healing_playbook(self, name: str) -> PlaybookView:
        return await self._healing().playbook(name)

    async def create_playbook(self, spec: ops.PlaybookSpec) -> PlaybookView:
        return await self._healing().create_playbook(spec)

    async def update_playbook(
        self, name: str, changes: PlaybookChanges | dict[str, Any]
    ) -> PlaybookView:
        return await self._healing().update_playbook(name, changes)

    async def disable_playbook(self, name: str) -> PlaybookView:
        return await self._healing().set_enabled(name, False)

    async def enable_playbook(self, name: str) -> PlaybookView:
        return await self._healing().set_enabled(name, True)

    async def healing_simulate(self, playbook: str, service: str) -> HealingSimulation:
        return await self._healing().simulate(playbook, service)

    async def healing_metrics(self, since: timedelta = timedelta(hours=24)) -> HealingMetrics:
        return await self._healing().metrics(since)

    # ---- oversight and controls (what the dashboard shows; changing controls is an admin's) --

    def _database(self) -> Engine:
        if self.engine is None:
            raise RuntimeError(
                "no platform database: set NOFX_DATABASE_URL (or run `nofx up`) for oversight"
                " and controls"
            )
        return self.engine

    def _oversight(self) -> OversightOperations:
        return OversightOperations(self.temporal, self._database())

    async def incident(self, incident_id: str) -> IncidentDetail:
        """An incident with its timeline, actions, waiting decision and rollback plan."""
        return await self._oversight().incident(incident_id)

    async def decisions(
        self, *, limit: int = 50, status: str | None = None, service: str | None = None
    ) -> list[DecisionSummary]:
        return await self._oversight().decisions(limit=limit, status=status, subject=service)

    async def schedules(self) -> list[ScheduleView]:
        return await self._oversight().schedules()

    async def autonomy_metrics(self, hours: float = 24.0) -> AutonomyMetrics:
        return await self._oversight().autonomy(hours)

    async def controls(self) -> ControlsView:
        return await ControlsOperations(self._database()).show()

    async def kill_switch(self, change: KillSwitch, *, actor: str) -> ControlsView:
        """Pause (or resume) every automated action."""
        return await ControlsOperations(self._database()).kill_switch(change, actor=actor)

    async def set_guardrails(self, changes: dict[str, Any]) -> ControlsView:
        return await ControlsOperations(self._database()).set_policy(changes)

    async def add_freeze(self, request: FreezeRequest, *, actor: str) -> FreezeView:
        return await ControlsOperations(self._database()).add_freeze(request, actor=actor)

    async def set_mode(self, change: ModeChange) -> ControlsView:
        return await ControlsOperations(self._database()).set_mode(change)

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

    async def run_chaos_suite(
        self,
        suite: ChaosSuiteInput,
        on_result: Callable[[ChaosResult], None] | None = None,
        poll_seconds: float = 2.0,
    ) -> ChaosSuiteProgress:
        """Run a chaos suite (ChaosSuiteWorkflow) and wait for it; `on_result` sees each
        experiment as it finishes."""
        handle = await self.temporal.start_workflow(
            "ChaosSuiteWorkflow",
            suite,
            id=f"chaos-{suite.suite}-{datetime.now(UTC):%Y%m%dT%H%M%S}",
            task_queue=TASK_QUEUE_HEALING,
            result_type=ChaosSuiteProgress,
            search_attributes=TypedSearchAttributes([SearchAttributePair(TRACK, "healing")]),
        )
        reported = 0
        result_task = asyncio.ensure_future(handle.result())
        while True:
            done, _ = await asyncio.wait({result_task}, timeout=poll_seconds)
            if done:
                progress: ChaosSuiteProgress = result_task.result()
            else:
                progress = await handle.query("progress", result_type=ChaosSuiteProgress)
            if on_result is not None and progress is not None:
                for result in progress.results[reported:]:
                    on_result(result)
                reported = len(progress.results)
            if done:
                return progress

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
