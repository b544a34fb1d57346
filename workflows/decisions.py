"""Track A: `DecisionWorkflow`, the decision engine — gather the context, plan the candidates,
score them, assess the risk, ask the right people, explain, record; and the lookup it replaced.

`PlaybookDecisionWorkflow` (the first seam: one lookup of the ladder) stays registered so that
incidents started before the engine replay; new incidents ask `DecisionWorkflow`.

The human loop has one shape. State is set in `__init__`; the signals `approve`, `reject` and
`override` (one JSON object each, from the Web UI) only queue a verdict; the updates
`approve_decision`, `reject_decision` and `override_decision` (SDK, CLI) validate the same verdict
before it reaches history and answer with what the decision now is. `run` drains the queue:
each verdict is judged (operator, permissions, one answer per person, a candidate that may run),
recorded (audit event, `learning_feedback`) and settles the decision, or is refused and recorded
while the decision keeps waiting. One approval covers this decision only.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from pydantic import ValidationError
from temporalio import workflow
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities._support import STORE_RETRY
    from activities.decisions import DecisionActivities
    from activities.store import StoreActivities
    from models.actions import CHECKS, ServiceCapabilities, compensation
    from models.common import AuditEventInput
    from models.decisions import (
        Approve,
        CandidateList,
        DecisionContext,
        DecisionRequest,
        DecisionResult,
        DecisionStatus,
        DecisionWaiting,
        EvaluateInput,
        Evaluation,
        Explanation,
        FeedbackInput,
        HumanVerdict,
        OperatorsChanged,
        OperatorsSnapshot,
        Override,
        PlanInput,
        Reject,
        SaveDecisionInput,
        SuccessModelReport,
        TrainRequest,
        VerdictAck,
    )
    from models.healing import (
        PlaybookCandidate,
        PlaybookChoice,
        PlaybookRequest,
        PlaybookStep,
        RecordDecisionInput,
    )
    from models.notifications import Notification
    from nofx.decisions import approval
    from nofx.temporal import AWAITING_APPROVAL, RISK, SERVICE, STATUS, TRACK
    from workflows.learning import train_once
    from workflows.notify import notify

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


STORE_TIMEOUT = timedelta(seconds=30)
SCORE_TIMEOUT = timedelta(seconds=60)
# A decision waits at most its policy's longest approval timeout (7 days) plus its own work:
# what a workflow that starts one as a child gives it.
DECISION_TIMEOUT = timedelta(days=8)


def rollback_plan(steps: list[PlaybookStep], service: str) -> list[str]:
    """The compensations the steps would register, in the order they would run (the names the
    incident's own rollback plan shows)."""
    return [compensation(s.action, service) for s in reversed(steps) if s.action not in CHECKS]


@workflow.defn
class DecisionWorkflow:
    """Decide one thing: score every candidate, assess its risk, ask whom the risk requires."""

    @workflow.init
    def __init__(self, request: DecisionRequest) -> None:
        self._request = request
        self._decision_id = ""
        self._status: DecisionStatus = "deciding"
        self._evaluation: Evaluation | None = None
        self._context: DecisionContext | None = None
        self._inbox: list[HumanVerdict] = []
        self._received = 0
        self._operators: dict[str, list[str]] = {}
        self._operators_stale = False
        self._result: DecisionResult | None = None
        self._audit_seq = 0

    # ---- queries ------------------------------------------------------------------------

    @workflow.query
    def explain(self) -> DecisionResult:
        """The plan, the rollback plan and why — enough to decide from the Web UI alone."""
        return self._current()

    @workflow.query
    def status(self) -> DecisionResult:
        return self._current()

    # ---- signals (Web UI) -------------------------------------------------------------------

    @workflow.signal
    def approve(self, request: Approve) -> None:
        self._queue("approve", request.approver, request.reason, None, "signal")

    @workflow.signal
    def reject(self, request: Reject) -> None:
        self._queue("reject", request.approver, request.reason, None, "signal")

    @workflow.signal
    def override(self, request: Override) -> None:
        self._queue("override", request.approver, request.reason, request.action, "signal")

    @workflow.signal
    def operators_changed(self, notice: OperatorsChanged) -> None:
        """Someone was made an operator while this waits: read the operators again, so their
        update is judged against the table as it is now."""
        self._operators_stale = True

    # ---- updates (SDK, CLI): refused before history -------------------------------------

    @workflow.update
    async def approve_decision(self, request: Approve) -> VerdictAck:
        return await self._answer(
            self._queue("approve", request.approver, request.reason, None, "update")
        )

    @approve_decision.validator
    def _check_approve(self, request: Approve) -> None:
        self._validate(self._verdict("approve", request.approver, request.reason, None, "update"))

    @workflow.update
    async def reject_decision(self, request: Reject) -> VerdictAck:
        return await self._answer(
            self._queue("reject", request.approver, request.reason, None, "update")
        )

    @reject_decision.validator
    def _check_reject(self, request: Reject) -> None:
        self._validate(self._verdict("reject", request.approver, request.reason, None, "update"))

    @workflow.update
    async def override_decision(self, request: Override) -> VerdictAck:
        return await self._answer(
            self._queue("override", request.approver, request.reason, request.action, "update")
        )

    @override_decision.validator
    def _check_override(self, request: Override) -> None:
        self._validate(
            self._verdict("override", request.approver, request.reason, request.action, "update")
        )

    # ---- the decision -------------------------------------------------------------------

    @workflow.run
    async def run(self, request: DecisionRequest) -> DecisionResult:
        self._decision_id = str(workflow.uuid4())
        self._attributes(awaiting=False)
        context = request.context
        if context is None:
            context = await workflow.execute_activity_method(
                DecisionActivities.analyse_context,
                request,
                start_to_close_timeout=STORE_TIMEOUT,
                retry_policy=STORE_RETRY,
            )
        self._context = context
        candidates = request.candidates
        if candidates is None:
            planned: CandidateList = await workflow.execute_activity_method(
                DecisionActivities.plan_candidates,
                PlanInput(problem=request.problem),
                start_to_close_timeout=STORE_TIMEOUT,
                retry_policy=STORE_RETRY,
            )
            candidates = planned.candidates
        if not candidates:
            raise ApplicationError(
                f"no candidate for {request.problem!r} on {request.subject}: no enabled playbook",
                type="NoPlaybook",
                non_retryable=True,
            )
        evaluation: Evaluation = await workflow.execute_activity_method(
            DecisionActivities.evaluate,
            EvaluateInput(request=request, context=context, candidates=candidates),
            start_to_close_timeout=SCORE_TIMEOUT,
            retry_policy=STORE_RETRY,
        )
        self._evaluation = evaluation
        if evaluation.scoring.chosen is None:
            self._status = "no_option"
            await self._save(persist_context=True)
            await self._audit("decision.no_option", evaluation.explanation.text)
            raise ApplicationError(
                f"no usable playbook for {request.problem!r} on {request.subject}: "
                + "; ".join(evaluation.scoring.rules_fired),
                type="NoPlaybook",
                non_retryable=True,
            )
        record = evaluation.approval
        if record.required and evaluation.mode != "observe":
            # Who may answer, known before anyone is told the decision waits for them.
            await self._load_operators()
        if evaluation.mode == "observe":
            self._status = "observed"
        elif record.required:
            self._status = "awaiting_approval"
        else:
            self._status = "approved"
        await self._save(persist_context=True)
        await self._audit("decision.made", evaluation.explanation.text)
        if self._status == "awaiting_approval":
            if request.parent_workflow_id:
                best = evaluation.scoring.best()
                notice = DecisionWaiting(
                    workflow_id=workflow.info().workflow_id,
                    decision_id=self._decision_id,
                    why=record.why,
                    risk=best.risk.level if best and best.risk else None,
                )
                parent = workflow.get_external_workflow_handle(request.parent_workflow_id)
                try:
                    await parent.signal("decision_waiting", notice)
                except ApplicationError as err:  # the asker is gone: the decision still waits
                    workflow.logger.warning("could not tell %s: %s", parent.id, err)
            await notify(self._waiting_notice())  # delivered on its own: never waited for
            await self._wait_for_people()
        await workflow.wait_condition(workflow.all_handlers_finished)
        return self._current()

    async def _wait_for_people(self) -> None:
        assert self._evaluation is not None
        record = self._evaluation.approval
        self._attributes(awaiting=True)
        timeout = timedelta(seconds=record.timeout_seconds or 3600)
        deadline = workflow.now() + timeout
        try:
            while self._evaluation.approval.outcome == "pending":
                left = (deadline - workflow.now()).total_seconds()
                if left <= 0:
                    await self._time_out(timeout)
                    break
                try:
                    await workflow.wait_condition(
                        lambda: bool(self._inbox) or self._operators_stale, timeout=left
                    )
                except TimeoutError:
                    await self._time_out(timeout)
                    break
                if self._operators_stale:
                    self._operators_stale = False
                    await self._load_operators()
                await self._drain()
        finally:
            self._attributes(awaiting=False)

    async def _drain(self) -> None:
        assert self._evaluation is not None
        while self._inbox:
            verdict = self._inbox.pop(0)
            if verdict.approver not in self._operators:
                # Added since the wait began? Look once more before refusing.
                await self._load_operators()
            refused = self._refusal(verdict)
            record = self._evaluation.approval
            judged = verdict.model_copy(
                update={
                    "accepted": refused is None,
                    "refused_because": None if refused is None else str(refused),
                }
            )
            record = record.model_copy(update={"verdicts": [*record.verdicts, judged]})
            if refused is not None:
                self._evaluation.approval = record
                await self._audit(
                    f"decision.{verdict.kind}_refused",
                    f"{verdict.kind} by {verdict.approver} refused: {refused}",
                    actor=verdict.approver,
                )
                continue
            settled = approval.settle(record)
            self._evaluation.approval = settled
            if settled.outcome != "pending":
                overridden = settled.outcome in ("approved", "overridden")
                self._status = "approved" if overridden else "rejected"
            await self._feedback(judged)
            await self._audit(
                f"decision.{verdict.kind}",
                f"{verdict.kind} by {verdict.approver}"
                + (f" -> {verdict.action}" if verdict.action else "")
                + (f": {verdict.reason}" if verdict.reason else ""),
                actor=verdict.approver,
            )
            await self._save()
            if settled.outcome != "pending":
                return

    async def _load_operators(self) -> None:
        snapshot: OperatorsSnapshot = await workflow.execute_activity_method(
            DecisionActivities.load_operators,
            start_to_close_timeout=STORE_TIMEOUT,
            retry_policy=STORE_RETRY,
        )
        self._operators = snapshot.permissions

    async def _time_out(self, timeout: timedelta) -> None:
        assert self._evaluation is not None
        self._evaluation.approval = self._evaluation.approval.model_copy(
            update={"outcome": "timed_out"}
        )
        self._status = "timed_out"
        why = f"no decision by a person within {timeout}: rejected (the default on timeout)"
        await self._save()
        await self._run_feedback("timeout", "timeout", {"waited_seconds": timeout.total_seconds()})
        await self._audit("decision.timed_out", why)

    # ---- verdicts -----------------------------------------------------------------------

    def _verdict(
        self, kind: str, who: str, reason: str, action: str | None, via: str
    ) -> HumanVerdict:
        return HumanVerdict.model_validate(
            {
                "kind": kind,
                "approver": who,
                "reason": reason,
                "action": action,
                "at": workflow.now(),
                "via": via,
            }
        )

    def _queue(
        self, kind: str, who: str, reason: str, action: str | None, via: str
    ) -> HumanVerdict:
        self._received += 1
        verdict = self._verdict(kind, who, reason, action, via).model_copy(
            update={"seq": self._received}
        )
        self._inbox.append(verdict)
        return verdict

    def _refusal(self, verdict: HumanVerdict) -> approval.Refusal | None:
        if self._evaluation is None:
            return approval.Refusal(
                "not_waiting", "the decision is still being scored; try again in a moment"
            )
        return approval.refusal(
            verdict, self._evaluation.approval, self._operators, self._evaluation.scoring.ranked
        )

    def _validate(self, verdict: HumanVerdict) -> None:
        """Refuse before history, typed by the refusal's kind (ApplicationError.type)."""
        if self._status != "awaiting_approval":
            raise ApplicationError(
                f"decision is {self._status}: nothing to {verdict.kind}", type="not_waiting"
            )
        refused = self._refusal(verdict)
        if refused is not None:
            raise ApplicationError(str(refused), type=refused.kind)

    async def _answer(self, verdict: HumanVerdict) -> VerdictAck:
        assert self._evaluation is not None

        def judged() -> HumanVerdict | None:
            assert self._evaluation is not None
            return next(
                (v for v in self._evaluation.approval.verdicts if v.seq == verdict.seq), None
            )

        await workflow.wait_condition(lambda: judged() is not None)
        mine = judged()
        record = self._evaluation.approval
        if mine is not None and not mine.accepted:
            raise ApplicationError(
                f"{verdict.kind} refused: {mine.refused_because}", type="VerdictRefused"
            )
        return VerdictAck(
            decision_id=self._decision_id,
            status=self._status,
            outcome=record.outcome,
            chosen=self._chosen(),
            approvals=len({v.approver for v in record.verdicts if v.accepted}),
            approvers_needed=record.approvers_needed,
        )

    # ---- bookkeeping --------------------------------------------------------------------

    def _waiting_notice(self) -> Notification:
        """What the people who may answer are told: what the engine chose and why it waits,
        whom it waits for and how long, the plan and its rollback plan."""
        assert self._evaluation is not None
        request = self._request
        now = self._current()
        record = self._evaluation.approval
        risk = now.risk.level if now.risk else "unknown"
        incident = f" (incident {request.incident_id})" if request.incident_id else ""
        holding = ", ".join(record.required_permissions) or "any permission"
        timeout = timedelta(seconds=record.timeout_seconds or 3600)
        return Notification(
            key=f"decision-waiting-{self._decision_id}",
            kind="decision_waiting",
            title=f"Decision waits for a person: {now.chosen} for {request.problem}"
            f" on {request.subject}",
            what_happened=f"{request.problem} on {request.subject}{incident}: the engine chose"
            f" {now.chosen} (risk {risk}, confidence {now.confidence:.2f}, mode {now.mode});"
            f" it waits because {'; '.join(record.why) or 'an approval is required'}."
            f" {next(iter(now.explanation.text.splitlines()), '')}",
            what_is_asked=f"Approve, reject or override decision {self._decision_id}:"
            f" {record.approvers_needed} approval(s) by operators holding {holding}, within"
            f" {timeout} (no answer rejects it). Plan: "
            + (" -> ".join(s.action for s in now.steps) or "none")
            + f"; rollback plan: {', '.join(now.rollback_plan) or 'nothing to undo'}."
            f" Answer in the dashboard, with `nofx autonomous approve {self._decision_id}`,"
            " or by the signal `approve` in the Web UI.",
            service=request.subject,
            entity="decision",
            entity_id=self._decision_id,
            workflow_id=workflow.info().workflow_id,
            namespace=workflow.info().namespace,
            raised_at=workflow.now(),
        )

    def _chosen(self) -> str | None:
        if self._evaluation is None:
            return None
        record = self._evaluation.approval
        if record.outcome == "overridden":
            return next(v.action for v in record.verdicts if v.accepted and v.kind == "override")
        return self._evaluation.scoring.chosen

    def _current(self) -> DecisionResult:
        request = self._request
        evaluation = self._evaluation
        if evaluation is None:
            return DecisionResult(
                decision_id=self._decision_id,
                workflow_id=workflow.info().workflow_id,
                decision_type=request.decision_type,
                subject=request.subject,
                problem=request.problem,
                status=self._status,
                mode="autonomous",
                act=False,
                explanation=Explanation(text="still gathering the context and scoring"),
            )
        chosen = self._chosen()
        picked = evaluation.scoring.find(chosen) if chosen else None
        engine_pick = evaluation.scoring.best()
        record = evaluation.approval
        people = sorted({v.approver for v in record.verdicts if v.accepted})
        steps = picked.candidate.steps if picked else []
        risk = (picked.risk if picked and picked.risk else None) or (
            engine_pick.risk if engine_pick else None
        )
        return DecisionResult(
            decision_id=self._decision_id,
            workflow_id=workflow.info().workflow_id,
            decision_type=request.decision_type,
            subject=request.subject,
            problem=request.problem,
            incident_id=request.incident_id,
            status=self._status,
            mode=evaluation.mode,
            act=self._status == "approved",
            chosen=chosen,
            engine_choice=evaluation.scoring.chosen,
            steps=steps,
            automation_level=picked.candidate.automation_level if picked else None,
            required_permissions=picked.candidate.required_permissions if picked else [],
            confidence=evaluation.scoring.confidence,
            risk=risk,
            expected_outcome=_expected(picked),
            alternatives=[c for c in evaluation.scoring.ranked if c.candidate.name != chosen],
            approval=record,
            explanation=evaluation.explanation,
            rollback_plan=rollback_plan(steps, request.subject),
            decided_by=", ".join(people)
            if people and record.outcome != "timed_out"
            else "nofx-decisions",
            exploration=evaluation.scoring.exploration,
            chosen_candidate=picked.candidate if picked else None,
            experiment=evaluation.experiment,
        )

    def _attributes(self, *, awaiting: bool) -> None:
        updates: list[Any] = [
            TRACK.value_set("decisions"),
            SERVICE.value_set(self._request.subject),
            STATUS.value_set(self._status),
            AWAITING_APPROVAL.value_set(awaiting),
        ]
        evaluation = self._evaluation
        best = evaluation.scoring.best() if evaluation else None
        if best is not None and best.risk is not None:
            updates.append(RISK.value_set(best.risk.level))
        workflow.upsert_search_attributes(updates)

    async def _save(self, *, persist_context: bool = False) -> None:
        self._attributes(awaiting=self._status == "awaiting_approval")
        await workflow.execute_activity_method(
            DecisionActivities.save_decision,
            SaveDecisionInput(
                result=self._current(), context=self._context if persist_context else None
            ),
            start_to_close_timeout=STORE_TIMEOUT,
            retry_policy=STORE_RETRY,
        )

    async def _feedback(self, verdict: HumanVerdict) -> None:
        kinds = {"approve": "approval", "reject": "rejection", "override": "override"}
        assert self._evaluation is not None
        lessons: dict[str, Any] = {
            "approver": verdict.approver,
            "reason": verdict.reason,
            "engine_choice": self._evaluation.scoring.chosen,
        }
        if verdict.action:
            lessons["person_choice"] = verdict.action
        await self._run_feedback(kinds[verdict.kind], f"{verdict.kind}/{verdict.approver}", lessons)

    async def _run_feedback(self, kind: str, key: str, lessons: dict[str, Any]) -> None:
        await workflow.execute_activity_method(
            DecisionActivities.add_feedback,
            FeedbackInput.model_validate(
                {
                    "decision_id": self._decision_id,
                    "feedback_type": kind,
                    "idempotency_key": f"{workflow.info().workflow_id}/{self._decision_id}/{key}",
                    "lessons": lessons,
                }
            ),
            start_to_close_timeout=STORE_TIMEOUT,
            retry_policy=STORE_RETRY,
        )

    async def _audit(self, action: str, reason: str, *, actor: str = "nofx-decisions") -> None:
        self._audit_seq += 1
        await workflow.execute_activity_method(
            StoreActivities.append_audit_event,
            AuditEventInput(
                actor=actor,
                action=action,
                entity_type="autonomous_decision",
                entity_id=self._decision_id,
                workflow_id=workflow.info().workflow_id,
                reason=reason,
                details={
                    "subject": self._request.subject,
                    "problem": self._request.problem,
                    "status": self._status,
                    "chosen": self._chosen(),
                    "incident_id": self._request.incident_id,
                },
                idempotency_key=f"{workflow.info().workflow_id}/{self._decision_id}/{self._audit_seq}",
            ),
            start_to_close_timeout=STORE_TIMEOUT,
            retry_policy=STORE_RETRY,
        )


def _expected(picked: Any) -> dict[str, Any]:
    if picked is None or picked.success is None:
        return {}
    return {
        "success_probability": round(picked.success.probability, 4),
        "recovery_seconds": round(picked.success.expected_recovery_seconds, 1),
        "source": picked.success.source,
    }


@workflow.defn
class TrainingWorkflow:
    """Train the decision engine's success model once (`nofx autonomous train`, the nightly
    schedule); the report says whether the challenger replaced the champion and why."""

    def __init__(self) -> None:
        self._step = "starting"

    @workflow.run
    async def run(self, inp: TrainRequest) -> SuccessModelReport:
        self._step = "training"

        def skipped(why: str) -> SuccessModelReport:
            # Too few decisions to learn from yet: the scheduled run ends green.
            self._step = why
            return SuccessModelReport(verdict=why)

        report = await train_once(DecisionActivities.train_success_model, inp, skipped)
        if report.model_id is not None:
            self._step = f"done: {report.version} {'promoted' if report.promoted else 'kept'}"
        return report

    @workflow.query
    def step(self) -> str:
        return self._step
