"""Safe exploration (nofx/decisions/explore.py through scoring.score): Thompson sampling tries
an uncertain safe candidate sometimes, records its propensity, and never tries a pruned or
too-risky one, nor on a critical tier, after a rejection or past the budget."""

from __future__ import annotations

from collections import Counter

import pytest

from models.decisions import ExplorationPolicy
from nofx.decisions import scoring
from nofx.decisions.success import BetaSuccessModel, Prior
from tests.decision_cases import RESTART, ROLLBACK, SHIFT
from tests.test_decision_scoring import context

ON = ExplorationPolicy(enabled=True, per_service_per_day=5)
# rollback is well known to work (Beta(12, 2)); restart was barely tried (Beta(2, 2))
MODEL = BetaSuccessModel(
    [
        Prior("latency_regression", "configuration", "rollback-config", 11, 10, 12.0),
        Prior("latency_regression", "configuration", "restart-service", 1, 0, 8.0),
    ]
)
SEEDS = range(300)


def choices(policy: ExplorationPolicy, **changes: object) -> Counter[str]:
    ctx = context(**changes)
    picked: Counter[str] = Counter()
    for seed in SEEDS:
        result = scoring.score(
            ctx, [ROLLBACK, RESTART, SHIFT], MODEL, exploration=policy, seed=seed
        )
        assert result.chosen is not None
        picked[result.chosen] += 1
    return picked


def test_off_means_the_greedy_choice_and_no_record() -> None:
    result = scoring.score(context(), [ROLLBACK, RESTART], MODEL, seed=1)
    assert result.exploration is None
    off = scoring.score(
        context(), [ROLLBACK, RESTART], MODEL, exploration=ExplorationPolicy(), seed=1
    )
    assert off.exploration is None
    assert off.chosen == "rollback-config"


def test_it_sometimes_tries_the_uncertain_candidate_and_says_so() -> None:
    picked = choices(ON)
    # the well-known rollback mostly, the barely tried restart sometimes; shift is pruned
    # (no traffic capability) and never tried
    assert picked["rollback-config"] > picked["restart-service"] > 0
    assert "shift-traffic" not in picked
    explored = next(
        r
        for seed in SEEDS
        if (
            r := scoring.score(context(), [ROLLBACK, RESTART], MODEL, exploration=ON, seed=seed)
        ).chosen
        == "restart-service"
    )
    record = explored.exploration
    assert record is not None
    assert record.explored
    assert (record.chosen, record.greedy) == ("restart-service", "rollback-config")
    assert 0 < record.propensity < 0.5
    assert record.eligible == ["rollback-config", "restart-service"]
    assert explored.ranked[0].candidate.name == "restart-service"
    assert explored.ranked[0].rank == 1
    greedy = explored.find("rollback-config")
    assert greedy is not None
    assert greedy.rank == 2
    assert greedy.lost_because is not None
    assert greedy.lost_because.startswith("not tried this time: Thompson sampling drew")
    # the same seed draws the same way: the record can be replayed
    again = scoring.score(context(), [ROLLBACK, RESTART], MODEL, exploration=ON, seed=record.seed)
    assert again.exploration == record


def test_never_a_candidate_above_the_risk_limit() -> None:
    # restart is medium risk here; with max_risk low only rollback is eligible: nothing to try
    low_only = ON.model_copy(update={"max_risk": "low"})
    assert choices(low_only) == Counter({"rollback-config": len(SEEDS)})
    result = scoring.score(context(), [ROLLBACK, RESTART], MODEL, exploration=low_only, seed=3)
    assert result.exploration is not None
    assert result.exploration.why == "1 candidate(s) safe to try"


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({"tier": "tier-0"}, "never on tier-0"),
        ({"rejections_7d": 1}, "a person rejected the engine here 1 time(s) in 7 days"),
        ({"explorations_24h": 5}, "budget spent: 5/5 today"),
    ],
)
def test_never_on_a_critical_tier_after_a_rejection_or_past_the_budget(
    changes: dict[str, object], why: str
) -> None:
    assert set(choices(ON, **changes)) == {"rollback-config"}
    result = scoring.score(context(**changes), [ROLLBACK, RESTART], MODEL, exploration=ON, seed=0)
    assert result.exploration is not None
    assert not result.exploration.explored
    assert result.exploration.why == why
    assert result.exploration.propensity == 1.0


def test_never_when_the_greedy_choice_itself_is_too_risky() -> None:
    # on tier-1 a restart is high risk; when it is the best there is, that context is not one
    # to experiment in
    result = scoring.score(context(tier="tier-1"), [RESTART], MODEL, exploration=ON, seed=0)
    assert result.exploration is not None
    assert result.exploration.why == (
        "the greedy choice is high risk: no exploring in such a context"
    )
    # and beside a low-risk rollback the high-risk restart is never sampled
    assert choices(ON, tier="tier-1") == Counter({"rollback-config": len(SEEDS)})
