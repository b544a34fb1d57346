"""The decision engine's plain functions on hand-computed cases: scoring, risk, pruning, modes,
approvals and the explanation."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from models.decisions import (
    ApprovalRecord,
    Candidate,
    CriteriaWeights,
    DecisionContext,
    DecisionPolicy,
    HistoricalMetrics,
    HumanVerdict,
    OperationalConstraints,
    OutcomeCount,
    Prediction,
    SuccessEstimate,
    SystemState,
)
from nofx.decisions import approval, risk, scoring
from nofx.decisions.explain import explain
from nofx.decisions.success import BetaSuccessModel, Prior
from tests.decision_cases import RESTART, ROLLBACK, SHIFT

ALL_BUT_TRAFFIC = [
    "process.restart",
    "disk.cleanup",
    "config.rollback",
    "config.adjust",
    "db.terminate_idle",
    "cache.invalidate",
    "probe.http",
]

PRIORS = [
    Prior("latency_regression", "configuration", "rollback-config", 2, 2, 12.0),
    Prior("latency_regression", "configuration", "restart-service", 2, 0, None),
    Prior("latency_regression", "self", "restart-service", 2, 2, 6.0),
]
MODEL = BetaSuccessModel(PRIORS)


def context(**changes: object) -> DecisionContext:
    state = {
        "service": "svc",
        "tier": "tier-2",
        "pattern": "latency_regression",
        "cause": "configuration",
        "healthy": True,
        "replicas": 1,
        "serving_replicas": 1,
    }
    state |= {k: v for k, v in changes.items() if k in SystemState.model_fields}
    constraints = {"capabilities": ALL_BUT_TRAFFIC} | {
        k: v for k, v in changes.items() if k in OperationalConstraints.model_fields
    }
    history = {"config_change_rollbackable": True} | {
        k: v for k, v in changes.items() if k in HistoricalMetrics.model_fields
    }
    return DecisionContext(
        current_state=SystemState.model_validate(state),
        constraints=OperationalConstraints.model_validate(constraints),
        historical_data=HistoricalMetrics.model_validate(history),
        predicted_outcomes=changes.get("predicted_outcomes", []),  # type: ignore[arg-type]
    )


def test_scores_match_the_hand_computed_weighted_sum() -> None:
    result = scoring.score(context(), [RESTART, SHIFT, ROLLBACK], MODEL)
    assert result.chosen == "rollback-config"
    rollback = result.find("rollback-config")
    restart = result.find("restart-service")
    assert rollback is not None
    assert rollback.scores is not None
    assert restart is not None
    assert restart.scores is not None
    # Beta(1 + 1 (full-auto) + 2, 1 + 0): 0.8; 12 s of a 300 s RTO; risk = tier-2 only; cost 0.10.
    assert rollback.scores.success_probability == pytest.approx(0.8)
    assert rollback.scores.u_recovery == pytest.approx(0.96)
    assert rollback.scores.risk_score == pytest.approx(0.05)
    assert rollback.scores.total == pytest.approx(0.5 * 0.8 + 0.2 * 0.96 + 0.2 * 0.95 + 0.1 * 0.9)
    # Beta(2, 3): 0.4; nominal 8 s; blast 0.25 + irreversible 0.10 + tier 0.05; cost 0.30.
    assert restart.scores.success_probability == pytest.approx(0.4)
    assert restart.scores.expected_recovery_seconds == pytest.approx(8.0)
    assert restart.risk is not None
    assert restart.risk.level == "medium"
    assert restart.scores.risk_score == pytest.approx(0.40)
    expected = 0.5 * 0.4 + 0.2 * (1 - 8 / 300) + 0.2 * 0.6 + 0.1 * 0.7
    assert restart.scores.total == pytest.approx(expected, abs=1e-4)
    assert restart.rank == 2
    # confidence = mean - sd of Beta(4, 1)
    assert result.confidence == pytest.approx(0.8 - (4 / (25 * 6)) ** 0.5, abs=1e-4)


def test_the_root_cause_selects_the_prior_and_history_adds_to_it() -> None:
    by_config = scoring.score(context(), [RESTART, ROLLBACK], MODEL)
    by_self = scoring.score(
        context(cause="self", config_change_rollbackable=False), [RESTART, ROLLBACK], MODEL
    )
    assert by_config.chosen == "rollback-config"
    assert by_self.chosen == "restart-service"
    seen = context(outcomes=[OutcomeCount(playbook="restart-service", resolved=6, failed=0)])
    restart = scoring.score(seen, [RESTART], MODEL).find("restart-service")
    assert restart is not None
    assert restart.success is not None
    assert (restart.success.alpha, restart.success.beta) == (8.0, 3.0)
    assert "history 6/6 (tier-2)" in restart.success.source


@pytest.mark.parametrize(
    ("changes", "candidate", "rule"),
    [
        ({}, SHIFT, "capability"),
        ({"known_service": False}, RESTART, "unknown_service"),
        ({"excluded": ["restart-service"]}, RESTART, "already_failed"),
        ({"config_change_rollbackable": False}, ROLLBACK, "precondition"),
        ({"change_freeze": "quarter end"}, RESTART, "change_freeze"),
        ({"replicas": 2, "serving_replicas": 2, "max_blast_radius": 0.4}, RESTART, "blast_radius"),
    ],
)
def test_each_pruning_rule_removes_the_candidate_with_its_reason(
    changes: dict[str, object], candidate: Candidate, rule: str
) -> None:
    result = scoring.score(context(**changes), [candidate], MODEL)
    assert result.chosen is None
    pruned = result.find(candidate.name)
    assert pruned is not None
    assert pruned.rank is None
    assert [p.split(":")[0] for p in pruned.pruned_by] == [rule]
    assert result.rules_fired == [f"{candidate.name}: {pruned.pruned_by[0]}"]


def test_rules_that_do_not_apply_keep_the_candidate() -> None:
    # A freeze spares reversible actions; the blast limit is not exceeded at exactly the limit,
    # and a lone replica (or one that serves nothing) is never pruned for blast radius.
    kept = [
        ({"change_freeze": "quarter end"}, ROLLBACK),
        ({"replicas": 2, "serving_replicas": 2, "max_blast_radius": 0.5}, RESTART),
        ({"replicas": 1, "serving_replicas": 1, "max_blast_radius": 0.1}, RESTART),
        ({"replicas": 2, "healthy": False, "max_blast_radius": 0.1}, RESTART),
    ]
    for changes, candidate in kept:
        assert scoring.score(context(**changes), [candidate], MODEL).chosen == candidate.name


def test_ties_break_by_success_recovery_rank_then_name() -> None:
    twin = RESTART.model_copy(update={"name": "another-restart"})
    result = scoring.score(context(cause="self"), [RESTART, twin], BetaSuccessModel([]))
    assert [c.candidate.name for c in result.ranked] == ["another-restart", "restart-service"]
    ranked_first = twin.model_copy(update={"escalation_rank": 2})
    result = scoring.score(context(cause="self"), [ranked_first, RESTART], BetaSuccessModel([]))
    assert result.chosen == "restart-service"
    lost = result.find("another-restart")
    assert lost is not None
    assert "tie-break" in (lost.lost_because or "")


class Fixed:
    """A success model with one hand-set Beta posterior and recovery time per candidate."""

    def __init__(self, beliefs: dict[str, tuple[float, float, float]]) -> None:
        self.beliefs = beliefs

    def estimate(self, context: DecisionContext, candidate: Candidate) -> SuccessEstimate:
        a, b, seconds = self.beliefs[candidate.name]
        return SuccessEstimate(
            probability=a / (a + b), alpha=a, beta=b, expected_recovery_seconds=seconds, source="x"
        )


def test_success_the_evidence_cannot_tell_from_the_best_lets_recovery_decide() -> None:
    slow = RESTART.model_copy(update={"name": "slow"})
    fast = RESTART.model_copy(update={"name": "fast", "escalation_rank": 9})
    weak = RESTART.model_copy(update={"name": "weak"})
    # slow Beta(90, 10) 0.90 in 30 s; fast Beta(88, 12) 0.88 in 5 s; weak Beta(50, 50) 0.5 in 1 s
    model = Fixed({"slow": (90, 10, 30.0), "fast": (88, 12, 5.0), "weak": (50, 50, 1.0)})
    weights = CriteriaWeights(success=1.0, recovery_time=0.02, risk=0.0, cost=0.0)
    ctx = context(cause="self")
    plain = scoring.score(ctx, [slow, fast, weak], model, weights)
    assert plain.chosen == "slow"  # 0.90 + 0.02 (1 - 30/300) beats 0.88 + 0.02 (1 - 5/300)
    # the gap 0.02 lies within 0.01 + sqrt(0.9*0.1/101 + 0.88*0.12/101) = 0.054; weak's 0.4 not
    tolerant = ctx.model_copy(
        update={"objectives": ctx.objectives.model_copy(update={"success_tolerance": 0.01})}
    )
    result = scoring.score(tolerant, [slow, fast, weak], model, weights)
    assert result.chosen == "fast"
    flags = {c.candidate.name: c.scores.success_as_best for c in result.ranked if c.scores}
    assert flags == {"slow": True, "fast": True, "weak": False}
    chosen = result.find("fast")
    assert chosen is not None
    assert chosen.scores is not None
    assert chosen.scores.u_success == pytest.approx(0.9)
    assert chosen.scores.success_probability == pytest.approx(0.88)  # the estimate, unchanged
    assert scoring.as_good_as(model.estimate(ctx, fast), model.estimate(ctx, slow), 0.0) is False


def test_risk_levels_on_hand_computed_cases() -> None:
    assert risk.assess(context(), RESTART).score == pytest.approx(0.40)
    tier0 = risk.assess(context(tier="tier-0"), RESTART)
    assert (tier0.level, tier0.score) == ("high", pytest.approx(0.65))
    frozen = risk.assess(context(tier="tier-0", change_freeze="release"), RESTART)
    assert (frozen.level, frozen.score) == ("critical", pytest.approx(0.95))
    down = risk.assess(context(healthy=False), RESTART)
    assert (down.level, down.blast_radius) == ("low", 0.0)
    soon = risk.assess(
        context(predicted_outcomes=[Prediction(kind="failure", time_to_failure_hours=0.5)]),
        RESTART,
    )
    assert soon.score == pytest.approx(0.50)
    assert {f.name for f in soon.factors} >= {"blast_radius", "reversibility", "tier"}
    budget = risk.assess(context().model_copy(deep=True), ROLLBACK)
    assert budget.reversible
    assert budget.level == "low"


def test_modes_combine_to_the_strictest() -> None:
    assert approval.effective_mode("autonomous", None, "full-auto")[0] == "autonomous"
    assert approval.effective_mode("autonomous", "assist", "full-auto")[0] == "assist"
    assert approval.effective_mode("autonomous", None, "semi-auto")[0] == "assist"
    assert approval.effective_mode("assist", "observe", "full-auto")[0] == "observe"
    mode, why = approval.effective_mode("autonomous", None, "manual")
    assert (mode, why) == ("assist", ["playbook is manual (at most assist)"])


def test_who_must_agree() -> None:
    policy = DecisionPolicy()
    low = risk.assess(context(healthy=False), RESTART)
    high = risk.assess(context(tier="tier-0"), RESTART)
    critical = risk.assess(context(tier="tier-0", change_freeze="x"), RESTART)
    perms = ["healing:restart"]
    assert not approval.requirement(
        "autonomous", low, 0.9, policy, required_permissions=perms
    ).required
    assert approval.requirement("assist", low, 0.9, policy, required_permissions=perms).required
    observed = approval.requirement("observe", critical, 0.1, policy, required_permissions=perms)
    assert not observed.required
    asked = approval.requirement("autonomous", high, 0.9, policy, required_permissions=perms)
    assert asked.required
    assert asked.approvers_needed == 1
    assert "risk high is at or above the threshold high" in asked.why
    unsure = approval.requirement("autonomous", low, 0.2, policy, required_permissions=perms)
    assert unsure.required
    assert "below the threshold" in unsure.why[0]
    two = approval.requirement("autonomous", critical, 0.9, policy, required_permissions=perms)
    assert two.approvers_needed == 2
    assert two.timeout_seconds == policy.timeouts.critical
    guard = approval.requirement(
        "autonomous", low, 0.9, policy, required_permissions=perms, asked_by_caller="guardrail"
    )
    assert guard.required
    assert guard.why == ["guardrail"]


def verdict(kind: str, who: str, action: str | None = None) -> HumanVerdict:
    return HumanVerdict(
        kind=kind,  # type: ignore[arg-type]
        approver=who,
        action=action,
        reason="r",
        at=datetime(2026, 12, 1, tzinfo=UTC),
    )


def test_a_verdict_counts_only_from_an_authorised_new_approver() -> None:
    ranked = scoring.score(context(), [RESTART, SHIFT, ROLLBACK], MODEL).ranked
    record = ApprovalRecord(
        required=True,
        approvers_needed=2,
        required_permissions=["healing:config"],
        outcome="pending",
    )
    ops = {"alice": ["healing:config", "healing:restart"], "bob": ["healing:config"], "eve": []}
    assert approval.refusal(verdict("approve", "mallory"), record, ops, ranked) is not None
    assert "lacks permission healing:config" in (
        approval.refusal(verdict("approve", "eve"), record, ops, ranked) or ""
    )
    assert approval.refusal(verdict("approve", "alice"), record, ops, ranked) is None
    once = record.model_copy(update={"verdicts": [verdict("approve", "alice")]})
    assert "already answered" in (
        approval.refusal(verdict("approve", "alice"), once, ops, ranked) or ""
    )
    assert approval.settle(once).outcome == "pending"
    both = once.model_copy(update={"verdicts": [*once.verdicts, verdict("approve", "bob")]})
    assert approval.settle(both).outcome == "approved"
    assert "not a candidate" in (
        approval.refusal(verdict("override", "alice", "nope"), record, ops, ranked) or ""
    )
    assert "cannot run here" in (
        approval.refusal(verdict("override", "alice", "shift-traffic"), record, ops, ranked) or ""
    )
    assert "lacks permission healing:restart" in (
        approval.refusal(verdict("override", "bob", "restart-service"), record, ops, ranked) or ""
    )
    done = record.model_copy(update={"outcome": "approved"})
    assert "not waiting" in (approval.refusal(verdict("reject", "bob"), done, ops, ranked) or "")


def test_the_explanation_names_why_each_alternative_lost() -> None:
    result = scoring.score(context(), [RESTART, SHIFT, ROLLBACK], MODEL)
    text = explain(context(), result)
    assert set(text.why_not) == {"restart-service", "shift-traffic"}
    assert "mostly on success probability" in text.why_not["restart-service"]
    assert text.why_not["shift-traffic"].startswith("pruned: capability")
    assert "Chose rollback-config" in text.text
    assert "Not shift-traffic: pruned: capability" in text.text
    assert [row["candidate"] for row in text.criteria] == [
        "rollback-config",
        "restart-service",
        "shift-traffic",
    ]
    assert text.evidence["root_cause"] == "configuration"
