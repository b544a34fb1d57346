"""The success model behind the scoring: how likely a candidate fixes the subject, and how fast.

`SuccessModel` is the interface the scoring asks; this issue's implementation is a Beta posterior
per (pattern, candidate, service tier):

- the prior comes from the action matrix (`benchmarks/action_matrix.py`, packaged as
  `action_priors.json`): the runs of that candidate on faults diagnosed as this pattern with this
  kind of root cause; when none match the cause, every run of the candidate on the pattern;
- the evidence is the recorded outcome of past decisions of the same pattern on services of the
  same tier (`HistoricalMetrics.outcomes`), counted one for one;
- both on top of Beta(1, 1), so a candidate nobody has tried is a coin toss, not a certainty —
  except that a playbook its author marked `full-auto` counts that as one success (Beta(2, 1)):
  the author vouched for it running unattended. An untried semi-auto or manual playbook starts
  at 1:1, and its low confidence asks a person.

Part 2 puts a LightGBM model behind the same interface.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from models.decisions import Candidate, DecisionContext, SuccessEstimate

PRIORS_PATH = Path(__file__).with_name("action_priors.json")

# Seconds a step takes when nothing was measured: a nominal duration per action.
NOMINAL_SECONDS = {
    "restart_service": 4.0,
    "validate_health": 4.0,
    "validate_requests": 8.0,
    "cleanup_disk": 1.0,
    "rollback_config": 2.0,
    "resize_pool": 2.0,
    "terminate_idle_connections": 4.0,
    "invalidate_cache": 1.0,
    "drain_traffic": 1.0,
    "shift_weight": 1.0,
    "admit_traffic": 1.0,
}


class SuccessModel(Protocol):
    def estimate(self, context: DecisionContext, candidate: Candidate) -> SuccessEstimate: ...


@dataclass(frozen=True)
class Prior:
    pattern: str
    cause: str | None
    playbook: str
    runs: int
    successes: int
    # the mean of the recovered runs (an expected time to recover); older files have the p50
    recovery_seconds: float | None


def load_priors(path: Path | None = None) -> list[Prior]:
    """The action matrix's cells; a missing file means no prior (every candidate starts at 1:1)."""
    source = path or PRIORS_PATH
    if not source.exists():
        return []
    data = json.loads(source.read_text())
    return [
        Prior(
            pattern=row["pattern"],
            cause=row.get("cause"),
            playbook=row["playbook"],
            runs=int(row["runs"]),
            successes=int(row["successes"]),
            recovery_seconds=row.get("recovery_seconds_mean", row.get("recovery_seconds_p50")),
        )
        for row in data.get("priors", [])
    ]


def nominal_recovery_seconds(candidate: Candidate) -> float:
    return sum(NOMINAL_SECONDS.get(s.action, 5.0) for s in candidate.steps)


# A person's rejection (or override) of the engine's pick counts as half a failure of it: a
# judgement, not an observed outcome.
REJECTION_WEIGHT = 0.5


class BetaSuccessModel:
    """Beta(1 + successes, 1 + failures) over the matrix prior and the recorded history."""

    def __init__(self, priors: list[Prior]) -> None:
        self._priors = priors

    def _prior(self, pattern: str | None, cause: str | None, playbook: str) -> list[Prior]:
        same = [p for p in self._priors if p.pattern == pattern and p.playbook == playbook]
        if cause is not None:
            with_cause = [p for p in same if p.cause == cause]
            if with_cause:
                return with_cause
        return same

    def estimate(self, context: DecisionContext, candidate: Candidate) -> SuccessEstimate:
        state = context.current_state
        prior = self._prior(state.pattern, state.cause, candidate.name)
        p_runs = sum(p.runs for p in prior)
        p_wins = sum(p.successes for p in prior)
        seen = next(
            (o for o in context.historical_data.outcomes if o.playbook == candidate.name), None
        )
        h_wins = seen.resolved if seen else 0
        h_losses = seen.failed if seen else 0
        judged = seen.rejected if seen else 0
        vouched = 1.0 if candidate.automation_level == "full-auto" else 0.0
        alpha = 1.0 + vouched + p_wins + h_wins
        beta = 1.0 + (p_runs - p_wins) + h_losses + REJECTION_WEIGHT * judged
        timed = [p.recovery_seconds for p in prior if p.recovery_seconds]
        recovery = sorted(timed)[len(timed) // 2] if timed else nominal_recovery_seconds(candidate)
        source = ["full-auto +1"] if vouched else []
        source.append(f"matrix {p_wins}/{p_runs}" if p_runs else "no matrix runs")
        source.append(
            f"history {h_wins}/{h_wins + h_losses} ({state.tier})" if seen else "no history"
        )
        if judged:
            source.append(f"rejected by people {judged}x")
        return SuccessEstimate(
            probability=alpha / (alpha + beta),
            alpha=alpha,
            beta=beta,
            expected_recovery_seconds=max(0.1, float(recovery)),
            source=" + ".join(source),
        )
