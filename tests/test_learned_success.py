"""The learned success model on made-up evidence whose rule is known: it learns what depends on
the context, stays on its prior where it has no data, round-trips through its artifact, takes
messy numbers and explains itself (nofx/decisions/features.py, nofx/decisions/learned.py)."""

from __future__ import annotations

import math
import random

import pytest

from models.decisions import DecisionContext, HistoricalMetrics, OutcomeCount, SystemState
from nofx.decisions.features import extract
from nofx.decisions.learned import (
    Bundle,
    Example,
    LearnedSuccessModel,
    LearningError,
    learnt_key,
    train,
)
from nofx.decisions.success import BetaSuccessModel, Prior
from tests.decision_cases import RESTART, ROLLBACK, SHIFT

PRIOR = BetaSuccessModel(
    [
        Prior("latency_regression", None, "rollback-config", 2, 1, 10.0),
        Prior("latency_regression", None, "restart-service", 2, 1, 10.0),
    ]
)


def situation(minutes: float, p95: float = 400.0, **metrics: float) -> DecisionContext:
    return DecisionContext(
        current_state=SystemState(
            service="svc",
            pattern="latency_regression",
            metrics={"p95_ms": p95, **metrics},
        ),
        historical_data=HistoricalMetrics(minutes_since_config_change=minutes),
    )


def evidence(n: int = 300, seed: int = 3) -> list[Example]:
    """A config change in the last 30 minutes: rolling back fixes it and restarting does not;
    with no recent change it is the other way round (90 % of the time)."""
    rng = random.Random(seed)  # noqa: S311 - reproducible made-up evidence
    out = []
    for _ in range(n):
        minutes = rng.uniform(0, 120)
        recent = minutes < 30
        for candidate, works in ((ROLLBACK, recent), (RESTART, not recent)):
            fixed = works if rng.random() < 0.9 else not works
            seconds = (5.0 if candidate is ROLLBACK else 20.0) * rng.uniform(0.8, 1.2)
            out.append(
                Example(
                    situation(minutes, rng.uniform(250, 600)).model_dump(mode="json"),
                    candidate,
                    fixed,
                    seconds if fixed else None,
                )
            )
    return out


@pytest.fixture(scope="module")
def model() -> LearnedSuccessModel:
    return LearnedSuccessModel(train(evidence()), PRIOR, "test")


def test_it_learns_which_candidate_fits_which_context(model: LearnedSuccessModel) -> None:
    after_a_push = situation(5)
    long_after = situation(100)
    assert model.estimate(after_a_push, ROLLBACK).probability > 0.75
    assert model.estimate(after_a_push, RESTART).probability < 0.3
    assert model.estimate(long_after, RESTART).probability > 0.75
    assert model.estimate(long_after, ROLLBACK).probability < 0.3
    # the recovery model saw rollbacks take ~5 s and restarts ~20 s
    assert model.estimate(after_a_push, ROLLBACK).expected_recovery_seconds < 10
    assert model.estimate(long_after, RESTART).expected_recovery_seconds > 12


def test_a_candidate_it_never_saw_keeps_its_prior(model: LearnedSuccessModel) -> None:
    ctx = situation(5)
    assert model.estimate(ctx, SHIFT).probability == PRIOR.estimate(ctx, SHIFT).probability
    assert "never saw" in model.estimate(ctx, SHIFT).source


def test_little_evidence_stays_near_the_prior() -> None:
    few = evidence(6)  # 12 examples: each candidate seen 6 times
    learned = LearnedSuccessModel(train(few), PRIOR)
    ctx = situation(5)
    prior = PRIOR.estimate(ctx, ROLLBACK)
    estimate = learned.estimate(ctx, ROLLBACK)
    assert estimate.alpha + estimate.beta == pytest.approx(prior.alpha + prior.beta + 6)
    assert abs(estimate.probability - prior.probability) <= 6 / (prior.alpha + prior.beta + 6)


def test_the_artifact_round_trips(model: LearnedSuccessModel) -> None:
    again = LearnedSuccessModel(Bundle.from_text(model.bundle.to_text()), PRIOR, "test")
    for ctx in (situation(5), situation(100)):
        for candidate in (ROLLBACK, RESTART):
            assert again.estimate(ctx, candidate) == model.estimate(ctx, candidate)


def test_messy_numbers_are_missing_not_fatal_and_said(model: LearnedSuccessModel) -> None:
    messy = situation(5, p95=math.nan, queue_depth=math.inf)
    features = extract(messy, ROLLBACK)
    assert features.dropped == ["current_state.metrics.p95_ms", "current_state.metrics.queue_depth"]
    assert "current_state.metrics.p95_ms" not in features.numeric
    assert model.estimate(messy, ROLLBACK).probability > 0.7  # the deciding feature is there
    # a metric training never saw is ignored, not an error
    assert 0 <= model.estimate(situation(5, brand_new_metric=3.0), ROLLBACK).probability <= 1


def test_the_explanation_names_the_deciding_feature(model: LearnedSuccessModel) -> None:
    top = model.explain(situation(5), ROLLBACK)
    assert top[0][0] in {"historical_data.minutes_since_config_change", "candidate"}
    assert any(name == "historical_data.minutes_since_config_change" for name, _ in top)


def test_too_little_or_one_sided_evidence_is_refused() -> None:
    with pytest.raises(LearningError, match="at least 10"):
        train(evidence(2))
    same = [Example(situation(5).model_dump(mode="json"), ROLLBACK, True) for _ in range(20)]
    with pytest.raises(LearningError, match="same outcome"):
        train(same)


def with_history(ctx: DecisionContext, *outcomes: OutcomeCount) -> DecisionContext:
    history = ctx.historical_data.model_copy(update={"outcomes": list(outcomes)})
    return ctx.model_copy(update={"historical_data": history})


def test_the_outcomes_it_learnt_from_are_not_counted_again(model: LearnedSuccessModel) -> None:
    ctx = situation(5)
    key = learnt_key(ctx.current_state.pattern, ctx.current_state.tier, ROLLBACK.name)
    resolved, failed, rejected = model.bundle.learnt[key]
    assert (resolved + failed, rejected) == (300, 0)  # every rollback example, as outcomes
    # the history the context analyser reads holds those same 300 outcomes: counted once
    learnt = with_history(
        ctx, OutcomeCount(playbook=ROLLBACK.name, resolved=resolved, failed=failed)
    )
    assert model.estimate(learnt, ROLLBACK) == model.estimate(ctx, ROLLBACK)
    # and 3 newer ones move the estimate before the next training does
    newer = with_history(
        ctx, OutcomeCount(playbook=ROLLBACK.name, resolved=resolved + 3, failed=failed)
    )
    assert model.estimate(newer, ROLLBACK).alpha == pytest.approx(
        model.estimate(ctx, ROLLBACK).alpha + 3
    )
