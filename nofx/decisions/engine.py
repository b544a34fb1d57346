"""The decision engine in one place: context, candidates, scoring, mode and approval, explanation.

`DecisionActivities` (the workflow's steps) and the `simulate` operation both call it, so a
simulation scores exactly as a real decision would — it only records nothing and runs nothing.
"""

from __future__ import annotations

import secrets

from sqlalchemy.engine import Engine

from models.decisions import (
    Candidate,
    DecisionContext,
    DecisionRequest,
    Evaluation,
)
from nofx.decisions import approval, context, experiments, scoring, store
from nofx.decisions.explain import explain
from nofx.decisions.success import BetaSuccessModel, SuccessModel, load_priors
from nofx.decisions.training import ActiveSuccessModel
from nofx.inventory import find_target


class NoCandidate(ValueError):
    """The problem has no enabled playbook at all: nothing to score."""


class DecisionEngine:
    """Decide about one subject against the platform database `engine`."""

    def __init__(self, engine: Engine, model: SuccessModel | None = None) -> None:
        """`model`: the success model to score with; by default the champion in force (the
        active learned model over the packaged priors, followed as it is promoted)."""
        self.engine = engine
        self.model = model or ActiveSuccessModel(engine, BetaSuccessModel(load_priors()))

    def context(self, request: DecisionRequest) -> DecisionContext:
        """The context analyser: inventory, platform state, history, predictions, diagnosis."""
        target = find_target(self.engine, request.subject)
        return context.gather(self.engine, request, target, store.get_policy(self.engine))

    def candidates(self, problem: str) -> list[Candidate]:
        """The planner: the enabled playbooks of the problem (capabilities are a pruning rule)."""
        return context.plan(self.engine, problem)

    def evaluate(
        self, request: DecisionRequest, ctx: DecisionContext, candidates: list[Candidate]
    ) -> Evaluation:
        """Score and explain; the mode in force and who must agree."""
        if not candidates:
            raise NoCandidate(
                f"no candidate for {request.problem!r} on {request.subject} (no enabled playbook)"
            )
        policy = store.get_policy(self.engine)
        if isinstance(self.model, ActiveSuccessModel):
            self.model.refresh()
        model, weights = self.model, policy.weights
        with self.engine.connect() as conn:
            trial = experiments.running(conn)
        assignment = experiments.assign(trial, request.subject) if trial else None
        if trial is not None and assignment is not None:
            arm = next(a for a in trial.arms if a.name == assignment.arm)
            if arm.model == "prior" and isinstance(model, ActiveSuccessModel):
                model = model.prior
            weights = arm.weights or weights
        result = scoring.score(
            ctx,
            candidates,
            model,
            weights,
            policy.exploration,
            seed=secrets.randbits(31),
        )
        best = result.best()
        mode, mode_why = approval.effective_mode(
            policy.mode,
            context.service_mode(self.engine, request.subject),  # type: ignore[arg-type]
            best.candidate.automation_level if best else None,
        )
        record = approval.requirement(
            mode,
            best.risk if best else None,
            result.confidence,
            policy,
            required_permissions=best.candidate.required_permissions if best else [],
            asked_by_caller=request.require_approval,
        )
        return Evaluation(
            scoring=result,
            explanation=explain(ctx, result, record),
            mode=mode,
            mode_why=mode_why,
            approval=record,
            policy=policy,
            experiment=assignment,
        )

    def simulate(self, request: DecisionRequest) -> tuple[DecisionContext, Evaluation]:
        """What the engine would decide now, from the given or gathered context and candidates."""
        ctx = request.context or self.context(request)
        candidates = request.candidates
        if candidates is None:
            candidates = self.candidates(request.problem)
        return ctx, self.evaluate(request, ctx, candidates)
