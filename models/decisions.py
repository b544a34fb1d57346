"""Contracts of Track A (the decision engine): the context of a decision, its candidates, their
criterion scores, the risk assessment, the human loop and the outcome.

`DecisionContext` is the specification's interface (current state, historical data, predicted
outcomes, constraints, objectives) as pydantic models. Every number the scoring reads is a field
here, so a decision can be replayed, simulated and explained from its recorded context alone.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import Field, model_validator

from models.actions import Capability
from models.common import Contract
from models.detection import Diagnosis, Pattern
from models.healing import PlaybookStep

DecisionType = Literal["healing", "maintenance", "optimization"]
Mode = Literal["observe", "assist", "autonomous"]
RiskLevel = Literal["low", "medium", "high", "critical"]
Tier = Literal["tier-0", "tier-1", "tier-2", "tier-3"]
AutomationLevel = Literal["manual", "semi-auto", "full-auto"]
FeedbackType = Literal["approval", "rejection", "override", "timeout", "outcome"]

RISK_LEVELS: tuple[RiskLevel, ...] = ("low", "medium", "high", "critical")
MODES_STRICTEST_FIRST: tuple[Mode, ...] = ("observe", "assist", "autonomous")


# ---- context ------------------------------------------------------------------------------


class SystemState(Contract):
    """The subject as it is now."""

    service: str
    tier: Tier = "tier-2"
    pattern: str | None = Field(default=None, description="the diagnosed problem pattern")
    cause: Literal["configuration", "dependency", "self"] | None = Field(
        default=None, description="the lead root cause's kind, when diagnosis ran"
    )
    healthy: bool | None = None
    signals: list[str] = Field(default_factory=list)
    metrics: dict[str, float] = Field(
        default_factory=dict, description="latest derived series values (error_ratio, p95_ms …)"
    )
    replicas: int = Field(default=1, ge=1, description="replicas of its group (capacity)")
    serving_replicas: int = Field(default=1, ge=0, description="of those, taking traffic now")
    open_incidents: int = Field(default=0, ge=0, description="open incidents fleet-wide")
    actions_in_flight: int = Field(default=0, ge=0, description="automated actions fleet-wide")


class OutcomeCount(Contract):
    playbook: str
    resolved: int = Field(default=0, ge=0)
    failed: int = Field(default=0, ge=0)
    rejected: int = Field(
        default=0, ge=0, description="times a person rejected or overrode it as the engine's pick"
    )


class HistoricalMetrics(Contract):
    """What happened to this subject and pattern before."""

    incidents_24h: int = Field(default=0, ge=0, description="incidents of the service, 24 h")
    outcomes: list[OutcomeCount] = Field(
        default_factory=list, description="per playbook, past incidents of this pattern"
    )
    minutes_since_config_change: float | None = Field(default=None, ge=0)
    config_change_rollbackable: bool = Field(
        default=False, description="the latest version has an earlier one to return to"
    )
    failed_automated_actions_1h: int = Field(default=0, ge=0)
    rejections_7d: int = Field(
        default=0, ge=0, description="people rejected the engine on this service and problem, 7 d"
    )
    explorations_24h: int = Field(
        default=0, ge=0, description="explored (not greedy) decisions on this service, 24 h"
    )


class Prediction(Contract):
    """A Track C prediction about the subject (absent until Track C lands)."""

    kind: str = Field(description="e.g. time_to_exhaustion, failure")
    metric: str | None = None
    probability: float | None = Field(default=None, ge=0, le=1)
    time_to_failure_hours: float | None = Field(default=None, ge=0)


class OperationalConstraints(Contract):
    """What the engine must not do now."""

    capabilities: list[Capability] = Field(
        default_factory=list, description="what the target's providers offer"
    )
    known_service: bool = True
    change_freeze: str | None = Field(default=None, description="reason of an active freeze")
    paused: str | None = Field(default=None, description="reason of the kill switch")
    max_blast_radius: float = Field(default=0.5, gt=0, le=1, description="share of capacity")
    max_concurrent_actions: int = Field(default=3, ge=1)
    excluded: list[str] = Field(
        default_factory=list, description="candidates that already failed this subject"
    )
    require_reversible: bool = Field(
        default=False, description="only candidates whose every change can be undone"
    )


class CriteriaWeights(Contract):
    """How much each criterion counts; normalised to sum 1 before use."""

    success: float = Field(default=0.5, ge=0)
    recovery_time: float = Field(default=0.2, ge=0)
    risk: float = Field(default=0.2, ge=0)
    cost: float = Field(default=0.1, ge=0)

    @model_validator(mode="after")
    def _some_weight(self) -> CriteriaWeights:
        if self.success + self.recovery_time + self.risk + self.cost <= 0:
            raise ValueError("at least one criterion weight must be positive")
        return self

    def normalised(self) -> CriteriaWeights:
        total = self.success + self.recovery_time + self.risk + self.cost
        return CriteriaWeights(
            success=self.success / total,
            recovery_time=self.recovery_time / total,
            risk=self.risk / total,
            cost=self.cost / total,
        )


class BusinessObjectives(Contract):
    """What the business wants from this decision: weights and the SLO it protects."""

    weights: CriteriaWeights = Field(default_factory=CriteriaWeights)
    rto_seconds: float = Field(default=300, gt=0, description="recovery-time objective")
    slo_availability: float | None = Field(default=None, gt=0, lt=1)
    error_budget_remaining: float | None = Field(
        default=None, ge=0, le=1, description="share of the period's error budget left"
    )
    success_tolerance: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="success probabilities this close to the best one's count as equal to it"
        " (allowing for both estimates' uncertainty), so the other criteria decide among them;"
        " 0 compares success as estimated",
    )


class DecisionContext(Contract):
    """The specification's DecisionContext, plus the diagnosis it rests on."""

    current_state: SystemState
    historical_data: HistoricalMetrics = Field(default_factory=HistoricalMetrics)
    predicted_outcomes: list[Prediction] = Field(default_factory=list)
    constraints: OperationalConstraints = Field(default_factory=OperationalConstraints)
    objectives: BusinessObjectives = Field(default_factory=BusinessObjectives)
    diagnosis: Diagnosis | None = None
    gathered_at: datetime | None = None
    observations: dict[str, float] = Field(
        default_factory=dict,
        description="numbers the context's source gave that no field above names (by path);"
        " the learned model reads them, the rules do not",
    )


# ---- candidates and their scores ----------------------------------------------------------


class DeclaredTraits(Contract):
    """What a candidate's author (or an external scenario) states about it, in place of what the
    engine would work out from its steps and the target's capacity."""

    blast_radius: float | None = Field(default=None, ge=0, le=1, description="share of capacity")
    reversible: bool | None = Field(default=None, description="every change can be undone")
    cost: float | None = Field(default=None, ge=0, description="any scale; scored as c / (1 + c)")


class Candidate(Contract):
    """One option: a playbook (healing) or a maintenance/optimisation plan, as steps."""

    name: str = Field(min_length=1)
    playbook_id: str | None = None
    steps: list[PlaybookStep] = Field(min_length=1)
    automation_level: AutomationLevel = "full-auto"
    required_permissions: list[str] = Field(default_factory=list)
    escalation_rank: int = Field(default=1, ge=1)
    declared: DeclaredTraits | None = None


class SuccessEstimate(Contract):
    """The model's belief that a candidate fixes this subject: a Beta posterior."""

    probability: float = Field(ge=0, le=1)
    alpha: float = Field(gt=0)
    beta: float = Field(gt=0)
    expected_recovery_seconds: float = Field(gt=0)
    source: str = Field(description="what the belief rests on, e.g. 'matrix 2/2 + history 5/6'")
    drivers: dict[str, float] = Field(
        default_factory=dict,
        description="a learned model's largest feature contributions (log-odds), by feature",
    )


class CriterionScores(Contract):
    """Raw values and their [0, 1] utilities (1 = best) for one candidate."""

    success_probability: float = Field(ge=0, le=1)
    expected_recovery_seconds: float = Field(ge=0)
    risk_score: float = Field(ge=0, le=1)
    cost: float = Field(ge=0, le=1, description="share of capacity disturbed while it runs")
    u_success: float = Field(ge=0, le=1)
    u_recovery: float = Field(ge=0, le=1)
    u_risk: float = Field(ge=0, le=1)
    u_cost: float = Field(ge=0, le=1)
    total: float = Field(ge=0, le=1, description="weighted sum of the utilities")
    success_as_best: bool = Field(
        default=False,
        description="within the success tolerance of the best candidate: its success utility"
        " is the best one's",
    )


class RiskFactor(Contract):
    name: str
    value: Any = None
    contribution: float = Field(description="points added to the risk score (0-1 scale)")
    detail: str


class RiskAssessment(Contract):
    level: RiskLevel
    score: float = Field(ge=0, le=1)
    factors: list[RiskFactor] = Field(default_factory=list)
    reversible: bool = True
    blast_radius: float = Field(default=0, ge=0, le=1)


class ScoredCandidate(Contract):
    candidate: Candidate
    success: SuccessEstimate | None = None
    scores: CriterionScores | None = None
    risk: RiskAssessment | None = None
    pruned_by: list[str] = Field(
        default_factory=list, description="the rules that removed it, each with its reason"
    )
    rank: int | None = Field(default=None, description="1 = chosen; None when pruned")
    lost_because: str | None = None


class Exploration(Contract):
    """Whether the choice explored (Thompson sampling) and how likely the policy was to make it,
    so learning can weigh the outcome by inverse propensity."""

    explored: bool = Field(description="the choice is not the greedy (highest-scoring) one")
    chosen: str | None = Field(default=None, description="what the sampling policy chose")
    greedy: str | None = Field(default=None, description="what the engine picks without exploring")
    propensity: float = Field(
        default=1.0, ge=0, le=1, description="probability the sampling policy chose the choice"
    )
    eligible: list[str] = Field(default_factory=list, description="candidates it could sample")
    why: str = ""
    seed: int | None = None


class Scoring(Contract):
    """The outcome of scoring: candidates best first (pruned last), the choice and confidence."""

    ranked: list[ScoredCandidate]
    chosen: str | None = None
    confidence: float = Field(default=0, ge=0, le=1)
    rules_fired: list[str] = Field(default_factory=list)
    weights: CriteriaWeights = Field(default_factory=CriteriaWeights)
    exploration: Exploration | None = Field(
        default=None, description="None: exploration was not considered (it is off)"
    )

    def best(self) -> ScoredCandidate | None:
        return next((c for c in self.ranked if c.rank == 1), None)

    def find(self, name: str) -> ScoredCandidate | None:
        return next((c for c in self.ranked if c.candidate.name == name), None)


# ---- requests, the human loop and the result ----------------------------------------------


class DecisionRequest(Contract):
    """Start a `DecisionWorkflow`: what to decide about, and optionally the context and options."""

    decision_type: DecisionType = "healing"
    subject: str = Field(min_length=1, description="the service (component) decided about")
    problem: str = Field(min_length=1, description="the incident type / pattern / issue")
    incident_id: str | None = None
    requested_by: str = "nofx"
    parent_workflow_id: str | None = None
    context: DecisionContext | None = None
    candidates: list[Candidate] | None = None
    exclude: list[str] = Field(default_factory=list, description="already failed candidates")
    require_approval: str | None = Field(
        default=None, description="ask a person whatever the mode (e.g. a guardrail asked)"
    )
    evidence: dict[str, Any] = Field(default_factory=dict)
    diagnosis: Diagnosis | None = None


class Approve(Contract):
    """`approve` from the Web UI or the CLI: `{"approver": "alice", "reason": "looks right"}`."""

    approver: str = Field(min_length=1)
    reason: str = ""


class Reject(Contract):
    approver: str = Field(min_length=1)
    reason: str = Field(min_length=1, description="why not: kept and learnt from")


class Override(Contract):
    """Run another candidate instead: `{"approver": "alice", "action": "rollback-config", …}`."""

    approver: str = Field(min_length=1)
    action: str = Field(min_length=1, description="the candidate to run instead")
    reason: str = Field(min_length=1)


class HumanVerdict(Contract):
    """One person's answer as the decision recorded it (accepted or refused)."""

    kind: Literal["approve", "reject", "override"]
    seq: int = Field(default=0, ge=0, description="its place among the answers received")
    approver: str
    reason: str = ""
    action: str | None = None
    at: datetime
    accepted: bool = True
    refused_because: str | None = None
    via: Literal["signal", "update"] = "signal"


class ApprovalRecord(Contract):
    required: bool = False
    why: list[str] = Field(default_factory=list)
    approvers_needed: int = Field(default=0, ge=0)
    required_permissions: list[str] = Field(default_factory=list)
    verdicts: list[HumanVerdict] = Field(default_factory=list)
    outcome: Literal["not_needed", "pending", "approved", "rejected", "overridden", "timed_out"] = (
        "not_needed"
    )
    timeout_seconds: float | None = None


DecisionStatus = Literal[
    "deciding", "awaiting_approval", "approved", "observed", "rejected", "timed_out", "no_option"
]


class Explanation(Contract):
    """Why the engine chose what it chose, as data and as text."""

    text: str
    criteria: list[dict[str, Any]] = Field(default_factory=list)
    rules_fired: list[str] = Field(default_factory=list)
    risk_factors: list[RiskFactor] = Field(default_factory=list)
    evidence: dict[str, Any] = Field(default_factory=dict)
    why_not: dict[str, str] = Field(default_factory=dict)


class DecisionResult(Contract):
    """What the decision came to. `act` says whether the caller may run `steps`."""

    decision_id: str
    workflow_id: str
    decision_type: DecisionType
    subject: str
    problem: str
    incident_id: str | None = None
    status: DecisionStatus
    mode: Mode
    act: bool
    chosen: str | None = None
    engine_choice: str | None = Field(default=None, description="differs when overridden")
    steps: list[PlaybookStep] = Field(default_factory=list)
    automation_level: AutomationLevel | None = None
    required_permissions: list[str] = Field(default_factory=list)
    confidence: float = Field(default=0, ge=0, le=1)
    risk: RiskAssessment | None = None
    expected_outcome: dict[str, Any] = Field(default_factory=dict)
    alternatives: list[ScoredCandidate] = Field(default_factory=list)
    approval: ApprovalRecord = Field(default_factory=ApprovalRecord)
    explanation: Explanation
    rollback_plan: list[str] = Field(
        default_factory=list, description="the compensations the steps register, in undo order"
    )
    decided_by: str = Field(default="nofx-decisions", description="who made the final call")
    exploration: Exploration | None = Field(
        default=None, description="the sampling policy's record, when exploration was on"
    )
    chosen_candidate: Candidate | None = Field(
        default=None, description="the chosen option whole (alternatives lists the others)"
    )
    experiment: ExperimentAssignment | None = Field(
        default=None, description="the A/B test and arm that decided it, when one ran"
    )


class DecisionOutcome(Contract):
    """What happened after the decision was carried out; written on the decision."""

    decision_id: str
    resolved: bool
    recovery_seconds: float | None = Field(default=None, ge=0)
    rolled_back: bool = False
    prior_state_restored: bool | None = None
    detail: str = ""


class ApprovalTimeouts(Contract):
    """How long a decision waits for a person, by risk level, and what a timeout means."""

    low: float = Field(default=3600, gt=0, le=7 * 86400)
    medium: float = Field(default=3600, gt=0, le=7 * 86400)
    high: float = Field(default=3600, gt=0, le=7 * 86400)
    critical: float = Field(default=1800, gt=0, le=7 * 86400)
    outcome: Literal["reject"] = Field(
        default="reject", description="a timeout rejects: the subject goes to a person"
    )

    def for_level(self, level: RiskLevel) -> float:
        return float(getattr(self, level))


class ExplorationPolicy(Contract):
    """Safe exploration: sometimes try another good candidate, to learn what works."""

    enabled: bool = Field(default=False, description="off unless a team turns it on")
    per_service_per_day: int = Field(default=1, ge=0, le=100, description="explorations, at most")
    max_risk: RiskLevel = Field(
        default="medium", description="only candidates at or below this risk are sampled"
    )
    never_tiers: list[Tier] = Field(
        default_factory=lambda: list[Tier](["tier-0"]), description="tiers never explored on"
    )
    samples: int = Field(default=200, ge=10, le=10_000, description="draws for the propensity")


class DecisionPolicy(Contract):
    """The engine's policy (`platform_controls.decision_policy`; empty: these defaults)."""

    mode: Mode = Field(default="autonomous", description="the global mode")
    ask_at_risk: RiskLevel = Field(
        default="high", description="autonomous mode asks a person at or above this risk"
    )
    min_confidence: float = Field(
        default=0.4, ge=0, le=1, description="autonomous mode asks a person below this confidence"
    )
    weights: CriteriaWeights = Field(default_factory=CriteriaWeights)
    timeouts: ApprovalTimeouts = Field(default_factory=ApprovalTimeouts)
    exploration: ExplorationPolicy = Field(default_factory=lambda: ExplorationPolicy())


class Operator(Contract):
    """A person who may approve, reject or override, with the permissions they hold."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.@+-]+$")
    permissions: list[str] = Field(default_factory=list)
    display_name: str | None = None


# ---- activity contracts -------------------------------------------------------------------


class PlanInput(Contract):
    problem: str = Field(min_length=1)


class CandidateList(Contract):
    candidates: list[Candidate]


class EvaluateInput(Contract):
    request: DecisionRequest
    context: DecisionContext
    candidates: list[Candidate]


class Evaluation(Contract):
    """Scoring, explanation, the mode in force and who must agree."""

    scoring: Scoring
    explanation: Explanation
    mode: Mode
    mode_why: list[str]
    approval: ApprovalRecord
    policy: DecisionPolicy
    experiment: ExperimentAssignment | None = None


class SaveDecisionInput(Contract):
    result: DecisionResult
    context: DecisionContext | None = None


class FeedbackInput(Contract):
    decision_id: str
    feedback_type: FeedbackType
    idempotency_key: str
    outcome_quality: float | None = Field(default=None, ge=0, le=1)
    lessons: dict[str, Any] = Field(default_factory=dict)
    adjustments: dict[str, Any] = Field(default_factory=dict)


class OperatorsChanged(Contract):
    """Signal `operators_changed`: the operators table changed; read it again before judging."""

    by: str = ""


class OperatorsSnapshot(Contract):
    permissions: dict[str, list[str]] = Field(default_factory=dict)


class VerdictAck(Contract):
    """Answer of the approve/reject/override updates: what the decision now is."""

    decision_id: str
    status: DecisionStatus
    outcome: str
    chosen: str | None
    approvals: int
    approvers_needed: int


class DecisionWaiting(Contract):
    """The decision tells the workflow that asked for it that it waits for a person."""

    workflow_id: str
    decision_id: str
    why: list[str] = Field(default_factory=list)
    risk: RiskLevel | None = None


# ---- operations (nofx.operations.autonomous: the CLI, the client, later the HTTP API) ---------

Cause = Literal["configuration", "dependency", "self"]


class DecideRequest(Contract):
    """`nofx autonomous decide`: ask the engine about a service's problem now."""

    service: str = Field(min_length=1, description="a service of the inventory")
    incident_type: Pattern = Field(description="the problem pattern to decide about")
    cause: Cause | None = Field(
        default=None, description="the root-cause kind, when known (else none is assumed)"
    )
    decision_type: DecisionType = "healing"
    requested_by: str = Field(default="nofx", min_length=1)
    require_approval: str | None = Field(
        default=None, description="ask a person whatever the risk, with this reason"
    )
    evidence: dict[str, Any] = Field(default_factory=dict)
    wait_seconds: float = Field(
        default=60, gt=0, le=600, description="how long to wait for the decision to be made"
    )


class SimulateRequest(Contract):
    """`nofx autonomous simulate`: score and explain against the current state; nothing runs."""

    service: str = Field(min_length=1)
    incident_type: Pattern
    cause: Cause | None = None
    candidates: list[str] | None = Field(
        default=None, description="only these playbooks (default: every enabled one)"
    )
    evidence: dict[str, Any] = Field(default_factory=dict)


class Simulation(Contract):
    """What the engine would decide now and why; nothing was recorded or run."""

    service: str
    incident_type: str
    mode: Mode
    mode_why: list[str] = Field(default_factory=list)
    chosen: str | None
    confidence: float = Field(ge=0, le=1)
    would_act: bool = Field(description="acts without a person in this mode and risk")
    approval: ApprovalRecord
    ranked: list[ScoredCandidate]
    explanation: Explanation
    context: DecisionContext


class DecisionRecord(DecisionResult):
    """A decision as the platform holds it: the engine's result and what became of it."""

    running: bool = Field(description="its workflow still runs (it may still wait for a person)")
    created_at: datetime | None = None
    updated_at: datetime | None = None
    actual_outcome: dict[str, Any] | None = None


# ---- learning (Track A, part 2) ------------------------------------------------------------


class TrainRequest(Contract):
    """Train the success model on the decision history (nofx.decisions.training)."""

    until: datetime | None = Field(
        default=None, description="the history ends here (default: when the run starts)"
    )
    skip_without_history: bool = Field(
        default=False, description="end without a model (not fail) when the history is too short"
    )


class SuccessModelReport(Contract):
    """A trained success model: where it is stored, whether it replaced the champion and why."""

    model_id: str | None = Field(default=None, description="None: the run was skipped")
    version: str | None = None
    promoted: bool = False
    verdict: str
    challenger: dict[str, Any] = Field(
        default_factory=dict, description="its held-out figures (Brier, AUC, decision accuracy)"
    )
    champion: dict[str, Any] = Field(
        default_factory=dict, description="the champion's figures on the same hold-out"
    )
    champion_id: str | None = Field(default=None, description="None: the Beta prior was champion")
    data: dict[str, Any] = Field(default_factory=dict, description="what it was trained on")


class ModelInfo(Contract):
    """One row of the model registry."""

    model_id: str
    model_type: str
    version: str
    active: bool
    created_at: datetime
    deployed_at: datetime | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)
    training: dict[str, Any] = Field(default_factory=dict)


# ---- A/B tests of decision strategies --------------------------------------------------------


class ArmSpec(Contract):
    """One strategy of an experiment."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    model: Literal["champion", "prior"] = Field(
        default="champion", description="the learned model in force, or the Beta prior alone"
    )
    weights: CriteriaWeights | None = Field(default=None, description="None: the policy's")


class ExperimentSpec(Contract):
    name: str = Field(min_length=1, max_length=80, pattern=r"^[A-Za-z0-9_.-]+$")
    arms: list[ArmSpec] = Field(min_length=2, max_length=8)
    min_per_arm: int = Field(default=30, ge=1, description="outcomes per arm before judging")
    max_per_arm: int = Field(default=500, ge=1, description="stop without a winner here")
    alpha: float = Field(default=0.05, gt=0, lt=1, description="significance level")

    @model_validator(mode="after")
    def _distinct(self) -> ExperimentSpec:
        names = [a.name for a in self.arms]
        if len(set(names)) != len(names):
            raise ValueError(f"arm names repeat: {names}")
        if self.max_per_arm < self.min_per_arm:
            raise ValueError("max_per_arm must be at least min_per_arm")
        return self


class ExperimentAssignment(Contract):
    experiment: str
    arm: str
    model: Literal["champion", "prior"] = "champion"


class ArmReport(Contract):
    arm: str
    model: str
    decisions: int
    outcomes: int
    fixed: int
    success_rate: float | None = None


class ExperimentReport(Contract):
    name: str
    status: Literal["running", "stopped"]
    started_at: datetime
    stopped_at: datetime | None = None
    stop_reason: str | None = None
    spec: ExperimentSpec
    arms: list[ArmReport]
    z: float | None = Field(default=None, description="two arms: the two-proportion z")
    p_value: float | None = Field(default=None, description="two-sided")
    verdict: str
    should_stop: bool = Field(description="the stop rule says the experiment can end now")


# Defined before the experiment contracts they name.
DecisionResult.model_rebuild()
Evaluation.model_rebuild()
