"""Who must agree before a decision acts, and whether a person's answer counts.

Modes combine to the strictest (`observe` < `assist` < `autonomous`): the global mode, the
service's own (`services.decision_mode`) and the playbook's `automation_level` (`full-auto`
allows autonomous, `semi-auto` and `manual` at most assist).

- `observe`: decide and record, never act (shadow mode); nobody is asked.
- `assist`: every decision waits for one person.
- `autonomous`: waits only at or above the policy's risk threshold or below its confidence
  threshold, or when the caller asks for a person (a guardrail that must not be passed alone).
- Critical risk always waits, for two distinct approvers, in every mode that acts.

A verdict counts when its author is an operator holding every permission the chosen playbook
requires (an override: the permissions of the playbook it picks), has not answered this
decision already, and names a candidate that may run. Pure functions: the decision workflow
calls them from update validators (refused before history) and for signals (refused and
recorded, still waiting).
"""

from __future__ import annotations

from models.decisions import (
    MODES_STRICTEST_FIRST,
    ApprovalRecord,
    AutomationLevel,
    DecisionPolicy,
    HumanVerdict,
    Mode,
    RiskAssessment,
    ScoredCandidate,
)
from nofx.decisions.risk import at_least

LEVEL_MODE: dict[AutomationLevel, Mode] = {
    "full-auto": "autonomous",
    "semi-auto": "assist",
    "manual": "assist",
}


def effective_mode(
    global_mode: Mode, service_mode: Mode | None, automation_level: AutomationLevel | None
) -> tuple[Mode, list[str]]:
    """The strictest of the three, and where each came from."""
    sources: list[tuple[Mode, str]] = [(global_mode, f"global mode {global_mode}")]
    if service_mode is not None:
        sources.append((service_mode, f"service mode {service_mode}"))
    if automation_level is not None:
        level_mode = LEVEL_MODE[automation_level]
        sources.append((level_mode, f"playbook is {automation_level} (at most {level_mode})"))
    mode = min((m for m, _ in sources), key=MODES_STRICTEST_FIRST.index)
    return mode, [why for m, why in sources if m == mode]


def requirement(
    mode: Mode,
    risk: RiskAssessment | None,
    confidence: float,
    policy: DecisionPolicy,
    *,
    required_permissions: list[str],
    asked_by_caller: str | None = None,
) -> ApprovalRecord:
    """Whether the decision must wait for people, why, and how many."""
    level = risk.level if risk else "low"
    timeout = policy.timeouts.for_level(level)
    if mode == "observe":
        return ApprovalRecord(
            why=["observe mode: decide and record, never act"],
            required_permissions=required_permissions,
        )
    why: list[str] = []
    if mode == "assist":
        why.append("assist mode: every action waits for a person")
    if at_least(level, "critical"):
        why.append("critical risk never runs unattended: two distinct approvers")
    elif mode == "autonomous" and at_least(level, policy.ask_at_risk):
        why.append(f"risk {level} is at or above the threshold {policy.ask_at_risk}")
    if mode == "autonomous" and confidence < policy.min_confidence:
        why.append(f"confidence {confidence:.2f} is below the threshold {policy.min_confidence}")
    if asked_by_caller:
        why.append(asked_by_caller)
    if not why:
        return ApprovalRecord(
            why=[f"{mode}: risk {level} below {policy.ask_at_risk}, confidence {confidence:.2f}"],
            required_permissions=required_permissions,
        )
    return ApprovalRecord(
        required=True,
        why=why,
        approvers_needed=2 if at_least(level, "critical") else 1,
        required_permissions=required_permissions,
        outcome="pending",
        timeout_seconds=timeout,
    )


class Refusal(str):
    """Why a verdict does not count, with its kind, so every face can type the error:
    `not_waiting`, `not_operator`, `not_permitted`, `not_a_candidate`, `cannot_run`,
    `already_answered`."""

    kind: str

    def __new__(cls, kind: str, message: str) -> Refusal:
        made = super().__new__(cls, message)
        made.kind = kind
        return made


def refusal(
    verdict: HumanVerdict,
    record: ApprovalRecord,
    operators: dict[str, list[str]],
    candidates: list[ScoredCandidate],
) -> Refusal | None:
    """Why `verdict` does not count (None: it counts). `operators`: name → permissions."""
    if record.outcome != "pending":
        return Refusal(
            "not_waiting", f"the decision is not waiting for a person (it is {record.outcome})"
        )
    if verdict.approver not in operators:
        return Refusal(
            "not_operator", f"{verdict.approver!r} is not an operator (nofx operators add)"
        )
    needed = record.required_permissions
    if verdict.kind == "override":
        picked = next((c for c in candidates if c.candidate.name == verdict.action), None)
        if picked is None:
            names = ", ".join(c.candidate.name for c in candidates) or "none"
            return Refusal(
                "not_a_candidate",
                f"action: {verdict.action!r} is not a candidate of this decision ({names})",
            )
        unusable = [p for p in picked.pruned_by if not p.startswith("already_failed")]
        if any(p.startswith(("capability", "unknown_service")) for p in unusable):
            return Refusal(
                "cannot_run", f"action: {verdict.action!r} cannot run here: {'; '.join(unusable)}"
            )
        needed = picked.candidate.required_permissions
    lacking = [p for p in dict.fromkeys(needed) if not holds(operators[verdict.approver], p)]
    if lacking:
        return Refusal("not_permitted", f"{verdict.approver} lacks permission {', '.join(lacking)}")
    if any(v.accepted and v.approver == verdict.approver for v in record.verdicts):
        return Refusal(
            "already_answered",
            f"{verdict.approver} has already answered this decision; another approver is needed",
        )
    return None


def holds(granted: list[str], permission: str) -> bool:
    """`healing:restart` is held through itself, `healing:*` or `*`."""
    family = permission.split(":", 1)[0]
    return permission in granted or "*" in granted or f"{family}:*" in granted


def settle(record: ApprovalRecord) -> ApprovalRecord:
    """Apply the accepted verdicts: a reject or override ends it; approvals count up."""
    accepted = [v for v in record.verdicts if v.accepted]
    for v in accepted:
        if v.kind == "reject":
            return record.model_copy(update={"outcome": "rejected"})
        if v.kind == "override":
            return record.model_copy(update={"outcome": "overridden"})
    approvals = {v.approver for v in accepted if v.kind == "approve"}
    if len(approvals) >= max(1, record.approvers_needed):
        return record.model_copy(update={"outcome": "approved"})
    return record
