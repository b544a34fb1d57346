"""Contracts of Track B (self-healing): probes, incidents, playbooks, actions and their outcomes."""

from __future__ import annotations

import json
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import ConfigDict, Field, ValidationError, model_validator

from models.actions import ACTION_PARAMS, ActionName
from models.common import Contract
from models.detection import Diagnosis, Pattern

# An incident's type is the problem pattern its evidence matched (see models.detection.PATTERNS);
# a health probe alone can only tell these two apart.
IncidentType = Pattern
ProbeFailure = Literal["service_down", "service_hung"]


class IncidentState(StrEnum):
    """Where an incident is; also the `NofxStatus` search attribute the Web UI filters on."""

    DETECTED = "detected"
    DIAGNOSING = "diagnosing"
    AWAITING_APPROVAL = "awaiting_approval"
    HEALING = "healing"
    VALIDATING = "validating"
    RESOLVED = "resolved"
    ROLLING_BACK = "rolling_back"
    FAILED = "failed"
    ESCALATED = "escalated"  # nothing automatic applies: handed to a person with the diagnosis


TERMINAL_STATES = frozenset({IncidentState.RESOLVED, IncidentState.FAILED, IncidentState.ESCALATED})


class FleetTarget(Contract):
    """A service of the inventory the monitor probes, and how its provider reaches it."""

    service: str
    endpoint: str = Field(description="base URL, e.g. http://127.0.0.1:18101")
    provider: str = "supervisor"
    metadata: dict[str, Any] = Field(default_factory=dict)


class ProbeFleetInput(Contract):
    timeout_seconds: float = Field(default=1.0, gt=0, le=30)


class ProbeResult(Contract):
    """One health probe: healthy, or which failure it looks like and why."""

    service: str
    healthy: bool
    failure: ProbeFailure | None = None
    detail: str = ""
    latency_ms: float | None = None
    process_state: str | None = None
    observed_at: datetime


class ProbeFleetResult(Contract):
    probes: list[ProbeResult]


class DiagnoseFleetInput(Contract):
    at: datetime
    probes: list[ProbeResult] = Field(default_factory=list)


class MonitorInput(Contract):
    """The fleet monitor's loop settings, carried across continue-as-new."""

    interval_seconds: float = Field(default=2.0, gt=0, le=300)
    probe_timeout_seconds: float = Field(default=1.0, gt=0, le=30)
    confirm_hung_after: int = Field(default=2, ge=1, le=20, description="failed probes in a row")
    iterations_before_continue_as_new: int = Field(default=200, ge=1)
    failure_streaks: dict[str, int] = Field(default_factory=dict)
    reopen_cooldown_seconds: float = Field(
        default=300, ge=0, description="after an incident failed or escalated, wait this long"
    )
    confirm_after: int = Field(
        default=2, ge=1, le=20, description="ticks in a row an anomaly pattern must hold"
    )
    confirm_generic_after: int = Field(
        default=6,
        ge=1,
        le=60,
        description="ticks for latency_regression, the pattern left when nothing more specific"
        " matches: the specific signals of overload or pool exhaustion can lag latency by seconds",
    )


class IncidentInput(Contract):
    """What the detector saw; starts `HealingIncidentWorkflow`."""

    service: str = Field(min_length=1)
    incident_type: IncidentType
    detection_method: str = "health_probe"
    detected_at: datetime
    evidence: dict[str, Any] = Field(default_factory=dict)
    diagnosis: Diagnosis | None = Field(
        default=None, description="matched pattern and ranked root causes, when detection ran"
    )
    requested_by: str = "nofx-monitor"


class OpenIncidentInput(Contract):
    """The monitor asks to open an incident; a recent unhealed one for the same failure holds it
    back for a while, so a failure automation cannot fix is not retried every tick."""

    incident: IncidentInput
    reopen_cooldown_seconds: float = Field(default=300, ge=0)
    settle_seconds: float = Field(
        default=20,
        ge=0,
        description="after a resolution, how long a signal with no onset (a lagging rate or"
        " gauge) is taken for the healed episode's tail",
    )


class OpenIncidentResult(Contract):
    workflow_id: str
    run_id: str | None
    joined_existing: bool
    suppressed_reason: str | None = None
    replaced_stuck_runs: list[str] = Field(
        default_factory=list,
        description="runs (`workflow_id/run_id`) whose workflow task kept failing, so they could"
        " never progress: terminated before this incident was opened, never joined",
    )


def _params_by_action(schema: dict[str, Any]) -> None:
    """The JSON schema says which params each action takes, as the validator below checks: one
    complete variant per action, so API clients and fuzzers see the real contract."""
    shared = schema.pop("properties")
    for key in ("type", "required", "additionalProperties"):
        schema.pop(key, None)
    schema["oneOf"] = [
        {
            "type": "object",
            "title": action,
            "properties": {
                **shared,
                "action": {"const": action, "type": "string"},
                "params": ACTION_PARAMS[action].model_json_schema(),
            },
            "required": ["action", "params"] if _needs_params(action) else ["action"],
            "additionalProperties": False,
        }
        for action in ACTION_PARAMS
    ]


def _integral(value: Any) -> Any:
    """3.0 as 3: JSON has one kind of number, and an integer field takes a whole one."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _integral(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_integral(v) for v in value]
    return value


def _needs_params(action: str) -> bool:
    return any(f.is_required() for f in ACTION_PARAMS[action].model_fields.values())


class PlaybookStep(Contract):
    """One step of a recovery playbook (`recovery_playbooks.recovery_steps`).

    `params` is checked against the action's own model (models.actions.ACTION_PARAMS), so a bad
    parameter is refused with its name when the playbook is written, not when it runs.
    """

    model_config = ConfigDict(extra="forbid", json_schema_extra=_params_by_action)

    action: ActionName
    params: dict[str, Any] = Field(default_factory=dict)
    timeout_seconds: float = Field(default=60, gt=0, le=3600)

    @model_validator(mode="after")
    def _params_fit_the_action(self) -> PlaybookStep:
        try:
            # as JSON, strictly: a playbook is JSON, and `false` is not a number of anything
            ACTION_PARAMS[self.action].model_validate_json(
                json.dumps(_integral(self.params)), strict=True
            )
        except ValidationError as err:
            problems = "; ".join(
                f"params.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors()
            )
            raise ValueError(f"{self.action}: {problems}") from None
        return self


class PlaybookChoice(Contract):
    """The playbook the decision track chose for an incident, and what it weighed."""

    decision_id: str
    playbook_id: str
    playbook_name: str
    automation_level: Literal["manual", "semi-auto", "full-auto"]
    required_permissions: list[str] = Field(default_factory=list)
    steps: list[PlaybookStep]
    alternatives: list[str] = Field(default_factory=list)
    rationale: str


class PlaybookRequest(Contract):
    """Ask the decision track to choose a playbook for an incident."""

    incident_id: str
    workflow_id: str
    service: str
    incident_type: str
    evidence: dict[str, Any] = Field(default_factory=dict)
    exclude: list[str] = Field(
        default_factory=list, description="playbooks that already failed this incident"
    )


class PlaybookCandidate(Contract):
    playbook_id: str
    playbook_name: str
    escalation_rank: int = Field(default=1, ge=1, description="its rung on the ladder")
    automation_level: Literal["manual", "semi-auto", "full-auto"]
    required_permissions: list[str]
    recovery_steps: list[dict[str, Any]]
    resolved_count: int = Field(default=0, ge=0, description="past incidents it resolved")
    failed_count: int = Field(default=0, ge=0, description="past incidents it failed to resolve")


class PlaybookCandidates(Contract):
    incident_type: str
    candidates: list[PlaybookCandidate]


class RecordDecisionInput(Contract):
    decision_id: str
    decision_type: str
    context_data: dict[str, Any]
    chosen_action: str
    alternatives_considered: list[dict[str, Any]]
    confidence_score: float = Field(ge=0, le=1)
    risk_assessment: dict[str, Any]
    expected_outcome: dict[str, Any]


class RecordIncidentInput(Contract):
    incident_id: str
    workflow_id: str
    service: str
    incident_type: str
    detection_method: str
    healing_strategy: str
    status: str
    started_at: datetime
    evidence: dict[str, Any] = Field(default_factory=dict)
    diagnosis: dict[str, Any] | None = None


class UpdateIncidentInput(Contract):
    """A transition of an incident row; terminal ones carry resolution fields."""

    incident_id: str
    status: str
    healing_strategy: str | None = None
    healing_actions: list[dict[str, Any]] | None = None
    resolved_at: datetime | None = None
    resolution_time_ms: int | None = None
    root_cause: dict[str, Any] | None = None


class ServiceActionInput(Contract):
    """An infrastructure action on one service, idempotent under `idempotency_key`."""

    idempotency_key: str
    workflow_id: str
    step: str
    service: str
    not_before: datetime = Field(description="the goal holds if the service restarted since this")
    params: dict[str, Any] = Field(default_factory=dict)


class ActionOutcome(Contract):
    """What an action did (or why it did nothing) — becomes a `healing_actions` entry."""

    action: str
    service: str
    performed: bool
    detail: dict[str, Any] = Field(default_factory=dict)
    started_at: datetime
    finished_at: datetime


class ValidateHealthInput(Contract):
    service: str
    consecutive_passes: int = Field(default=3, ge=1, le=100)
    interval_seconds: float = Field(default=1.0, gt=0, le=60)
    timeout_seconds: float = Field(default=60, gt=0, le=3600)
    probe_timeout_seconds: float = Field(default=1.0, gt=0, le=30)


class ValidationResult(Contract):
    service: str
    passed: bool
    attempts: int
    consecutive_passes: int
    detail: str = ""


class TimelineEntry(Contract):
    at: datetime
    state: IncidentState
    message: str


class IncidentStatus(Contract):
    """Answer of the `status` query: everything a person needs to follow the incident."""

    incident_id: str
    workflow_id: str
    service: str
    incident_type: str
    state: IncidentState
    playbook: str | None = None
    decision_id: str | None = None
    awaiting_decision: str | None = Field(
        default=None,
        description="workflow id of the decision waiting for a person: approve, reject or"
        " override it there (or here: the incident forwards them)",
    )
    actions: list[ActionOutcome] = Field(default_factory=list)
    rollback_plan: list[str] = Field(default_factory=list)
    timeline: list[TimelineEntry] = Field(default_factory=list)
    detected_at: datetime
    resolved_at: datetime | None = None
    resolution_time_ms: int | None = None
    error: str | None = None
    abort_requested: AbortRequestRecord | None = None
    diagnosis: Diagnosis | None = None


class AbortRequestRecord(Contract):
    requested_by: str
    reason: str


class AbortAccepted(Contract):
    """Answer of the `request_abort` update: what the rollback will undo."""

    incident_id: str
    state: IncidentState
    will_undo: list[str]


class IncidentResult(Contract):
    incident_id: str
    state: IncidentState
    resolution_time_ms: int | None
    actions: list[ActionOutcome]


IncidentStatus.model_rebuild()
