"""Track A's activities: gather the context, plan the candidates, score and explain, and keep
decisions, feedback and operators in PostgreSQL. Thin wrappers over nofx.decisions."""

from __future__ import annotations

from sqlalchemy.engine import Engine
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities._support import invalid_input, progress_reporter
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
    SuccessModelReport,
    TrainRequest,
)
from nofx.decisions import store, training
from nofx.decisions.engine import DecisionEngine, NoCandidate
from nofx.decisions.learned import LearningError
from nofx.logging import get_logger

log = get_logger(__name__)


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

    @activity.defn
    def train_success_model(self, inp: TrainRequest) -> SuccessModelReport:
        """Learn from the decision history, judge against the champion, store, maybe promote.

        A history too short to train or to hold out from fails at once with the reason
        (`NotEnoughHistory`): retrying would not add decisions.
        """
        if inp.until is None:
            raise invalid_input("until is required")

        try:
            report = training.train_and_judge(
                self._engine, now=inp.until, progress=progress_reporter("success model training")
            )
        except LearningError as err:
            raise ApplicationError(str(err), type="NotEnoughHistory", non_retryable=True) from err
        log.info(
            "success model trained",
            model=report.version,
            promoted=report.promoted,
            verdict=report.verdict,
            holdout=report.challenger,
        )
        return report
