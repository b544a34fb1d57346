"""Track B: one durable workflow per incident — record, choose a playbook, heal as a saga,
validate, then resolve or roll back.

Started by the fleet monitor with id `incident-{service}-{incident_type}` and the conflict policy
USE_EXISTING, so repeated detections of the same failure join the running incident.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.exceptions import ApplicationError, ChildWorkflowError

from workflows.remediation import (
    Remediation,
    aborted,
    count_action,
    record_decision_outcome,
    settle,
)

with workflow.unsafe.imports_passed_through():
    from activities._support import STORE_RETRY
    from activities.store import StoreActivities
    from models.common import AbortRequest, ApprovalRequest, AuditEventInput
    from models.decisions import (
        Approve,
        Candidate,
        DecisionOutcome,
        DecisionRequest,
        DecisionResult,
        DecisionWaiting,
        Override,
        Reject,
    )
    from models.healing import (
        TERMINAL_STATES,
        AbortAccepted,
        AbortRequestRecord,
        ActionOutcome,
        IncidentInput,
        IncidentResult,
        IncidentState,
        IncidentStatus,
        PlaybookChoice,
        PlaybookRequest,
        PlaybookStep,
        RecordIncidentInput,
        TimelineEntry,
        UpdateIncidentInput,
    )
    from models.notifications import Notification, NotificationKind
    from nofx.settings import TASK_QUEUE_DECISIONS
    from nofx.temporal import AWAITING_APPROVAL, SERVICE, STATUS, TRACK
    from workflows.decisions import DECISION_TIMEOUT, DecisionWorkflow, PlaybookDecisionWorkflow
    from workflows.notify import notify

STORE_TIMEOUT = timedelta(seconds=30)
APPROVAL_TIMEOUT = timedelta(hours=1)


@workflow.defn
class HealingIncidentWorkflow:
    """Detect → diagnose → decide → act → validate → resolve, or roll back and fail."""

    @workflow.init
    def __init__(self, inp: IncidentInput) -> None:
        self._inp = inp
        self._incident_id = ""
        self._state = IncidentState.DETECTED
        self._timeline: list[TimelineEntry] = []
        # Steps run through the shared runner; its saga and outcomes are the incident's.
        self._runner = Remediation(inp.service, inp.detected_at, self)
        self._actions: list[ActionOutcome] = self._runner.actions
        self._saga = self._runner.saga
        self._choice: PlaybookChoice | None = None
        self._abort: AbortRequest | None = None
        self._approval: ApprovalRequest | None = None
        self._resolved_at: datetime | None = None
        self._resolution_ms: int | None = None
        self._error: str | None = None
        self._audit_seq = 0
        self._decision_wf: str | None = None  # the decision waiting for a person, if any
        self._handover: str | None = None  # why the decision handed the incident to a person
        self._waiting_why = ""
        self._announced: str | None = None
        self._rung_start = 0
        self._last_decision: DecisionResult | None = None
        self._guard_asks = 0
        self._unrestored = 0  # rollbacks that left something as it was not

    # ---- messages -------------------------------------------------------------------------

    @workflow.query
    def status(self) -> IncidentStatus:
        """Everything about the incident so far; the CLI and `nofx demo` print from this."""
        return IncidentStatus(
            incident_id=self._incident_id,
            workflow_id=workflow.info().workflow_id,
            service=self._inp.service,
            incident_type=self._inp.incident_type,
            state=self._state,
            playbook=self._choice.playbook_name if self._choice else None,
            decision_id=self._choice.decision_id if self._choice else None,
            awaiting_decision=self._decision_wf,
            actions=list(self._actions),
            rollback_plan=self._saga.rollback_plan,
            timeline=list(self._timeline),
            detected_at=self._inp.detected_at,
            resolved_at=self._resolved_at,
            resolution_time_ms=self._resolution_ms,
            error=self._error,
            diagnosis=self._inp.diagnosis,
            abort_requested=(
                AbortRequestRecord(**self._abort.model_dump()) if self._abort else None
            ),
        )

    @workflow.signal
    def abort(self, request: AbortRequest) -> None:
        """Stop healing and roll back what was done (from the Web UI: a JSON object)."""
        if self._abort is None:
            self._abort = request

    @workflow.update
    def request_abort(self, request: AbortRequest) -> AbortAccepted:
        """`abort` for SDK and CLI clients: refused with a reason instead of silently ignored."""
        self._abort = request
        return AbortAccepted(
            incident_id=self._incident_id,
            state=self._state,
            will_undo=self._saga.rollback_plan,
        )

    @request_abort.validator
    def _validate_abort(self, request: AbortRequest) -> None:
        if self._state in TERMINAL_STATES:
            raise ValueError(f"incident is already {self._state.value}; nothing to abort")
        if self._abort is not None:
            raise ValueError(
                f"abort already requested by {self._abort.requested_by}: {self._abort.reason}"
            )

    @workflow.signal
    async def approve(self, request: ApprovalRequest) -> None:
        """Approve what waits for a person: the pending decision (forwarded to it, so one
        approval covers that decision only), or the re-validation after a person took over."""
        if self._decision_wf is not None:
            await workflow.get_external_workflow_handle(self._decision_wf).signal(
                DecisionWorkflow.approve, Approve(approver=request.approver, reason=request.reason)
            )
            return
        if self._approval is None:
            self._approval = request

    @workflow.signal
    def decision_waiting(self, notice: DecisionWaiting) -> None:
        """From the decision engine: the incident's decision now waits for a person."""
        self._waiting_why = "; ".join(notice.why)
        self._decision_wf = notice.workflow_id

    @workflow.signal
    async def reject(self, request: Reject) -> None:
        """Reject the pending decision (forwarded to it): the incident goes to a person."""
        if self._decision_wf is not None:
            await workflow.get_external_workflow_handle(self._decision_wf).signal(
                DecisionWorkflow.reject, request
            )
        else:
            self._note(f"reject by {request.approver} ignored: no decision waits for a person")

    @workflow.signal
    async def override(self, request: Override) -> None:
        """Run another candidate instead of the pending decision's (forwarded to it)."""
        if self._decision_wf is not None:
            await workflow.get_external_workflow_handle(self._decision_wf).signal(
                DecisionWorkflow.override, request
            )
        else:
            self._note(f"override by {request.approver} ignored: no decision waits for a person")

    # ---- the incident ---------------------------------------------------------------------

    @workflow.run
    async def run(self, inp: IncidentInput) -> IncidentResult:
        self._incident_id = str(workflow.uuid4())
        await self._record_detection()
        try:
            await self._transition(IncidentState.DIAGNOSING, self._diagnosis_summary())
            ladder = workflow.patched("escalation-ladder")
            engine = workflow.patched("decision-engine")
            failed: list[str] = []
            while True:
                if engine:
                    choice = await self._decide(failed)
                else:
                    choice = await self._choose_playbook(failed)
                if choice is None and failed and self._handover is None:
                    await self._hand_to_person(failed)
                    break
                if choice is None:
                    return await self._escalate()
                self._choice = choice
                self._rung_start = len(self._actions)
                if not engine:
                    await self._wait_for_approval_if_needed(self._choice)
                await self._transition(
                    IncidentState.HEALING,
                    f"running playbook {self._choice.playbook_name}"
                    + (f" (after {', '.join(failed)} failed)" if failed else ""),
                )
                try:
                    for index, step in enumerate(self._choice.steps):
                        await self._runner.unless_aborted(
                            self._run_step(index, step, rung=len(failed))
                        )
                except BaseException as err:
                    if not ladder or self._abort is not None or not _retryable_by_ladder(err):
                        raise
                    await self._roll_back_rung(err)
                    if engine:
                        await self._decision_outcome(choice, resolved=False)
                    failed.append(choice.playbook_name)
                    continue
                await self._resolve()
                if engine:
                    await self._decision_outcome(choice, resolved=True)
                break
        except BaseException as err:
            await self._roll_back(err)
            if self._choice is not None and workflow.patched("decision-engine"):
                await self._decision_outcome(self._choice, resolved=False)
            if isinstance(err, asyncio.CancelledError):
                raise
            raise ApplicationError(
                f"incident {self._incident_id} not healed: {self._error}",
                type="HealingFailed",
                non_retryable=True,
            ) from None
        finally:
            await workflow.wait_condition(workflow.all_handlers_finished)
        return IncidentResult(
            incident_id=self._incident_id,
            state=self._state,
            resolution_time_ms=self._resolution_ms,
            actions=self._actions,
        )

    async def _record_detection(self) -> None:
        detail = self._inp.evidence.get("detail", "")
        await workflow.execute_activity_method(
            StoreActivities.record_incident,
            RecordIncidentInput(
                incident_id=self._incident_id,
                workflow_id=workflow.info().workflow_id,
                service=self._inp.service,
                incident_type=self._inp.incident_type,
                detection_method=self._inp.detection_method,
                healing_strategy="pending",
                status=IncidentState.DETECTED.value,
                started_at=self._inp.detected_at,
                evidence=self._inp.evidence,
                diagnosis=(
                    self._inp.diagnosis.model_dump(mode="json") if self._inp.diagnosis else None
                ),
            ),
            start_to_close_timeout=STORE_TIMEOUT,
            retry_policy=STORE_RETRY,
        )
        await self._transition(
            IncidentState.DETECTED,
            f"{self._inp.incident_type} on {self._inp.service}"
            + (f" ({detail})" if detail else ""),
            at=self._inp.detected_at,
            persist=False,
        )

    def _diagnosis_text(self) -> str | None:
        """The diagnosis that came with the incident, in a phrase; None without one."""
        diagnosis = self._inp.diagnosis
        if diagnosis is None:
            return None
        lead = diagnosis.root_causes[0] if diagnosis.root_causes else None
        return (
            f"pattern {diagnosis.pattern.pattern} (confidence {diagnosis.pattern.confidence:.2f},"
            f" signals {', '.join(diagnosis.pattern.matched)})"
            + (f"; likely root cause: {lead.detail}" if lead else "")
        )

    def _diagnosis_summary(self) -> str:
        found = self._diagnosis_text()
        return "choosing a playbook" if found is None else f"{found}; choosing a playbook"

    async def _choose_playbook(self, failed: list[str]) -> PlaybookChoice | None:
        """Ask the decision track for the next rung; None when no (further) playbook applies."""
        try:
            choice = await workflow.execute_child_workflow(
                PlaybookDecisionWorkflow.run,
                PlaybookRequest(
                    incident_id=self._incident_id,
                    workflow_id=workflow.info().workflow_id,
                    service=self._inp.service,
                    incident_type=self._inp.incident_type,
                    evidence=self._inp.evidence,
                    exclude=failed,
                ),
                id=f"decision-{self._incident_id}" + (f"-rung{len(failed) + 1}" if failed else ""),
                task_queue=TASK_QUEUE_DECISIONS,
                execution_timeout=timedelta(minutes=5),
            )
        except ChildWorkflowError as err:
            cause = err.cause
            if (
                isinstance(cause, ApplicationError)
                and cause.type == "NoPlaybook"
                and workflow.patched("escalate-without-playbook")
            ):
                self._error = cause.message
                return None
            raise
        await self._update_row(healing_strategy=choice.playbook_name)
        self._note(f"decision {choice.decision_id}: {choice.rationale}")
        return choice

    async def _decide(
        self,
        failed: list[str],
        *,
        candidates: list[Candidate] | None = None,
        ask: str | None = None,
        suffix: str = "",
    ) -> PlaybookChoice | None:
        """Ask the decision engine (a child on nofx-decisions) for the next rung, or — with
        `ask` — for a person's go-ahead on the running one. While the decision waits for a
        person the incident shows it (state, search attributes) and forwards `approve`,
        `reject` and `override` to it. None when nothing may run: no usable playbook, the
        decision was rejected or timed out, or observe mode (reason in `_handover`/`_error`).
        """
        rung = f"-rung{len(failed) + 1}" if failed else ""
        decision_id = f"decision-{self._incident_id}{rung}{suffix}"
        request = DecisionRequest(
            decision_type="healing",
            subject=self._inp.service,
            problem=self._inp.incident_type,
            incident_id=self._incident_id,
            requested_by=self._inp.requested_by,
            parent_workflow_id=workflow.info().workflow_id,
            candidates=candidates,
            exclude=failed,
            require_approval=ask,
            evidence=self._inp.evidence,
            diagnosis=self._inp.diagnosis,
        )
        try:
            handle = await workflow.start_child_workflow(
                DecisionWorkflow.run,
                request,
                id=decision_id,
                task_queue=TASK_QUEUE_DECISIONS,
                execution_timeout=DECISION_TIMEOUT,
            )
            while not handle.done():
                await workflow.wait_condition(
                    lambda: (
                        handle.done()
                        or self._abort is not None
                        or (self._decision_wf == decision_id and self._announced != decision_id)
                    )
                )
                if handle.done():
                    break
                if self._abort is not None:
                    handle.cancel()  # the decision is cancelled with the incident's abort
                    await settle(handle)
                    raise aborted(self._abort)
                self._announced = decision_id
                await self._transition(
                    IncidentState.AWAITING_APPROVAL,
                    f"decision {decision_id} waits for a person ({self._waiting_why}): send"
                    " `approve`, `reject` or `override` here or to the decision",
                )
                workflow.upsert_search_attributes([AWAITING_APPROVAL.value_set(True)])
            result: DecisionResult = await handle
        except ChildWorkflowError as err:
            cause = err.cause
            if isinstance(cause, ApplicationError) and cause.type == "NoPlaybook":
                self._error = cause.message
                return None
            raise
        finally:
            if self._decision_wf is not None:
                self._decision_wf = None
                workflow.upsert_search_attributes([AWAITING_APPROVAL.value_set(False)])
        return await self._take(result)

    async def _take(self, result: DecisionResult) -> PlaybookChoice | None:
        """What the incident does with a decision: run its choice, or hand the incident over."""
        self._last_decision = result
        who = f" by {result.decided_by}" if result.decided_by != "nofx-decisions" else ""
        self._note(
            f"decision {result.decision_id} ({result.mode}, risk"
            f" {result.risk.level if result.risk else '?'}, confidence {result.confidence:.2f}):"
            f" {result.status}{who}; " + result.explanation.text.splitlines()[0]
        )
        if not result.act or result.chosen is None:
            reasons = {
                "observed": f"observe mode: the engine would have run {result.chosen};"
                " nothing was done",
                "rejected": f"decision {result.decision_id} rejected{who}",
                "timed_out": f"decision {result.decision_id}: nobody answered in time"
                " (a timeout rejects)",
            }
            verdicts = [v for v in result.approval.verdicts if v.accepted and v.reason]
            self._handover = reasons.get(result.status, f"decision {result.status}") + (
                f": {verdicts[-1].reason}" if verdicts else ""
            )
            self._error = self._handover
            return None
        if result.chosen != result.engine_choice:
            self._note(
                f"overridden{who}: running {result.chosen} instead of {result.engine_choice}"
            )
        await self._update_row(healing_strategy=result.chosen)
        return PlaybookChoice(
            decision_id=result.decision_id,
            playbook_id=next(
                (
                    c.candidate.playbook_id or ""
                    for c in [*result.alternatives]
                    if c.candidate.name == result.chosen
                ),
                "",
            ),
            playbook_name=result.chosen,
            automation_level=result.automation_level or "full-auto",
            required_permissions=result.required_permissions,
            steps=result.steps,
            alternatives=[a.candidate.name for a in result.alternatives],
            rationale=result.explanation.text.splitlines()[0],
        )

    async def _ask_person(self, step: PlaybookStep, why: str) -> str:
        """A decision about the running playbook that must wait for a person; who approved."""
        assert self._choice is not None
        self._guard_asks += 1
        current = Candidate(
            name=self._choice.playbook_name,
            playbook_id=self._choice.playbook_id or None,
            steps=self._choice.steps,
            automation_level=self._choice.automation_level,
            required_permissions=self._choice.required_permissions,
        )
        go = await self._decide([], candidates=[current], ask=why, suffix=f"-ask{self._guard_asks}")
        if go is None or self._last_decision is None:
            raise ApplicationError(
                f"{step.action} not approved: {self._handover or self._error}",
                type="Rejected",
                non_retryable=True,
            )
        return self._last_decision.decided_by

    async def _decision_outcome(self, choice: PlaybookChoice, *, resolved: bool) -> None:
        """Write how the decision's choice turned out on the decision (and learning_feedback)."""
        restored = [
            a.detail["prior_state_restored"]
            for a in self._actions[self._rung_start :]
            if "prior_state_restored" in a.detail
        ]
        await record_decision_outcome(
            DecisionOutcome(
                decision_id=choice.decision_id,
                resolved=resolved,
                recovery_seconds=(
                    (workflow.now() - self._inp.detected_at).total_seconds() if resolved else None
                ),
                rolled_back=not resolved,
                prior_state_restored=(
                    None if resolved or not restored else all(r is not False for r in restored)
                ),
                detail=self._error or "" if not resolved else f"resolved by {choice.playbook_name}",
            )
        )

    async def _wait_for_approval_if_needed(self, choice: PlaybookChoice) -> None:
        if choice.automation_level == "full-auto":
            return
        await self._await_person(
            f"playbook {choice.playbook_name} is {choice.automation_level}: waiting for `approve`"
        )

    async def _await_person(self, why: str) -> None:
        """Wait for `approve` (or `abort`), listed in the Web UI as awaiting approval."""
        if workflow.patched("decision-engine"):
            self._approval = None  # an answer given before this wait does not cover it
        await self._transition(IncidentState.AWAITING_APPROVAL, why)
        workflow.upsert_search_attributes([AWAITING_APPROVAL.value_set(True)])
        try:
            await workflow.wait_condition(
                lambda: self._approval is not None or self._abort is not None,
                timeout=APPROVAL_TIMEOUT,
            )
        except TimeoutError:
            raise ApplicationError(
                f"no approval within {APPROVAL_TIMEOUT}", type="ApprovalTimeout"
            ) from None
        finally:
            workflow.upsert_search_attributes([AWAITING_APPROVAL.value_set(False)])
        if self._abort is not None:
            raise aborted(self._abort)
        assert self._approval is not None
        self._note(f"approved by {self._approval.approver}: {self._approval.reason}")

    async def _run_step(self, index: int, step: PlaybookStep, rung: int = 0) -> None:
        # The first playbook keeps the original key format (recorded action_log rows match it).
        place = f"r{rung + 1}/" if rung else ""
        key = f"{workflow.info().workflow_id}/{self._incident_id}/{place}{index}-{step.action}"
        await self._runner.run_step(index, step, key)

    # -- the runner's hooks (workflows.remediation.Hooks) -----------------------------------

    def note(self, message: str) -> None:
        self._note(message)

    async def validating(self, message: str) -> None:
        await self._transition(IncidentState.VALIDATING, message)

    async def resumed(self, message: str) -> None:
        await self._transition(IncidentState.HEALING, message)

    async def acted(self, outcome: ActionOutcome, note: str) -> None:
        await self._record_action(outcome, note)

    async def ask_person(self, step: PlaybookStep, why: str) -> str:
        return await self._ask_person(step, why)

    async def await_person(self, why: str) -> None:
        await self._await_person(why)

    def abort_request(self) -> AbortRequest | None:
        return self._abort

    def approver(self) -> str | None:
        return self._approval.approver if self._approval else None

    async def _record_action(self, outcome: ActionOutcome, note: str) -> None:
        """An action ran: keep it on the incident (row and timeline) and count it."""
        self._actions.append(outcome)
        count_action(outcome)
        await self._update_row(healing_actions=True)
        self._note(note)

    async def _roll_back_rung(self, err: BaseException) -> None:
        """One rung of the ladder failed: undo it (shielded) before the next one is tried."""
        failure = _describe(err)
        plan = self._saga.rollback_plan
        await self._transition(
            IncidentState.ROLLING_BACK,
            f"playbook {self._choice.playbook_name if self._choice else '?'} failed: {failure};"
            f" rolling back: {', '.join(plan) or 'nothing to undo'}",
        )
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(
                asyncio.ensure_future(
                    self._compensate(failure, "the incident goes on to the next playbook")
                )
            )
        self._note("rolled back; trying the next playbook of the escalation ladder")

    async def _hand_to_person(self, failed: list[str]) -> None:
        """The ladder is exhausted: a person takes over, then `approve` re-validates and closes."""
        self._error = f"every playbook failed ({', '.join(failed)})"
        await self._tell_person(
            "incident_escalated",
            f"incident-handover-{self._incident_id}",
            f"Every playbook failed: {self._inp.incident_type} on {self._inp.service} needs a"
            " person",
            f"{self._situation()}: {self._error}; each was rolled back.",
            f"Fix {self._inp.service} by hand, then signal `approve` to the incident (in the Web"
            ' UI: {"approver": "you", "reason": "what you did"}) to re-validate and close it, or'
            f" `abort` to close it as failed. It waits {APPROVAL_TIMEOUT}.",
        )
        await self._await_person(
            f"{self._error}: a person takes over — fix it, then send `approve` to re-validate"
            " (or `abort` to close it as failed)"
        )
        check = PlaybookStep(action="validate_health")
        await self._run_step(0, check, rung=len(failed))
        self._error = None
        assert self._approval is not None
        self._note(f"healed by {self._approval.approver}: {self._approval.reason}")
        await self._resolve()

    async def _refresh_pattern(self) -> None:
        """The pattern's success rate and average resolution time, from every outcome so far."""
        if workflow.patched("pattern-stats"):
            await workflow.execute_activity_method(
                StoreActivities.refresh_pattern,
                self._inp.incident_type,
                start_to_close_timeout=STORE_TIMEOUT,
                retry_policy=STORE_RETRY,
            )

    async def _escalate(self) -> IncidentResult:
        """Nothing automatic applies: hand the diagnosis to a person and end, touching nothing."""
        await self._transition(
            IncidentState.ESCALATED, f"{self._error}: escalated to a person with the diagnosis"
        )
        await self._tell_person(
            "incident_escalated",
            f"incident-escalated-{self._incident_id}",
            f"Incident escalated to a person: {self._inp.incident_type} on {self._inp.service}",
            f"{self._situation()}: {self._error}. {self._diagnosis_line()}",
            f"Take it over: read the diagnosis and the timeline and fix {self._inp.service} by"
            " hand. The incident has ended as escalated; the platform does not act on it again.",
        )
        workflow.metric_meter().create_counter(
            "nofx_incidents_total", "Incidents by type and outcome"
        ).add(1, {"incident_type": self._inp.incident_type, "outcome": "escalated"})
        await workflow.wait_condition(workflow.all_handlers_finished)
        return IncidentResult(
            incident_id=self._incident_id,
            state=self._state,
            resolution_time_ms=None,
            actions=self._actions,
        )

    async def _resolve(self) -> None:
        self._resolved_at = workflow.now()
        self._resolution_ms = int(
            (self._resolved_at - self._inp.detected_at).total_seconds() * 1000
        )
        await self._update_row(
            healing_actions=True,
            resolved_at=self._resolved_at,
            resolution_time_ms=self._resolution_ms,
        )
        await self._transition(
            IncidentState.RESOLVED, f"resolved {self._resolution_ms} ms after detection"
        )
        meter = workflow.metric_meter()
        meter.create_counter("nofx_incidents_total", "Incidents by type and outcome").add(
            1, {"incident_type": self._inp.incident_type, "outcome": "resolved"}
        )
        meter.create_histogram(
            "nofx_incident_resolution_ms", "Detection to resolution", "ms"
        ).record(self._resolution_ms, {"incident_type": self._inp.incident_type})
        await self._refresh_pattern()

    async def _roll_back(self, err: BaseException) -> None:
        self._error = _describe(err)
        # A second cancellation while rolling back must not stop the shielded rollback.
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(self._roll_back_unshielded())

    async def _roll_back_unshielded(self) -> None:
        await self._transition(
            IncidentState.ROLLING_BACK,
            f"{self._error}; rolling back: "
            + (", ".join(self._saga.rollback_plan) or "nothing to undo"),
        )
        plan = self._saga.rollback_plan
        await self._compensate(self._error or "failed", "the incident ended as failed")
        self._resolved_at = workflow.now()
        await self._update_row(
            healing_actions=True,
            root_cause={
                "failure": self._error,
                "rollback_plan": plan,
                "compensated": self._saga.compensated,
                "compensation_errors": self._saga.compensation_errors,
            },
        )
        await self._transition(IncidentState.FAILED, f"not healed: {self._error}")
        await self._refresh_pattern()
        workflow.metric_meter().create_counter(
            "nofx_incidents_total", "Incidents by type and outcome"
        ).add(1, {"incident_type": self._inp.incident_type, "outcome": "failed"})

    async def _compensate(self, failure: str, then: str) -> None:
        """Run the saga's compensations; a person is told what they did not put back."""
        actions, errors = len(self._actions), len(self._saga.compensation_errors)
        await self._saga.compensate()
        left = not_restored(self._actions[actions:], self._saga.compensation_errors[errors:])
        if not left:
            return
        self._unrestored += 1
        playbook = self._choice.playbook_name if self._choice else "healing"
        await self._tell_person(
            "rollback_failed",
            f"rollback-failed-{self._incident_id}-{self._unrestored}",
            f"Rollback did not restore {self._inp.service}: {self._inp.incident_type}",
            f"{self._situation()}: {playbook} failed ({failure}); its rollback ran but left"
            f" {len(left)} thing(s) as they were not before: {'; '.join(left)}. {then}.",
            f"Check {self._inp.service} and put back by hand what the rollback could not:"
            f" {'; '.join(left)}. The incident's actions show each undo and its check.",
        )

    # ---- bookkeeping ----------------------------------------------------------------------

    def _situation(self) -> str:
        """The incident in one phrase, for a person reading it elsewhere."""
        return (
            f"{self._inp.incident_type} on {self._inp.service}, detected"
            f" {self._inp.detected_at.isoformat(timespec='seconds')} by"
            f" {self._inp.detection_method}"
        )

    def _diagnosis_line(self) -> str:
        found = self._diagnosis_text()
        return "No diagnosis came with it." if found is None else f"Diagnosis: {found}."

    async def _tell_person(
        self, kind: NotificationKind, key: str, title: str, happened: str, asked: str
    ) -> None:
        """Notify the configured channels (on the decisions worker); never waited for."""
        await notify(
            Notification(
                key=key,
                kind=kind,
                title=title,
                what_happened=happened,
                what_is_asked=asked,
                service=self._inp.service,
                entity="incident",
                entity_id=self._incident_id,
                workflow_id=workflow.info().workflow_id,
                namespace=workflow.info().namespace,
                raised_at=workflow.now(),
            ),
            task_queue=TASK_QUEUE_DECISIONS,
        )

    def _note(self, message: str) -> None:
        self._timeline.append(TimelineEntry(at=workflow.now(), state=self._state, message=message))

    async def _transition(
        self,
        state: IncidentState,
        message: str,
        *,
        at: datetime | None = None,
        persist: bool = True,
    ) -> None:
        """Enter a state: timeline, search attributes, the incident row and an audit event."""
        self._state = state
        self._timeline.append(TimelineEntry(at=at or workflow.now(), state=state, message=message))
        workflow.upsert_search_attributes(
            [
                TRACK.value_set("healing"),
                SERVICE.value_set(self._inp.service),
                STATUS.value_set(state.value),
            ]
        )
        if persist:
            await self._update_row()
        self._audit_seq += 1
        await workflow.execute_activity_method(
            StoreActivities.append_audit_event,
            AuditEventInput(
                actor="nofx-healing",
                action=f"incident.{state.value}",
                entity_type="healing_incident",
                entity_id=self._incident_id,
                workflow_id=workflow.info().workflow_id,
                reason=message,
                details={"service": self._inp.service, "incident_type": self._inp.incident_type},
                idempotency_key=(
                    f"{workflow.info().workflow_id}/{self._incident_id}/{self._audit_seq}"
                ),
            ),
            start_to_close_timeout=STORE_TIMEOUT,
            retry_policy=STORE_RETRY,
        )

    async def _update_row(
        self,
        *,
        healing_strategy: str | None = None,
        healing_actions: bool = False,
        resolved_at: datetime | None = None,
        resolution_time_ms: int | None = None,
        root_cause: dict[str, object] | None = None,
    ) -> None:
        await workflow.execute_activity_method(
            StoreActivities.update_incident,
            UpdateIncidentInput(
                incident_id=self._incident_id,
                status=self._state.value,
                healing_strategy=healing_strategy,
                healing_actions=(
                    [a.model_dump(mode="json") for a in self._actions] if healing_actions else None
                ),
                resolved_at=resolved_at,
                resolution_time_ms=resolution_time_ms,
                root_cause=root_cause,
            ),
            start_to_close_timeout=STORE_TIMEOUT,
            retry_policy=STORE_RETRY,
        )


def not_restored(undone: list[ActionOutcome], errors: list[str]) -> list[str]:
    """What a rollback left as it was not: undos whose check found the prior state not back,
    and compensations that still failed after their retries."""
    left = [
        f"{o.action}({o.service}): {o.detail.get('prior_state_check') or 'prior state not back'}"
        for o in undone
        if o.detail.get("prior_state_restored") is False
    ]
    return left + [f"{e} (the compensation failed)" for e in errors]


def _describe(err: BaseException) -> str:
    if isinstance(err, asyncio.CancelledError):
        return "incident workflow cancelled"
    if isinstance(err, ApplicationError):
        return err.message
    cause = getattr(err, "cause", None)
    if isinstance(cause, ApplicationError):
        return cause.message
    return f"{type(err).__name__}: {err}"


def _retryable_by_ladder(err: BaseException) -> bool:
    """Failures the next playbook may fix: the playbook's own (its action or validation), not a
    cancellation, an abort, a refused guardrail or waiting too long for a person."""
    if isinstance(err, asyncio.CancelledError):
        return False
    cause: BaseException | None = err
    while cause is not None:
        if isinstance(cause, ApplicationError) and cause.type in (
            "Aborted",
            "ApprovalTimeout",
            "GuardrailTimeout",
            "Rejected",
        ):
            return False
        cause = cause.__cause__ or getattr(cause, "cause", None)
    return True
