"""What the operations layer (`nofx.operations`) answers with, beyond the workflows' own
contracts: the healing track's views of incidents, patterns, playbooks, simulations and
metrics. The CLI prints them, the Python client returns them, the HTTP API serves them."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StrictBool, model_validator
from pydantic.json_schema import SkipJsonSchema

from models.common import Contract, IsoTime
from models.healing import IncidentType, PlaybookStep


class IncidentSummary(Contract):
    """An incident in the healing status list: running ones first, then the latest."""

    id: str
    service: str | None
    incident_type: str
    status: str
    healing_strategy: str | None = None
    started_at: datetime | None = None
    resolved_at: datetime | None = None
    resolution_time_ms: int | None = None


class ProvenSolution(Contract):
    playbook: str
    resolved: int


class PatternSummary(Contract):
    """A known problem pattern with how healing it has gone."""

    problem_signature: str
    success_rate: float | None = None
    average_resolution_time_ms: int | None = None
    proven_solutions: list[ProvenSolution] = Field(default_factory=list)
    last_updated: datetime | None = None
    incidents: int = 0


class PlaybookView(Contract):
    """A stored recovery playbook."""

    id: str
    incident_type: str
    playbook_name: str
    recovery_steps: list[PlaybookStep]
    automation_level: str | None = None
    required_permissions: list[str] = Field(default_factory=list)
    escalation_rank: int = 1
    enabled: bool = True
    created_at: datetime | None = None
    updated_at: datetime | None = None


class PlaybookChanges(Contract):
    """Fields of a playbook to change (at least one; the rest stay); its name and pattern
    cannot. A field is changed by giving its new value, never by null."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"minProperties": 1})

    recovery_steps: Annotated[list[PlaybookStep], Field(min_length=1)] | SkipJsonSchema[None] = None
    automation_level: Literal["manual", "semi-auto", "full-auto"] | SkipJsonSchema[None] = None
    required_permissions: list[str] | SkipJsonSchema[None] = None
    escalation_rank: Annotated[int, Field(ge=1, le=20)] | SkipJsonSchema[None] = None

    @model_validator(mode="after")
    def _something_changes(self) -> PlaybookChanges:
        nulls = sorted(k for k in self.model_fields_set if getattr(self, k) is None)
        if nulls:
            raise ValueError(f"{', '.join(nulls)}: give a value to change it to, not null")
        if not self.model_fields_set:
            raise ValueError("name at least one field to change")
        return self


class SimulateHealing(Contract):
    """Run a playbook against a service in imagination: nothing is touched."""

    playbook: str = Field(min_length=1)
    service: str = Field(min_length=1)


class GuardrailPreview(Contract):
    verdict: str
    guardrail: str | None = None
    reason: str | None = None


class SimulatedStep(Contract):
    step: int
    action: str
    params: dict[str, Any] = Field(default_factory=dict)
    capability: str
    provider: str | None = None
    supported: bool
    does: str | None = None
    compensation: str | None = None
    guardrail: GuardrailPreview | None = None


class HealingSimulation(Contract):
    """What running the playbook would do, step by step, with its rollback plan."""

    playbook: str
    incident_type: str
    service: str
    automation_level: str | None = None
    enabled: bool
    steps: list[SimulatedStep]
    rollback_plan: list[str]
    estimated_success: float
    expected_outcome: str
    touched: str


class HealingMetricsRow(Contract):
    pattern: str
    faults_injected: int
    detected: int
    detection_rate: float | None = None
    incidents: int
    resolved: int
    failed: int
    auto_resolution_rate: float | None = None
    mttd_p50_s: float | None = None
    mttd_p95_s: float | None = None
    mttr_p50_s: float | None = None
    mttr_p95_s: float | None = None


class HealingMetrics(Contract):
    """Detection, auto-resolution, MTTD and MTTR by pattern and overall, over a window."""

    since_hours: float
    table: list[HealingMetricsRow]


# ---- the predictive track ------------------------------------------------------------------


class MaintenancePredictionView(Contract):
    """An open maintenance prediction: what runs out on which service, when, what to do."""

    id: str
    service: str
    predicted_issue: str
    metric: str | None = None
    probability: float
    time_to_failure_hours: float | None = None
    eta: datetime | None = None
    eta_earliest: datetime | None = None
    eta_latest: datetime | None = None
    source: str | None = None
    recommended_action: dict[str, Any] | None = None
    business_impact: Any = None
    created_at: datetime | None = None
    updated_at: datetime | None = None


class MaintenanceJobView(Contract):
    """A maintenance job on the calendar: when it runs, before which failure, and why."""

    id: str
    workflow_id: str
    service: str
    predicted_issue: str | None = None
    status: str
    scheduled_at: datetime | None = None
    deadline: datetime | None = None
    maintenance_type: str | None = None
    decision_id: str | None = None
    window_plan: Any = None
    detail: str | None = None
    completed_at: datetime | None = None
    updated_at: datetime | None = None


class RecommendationView(Contract):
    """An open optimisation recommendation: the change, what it gains and what it risks."""

    id: str
    service: str | None = None
    optimization_type: str
    target: str | None = None
    current_state: Any = None
    recommended_state: Any = None
    expected_improvement: Any = None
    implementation_steps: Any = None
    risk_assessment: Any = None
    status: str
    created_at: datetime | None = None
    updated_at: datetime | None = None


# ---- alerts in ---------------------------------------------------------------------------


class AlertLabels(BaseModel):
    """An alert's labels: which service (`service`; a rule whose series name it otherwise, e.g.
    by `job`, sets `service: '{{ $labels.job }}'`) and which failure (`nofx_pattern`), beside
    any others."""

    model_config = ConfigDict(extra="allow")
    __pydantic_extra__: dict[str, str] = Field(init=False)  # every other label: a string

    service: str = Field(min_length=1, max_length=200, description="a service of the inventory")
    nofx_pattern: IncidentType = Field(description="the failure the alert means")


class AlertmanagerAlert(BaseModel):
    """One alert of Alertmanager's webhook (fields Alertmanager adds later are ignored)."""

    model_config = ConfigDict(extra="ignore")

    status: Literal["firing", "resolved"]
    labels: AlertLabels
    annotations: dict[str, str] = Field(default_factory=dict)
    startsAt: AwareDatetime
    endsAt: AwareDatetime | None = None
    generatorURL: str = ""
    fingerprint: str = Field(min_length=1, max_length=200)


class AlertmanagerWebhook(BaseModel):
    """Alertmanager's webhook payload (version 4), as `webhook_configs` sends it."""

    model_config = ConfigDict(extra="ignore")

    version: Literal["4"]
    groupKey: str = ""
    truncatedAlerts: int = Field(default=0, ge=0)
    status: Literal["firing", "resolved"]
    receiver: str = ""
    groupLabels: dict[str, str] = Field(default_factory=dict)
    commonLabels: dict[str, str] = Field(default_factory=dict)
    commonAnnotations: dict[str, str] = Field(default_factory=dict)
    externalURL: str = ""
    alerts: list[AlertmanagerAlert] = Field(min_length=1, max_length=1000)


class AlertOutcome(Contract):
    """What the platform did with one alert."""

    fingerprint: str
    status: Literal["firing", "resolved"]
    service: str
    pattern: str
    outcome: Literal["opened", "joined", "held", "evidence"]
    workflow_id: str | None = None
    reason: str | None = None


class AlertsReceived(Contract):
    alerts: list[AlertOutcome]


# ---- oversight: incidents, decisions, controls, schedules, autonomy metrics -----------------


class TimelineEvent(Contract):
    """One step of an incident or a decision, from the audit trail (durable, hash-chained)."""

    id: int = Field(description="the audit event's id")
    at: datetime
    actor: str
    action: str = Field(description="e.g. `incident.healing`, `decision.made`, `api.approve`")
    reason: str | None = None
    workflow_id: str | None = None
    details: dict[str, Any] = Field(default_factory=dict)


class IncidentDetail(IncidentSummary):
    """An incident with its timeline, what it did and what it would undo."""

    workflow_id: str | None = None
    running: bool = False
    detection_method: str | None = None
    root_cause: dict[str, Any] | None = None
    decision_id: str | None = None
    awaiting_decision: str | None = Field(
        default=None, description="the decision waiting for a person, when one does"
    )
    rollback_plan: list[str] = Field(default_factory=list)
    actions: list[dict[str, Any]] = Field(default_factory=list)
    timeline: list[TimelineEvent] = Field(default_factory=list)


class DecisionSummary(Contract):
    """A decision in the recent list: what, for whom, how risky, who decided, where it stands."""

    decision_id: str
    workflow_id: str | None = None
    subject: str | None = None
    problem: str | None = None
    status: str | None = None
    mode: str | None = None
    chosen: str | None = None
    confidence: float | None = None
    risk: str | None = Field(default=None, description="low | medium | high | critical")
    decided_by: str | None = None
    incident_id: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None


class FreezeView(Contract):
    id: str
    scope: str
    starts_at: datetime
    ends_at: datetime
    reason: str | None = None
    created_by: str | None = None


class GuardrailRefusal(Contract):
    """A guardrail that held or refused an automated action."""

    decided_at: datetime
    service: str
    action: str
    verdict: str
    guardrail: str | None = None
    reason: str | None = None
    workflow_id: str | None = None


class ControlsView(Contract):
    """The kill switch, the guardrail policy, the decision modes and the change freezes."""

    paused: bool = Field(description="the kill switch: every automated action is held")
    reason: str | None = None
    changed_by: str | None = None
    changed_at: datetime | None = None
    policy: dict[str, Any] = Field(description="the guardrail limits")
    mode: str = Field(description="the decision engine's global mode")
    ask_at_risk: str = Field(description="autonomous mode asks a person at or above this risk")
    min_confidence: float = Field(description="autonomous mode asks a person below this")
    service_modes: dict[str, str] = Field(default_factory=dict)
    freezes: list[FreezeView] = Field(default_factory=list, description="in force now or later")
    refusals: list[GuardrailRefusal] = Field(
        default_factory=list, description="the last hour's held or refused actions, newest last"
    )


class KillSwitch(Contract):
    """Pause (`paused: true`) or resume every automated action, saying why."""

    paused: StrictBool
    reason: str = Field(min_length=1, max_length=500)


class FreezeRequest(Contract):
    """A change-freeze window: no automated change to `scope` (a service, or `*`) inside it."""

    reason: str = Field(min_length=1, max_length=500)
    starts_at: IsoTime | None = Field(default=None, description="default: now")
    hours: float = Field(
        default=1.0, ge=1 / 60, le=24 * 90, strict=True, description="a minute to 90 days"
    )
    scope: str = Field(default="*", min_length=1, max_length=200)


class ModeChange(Contract):
    """The global decision mode, or one service's (`service`); the strictest applies."""

    mode: Literal["observe", "assist", "autonomous"]
    service: str | None = Field(default=None, min_length=1, max_length=200)


class ScheduleView(Contract):
    """A Temporal Schedule of the platform: what it starts, how often, when next."""

    schedule_id: str
    workflow: str | None = None
    task_queue: str | None = None
    every_seconds: float | None = None
    offset_seconds: float | None = None
    paused: bool = False
    note: str | None = None
    next_runs: list[datetime] = Field(default_factory=list)
    recent_runs: list[datetime] = Field(default_factory=list)


class CountByKey(Contract):
    key: str
    count: int


class AutonomyMetrics(Contract):
    """How autonomous the platform has been over a window."""

    since_hours: float
    incidents: int
    auto_resolved: int
    auto_resolution_rate: float | None = Field(description="resolved without a person")
    escalated: int
    failed: int
    mttd_p50_s: float | None = None
    mttd_p95_s: float | None = None
    mttr_p50_s: float | None = None
    mttr_p95_s: float | None = None
    decisions: int
    decisions_by_person: int = Field(description="approved, rejected or overridden by a person")
    human_intervention_rate: float | None = Field(
        description="share of decisions a person answered (approve, reject, override)"
    )
    waiting: int = Field(description="decisions waiting for a person now")
    by_mode: list[CountByKey] = Field(default_factory=list)
    by_risk: list[CountByKey] = Field(default_factory=list)
    by_status: list[CountByKey] = Field(default_factory=list)
