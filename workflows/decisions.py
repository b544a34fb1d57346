"""Track A's first decision: which playbook heals an incident, with what it weighed and why.

This is the seam the full decision engine replaces later: the healing track asks for a playbook
through this one child workflow on `nofx-decisions` and gets back the choice and its rationale.
"""

from __future__ import annotations

from datetime import timedelta

from pydantic import ValidationError
from temporalio import workflow
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities._support import STORE_RETRY
    from activities.store import StoreActivities
    from models.actions import ServiceCapabilities
    from models.common import AuditEventInput
    from models.healing import (
        PlaybookCandidate,
        PlaybookChoice,
        PlaybookRequest,
        PlaybookStep,
        RecordDecisionInput,
    )

_AUTOMATION_RANK = {"full-auto": 2, "semi-auto": 1, "manual": 0}


def success_estimate(candidate: PlaybookCandidate) -> float:
    """Laplace-smoothed share of past incidents this playbook resolved (0.5 with no history)."""
    return (candidate.resolved_count + 1) / (candidate.resolved_count + candidate.failed_count + 2)


def rank_playbooks(
    candidates: list[PlaybookCandidate],
    offered: ServiceCapabilities | None = None,
) -> tuple[list[tuple[PlaybookCandidate, list[PlaybookStep]]], list[dict[str, object]]]:
    """Order usable playbooks best first; report the unusable ones with the reason.

    Best = the lowest rung of the escalation ladder, then the highest estimated success, then
    the most automated, then the oldest (seed order).
    A playbook whose steps do not validate is never chosen, nor one that needs a capability the
    target's providers do not offer (`offered`; None skips that check).
    """
    usable: list[tuple[PlaybookCandidate, list[PlaybookStep]]] = []
    rejected: list[dict[str, object]] = []
    for candidate in candidates:
        try:
            steps = [PlaybookStep.model_validate(s) for s in candidate.recovery_steps]
        except ValidationError as err:
            rejected.append(
                {"playbook": candidate.playbook_name, "rejected": f"invalid steps: {err}"}
            )
            continue
        if not steps:
            rejected.append({"playbook": candidate.playbook_name, "rejected": "no steps"})
            continue
        if offered is not None:
            if not offered.known:
                reason = f"service {offered.service!r} is not in the inventory"
                rejected.append({"playbook": candidate.playbook_name, "rejected": reason})
                continue
            missing = offered.missing_for([s.action for s in steps])
            if missing:
                reason = f"{offered.service} does not offer {', '.join(missing)}"
                rejected.append({"playbook": candidate.playbook_name, "rejected": reason})
                continue
        usable.append((candidate, steps))
    order = {id(c): i for i, c in enumerate(candidates)}
    usable.sort(
        key=lambda pair: (
            pair[0].escalation_rank,
            -success_estimate(pair[0]),
            -_AUTOMATION_RANK[pair[0].automation_level],
            order[id(pair[0])],
        )
    )
    return usable, rejected


@workflow.defn
class PlaybookDecisionWorkflow:
    """Choose the playbook for an incident and record the decision (`autonomous_decisions`)."""

    @workflow.run
    async def run(self, request: PlaybookRequest) -> PlaybookChoice:
        found = await workflow.execute_activity_method(
            StoreActivities.load_playbooks,
            request.incident_type,
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=STORE_RETRY,
        )
        offered = None
        if workflow.patched("filter-playbooks-by-capability"):
            offered = await workflow.execute_activity_method(
                StoreActivities.service_capabilities,
                request.service,
                start_to_close_timeout=timedelta(seconds=30),
                retry_policy=STORE_RETRY,
            )
        candidates = [c for c in found.candidates if c.playbook_name not in request.exclude]
        tried: list[dict[str, object]] = [
            {"playbook": name, "rejected": "already failed for this incident"}
            for name in request.exclude
        ]
        usable, rejected = rank_playbooks(candidates, offered)
        rejected = tried + rejected
        if not usable:
            reasons = "; ".join(f"{r['playbook']}: {r['rejected']}" for r in rejected)
            raise ApplicationError(
                f"no usable playbook for incident type {request.incident_type!r}"
                f" ({len(found.candidates)} found, {len(rejected)} rejected"
                + (f": {reasons})" if reasons else ")"),
                type="NoPlaybook",
                non_retryable=True,
            )
        best, steps = usable[0]
        confidence = success_estimate(best)
        history = best.resolved_count + best.failed_count
        rationale = (
            f"{best.playbook_name}: estimated success {confidence:.2f} from {history} past"
            f" {request.incident_type} incidents ({best.resolved_count} resolved),"
            f" automation {best.automation_level}, rung {best.escalation_rank} of the escalation"
            f" ladder; {len(usable) - 1} other usable candidate(s)"
            + (f"; already failed: {', '.join(request.exclude)}" if request.exclude else "")
        )
        decision_id = str(workflow.uuid4())
        alternatives = [
            {
                "playbook": c.playbook_name,
                "estimated_success": round(success_estimate(c), 3),
                "automation_level": c.automation_level,
            }
            for c, _ in usable[1:]
        ] + rejected
        await workflow.execute_activity_method(
            StoreActivities.record_decision,
            RecordDecisionInput(
                decision_id=decision_id,
                decision_type="healing_playbook",
                context_data=request.model_dump(mode="json"),
                chosen_action=best.playbook_name,
                alternatives_considered=alternatives,
                confidence_score=confidence,
                risk_assessment={
                    "automation_level": best.automation_level,
                    "required_permissions": best.required_permissions,
                },
                expected_outcome={"resolves": request.incident_type, "probability": confidence},
            ),
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=STORE_RETRY,
        )
        await workflow.execute_activity_method(
            StoreActivities.append_audit_event,
            AuditEventInput(
                actor="nofx-decisions",
                action="decision.made",
                entity_type="autonomous_decision",
                entity_id=decision_id,
                workflow_id=workflow.info().workflow_id,
                reason=rationale,
                details={"incident_id": request.incident_id, "alternatives": alternatives},
                idempotency_key=f"{workflow.info().workflow_id}/decision",
            ),
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=STORE_RETRY,
        )
        return PlaybookChoice(
            decision_id=decision_id,
            playbook_id=best.playbook_id,
            playbook_name=best.playbook_name,
            automation_level=best.automation_level,
            required_permissions=best.required_permissions,
            steps=steps,
            alternatives=[str(a["playbook"]) for a in alternatives],
            rationale=rationale,
        )
