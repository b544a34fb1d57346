"""Track A's activities: gather the context, plan the candidates, score and explain, and keep
decisions, feedback and operators in PostgreSQL. Thin wrappers over nofx.decisions."""

from __future__ import annotations

from sqlalchemy.engine import Engine
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities._support import invalid_input
from activities.store import list_fleet_targets
from models.decisions import (
    CandidateList,
    DecisionContext,
    DecisionOutcome,
    DecisionRequest,
    EvaluateInput,
    Evaluation,
    FeedbackInput,
    OperatorsSnapshot,
    PlanInput,
    SaveDecisionInput,
)
from nofx.decisions import approval, context, scoring, store
from nofx.decisions.explain import explain
from nofx.decisions.success import BetaSuccessModel, load_priors


class DecisionActivities:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._model = BetaSuccessModel(load_priors())

    @activity.defn
    def analyse_context(self, request: DecisionRequest) -> DecisionContext:
        """The context analyser: inventory, platform state, history, predictions, diagnosis."""
        target = next(
            (t for t in list_fleet_targets(self._engine) if t.service == request.subject), None
        )
        return context.gather(self._engine, request, target, store.get_policy(self._engine))

    @activity.defn
    def plan_candidates(self, inp: PlanInput) -> CandidateList:
        """The planner: the enabled playbooks of the problem (capabilities are a pruning rule)."""
        return CandidateList(candidates=context.plan(self._engine, inp.problem))

    @activity.defn
    def evaluate(self, inp: EvaluateInput) -> Evaluation:
        """Score and explain; the mode in force and who must agree."""
        if not inp.candidates:
            raise ApplicationError(
                f"no candidate for {inp.request.problem!r} on {inp.request.subject}"
                " (no enabled playbook)",
                type="NoCandidate",
                non_retryable=True,
            )
        policy = store.get_policy(self._engine)
        result = scoring.score(inp.context, inp.candidates, self._model, policy.weights)
        best = result.best()
        mode, mode_why = approval.effective_mode(
            policy.mode,
            context.service_mode(self._engine, inp.request.subject),  # type: ignore[arg-type]
            best.candidate.automation_level if best else None,
        )
        record = approval.requirement(
            mode,
            best.risk if best else None,
            result.confidence,
            policy,
            required_permissions=best.candidate.required_permissions if best else [],
            asked_by_caller=inp.request.require_approval,
        )
        return Evaluation(
            scoring=result,
            explanation=explain(inp.context, result, record),
            mode=mode,
            mode_why=mode_why,
            approval=record,
            policy=policy,
        )

    @activity.defn
    def save_decision(self, inp: SaveDecisionInput) -> None:
        store.save_decision(self._engine, inp.result, inp.context)

    @activity.defn
    def add_feedback(self, inp: FeedbackInput) -> str:
        return store.add_feedback(
            self._engine,
            decision_id=inp.decision_id,
            feedback_type=inp.feedback_type,
            idempotency_key=inp.idempotency_key,
            outcome_quality=inp.outcome_quality,
            lessons=inp.lessons,
            adjustments=inp.adjustments,
        )

    @activity.defn
    def load_operators(self) -> OperatorsSnapshot:
        return OperatorsSnapshot(permissions=store.operator_permissions(self._engine))

    @activity.defn
    def record_outcome(self, outcome: DecisionOutcome) -> None:
        if not outcome.decision_id:
            raise invalid_input("decision_id is empty")
        store.record_outcome(self._engine, outcome)
