"""Contracts of the maintenance job (Track C): what it maintains and before when, the window it
chose and why, and what a person may ask of it while it waits (reschedule, run now, cancel).

Every signal takes one model, so the Web UI's single JSON payload works:
`{"requested_by": "alice", "at": "2026-12-03T02:00:00Z", "reason": "after the release"}`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import AwareDatetime, Field

from models.common import Contract
from models.decisions import Candidate

JobStatus = Literal[
    "planning",
    "deciding",
    "scheduled",
    "running",
    "awaiting_approval",
    "verifying",
    "completed",
    "rolled_back",
    "cancelled",
    "declined",
    "failed",
]
TERMINAL: frozenset[str] = frozenset(
    {"completed", "rolled_back", "cancelled", "declined", "failed"}
)


class MaintenanceJobInput(Contract):
    """Start `maintenance-{component}-{issue}`: maintain `component` before `deadline`."""

    component: str = Field(min_length=1, description="the service maintained")
    issue: str = Field(min_length=1, description="the predicted issue, e.g. oom, disk_full")
    deadline: AwareDatetime = Field(description="the earliest the failure is predicted to come")
    prediction_id: str | None = None
    metric: str | None = Field(default=None, description="the metric running out")
    requested_by: str = "nofx-predictive"
    duration_minutes: float | None = Field(
        default=None, gt=0, le=24 * 60, description="default: the service's maintenance policy"
    )
    candidates: list[Candidate] | None = Field(
        default=None,
        description="the options to decide among; default: the playbooks of maintenance:<issue>",
    )
    recurring: str | None = Field(
        default=None,
        description="why this is the same failure back after maintenance averted it: the"
        " decision then waits for a person",
    )


class WindowRequest(Contract):
    """Plan a window for a job: the deadline and, when a person moved it, the start they want."""

    component: str
    issue: str
    deadline: datetime
    duration_minutes: float | None = None
    workflow_id: str
    requested_start: datetime | None = None
    now: datetime


class WindowPlan(Contract):
    """The window chosen and why; refusals counted by reason ("why not earlier?")."""

    start: datetime | None
    end: datetime | None
    duration_minutes: float
    expected_load: float | None = None
    load_metric: str | None = None
    load_rank: float | None = Field(
        default=None, description="0 = the quietest allowed start, 1 = the busiest"
    )
    urgent: bool = False
    reason: str
    refused: dict[str, int] = Field(default_factory=dict)
    candidates: int = 0


class ScheduleRecord(Contract):
    """Write the job's `maintenance_schedules` row as it is now (idempotent on its id)."""

    schedule_id: str
    workflow_id: str
    component: str
    issue: str
    prediction_id: str | None = None
    status: JobStatus
    scheduled_at: datetime | None = None
    deadline: datetime
    maintenance_type: str | None = None
    decision_id: str | None = None
    window: WindowPlan | None = None
    detail: str = ""
    completed: bool = False


class Reschedule(Contract):
    """Move the job: `{"requested_by": "alice", "at": "…Z", "reason": "after the release"}`."""

    requested_by: str = Field(min_length=1)
    at: AwareDatetime
    reason: str = Field(min_length=1)


class RunNow(Contract):
    requested_by: str = Field(min_length=1)
    reason: str = Field(min_length=1)


class CancelJob(Contract):
    requested_by: str = Field(min_length=1)
    reason: str = Field(min_length=1)


class PredictionChanged(Contract):
    """From the prediction pass: the job's prediction moved (or was withdrawn)."""

    prediction_id: str | None = None
    status: Literal["open", "withdrawn"] = "open"
    deadline: AwareDatetime | None = Field(
        default=None, description="the new earliest failure time"
    )
    probability: float | None = Field(default=None, ge=0, le=1)


class JobAck(Contract):
    """What an update did: the job's status and start after it."""

    status: JobStatus
    scheduled_at: datetime | None
    message: str


class OutcomeCheck(Contract):
    """After the maintenance: did the risk go (the metric fell), and no failure came?"""

    component: str
    issue: str
    metric: str | None
    prediction_id: str | None
    started_at: datetime
    before: float | None = Field(default=None, description="the metric just before the work")


class Captured(Contract):
    value: float | None
    detail: str


class OutcomeVerdict(Contract):
    averted: bool
    before: float | None = None
    after: float | None = None
    limit: float | None = None
    incidents: int = 0
    detail: str


class TimelineNote(Contract):
    at: AwareDatetime
    status: JobStatus
    message: str


class JobStatusView(Contract):
    """The `status` query: enough to see from the Web UI what the job will do and when."""

    workflow_id: str
    component: str
    issue: str
    status: JobStatus
    deadline: datetime
    scheduled_at: datetime | None
    window: WindowPlan | None
    chosen: str | None
    decision_id: str | None
    rollback_plan: list[str]
    timeline: list[TimelineNote]
    outcome: OutcomeVerdict | None = None
    error: str | None = None


def job_workflow_id(component: str, issue: str) -> str:
    return f"maintenance-{component}-{issue}"


class ForecastErrorRow(Contract):
    service: str
    metric: str
    origin: datetime
    horizon_steps: int
    points: int
    mae: float
    naive_mae: float
    ratio_to_naive: float | None
    model: str


class FailureTrainInput(Contract):
    hours: float = Field(default=7 * 24.0, gt=0, le=90 * 24.0, description="history to learn from")
    holdout_share: float = Field(default=0.3, gt=0, lt=1)


class FailureModelReport(Contract):
    """What training the failure classifier came to (a quiet history is no failure)."""

    model_id: str | None = None
    version: str | None = None
    active: bool = False
    verdict: str
    metrics: dict[str, Any] = Field(default_factory=dict)
    training: dict[str, Any] = Field(default_factory=dict)


class ValidationReport(Contract):
    """`nofx predictive validate`: stored predictions against what happened."""

    since: datetime
    until: datetime
    labelled: dict[str, int] = Field(description="predictions settled by this run, by label")
    predictions: int
    by_status: dict[str, int]
    failures: int = Field(description="exhaustion incidents of the period")
    failures_predicted: int = Field(description="of those, warned of before they started")
    precision: float | None = Field(description="(happened + averted) / settled predictions")
    precision_without_averted: float | None = Field(
        description="happened / (happened + did_not_happen): averted ones left out"
    )
    recall: float | None
    lead_minutes_median: float | None
    eta_error_hours_median: float | None
    forecast_error: list[ForecastErrorRow] = Field(default_factory=list)
    classifier: FailureModelReport | None = Field(
        default=None, description="the failure classifier trained after validating, when it ran"
    )


class ValidationInput(Contract):
    days: float = Field(default=30.0, gt=0, le=365)


class PredictionPassInput(Contract):
    services: list[str] | None = None
    step_seconds: float = Field(default=300.0, ge=1.0, le=86_400.0, description="forecast grid")
    horizon_steps: int = Field(default=288, ge=1, le=4032)
    history_hours: float = Field(default=168.0, gt=0, le=90 * 24.0)


class PredictionChange(Contract):
    service: str
    metric: str
    issue: str
    change: Literal["opened", "updated", "withdrawn", "quiet"]
    prediction_id: str | None = None
    deadline: datetime | None = None
    probability: float | None = None
    recurring: str | None = Field(
        default=None, description="an opening that is the same failure back after an aversion"
    )


class PredictionPassReport(Contract):
    changes: list[PredictionChange] = Field(default_factory=list)
    jobs_started: list[str] = Field(default_factory=list)
    jobs_moved: list[str] = Field(default_factory=list)
