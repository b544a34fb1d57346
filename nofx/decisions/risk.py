"""Risk assessment of one candidate in one context: every factor with its contribution.

The score is the sum of the factors' contributions, clipped to [0, 1]; the level follows from
fixed cut points (`LEVEL_CUTS`). The factors and their weights:

| factor | contribution |
| --- | --- |
| blast radius: share of the service's *serving* capacity the action takes out | 0.25 * share |
| irreversibility: a step whose compensation cannot restore the prior state | 0.10 |
| service tier | tier-0 0.30, tier-1 0.15, tier-2 0.05, tier-3 0 |
| SLO error budget left (when known) | 0.20 * (1 - left) |
| concurrent automated actions fleet-wide | 0.10 * in flight / limit (at most 0.10) |
| an active change freeze | 0.30 |
| predicted time to failure under an hour, for an action that takes capacity | 0.10 |

So restarting the only replica of a tier-2 service is medium (0.40), of a tier-0 service high
(0.65), and of a tier-0 service during a freeze critical (0.95). Critical never runs unattended.
"""

from __future__ import annotations

from models.decisions import (
    RISK_LEVELS,
    Candidate,
    DecisionContext,
    RiskAssessment,
    RiskFactor,
    RiskLevel,
)

LEVEL_CUTS: tuple[tuple[float, RiskLevel], ...] = (
    (0.75, "critical"),
    (0.5, "high"),
    (0.3, "medium"),
)

TIER_RISK = {"tier-0": 0.30, "tier-1": 0.15, "tier-2": 0.05, "tier-3": 0.0}

# Actions whose undo cannot give back what they took: a restarted process's in-memory state and
# an ended database session are gone. Every other action keeps its prior state (action_log) and
# its undo restores it exactly (checked by `restored`).
IRREVERSIBLE_ACTIONS = frozenset({"restart_service", "terminate_idle_connections"})

# Actions that take a replica out of serving while they run or after (restart: while it starts
# again; drain and weight 0: until re-admitted).
CAPACITY_ACTIONS = frozenset({"restart_service", "drain_traffic", "shift_weight"})


def level_of(score: float) -> RiskLevel:
    for cut, level in LEVEL_CUTS:
        if score >= cut:
            return level
    return "low"


def at_least(level: RiskLevel, threshold: RiskLevel) -> bool:
    return RISK_LEVELS.index(level) >= RISK_LEVELS.index(threshold)


def blast_radius(context: DecisionContext, candidate: Candidate) -> float:
    """Share of the service's capacity the candidate takes out of serving.

    A replica that serves nothing now (down, hung, already drained) costs nothing to restart; a
    serving one costs 1/replicas of the group.
    """
    state = context.current_state
    if candidate.declared is not None and candidate.declared.blast_radius is not None:
        return candidate.declared.blast_radius
    if not any(s.action in CAPACITY_ACTIONS for s in candidate.steps):
        return 0.0
    if state.healthy is False or state.serving_replicas == 0:
        return 0.0
    return min(1.0, 1.0 / max(1, state.replicas))


def irreversible_steps(candidate: Candidate) -> list[str]:
    """The steps that cannot be undone exactly; a declared reversibility decides for them."""
    if candidate.declared is not None and candidate.declared.reversible is not None:
        return [] if candidate.declared.reversible else [candidate.name]
    return [s.action for s in candidate.steps if s.action in IRREVERSIBLE_ACTIONS]


def assess(context: DecisionContext, candidate: Candidate) -> RiskAssessment:
    state = context.current_state
    constraints = context.constraints
    factors: list[RiskFactor] = []
    blast = blast_radius(context, candidate)
    factors.append(
        RiskFactor(
            name="blast_radius",
            value=round(blast, 3),
            contribution=round(0.25 * blast, 4),
            detail=f"takes {blast:.0%} of {state.service}'s serving capacity out"
            f" ({state.serving_replicas} of {state.replicas} replica(s) serving)",
        )
    )
    irreversible = irreversible_steps(candidate)
    factors.append(
        RiskFactor(
            name="reversibility",
            value=not irreversible,
            contribution=0.10 if irreversible else 0.0,
            detail=(
                f"cannot be undone exactly: {', '.join(irreversible)}"
                if irreversible
                else "every step has a compensation that restores the prior state"
            ),
        )
    )
    factors.append(
        RiskFactor(
            name="tier",
            value=state.tier,
            contribution=TIER_RISK[state.tier],
            detail=f"{state.service} is {state.tier}",
        )
    )
    budget = context.objectives.error_budget_remaining
    if budget is not None:
        factors.append(
            RiskFactor(
                name="error_budget",
                value=round(budget, 3),
                contribution=round(0.20 * (1 - budget), 4),
                detail=f"{budget:.0%} of the SLO error budget left",
            )
        )
    in_flight = state.actions_in_flight
    factors.append(
        RiskFactor(
            name="concurrent_actions",
            value=in_flight,
            contribution=round(0.10 * min(1.0, in_flight / constraints.max_concurrent_actions), 4),
            detail=f"{in_flight} automated action(s) in flight (limit"
            f" {constraints.max_concurrent_actions})",
        )
    )
    if constraints.change_freeze:
        factors.append(
            RiskFactor(
                name="change_freeze",
                value=True,
                contribution=0.30,
                detail=f"a change freeze is active: {constraints.change_freeze}",
            )
        )
    soonest = min(
        (
            p.time_to_failure_hours
            for p in context.predicted_outcomes
            if p.time_to_failure_hours is not None
        ),
        default=None,
    )
    if soonest is not None:
        near = soonest < 1 and blast > 0
        factors.append(
            RiskFactor(
                name="time_to_failure",
                value=soonest,
                contribution=0.10 if near else 0.0,
                detail=f"predicted failure in {soonest:.1f} h"
                + ("; the action takes capacity before it" if near else ""),
            )
        )
    score = min(1.0, sum(f.contribution for f in factors))
    return RiskAssessment(
        level=level_of(score),
        score=round(score, 4),
        factors=factors,
        reversible=not irreversible,
        blast_radius=round(blast, 4),
    )
