"""The explanation of a decision: the criteria table, the rules that fired, the risk factors, the
evidence used, why each alternative lost and the confidence — as data and as readable text."""

from __future__ import annotations

from typing import Any

from models.decisions import ApprovalRecord, DecisionContext, Explanation, Scoring


def evidence_of(context: DecisionContext) -> dict[str, Any]:
    """The context fields the scoring read, and the diagnosis it rests on."""
    state = context.current_state
    found: dict[str, Any] = {
        "service": state.service,
        "tier": state.tier,
        "pattern": state.pattern,
        "root_cause": state.cause,
        "healthy": state.healthy,
        "signals": state.signals,
        "replicas": f"{state.serving_replicas}/{state.replicas} serving",
        "metrics": state.metrics,
        "capabilities": context.constraints.capabilities,
        "change_freeze": context.constraints.change_freeze,
        "config_change_rollbackable": context.historical_data.config_change_rollbackable,
        "minutes_since_config_change": context.historical_data.minutes_since_config_change,
        "past_outcomes": {
            o.playbook: f"{o.resolved} resolved, {o.failed} failed"
            for o in context.historical_data.outcomes
        },
        "error_budget_remaining": context.objectives.error_budget_remaining,
        "predictions": [p.model_dump(exclude_none=True) for p in context.predicted_outcomes],
    }
    diagnosis = context.diagnosis
    if diagnosis is not None:
        found["diagnosis"] = {
            "pattern": diagnosis.pattern.pattern,
            "confidence": diagnosis.pattern.confidence,
            "matched": diagnosis.pattern.matched,
            "root_causes": [f"{r.cause}: {r.detail}" for r in diagnosis.root_causes[:3]],
        }
    return found


def explain(
    context: DecisionContext, scoring: Scoring, approval: ApprovalRecord | None = None
) -> Explanation:
    best = scoring.best()
    rows: list[dict[str, Any]] = []
    for c in scoring.ranked:
        row: dict[str, Any] = {"candidate": c.candidate.name, "rank": c.rank}
        if c.scores is not None:
            row |= c.scores.model_dump()
            row["risk_level"] = c.risk.level if c.risk else None
            row["success_source"] = c.success.source if c.success else None
            if c.success and c.success.drivers:
                row["success_drivers"] = c.success.drivers
        else:
            row["pruned_by"] = c.pruned_by
        rows.append(row)
    why_not = {c.candidate.name: c.lost_because or "" for c in scoring.ranked if c.rank != 1}
    w = scoring.weights
    lines: list[str] = []
    state = context.current_state
    subject = f"{state.pattern or 'problem'} on {state.service} ({state.tier})"
    if best is None or best.scores is None:
        lines.append(f"No candidate for {subject} survived the rules.")
    else:
        s = best.scores
        source = best.success.source if best.success else "?"
        lines.append(
            f"Chose {best.candidate.name} for {subject}: total {s.total:.3f}"
            f" (success {s.success_probability:.2f} from {source},"
            f" recovery ~{s.expected_recovery_seconds:.0f}s,"
            f" risk {best.risk.level if best.risk else '?'} {s.risk_score:.2f}, cost {s.cost:.2f});"
            f" confidence {scoring.confidence:.2f}."
        )
        if best.success and best.success.drivers:
            drivers = ", ".join(f"{k} {v:+.2f}" for k, v in best.success.drivers.items())
            lines.append(f"The learned model's main drivers (log-odds): {drivers}.")
    lines.append(
        f"Weights: success {w.success:.2f}, recovery time {w.recovery_time:.2f},"
        f" risk {w.risk:.2f}, cost {w.cost:.2f}."
    )
    if state.cause:
        signals = ", ".join(state.signals) or "none"
        lines.append(f"Evidence: lead root cause {state.cause}; signals {signals}.")
    for name, reason in why_not.items():
        lines.append(f"Not {name}: {reason}.")
    if best is not None and best.risk is not None:
        factors = ", ".join(
            f"{f.name} +{f.contribution:.2f}" for f in best.risk.factors if f.contribution
        )
        lines.append(f"Risk {best.risk.level} ({best.risk.score:.2f}): {factors or 'no factor'}.")
    if approval is not None:
        lines.append(
            "Needs a person: " + "; ".join(approval.why) + "."
            if approval.required
            else "No person needed: " + "; ".join(approval.why) + "."
        )
    return Explanation(
        text="\n".join(lines),
        criteria=rows,
        rules_fired=scoring.rules_fired,
        risk_factors=best.risk.factors if best and best.risk else [],
        evidence=evidence_of(context),
        why_not=why_not,
    )
