"""Multi-criteria scoring of the candidates of one decision (MCDA, weighted sum).

1. **Rules prune first** (`prune`), each with its reason, listed in the explanation:
   `capability` (a step needs what the target's providers do not offer), `unknown_service`,
   `already_failed` (tried and rolled back for this subject), `precondition` (a configuration
   rollback needs an earlier, non-rollback version to return to), `change_freeze` (no
   irreversible action during a freeze) and `blast_radius` (a candidate that takes more of a
   replica group's serving capacity out than the limit; a lone replica has no one to carry its
   traffic, so the limit does not apply to it — its risk says so instead).
2. **Every criterion becomes a utility in [0, 1], 1 best**:
   success `u = p` (the success model's posterior mean); recovery time `u = 1 - min(t / RTO, 1)`;
   risk `u = 1 - risk score` (nofx.decisions.risk); cost `u = 1 - cost` where cost is the
   `STEP_COST` of its steps summed and capped at 1.
3. **Total = sum of weight * utility** with the objectives' weights normalised to sum 1.
4. **Ties** break deterministically: higher total, then higher success utility, then shorter
   recovery, then lower escalation rank, then name.
5. **Indifference on success** (`objectives.success_tolerance`, off at 0): a candidate whose
   success probability is below the best one's by no more than the tolerance plus one standard
   deviation of the difference of the two Beta posteriors is scored on success as the best
   (`success_as_best`), so recovery time, risk and cost decide among candidates the evidence
   cannot tell apart on success; estimation noise alone does not outvote a real difference in
   the other criteria.
6. **Confidence** in the choice is the lower edge of the belief, `mean - sd` of the chosen
   candidate's Beta posterior (clipped to [0, 1]): Beta(3, 1) (2 successes in 2 runs) gives
   0.56, Beta(1, 1) (nothing known) 0.21, Beta(31, 1) 0.94.
"""

from __future__ import annotations

import math

from models.actions import ACTION_CAPABILITY
from models.decisions import (
    Candidate,
    CriteriaWeights,
    CriterionScores,
    DecisionContext,
    ExplorationPolicy,
    ScoredCandidate,
    Scoring,
    SuccessEstimate,
)
from nofx.decisions import risk
from nofx.decisions.explore import explore
from nofx.decisions.success import SuccessModel

DRIVERS = 3  # a learned model's feature contributions kept on the chosen candidate

# What a step costs while it runs, as a share of the service's normal operation.
STEP_COST = {
    "restart_service": 0.30,  # in-flight requests lost, caches and pools start cold
    "drain_traffic": 0.20,  # the replica's share moves to the others until re-admitted
    "shift_weight": 0.20,
    "admit_traffic": 0.0,  # gives the replica's share back
    "invalidate_cache": 0.15,  # reads go to the source of truth until warm again
    "rollback_config": 0.10,  # every replica reloads
    "resize_pool": 0.05,  # more database connections held
    "terminate_idle_connections": 0.05,
    "cleanup_disk": 0.0,
    "validate_health": 0.0,
    "validate_requests": 0.0,
}


def candidate_cost(candidate: Candidate) -> float:
    """Share of normal operation disturbed while it runs; a declared cost c scores c / (1 + c)."""
    if candidate.declared is not None and candidate.declared.cost is not None:
        return candidate.declared.cost / (1.0 + candidate.declared.cost)
    return min(1.0, sum(STEP_COST.get(s.action, 0.1) for s in candidate.steps))


def prune(context: DecisionContext, candidate: Candidate) -> list[str]:
    """The rules that remove `candidate`, each as `rule: reason`; empty when it may be chosen."""
    state = context.current_state
    constraints = context.constraints
    fired: list[str] = []
    if not constraints.known_service:
        fired.append(f"unknown_service: {state.service} is not in the inventory")
    offered = set(constraints.capabilities)
    missing = sorted({ACTION_CAPABILITY[s.action] for s in candidate.steps} - offered)
    if constraints.known_service and missing:
        fired.append(f"capability: {state.service} does not offer {', '.join(missing)}")
    if candidate.name in constraints.excluded:
        fired.append("already_failed: tried and rolled back for this incident")
    if any(s.action == "rollback_config" for s in candidate.steps) and not (
        context.historical_data.config_change_rollbackable
    ):
        fired.append(
            "precondition: no configuration change to roll back (the active version is the"
            " first, or already a rollback)"
        )
    irreversible = risk.irreversible_steps(candidate)
    if constraints.change_freeze and irreversible:
        fired.append(
            f"change_freeze: {', '.join(irreversible)} cannot be undone and a freeze is active"
            f" ({constraints.change_freeze})"
        )
    if constraints.require_reversible and irreversible:
        fired.append(
            f"reversible_required: {', '.join(irreversible)} cannot be undone and only reversible"
            " candidates may run"
        )
    blast = risk.blast_radius(context, candidate)
    declared = candidate.declared is not None and candidate.declared.blast_radius is not None
    if (state.replicas > 1 or declared) and blast > constraints.max_blast_radius:
        fired.append(
            f"blast_radius: takes {blast:.0%} of the group's serving capacity, over the limit of"
            f" {constraints.max_blast_radius:.0%}"
        )
    return fired


def _variance(success: SuccessEstimate) -> float:
    a, b = success.alpha, success.beta
    return a * b / ((a + b) ** 2 * (a + b + 1))


def confidence_of(success: SuccessEstimate) -> float:
    return max(0.0, min(1.0, success.probability - math.sqrt(_variance(success))))


def as_good_as(success: SuccessEstimate, best: SuccessEstimate, tolerance: float) -> bool:
    """Is `success` indistinguishable from `best` within `tolerance` (point 5 of the doc)?"""
    if tolerance <= 0:
        return False
    gap = best.probability - success.probability
    return gap <= tolerance + math.sqrt(_variance(success) + _variance(best))


def criterion_scores(
    context: DecisionContext,
    candidate: Candidate,
    success: SuccessEstimate,
    risk_score: float,
    weights: CriteriaWeights,
    best: SuccessEstimate | None = None,
) -> CriterionScores:
    """The candidate's utilities; with `best` (the most likely success among the candidates)
    and an indifference tolerance, success within it scores as the best's."""
    rto = context.objectives.rto_seconds
    cost = candidate_cost(candidate)
    u_success = success.probability
    as_best = best is not None and as_good_as(success, best, context.objectives.success_tolerance)
    if as_best and best is not None:
        u_success = max(u_success, best.probability)
    u_recovery = 1.0 - min(success.expected_recovery_seconds / rto, 1.0)
    u_risk = 1.0 - risk_score
    u_cost = 1.0 - cost
    total = (
        weights.success * u_success
        + weights.recovery_time * u_recovery
        + weights.risk * u_risk
        + weights.cost * u_cost
    )
    return CriterionScores(
        success_probability=round(success.probability, 4),
        expected_recovery_seconds=round(success.expected_recovery_seconds, 2),
        risk_score=round(risk_score, 4),
        cost=round(cost, 4),
        u_success=round(u_success, 4),
        u_recovery=round(u_recovery, 4),
        u_risk=round(u_risk, 4),
        u_cost=round(u_cost, 4),
        total=round(min(1.0, max(0.0, total)), 4),
        success_as_best=as_best,
    )


_CRITERIA = (
    ("success", "u_success", "success probability"),
    ("recovery_time", "u_recovery", "recovery time"),
    ("risk", "u_risk", "risk"),
    ("cost", "u_cost", "cost"),
)


def why_lost(loser: ScoredCandidate, winner: ScoredCandidate, weights: CriteriaWeights) -> str:
    """The criterion that cost `loser` the most against `winner`, in words."""
    assert loser.scores is not None
    assert winner.scores is not None
    deficits = []
    for weight_name, field, words in _CRITERIA:
        w = getattr(weights, weight_name)
        gap = w * (getattr(winner.scores, field) - getattr(loser.scores, field))
        deficits.append((gap, words, getattr(loser.scores, field), getattr(winner.scores, field)))
    gap, words, mine, theirs = max(deficits)
    lead = (
        f"total {loser.scores.total:.3f} against {winner.scores.total:.3f} for"
        f" {winner.candidate.name}"
    )
    if gap <= 0:
        return f"{lead}: tied on every criterion, lost on the tie-break order"
    return f"{lead}: mostly on {words} ({mine:.2f} against {theirs:.2f}, {gap:.3f} weighted)"


def score(
    context: DecisionContext,
    candidates: list[Candidate],
    model: SuccessModel,
    weights: CriteriaWeights | None = None,
    exploration: ExplorationPolicy | None = None,
    seed: int | None = None,
) -> Scoring:
    """Prune, score and rank `candidates`; the first of `ranked` with rank 1 is the choice.

    With an enabled `exploration` policy the choice may be another safe candidate drawn by
    Thompson sampling (nofx.decisions.explore, seeded by `seed`), marked so with its propensity.
    """
    weights = (weights or context.objectives.weights).normalised()
    kept: list[ScoredCandidate] = []
    pruned: list[ScoredCandidate] = []
    rules_fired: list[str] = []
    estimated = []
    for candidate in candidates:
        fired = prune(context, candidate)
        if fired:
            rules_fired += [f"{candidate.name}: {f}" for f in fired]
            pruned.append(ScoredCandidate(candidate=candidate, pruned_by=fired))
            continue
        estimated.append((candidate, model.estimate(context, candidate)))
    likeliest = max((s for _c, s in estimated), key=lambda s: s.probability, default=None)
    for candidate, success in estimated:
        assessed = risk.assess(context, candidate)
        kept.append(
            ScoredCandidate(
                candidate=candidate,
                success=success,
                risk=assessed,
                scores=criterion_scores(
                    context, candidate, success, assessed.score, weights, likeliest
                ),
            )
        )

    def order(c: ScoredCandidate) -> tuple[float, float, float, int, str]:
        assert c.scores is not None
        return (
            -c.scores.total,
            -c.scores.u_success,  # equal among candidates scored on success as the best
            c.scores.expected_recovery_seconds,
            c.candidate.escalation_rank,
            c.candidate.name,
        )

    kept.sort(key=order)
    explored = None
    if exploration is not None and exploration.enabled and kept:
        explored = explore(context, kept, weights, exploration, seed if seed is not None else 0)
        if explored.explored:
            pick = next(c for c in kept if c.candidate.name == explored.chosen)
            kept.remove(pick)
            kept.insert(0, pick)
    for rank, c in enumerate(kept, start=1):
        c.rank = rank
    if kept:
        for c in kept[1:]:
            c.lost_because = why_lost(c, kept[0], weights)
        if explored is not None and explored.explored:
            greedy = next(c for c in kept if c.candidate.name == explored.greedy)
            greedy.lost_because = (
                f"not tried this time: {explored.why} (propensity {explored.propensity:.2f})"
            )
    for c in pruned:
        c.lost_because = "pruned: " + "; ".join(c.pruned_by)
    best = kept[0] if kept else None
    explain = getattr(model, "explain", None)  # a learned model says what moved its estimate
    if best is not None and best.success is not None and explain is not None:
        best.success.drivers = dict(explain(context, best.candidate, DRIVERS))
    return Scoring(
        ranked=kept + pruned,
        chosen=best.candidate.name if best else None,
        confidence=round(confidence_of(best.success), 4) if best and best.success else 0.0,
        rules_fired=rules_fired,
        weights=weights,
        exploration=explored,
    )
