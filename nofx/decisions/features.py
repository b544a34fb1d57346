"""Features of a (decision context, candidate) pair for the learned success model.

Generic on purpose: every number of the context (current state and its metrics, history,
constraints, objectives, predictions) becomes a feature named by its path
(`current_state.metrics.p95_ms`, `objectives.weights.success`), booleans count as 0/1, and the
categorical fields that say what the decision is about — the pattern, the root cause's kind, the
service tier, the candidate and each kind of step it runs — become named categories. A metric a
new source adds is a new feature the next training picks up; no code names it.

Predictions (a list) are summarised per kind: the highest probability and the shortest time to
failure. A number that is NaN or infinite, or a value that is not a number at all, is left out:
the model sees it as missing (LightGBM's own handling), and `Features.dropped` says which paths
were left out, so the caller can say what it did with them.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from models.decisions import Candidate, DecisionContext

# Context fields that are not about the decision's situation: when it was gathered, the list of
# capabilities (pruning uses them; every candidate the model sees passed it), the diagnosis's
# free text (its pattern and cause already sit in current_state) and how much the engine itself
# explored lately (its own budget, not the subject's state).
SKIPPED = frozenset(
    {
        "gathered_at",
        "diagnosis",
        "constraints.capabilities",
        "constraints.excluded",
        "historical_data.explorations_24h",
    }
)
CATEGORICAL = ("pattern", "cause", "tier", "candidate")


@dataclass(frozen=True)
class Features:
    numeric: dict[str, float]
    categorical: dict[str, str]
    dropped: list[str] = field(default_factory=list)


def _numbers(prefix: str, value: Any, dropped: list[str]) -> Iterator[tuple[str, float]]:
    if prefix in SKIPPED:
        return
    if isinstance(value, bool):
        yield prefix, float(value)
    elif isinstance(value, int | float):
        number = float(value)
        if math.isfinite(number):
            yield prefix, number
        else:
            dropped.append(prefix)
    elif isinstance(value, Mapping):
        for key, inner in value.items():
            yield from _numbers(f"{prefix}.{key}" if prefix else str(key), inner, dropped)


def extract(context: DecisionContext | Mapping[str, Any], candidate: Candidate) -> Features:
    """The features of choosing `candidate` in `context` (a model or its recorded JSON)."""
    data = context.model_dump(mode="json") if isinstance(context, DecisionContext) else context
    dropped: list[str] = []
    numeric = dict(
        _numbers("", {k: v for k, v in data.items() if k != "predicted_outcomes"}, dropped)
    )
    for prediction in data.get("predicted_outcomes") or []:
        kind = str(prediction.get("kind") or "prediction")
        for name, value, keep in (
            ("probability", prediction.get("probability"), max),
            ("time_to_failure_hours", prediction.get("time_to_failure_hours"), min),
        ):
            if isinstance(value, int | float) and math.isfinite(value):
                path = f"predicted.{kind}.{name}"
                numeric[path] = keep(numeric.get(path, value), float(value))
    actions: dict[str, float] = {}
    for step in candidate.steps:
        actions[f"steps.{step.action}"] = actions.get(f"steps.{step.action}", 0.0) + 1.0
    numeric.update(actions)
    numeric["steps.count"] = float(len(candidate.steps))
    numeric["candidate.escalation_rank"] = float(candidate.escalation_rank)
    numeric["candidate.full_auto"] = float(candidate.automation_level == "full-auto")
    if candidate.declared is not None:
        for name, value in candidate.declared.model_dump().items():
            if value is not None:
                numeric[f"candidate.{name}"] = float(value)
    state = data.get("current_state") or {}
    categorical = {
        "pattern": str(state.get("pattern") or "unknown"),
        "cause": str(state.get("cause") or "unknown"),
        "tier": str(state.get("tier") or "unknown"),
        "candidate": candidate.name,
    }
    return Features(numeric, categorical, sorted(set(dropped)))
