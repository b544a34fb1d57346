"""Contracts of the optimisation track: what the fleet costs, and what recommendations save."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from pydantic import AwareDatetime, Field

from models.common import Contract
from models.healing import PlaybookStep


class CostModel(Contract):
    """What an hour of each resource costs (settings NOFX_COST_*), in one currency."""

    vcpu_hour: float = Field(ge=0)
    gib_hour: float = Field(ge=0)
    replica_hour: float = Field(ge=0)


class RecommendedSaving(Contract):
    """One open recommendation the report could price."""

    recommendation_id: str
    target: str
    per_hour: float = Field(description="saving per hour if applied; negative: it costs more")
    exceed_probability: float | None = Field(
        default=None, description="the SLO risk it buys: the share of steps usage passes it"
    )


class ServiceCost(Contract):
    service: str
    replicas: int
    vcpu: float | None = None
    memory_gib: float | None = None
    per_hour: float = Field(description="what the service costs an hour now")
    recommended: list[RecommendedSaving] = Field(default_factory=list)
    recommended_per_hour: float = 0.0
    realised_per_hour: float = Field(
        default=0.0, description="measured saving of recommendations already applied"
    )
    notes: list[str] = Field(default_factory=list)


class CostReport(Contract):
    model: CostModel
    services: list[ServiceCost]
    per_hour: float
    per_month: float = Field(description="per hour * 730")
    recommended_per_hour: float
    recommended_ratio: float = Field(description="recommended saving / spend")
    realised_per_hour: float
    worst_exceed_probability: float | None = Field(
        default=None, description="the largest SLO risk among the priced recommendations"
    )


# ---- applying a recommendation (OptimizationWorkflow) --------------------------------------

ApplyStatus = Literal[
    "claimed",
    "deciding",
    "awaiting_approval",
    "scheduled",
    "measuring",
    "running",
    "settling",
    "applied",
    "rolled_back",
    "declined",
    "failed",
]
APPLY_TERMINAL: frozenset[str] = frozenset({"applied", "rolled_back", "declined", "failed"})


class ApplyInput(Contract):
    """Start `optimize-<recommendation_id>`: apply one open recommendation as a decision."""

    recommendation_id: UUID
    requested_by: str = Field(default="nofx", min_length=1)
    settle_seconds: float = Field(
        default=300.0, ge=0, le=7 * 86_400, description="after the change, before measuring"
    )
    requests: int = Field(default=40, ge=5, le=5_000, description="real requests per measurement")
    concurrency: int = Field(default=4, ge=1, le=64, description="of those, sent at once")
    tolerance: float = Field(
        default=0.5, ge=0, le=10, description="share the p95 latency may grow before it regresses"
    )
    max_error_increase: float = Field(
        default=0.02, ge=0, le=1, description="error ratio it may add before it regresses"
    )
    not_before: AwareDatetime | None = Field(
        default=None, description="a start a person asks for (a window type's window from it)"
    )


class Objective(Contract):
    """What a type measures besides latency and errors: counters read around the requests."""

    counters: dict[str, str] = Field(
        default_factory=dict, description="role (hits, misses, stale) -> the source's metric"
    )
    stale_budget: float | None = None


class ClaimedRecommendation(Contract):
    """An open recommendation taken for applying (its status is now `applying`)."""

    id: str
    service: str
    optimization_type: str
    target: str
    current_state: dict[str, Any]
    recommended_state: dict[str, Any]
    expected_improvement: dict[str, Any]
    risk_assessment: dict[str, Any]
    steps: list[PlaybookStep]
    endpoint: str = Field(description="where the measuring requests go")
    path: str = "/"
    objective: Objective = Field(default_factory=Objective)
    latency_p95_ms: float | None = Field(default=None, description="the service's SLO target")
    windowed: bool = Field(description="runs in a low-impact window (index builds)")


class ClaimInput(Contract):
    recommendation_id: str
    requested_by: str
    workflow_id: str


class MeasureInput(Contract):
    claimed: ClaimedRecommendation
    label: Literal["before", "after"]
    requests: int
    concurrency: int


class Measurement(Contract):
    """Real requests to the service (latency, errors) and the type's counters around them."""

    label: Literal["before", "after"]
    at: AwareDatetime
    requests: int
    errors: int
    error_ratio: float
    p95_ms: float | None
    objective: dict[str, float] = Field(default_factory=dict)
    detail: str


class JudgeInput(Contract):
    claimed: ClaimedRecommendation
    before: Measurement
    after: Measurement
    tolerance: float
    max_error_increase: float


class ApplyVerdict(Contract):
    regressed: bool
    reasons: list[str] = Field(default_factory=list)
    realised: dict[str, Any] = Field(description="what happened, beside what was expected")


Released = Literal["open", "applied", "rolled_back", "dismissed"]


class ApplyRecord(Contract):
    """The recommendation's row after the workflow: its status and what was measured."""

    recommendation_id: str
    status: Released
    decision_id: str | None = None
    realised: dict[str, Any] | None = None
    detail: str


class ApplyNote(Contract):
    at: AwareDatetime
    status: ApplyStatus
    message: str


class ApplyStatusView(Contract):
    """The `status` query of an OptimizationWorkflow."""

    workflow_id: str
    recommendation_id: str
    service: str | None
    optimization_type: str | None
    status: ApplyStatus
    decision_id: str | None
    chosen: str | None
    window_start: datetime | None
    rollback_plan: list[str]
    timeline: list[ApplyNote]
    before: Measurement | None = None
    after: Measurement | None = None
    verdict: ApplyVerdict | None = None
    error: str | None = None


def apply_workflow_id(recommendation_id: str) -> str:
    return f"optimize-{recommendation_id}"
