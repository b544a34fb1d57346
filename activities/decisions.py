"""Track A's activities: gather the context, plan the candidates, score and explain, and keep
decisions, feedback and operators in PostgreSQL. Thin wrappers over nofx.decisions."""

from __future__ import annotations

from sqlalchemy.engine import Engine
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities._support import invalid_input
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
from nofx.decisions import store
from nofx.decisions.engine import DecisionEngine, NoCandidate


class DecisionActivities:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._decisions = DecisionEngine(engine)

    @activity.defn
    def analyse_context(self, request: DecisionRequest) -> DecisionContext:
        """The context analyser: inventory, platform state, history, predictions, diagnosis."""
        return self._decisions.context(request)

    @activity.defn
    def plan_candidates(self, inp: PlanInput) -> CandidateList:
        """The planner: the enabled playbooks of the problem (capabilities are a pruning rule)."""
        return CandidateList(candidates=self._decisions.candidates(inp.problem))

    @activity.defn
    def evaluate(self, inp: EvaluateInput) -> Evaluation:
        """Score and explain; the mode in force and who must agree."""
        try:
            return self._decisions.evaluate(inp.request, inp.context, inp.candidates)
        except NoCandidate as err:
            raise ApplicationError(str(err), type="NoCandidate", non_retryable=True) from None

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
