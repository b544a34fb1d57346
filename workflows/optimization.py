"""Applying an optimisation recommendation: a decision, a change with its rollback plan, and a
measurement after that keeps it or rolls it back.

`OptimizationWorkflow` (id `optimize-<recommendation id>`, on `nofx-maintenance`):

1. claims the recommendation (`open` -> `applying`; anything else is refused with why);
2. asks the decision engine (decision type `optimization`, the recommendation's steps as the
   one candidate): it approves by risk and mode as for healing, or waits for a person;
3. a type built in a low-impact window (an index) plans one like a maintenance job (the forecast
   trough, blackouts, freezes, the disruption budget; a `maintenance_schedules` row, so it is on
   the calendar) and waits for it on a durable timer (`run_now` skips the wait);
4. measures the service (real requests; the type's counters), runs the steps through the shared
   remediation runner (guardrails, each undo registered before its step), waits
   `settle_seconds`, measures again;
5. keeps the change (`applied`, with `realised_improvement` beside `expected_improvement`) or,
   when it regressed, runs the saga's compensations (`rolled_back`, with why). The decision
   learns the outcome either way.

`abort` (signal, one JSON object) stops it: before the change it ends declined, during or after
the change (until the verdict) the change is rolled back.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta
from typing import Any, Literal

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError, ChildWorkflowError

from workflows.remediation import (
    DecidedHooks,
    Remediation,
)

with workflow.unsafe.imports_passed_through():
    from activities._support import STORE_RETRY
    from activities.maintenance import MaintenanceActivities
    from activities.optimization import OptimizationActivities
    from models.common import AbortRequest
    from models.decisions import Candidate, DecisionRequest, DecisionResult
    from models.healing import PlaybookStep
    from models.maintenance import JobStatus, RunNow, ScheduleRecord, WindowPlan, WindowRequest
    from models.optimization import (
        APPLY_TERMINAL,
        ApplyInput,
        ApplyNote,
        ApplyRecord,
        ApplyStatus,
        ApplyStatusView,
        ApplyVerdict,
        ClaimedRecommendation,
        ClaimInput,
        JudgeInput,
        MeasureInput,
        Measurement,
        Released,
    )
    from nofx.settings import TASK_QUEUE_DECISIONS
    from workflows.decisions import DECISION_TIMEOUT, DecisionWorkflow

STORE: dict[str, Any] = {
    "start_to_close_timeout": timedelta(seconds=30),
    "retry_policy": STORE_RETRY,
}
WINDOW_HORIZON = timedelta(hours=24)  # a window is looked for this far ahead
# Schedule rows of the maintenance calendar, by this workflow's status.
CALENDAR: dict[str, JobStatus] = {
    "scheduled": "scheduled",
    "running": "running",
    "settling": "verifying",
    "measuring": "verifying",
    "applied": "completed",
    "rolled_back": "rolled_back",
    "declined": "declined",
    "failed": "failed",
}


def _describe(err: BaseException) -> str:
    cause = getattr(err, "cause", None)
    inner = cause if isinstance(cause, ApplicationError) else err
    return getattr(inner, "message", None) or str(inner) or type(inner).__name__


@workflow.defn
class OptimizationWorkflow(DecidedHooks):
    @workflow.init
    def __init__(self, inp: ApplyInput) -> None:
        self._inp = inp
        self._status: ApplyStatus = "claimed"
        self._claimed: ClaimedRecommendation | None = None
        self._chosen: DecisionResult | None = None
        self._window: WindowPlan | None = None
        self._runner: Remediation | None = None
        self._abort: AbortRequest | None = None
        self._run_now: RunNow | None = None
        self._approver: str | None = None
        self._asks = 0
        self._timeline: list[ApplyNote] = []
        self._before: Measurement | None = None
        self._after: Measurement | None = None
        self._verdict: ApplyVerdict | None = None
        self._error: str | None = None
        self._schedule_id = ""

    # ---- queries and signals ----------------------------------------------------------------

    @workflow.query
    def status(self) -> ApplyStatusView:
        claimed = self._claimed
        return ApplyStatusView(
            workflow_id=workflow.info().workflow_id,
            recommendation_id=str(self._inp.recommendation_id),
            service=claimed.service if claimed else None,
            optimization_type=claimed.optimization_type if claimed else None,
            status=self._status,
            decision_id=self._chosen.decision_id if self._chosen else None,
            chosen=self._chosen.chosen if self._chosen else None,
            window_start=self._window.start if self._window else None,
            rollback_plan=self._runner.saga.rollback_plan if self._runner else [],
            timeline=self._timeline,
            before=self._before,
            after=self._after,
            verdict=self._verdict,
            error=self._error,
        )

    @workflow.signal
    def abort(self, request: AbortRequest) -> None:
        if self._status in APPLY_TERMINAL or self._abort is not None:
            self._note(f"abort by {request.requested_by} ignored: the change is {self._status}")
            return
        self._abort = request
        self._note(f"abort asked by {request.requested_by}: {request.reason}")

    @workflow.signal
    def run_now(self, request: RunNow) -> None:
        if self._status != "scheduled":
            self._note(f"run_now by {request.requested_by} ignored: the change is {self._status}")
            return
        self._run_now = request

    # ---- the run ----------------------------------------------------------------------------

    @workflow.run
    async def run(self, inp: ApplyInput) -> ApplyStatusView:
        self._schedule_id = str(workflow.uuid4())
        try:
            await self._apply(inp)
        finally:
            await workflow.wait_condition(workflow.all_handlers_finished)
        return self.status()

    async def _apply(self, inp: ApplyInput) -> None:
        try:
            self._claimed = await workflow.execute_activity_method(
                OptimizationActivities.claim_recommendation,
                ClaimInput(
                    recommendation_id=str(inp.recommendation_id),
                    requested_by=inp.requested_by,
                    workflow_id=workflow.info().workflow_id,
                ),
                **STORE,
            )
        except ActivityError as err:
            self._error = _describe(err)
            self._set("failed", f"not applied: {self._error}")
            raise ApplicationError(self._error, type="NotApplicable", non_retryable=True) from None
        claimed = self._claimed
        self._note(
            f"{claimed.optimization_type} of {claimed.service} {claimed.target}:"
            f" {claimed.current_state} -> {claimed.recommended_state}"
        )
        chosen = await self._decide(claimed)
        if chosen is None:
            return
        if claimed.windowed and not await self._wait_for_window(claimed):
            return
        await self._change(claimed, chosen)

    async def _decide(self, claimed: ClaimedRecommendation) -> DecisionResult | None:
        self._set("deciding", f"asking the decision engine ({len(claimed.steps)} step(s))")
        try:
            result = await self._decision(None, "")
        except ChildWorkflowError as err:
            self._error = _describe(err)
            await self._release("open", f"no decision: {self._error}")
            self._set("failed", f"no decision: {self._error}")
            raise ApplicationError(self._error, type="NoDecision", non_retryable=True) from None
        if not result.act or result.chosen is None:
            rejected = result.status == "rejected"
            await self._release(
                "dismissed" if rejected else "open",
                f"decision {result.decision_id} {result.status}",
                decision_id=result.decision_id,
            )
            self._set("declined", f"decision {result.decision_id} {result.status}: not applied")
            return None
        if self._abort is not None:
            await self._release("open", self._aborted_text())
            self._set("declined", self._aborted_text())
            return None
        self._chosen = result
        return result

    def _candidate(self) -> Candidate:
        assert self._claimed is not None
        return Candidate(name=f"apply-{self._claimed.optimization_type}", steps=self._claimed.steps)

    async def _decision(self, ask: str | None, suffix: str) -> DecisionResult:
        claimed = self._claimed
        assert claimed is not None
        request = DecisionRequest(
            decision_type="optimization",
            subject=claimed.service,
            problem=f"optimization:{claimed.optimization_type}",
            requested_by=self._inp.requested_by,
            parent_workflow_id=workflow.info().workflow_id,
            candidates=[self._candidate()],
            require_approval=ask,
            evidence={
                "recommendation_id": claimed.id,
                "target": claimed.target,
                "current_state": claimed.current_state,
                "recommended_state": claimed.recommended_state,
                "expected_improvement": claimed.expected_improvement,
                "risk_assessment": claimed.risk_assessment,
            },
        )
        result: DecisionResult = await workflow.execute_child_workflow(
            DecisionWorkflow.run,
            request,
            id=f"decision-{workflow.info().workflow_id}{suffix}",
            task_queue=TASK_QUEUE_DECISIONS,
            execution_timeout=DECISION_TIMEOUT,
        )
        who = f" by {result.decided_by}" if result.decided_by != "nofx-decisions" else ""
        self._note(
            f"decision {result.decision_id} ({result.mode}, risk"
            f" {result.risk.level if result.risk else '?'}): {result.status}{who} — "
            + result.explanation.text.splitlines()[0]
        )
        return result

    async def _wait_for_window(self, claimed: ClaimedRecommendation) -> bool:
        """Plan the low-impact window and wait for it; False when aborted meanwhile."""
        now = workflow.now()
        try:
            self._window = await workflow.execute_activity_method(
                MaintenanceActivities.plan_window,
                WindowRequest(
                    component=claimed.service,
                    issue=f"optimization-{claimed.optimization_type}",
                    deadline=now + WINDOW_HORIZON,
                    workflow_id=workflow.info().workflow_id,
                    requested_start=self._inp.not_before,
                    now=now,
                ),
                start_to_close_timeout=timedelta(minutes=5),
                heartbeat_timeout=timedelta(seconds=30),
                retry_policy=STORE_RETRY,
            )
        except ActivityError as err:
            self._error = _describe(err)
            await self._release("open", f"no window: {self._error}")
            await self._calendar("failed", f"no window: {self._error}")
            return False
        if self._window.start is None:
            self._window = self._window.model_copy(
                update={
                    "start": now,
                    "end": now + timedelta(minutes=self._window.duration_minutes),
                    "reason": self._window.reason + "; running now",
                }
            )
        start = self._window.start
        assert start is not None
        await self._calendar(
            "scheduled", f"window {start:%Y-%m-%d %H:%M:%S} UTC: {self._window.reason}"
        )
        with contextlib.suppress(TimeoutError):
            await workflow.wait_condition(
                lambda: self._abort is not None or self._run_now is not None,
                timeout=max(timedelta(0), start - workflow.now()),
            )
        if self._abort is not None:
            await self._release("open", self._aborted_text())
            await self._calendar("declined", self._aborted_text())
            return False
        if self._run_now is not None:
            self._note(f"run now, asked by {self._run_now.requested_by}: {self._run_now.reason}")
        return True

    async def _change(self, claimed: ClaimedRecommendation, choice: DecisionResult) -> None:
        await self._calendar("measuring", "measuring the service before the change")
        try:
            self._before = await self._measure(claimed, "before")
        except ActivityError as err:  # nothing changed yet: the recommendation stays open
            self._error = _describe(err)
            await self._release("open", f"not measured: {self._error}")
            await self._calendar("failed", f"not measured: {self._error}")
            raise ApplicationError(self._error, type="NotMeasured", non_retryable=True) from None
        self._note(f"before: {self._before.detail}")
        runner = Remediation(claimed.service, workflow.now(), self)
        self._runner = runner
        await self._calendar("running", f"applying {choice.chosen}: {len(choice.steps)} step(s)")
        key = f"{workflow.info().workflow_id}/{self._schedule_id}"
        try:
            for index, step in enumerate(choice.steps):
                await runner.unless_aborted(runner.run_step(index, step, f"{key}/{index}"))
            if self._inp.settle_seconds > 0:
                await self._calendar(
                    "settling", f"changed; measuring again in {self._inp.settle_seconds:g} s"
                )
                with contextlib.suppress(TimeoutError):
                    await workflow.wait_condition(
                        lambda: self._abort is not None,
                        timeout=timedelta(seconds=self._inp.settle_seconds),
                    )
            if self._abort is not None:
                raise ApplicationError(self._aborted_text(), type="Aborted", non_retryable=True)
            await self._calendar("measuring", "measuring the service after the change")
            self._after = await self._measure(claimed, "after")
            self._note(f"after: {self._after.detail}")
            self._verdict = await workflow.execute_activity_method(
                OptimizationActivities.judge_change,
                JudgeInput(
                    claimed=claimed,
                    before=self._before,
                    after=self._after,
                    tolerance=self._inp.tolerance,
                    max_error_increase=self._inp.max_error_increase,
                ),
                **STORE,
            )
        except BaseException as err:
            self._error = _describe(err)
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(asyncio.ensure_future(self._roll_back(choice, None)))
            if isinstance(err, asyncio.CancelledError):
                raise
            raise ApplicationError(
                f"{claimed.optimization_type} of {claimed.service} rolled back: {self._error}",
                type="OptimizationFailed",
                non_retryable=True,
            ) from None
        if self._verdict.regressed:
            self._error = "regressed: " + "; ".join(self._verdict.reasons)
            await self._roll_back(choice, self._verdict)
            return
        await self._release(
            "applied",
            f"kept: {self._after.detail}",
            decision_id=choice.decision_id,
            realised=self._verdict.realised,
        )
        await self._outcome_of(choice, resolved=True, detail=self._verdict.realised["verdict"])
        await self._calendar("applied", f"applied and kept: {self._after.detail}")

    async def _roll_back(self, choice: DecisionResult, verdict: ApplyVerdict | None) -> None:
        assert self._runner is not None
        saga = self._runner.saga
        self._note(f"{self._error}; rolling back: " + (", ".join(saga.rollback_plan) or "nothing"))
        await saga.compensate()
        realised = dict(verdict.realised) if verdict else {}
        realised["rolled_back"] = {
            "why": self._error,
            "compensated": saga.compensated,
            "errors": saga.compensation_errors,
            "restored": [a.detail.get("prior_state_restored") for a in self._runner.actions],
        }
        await self._release(
            "rolled_back", self._error or "", decision_id=choice.decision_id, realised=realised
        )
        await self._outcome_of(choice, resolved=False, detail=self._error or "")
        errors = saga.compensation_errors
        await self._calendar(
            "rolled_back",
            f"rolled back ({', '.join(saga.compensated) or 'nothing to undo'})"
            + (f"; undo failed: {'; '.join(errors)}" if errors else "")
            + f": {self._error}",
        )

    async def _measure(
        self, claimed: ClaimedRecommendation, label: Literal["before", "after"]
    ) -> Measurement:
        return await workflow.execute_activity_method(
            OptimizationActivities.measure_service,
            MeasureInput(
                claimed=claimed,
                label=label,
                requests=self._inp.requests,
                concurrency=self._inp.concurrency,
            ),
            start_to_close_timeout=timedelta(minutes=15),
            heartbeat_timeout=timedelta(seconds=30),
            retry_policy=STORE_RETRY,
        )

    async def _release(
        self,
        status: Released,
        detail: str,
        *,
        decision_id: str | None = None,
        realised: dict[str, object] | None = None,
    ) -> None:
        assert self._claimed is not None
        await workflow.execute_activity_method(
            OptimizationActivities.release_recommendation,
            ApplyRecord(
                recommendation_id=self._claimed.id,
                status=status,
                decision_id=decision_id,
                realised=realised,
                detail=detail,
            ),
            **STORE,
        )

    # ---- bookkeeping ------------------------------------------------------------------------

    def _aborted_text(self) -> str:
        assert self._abort is not None
        return f"aborted by {self._abort.requested_by}: {self._abort.reason}"

    def _note(self, message: str) -> None:
        self._timeline.append(ApplyNote(at=workflow.now(), status=self._status, message=message))

    def _set(self, status: ApplyStatus, message: str) -> None:
        self._status = status
        self._note(message)
        workflow.metric_meter().create_counter(
            "nofx_optimizations_total", "Applied-recommendation transitions, by status and type"
        ).add(
            1,
            {
                "status": status,
                "type": self._claimed.optimization_type if self._claimed else "unknown",
            },
        )

    async def _calendar(self, status: ApplyStatus, message: str) -> None:
        """Move to `status`; a windowed change also keeps its maintenance_schedules row."""
        self._set(status, message)
        claimed = self._claimed
        if claimed is None or not claimed.windowed or status not in CALENDAR:
            return
        start = self._window.start if self._window else None
        await workflow.execute_activity_method(
            MaintenanceActivities.record_schedule,
            ScheduleRecord(
                schedule_id=self._schedule_id,
                workflow_id=workflow.info().workflow_id,
                component=claimed.service,
                issue=f"optimization-{claimed.optimization_type}",
                status=CALENDAR[status],
                scheduled_at=start,
                deadline=(start or workflow.now()) + WINDOW_HORIZON,
                maintenance_type=f"apply-{claimed.optimization_type}",
                decision_id=self._chosen.decision_id if self._chosen else None,
                window=self._window,
                detail=message,
                completed=status in APPLY_TERMINAL,
            ),
            **STORE,
        )

    # ---- Hooks of the remediation runner ----------------------------------------------------

    async def resumed(self, message: str) -> None:
        if self._status == "awaiting_approval":
            self._set("running", message)
        else:
            self._note(message)

    async def ask_person(self, step: PlaybookStep, why: str) -> str:
        """A guardrail wants a person for this step: a decision about the running change."""
        self._asks += 1
        self._set("awaiting_approval", f"{step.action} needs a person ({why})")
        return self.approved_by(step, await self._decision(why, f"-ask{self._asks}"))
