"""Safe exploration: Thompson sampling over the candidates it is safe to try.

The greedy choice always knows best what it already knows; to learn, the engine sometimes acts
on another good candidate. Each eligible candidate's success probability is drawn from its Beta
posterior (the success model's alpha and beta) and put in place of its mean in the weighted
total; the highest drawn total is chosen. A candidate the engine is unsure about is drawn wide,
so it wins sometimes; one it knows to fail almost never does.

Eligible: ranked (passed every pruning rule) and at most `ExplorationPolicy.max_risk`. It never
explores (the greedy choice stands) when exploration is off, the service's tier is in
`never_tiers`, the greedy choice itself is above `max_risk` (a critical context), a person
rejected the engine on this service and problem in the last 7 days, the service's budget of
explorations for the day is spent, or fewer than two candidates are eligible.

The propensity — the probability the sampling policy makes the choice it made — is estimated
from `samples` more draws with the same generator; learning divides an explored outcome by it
(inverse-propensity weighting) so that what exploration tried is not over-counted.
"""

from __future__ import annotations

import random

from models.decisions import (
    RISK_LEVELS,
    CriteriaWeights,
    DecisionContext,
    Exploration,
    ExplorationPolicy,
    ScoredCandidate,
)


def _refusal(
    context: DecisionContext, greedy: ScoredCandidate, policy: ExplorationPolicy
) -> str | None:
    history = context.historical_data
    if context.current_state.tier in policy.never_tiers:
        return f"never on {context.current_state.tier}"
    if greedy.risk is not None and _above(greedy.risk.level, policy.max_risk):
        return f"the greedy choice is {greedy.risk.level} risk: no exploring in such a context"
    if history.rejections_7d:
        return f"a person rejected the engine here {history.rejections_7d} time(s) in 7 days"
    if history.explorations_24h >= policy.per_service_per_day:
        return f"budget spent: {history.explorations_24h}/{policy.per_service_per_day} today"
    return None


def _above(level: str, limit: str) -> bool:
    return RISK_LEVELS.index(level) > RISK_LEVELS.index(limit)


def _draw(
    eligible: list[ScoredCandidate], weights: CriteriaWeights, rng: random.Random
) -> ScoredCandidate:
    def total(c: ScoredCandidate) -> float:
        assert c.scores is not None
        assert c.success is not None
        drawn = rng.betavariate(c.success.alpha, c.success.beta)
        return c.scores.total + weights.success * (drawn - c.scores.u_success)

    return max(eligible, key=total)


def explore(
    context: DecisionContext,
    ranked: list[ScoredCandidate],
    weights: CriteriaWeights,
    policy: ExplorationPolicy,
    seed: int,
) -> Exploration:
    """Which candidate the sampling policy takes among the ranked (greedy first) ones."""
    greedy = ranked[0]
    name = greedy.candidate.name
    refused = _refusal(context, greedy, policy)
    eligible = [
        c
        for c in ranked
        if c.scores is not None
        and c.success is not None
        and (c.risk is None or not _above(c.risk.level, policy.max_risk))
    ]
    if refused is None and len(eligible) < 2:
        refused = f"{len(eligible)} candidate(s) safe to try"
    if refused is not None:
        return Exploration(
            explored=False, chosen=name, greedy=name, propensity=1.0, why=refused, seed=seed
        )
    rng = random.Random(seed)  # noqa: S311 - sampling, not secrecy; the seed is recorded
    chosen = _draw(eligible, weights, rng)
    wins = sum(_draw(eligible, weights, rng) is chosen for _ in range(policy.samples))
    propensity = max(wins, 1) / policy.samples
    explored = chosen is not greedy
    return Exploration(
        explored=explored,
        chosen=chosen.candidate.name,
        greedy=name,
        propensity=round(propensity, 4),
        eligible=[c.candidate.name for c in eligible],
        why=(
            f"Thompson sampling drew {chosen.candidate.name} over the greedy {name}"
            if explored
            else f"Thompson sampling kept the greedy {name}"
        ),
        seed=seed,
    )
