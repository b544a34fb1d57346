"""Standing maintenance jobs on `nofx-maintenance`: verify the audit chain, retrain the detector,
put mitigated replicas back into their load balancer.

The audit trail is only worth something if tampering is noticed; the dev stack schedules its
verification, and a broken chain fails the run so it shows red in the Web UI. The learned anomaly
detector is retrained on a schedule too (and on demand, `nofx detect train`), from the faults and
incidents the platform recorded since. A traffic mitigation (weight 0, drain) ends when its
replica is well again: `TrafficReadmissionWorkflow` looks every 30 seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime, timedelta
from typing import Any

from temporalio import workflow
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    ChildWorkflowError,
    WorkflowAlreadyStartedError,
)
from temporalio.workflow import ParentClosePolicy

from workflows.remediation import (
    STORE_TIMEOUT,
    DecidedHooks,
    Remediation,
)

with workflow.unsafe.imports_passed_through():
    from activities._support import ACTION_RETRY, STORE_RETRY
    from activities.maintenance import MaintenanceActivities
    from activities.readmission import ReadmissionActivities
    from activities.store import AuditActivities
    from activities.training import TrainingActivities
    from models.common import AbortRequest, AuditVerdict
    from models.decisions import Candidate, DecisionRequest, DecisionResult
    from models.detection import DetectorModelReport, TrainDetectorInput
    from models.healing import PlaybookStep
    from models.maintenance import (
        TERMINAL,
        CancelJob,
        FailureTrainInput,
        JobAck,
        JobStatus,
        JobStatusView,
        MaintenanceJobInput,
        OutcomeCheck,
        OutcomeVerdict,
        PredictionChanged,
        PredictionPassInput,
        PredictionPassReport,
        Reschedule,
        RunNow,
        ScheduleRecord,
        TimelineNote,
        ValidationInput,
        ValidationReport,
        WindowPlan,
        WindowRequest,
        job_workflow_id,
    )
    from models.readmission import TrafficReadmissionInput, TrafficReadmissionReport
    from nofx.settings import TASK_QUEUE_DECISIONS
    from workflows.decisions import DECISION_TIMEOUT, DecisionWorkflow
    from workflows.learning import train_once


@workflow.defn
class AuditChainVerificationWorkflow:
    @workflow.run
    async def run(self) -> AuditVerdict:
        verdict = await workflow.execute_activity_method(
            AuditActivities.verify_audit_chain,
            start_to_close_timeout=timedelta(minutes=10),
            heartbeat_timeout=None,
            retry_policy=STORE_RETRY,
        )
        if not verdict.ok:
            raise ApplicationError(
                f"audit chain broken at event {verdict.first_bad_id}: {verdict.problem}",
                verdict,
                type="AuditChainBroken",
                non_retryable=True,
            )
        return verdict


@workflow.defn
class DetectorTrainingWorkflow:
    """Train the learned detector once; the report says whether it went live and why."""

    def __init__(self) -> None:
        self._step = "starting"

    @workflow.run
    async def run(self, inp: TrainDetectorInput) -> DetectorModelReport:
        self._step = "training"

        def skipped(why: str) -> DetectorModelReport:
            # A quiet fleet has nothing new to learn from: the scheduled run ends green.
            self._step = why
            return DetectorModelReport(verdict=why)

        report = await train_once(TrainingActivities.train_anomaly_detector, inp, skipped)
        if report.model_id is not None:
            self._step = f"done: {report.version} {'active' if report.active else 'kept inactive'}"
        return report

    @workflow.query
    def step(self) -> str:
        return self._step


@workflow.defn
class TrafficReadmissionWorkflow:
    """One pass over the traffic mitigations still in force; the report says who went back."""

    @workflow.run
    async def run(self, inp: TrafficReadmissionInput) -> TrafficReadmissionReport:
        return await workflow.execute_activity_method(
            ReadmissionActivities.readmit_traffic,
            inp,
            start_to_close_timeout=timedelta(minutes=10),
            heartbeat_timeout=timedelta(seconds=30),
            retry_policy=ACTION_RETRY,
        )


# ---- predictive maintenance: one job per component and predicted issue ----------------------


def _describe(err: BaseException) -> str:
    cause = getattr(err, "cause", None)
    inner = cause if isinstance(cause, ApplicationError) else err
    return getattr(inner, "message", None) or str(inner) or type(inner).__name__


@workflow.defn
class MaintenanceJobWorkflow(DecidedHooks):
    """Maintain one component before its predicted failure, in the lowest-impact window.

    Plans the window (`MaintenanceActivities.plan_window`), asks the decision engine which
    action (decision type `maintenance`, candidates `maintenance:<issue>` playbooks), records
    `maintenance_schedules`, waits on a durable timer, then runs the chosen steps through the
    shared remediation runner as a saga — drain, act, check, restore traffic — and rolls back
    if a check fails. Last it reads the metric again: only a failure shown averted labels the
    prediction `averted`. While it waits a person may `reschedule`, `run_now` or `cancel` it
    (signals for the Web UI; updates, validated before history, for the SDK and CLI); the
    prediction pass sends `prediction_changed`, which moves the job (or cancels it when the
    prediction is withdrawn). A `cancel` while it runs aborts it and rolls back.
    """

    @workflow.init
    def __init__(self, inp: MaintenanceJobInput) -> None:
        self._inp = inp
        self._status: JobStatus = "planning"
        self._deadline = inp.deadline
        self._prediction_id = inp.prediction_id
        self._schedule_id = ""
        self._window: WindowPlan | None = None
        self._requested_start: datetime | None = None
        self._moved = False
        self._run_now: RunNow | None = None
        self._cancel: CancelJob | None = None
        self._abort: AbortRequest | None = None
        self._chosen: DecisionResult | None = None
        self._decision_wf: str | None = None
        self._asks = 0
        self._approver: str | None = None
        self._timeline: list[TimelineNote] = []
        self._outcome: OutcomeVerdict | None = None
        self._error: str | None = None
        self._runner: Remediation | None = None

    # ---- queries ----------------------------------------------------------------------------

    @workflow.query
    def status(self) -> JobStatusView:
        return JobStatusView(
            workflow_id=workflow.info().workflow_id,
            component=self._inp.component,
            issue=self._inp.issue,
            status=self._status,
            deadline=self._deadline,
            scheduled_at=self._window.start if self._window else None,
            window=self._window,
            chosen=self._chosen.chosen if self._chosen else None,
            decision_id=self._chosen.decision_id if self._chosen else None,
            rollback_plan=self._runner.saga.rollback_plan if self._runner else [],
            timeline=self._timeline,
            outcome=self._outcome,
            error=self._error,
        )

    # ---- signals (Web UI): one JSON object each; what cannot be done is noted, not raised ---

    @workflow.signal
    async def reschedule(self, request: Reschedule) -> None:
        problem = self._refusal_to_move(request.at)
        if problem is not None:
            self._note(f"reschedule by {request.requested_by} ignored: {problem}")
            return
        try:
            await self._move(request)
        except ActivityError as err:
            self._note(f"reschedule by {request.requested_by} refused: {_describe(err)}")

    @workflow.signal
    def run_now(self, request: RunNow) -> None:
        problem = self._refusal_while_waiting()
        if problem is not None:
            self._note(f"run_now by {request.requested_by} ignored: {problem}")
            return
        self._run_now = request

    @workflow.signal
    def cancel(self, request: CancelJob) -> None:
        problem = self._refusal_to_cancel()
        if problem is not None:
            self._note(f"cancel by {request.requested_by} ignored: {problem}")
            return
        self._take_cancel(request)

    @workflow.signal
    async def prediction_changed(self, change: PredictionChanged) -> None:
        if self._status in TERMINAL or self._working():
            return
        if change.status == "withdrawn":
            self._take_cancel(
                CancelJob(requested_by="nofx-predictive", reason="the prediction was withdrawn")
            )
            return
        if change.prediction_id:
            self._prediction_id = change.prediction_id
        if change.deadline is None or change.deadline == self._deadline:
            return
        before = self._deadline
        self._deadline = change.deadline
        self._note(
            f"prediction moved: failure expected from {change.deadline:%Y-%m-%d %H:%M} UTC"
            f" (was {before:%Y-%m-%d %H:%M})"
        )
        if self._status == "scheduled" and self._window is not None:
            with contextlib.suppress(ActivityError):
                await self._replan(self._requested_start)

    # ---- updates (SDK, CLI): refused before history -----------------------------------------

    @workflow.update
    async def reschedule_job(self, request: Reschedule) -> JobAck:
        await self._move(request)
        return self._ack(f"moved to {request.at:%Y-%m-%d %H:%M:%S} UTC by {request.requested_by}")

    @reschedule_job.validator
    def _check_reschedule(self, request: Reschedule) -> None:
        problem = self._refusal_to_move(request.at)
        if problem is not None:
            raise ValueError(problem)

    @workflow.update
    def run_job_now(self, request: RunNow) -> JobAck:
        self._run_now = request
        return self._ack(f"runs now, asked by {request.requested_by}")

    @run_job_now.validator
    def _check_run_now(self, request: RunNow) -> None:
        problem = self._refusal_while_waiting()
        if problem is not None:
            raise ValueError(problem)

    @workflow.update
    def cancel_job(self, request: CancelJob) -> JobAck:
        self._take_cancel(request)
        return self._ack(f"cancelled by {request.requested_by}: {request.reason}")

    @cancel_job.validator
    def _check_cancel(self, request: CancelJob) -> None:
        problem = self._refusal_to_cancel()
        if problem is not None:
            raise ValueError(problem)

    # ---- what may be asked when -------------------------------------------------------------

    def _refusal_while_waiting(self) -> str | None:
        if self._status in TERMINAL:
            return f"the job is {self._status}"
        if self._working():
            return "the job is already running"
        if self._run_now is not None or self._cancel is not None:
            return "the job is already asked to run now or to stop"
        return None

    def _refusal_to_move(self, at: datetime) -> str | None:
        problem = self._refusal_while_waiting()
        if problem is not None:
            return problem
        if self._window is None:
            return "the job has no window yet (it is still planning)"
        if at < workflow.now() - timedelta(seconds=60):
            return f"{at:%Y-%m-%d %H:%M:%S} UTC is in the past"
        return None

    def _refusal_to_cancel(self) -> str | None:
        if self._status in TERMINAL:
            return f"the job is {self._status}"
        if self._cancel is not None:
            return "the job is already being cancelled"
        return None

    def _take_cancel(self, request: CancelJob) -> None:
        self._cancel = request
        if self._working():
            # Stopping work in progress means rolling back what it did.
            self._abort = AbortRequest(requested_by=request.requested_by, reason=request.reason)

    def _working(self) -> bool:
        """The job is acting on the service (its runner started and it has not ended)."""
        return self._runner is not None and self._status not in TERMINAL

    def _ack(self, message: str) -> JobAck:
        self._note(message)
        return JobAck(
            status=self._status,
            scheduled_at=self._window.start if self._window else None,
            message=message,
        )

    # ---- the job ----------------------------------------------------------------------------

    @workflow.run
    async def run(self, inp: MaintenanceJobInput) -> JobStatusView:
        self._schedule_id = str(workflow.uuid4())
        self._note(
            f"{inp.issue} of {inp.component} predicted from {inp.deadline:%Y-%m-%d %H:%M} UTC"
            + (f" ({inp.metric})" if inp.metric else "")
        )
        try:
            await self._replan(None)
            if self._cancel is None:
                await self._decide()
            if self._chosen is not None and self._cancel is None:
                await self._set("scheduled", self._window_note())
                await self._wait_for_window()
            if self._cancel is not None:
                await self._set(
                    "cancelled",
                    f"cancelled by {self._cancel.requested_by}: {self._cancel.reason}",
                    completed=True,
                )
            elif self._chosen is not None:
                await self._maintain(self._chosen)
        finally:
            await workflow.wait_condition(workflow.all_handlers_finished)
        return self.status()

    async def _replan(self, requested: datetime | None) -> None:
        plan = await workflow.execute_activity_method(
            MaintenanceActivities.plan_window,
            WindowRequest(
                component=self._inp.component,
                issue=self._inp.issue,
                deadline=self._deadline,
                duration_minutes=self._inp.duration_minutes,
                workflow_id=workflow.info().workflow_id,
                requested_start=requested,
                now=workflow.now(),
            ),
            start_to_close_timeout=timedelta(minutes=5),
            heartbeat_timeout=timedelta(seconds=30),
            retry_policy=STORE_RETRY,
        )
        if plan.start is None:
            # No allowed start before the failure: as soon as the guardrails let it run.
            now = workflow.now()
            plan = plan.model_copy(
                update={
                    "start": now,
                    "end": now + timedelta(minutes=plan.duration_minutes),
                    "reason": plan.reason + "; running as soon as the guardrails allow",
                }
            )
        self._window, self._requested_start = plan, requested
        self._moved = True
        if self._status == "scheduled":
            await self._set("scheduled", self._window_note())

    async def _move(self, request: Reschedule) -> None:
        await self._replan(request.at)
        self._note(f"rescheduled by {request.requested_by}: {request.reason}")

    def _window_note(self) -> str:
        assert self._window is not None
        assert self._window.start is not None
        load = (
            f", expected {self._window.load_metric} {self._window.expected_load:.3g}"
            if self._window.expected_load is not None
            else ""
        )
        return (
            f"window {self._window.start:%Y-%m-%d %H:%M} UTC for"
            f" {self._window.duration_minutes:g} min{load}: {self._window.reason}"
        )

    async def _decide(self) -> None:
        """Which action (the decision engine); None in `_chosen` when nothing may run."""
        await self._set("deciding", self._window_note())
        ask = self._inp.recurring
        if ask is not None:
            await self._set("awaiting_approval", f"{ask}; the decision waits for a person")
        result = await self._decision(self._inp.candidates, ask, "")
        if result is None:
            return
        if not result.act or result.chosen is None:
            self._error = f"decision {result.decision_id} {result.status}: nothing will run"
            await self._set("declined", self._error, completed=True)
            return
        self._chosen = result

    async def _decision(
        self, candidates: list[Candidate] | None, ask: str | None, suffix: str
    ) -> DecisionResult | None:
        request = DecisionRequest(
            decision_type="maintenance",
            subject=self._inp.component,
            problem=f"maintenance:{self._inp.issue}",
            requested_by=self._inp.requested_by,
            parent_workflow_id=workflow.info().workflow_id,
            candidates=candidates,
            require_approval=ask,
            evidence={
                "issue": self._inp.issue,
                "metric": self._inp.metric,
                "deadline": self._deadline.isoformat(),
                "prediction_id": self._prediction_id,
                "window": self._window.model_dump(mode="json") if self._window else None,
            },
        )
        decision_id = f"decision-{workflow.info().workflow_id}{suffix}"
        self._decision_wf = decision_id
        try:
            result: DecisionResult = await workflow.execute_child_workflow(
                DecisionWorkflow.run,
                request,
                id=decision_id,
                task_queue=TASK_QUEUE_DECISIONS,
                execution_timeout=DECISION_TIMEOUT,
            )
        except ChildWorkflowError as err:
            cause = err.cause
            if isinstance(cause, ApplicationError) and cause.type == "NoPlaybook":
                self._error = cause.message
                await self._set("declined", cause.message, completed=True)
                return None
            raise
        finally:
            self._decision_wf = None
        who = f" by {result.decided_by}" if result.decided_by != "nofx-decisions" else ""
        self._note(
            f"decision {result.decision_id} ({result.mode}, risk"
            f" {result.risk.level if result.risk else '?'}): {result.status}{who};"
            f" {result.chosen or 'nothing'} — " + result.explanation.text.splitlines()[0]
        )
        return result

    async def _wait_for_window(self) -> None:
        """The durable timer: until the window opens, a person says otherwise, or it moves."""
        while self._cancel is None and self._run_now is None:
            assert self._window is not None
            assert self._window.start is not None
            left = (self._window.start - workflow.now()).total_seconds()
            if left <= 0:
                return
            self._moved = False
            with contextlib.suppress(TimeoutError):
                await workflow.wait_condition(
                    lambda: self._moved or self._cancel is not None or self._run_now is not None,
                    timeout=timedelta(seconds=left),
                )
        if self._run_now is not None and self._cancel is None:
            self._note(f"run now, asked by {self._run_now.requested_by}: {self._run_now.reason}")

    async def _maintain(self, choice: DecisionResult) -> None:
        started = workflow.now()
        runner = Remediation(self._inp.component, started, self)
        self._runner = runner
        check = OutcomeCheck(
            component=self._inp.component,
            issue=self._inp.issue,
            metric=self._inp.metric,
            prediction_id=self._prediction_id,
            started_at=started,
        )
        await self._set("running", f"running {choice.chosen}: {len(choice.steps)} step(s)")
        before = await workflow.execute_activity_method(
            MaintenanceActivities.capture_metric,
            check,
            start_to_close_timeout=timedelta(minutes=3),
            heartbeat_timeout=timedelta(seconds=30),
            retry_policy=STORE_RETRY,
        )
        self._note(f"before: {before.detail}")
        key = f"{workflow.info().workflow_id}/{self._schedule_id}"
        try:
            for index, step in enumerate(choice.steps):
                await runner.unless_aborted(runner.run_step(index, step, f"{key}/{index}"))
        except BaseException as err:
            self._error = _describe(err)
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(asyncio.ensure_future(self._roll_back(choice)))
            if isinstance(err, asyncio.CancelledError):
                raise
            raise ApplicationError(
                f"maintenance of {self._inp.component} rolled back: {self._error}",
                type="MaintenanceFailed",
                non_retryable=True,
            ) from None
        await self._set("verifying", "maintenance done; checking that the failure is averted")
        verdict = await workflow.execute_activity_method(
            MaintenanceActivities.judge_outcome,
            check.model_copy(update={"before": before.value}),
            start_to_close_timeout=timedelta(minutes=5),
            heartbeat_timeout=timedelta(seconds=30),
            retry_policy=STORE_RETRY,
        )
        self._outcome = verdict
        await self._outcome_of(choice, resolved=True, detail=verdict.detail)
        await self._set("completed", verdict.detail, completed=True)

    async def _roll_back(self, choice: DecisionResult) -> None:
        assert self._runner is not None
        plan = self._runner.saga.rollback_plan
        self._note(f"{self._error}; rolling back: " + (", ".join(plan) or "nothing to undo"))
        await self._runner.saga.compensate()
        errors = self._runner.saga.compensation_errors
        await self._outcome_of(choice, resolved=False, detail=self._error or "")
        await self._set(
            "rolled_back",
            f"rolled back ({', '.join(self._runner.saga.compensated) or 'nothing to undo'})"
            + (f"; undo failed: {'; '.join(errors)}" if errors else "")
            + f": {self._error}",
            completed=True,
        )

    # ---- bookkeeping ------------------------------------------------------------------------

    def _note(self, message: str) -> None:
        self._timeline.append(TimelineNote(at=workflow.now(), status=self._status, message=message))

    async def _set(self, status: JobStatus, message: str, *, completed: bool = False) -> None:
        self._status = status
        self._note(message)
        await workflow.execute_activity_method(
            MaintenanceActivities.record_schedule,
            ScheduleRecord(
                schedule_id=self._schedule_id,
                workflow_id=workflow.info().workflow_id,
                component=self._inp.component,
                issue=self._inp.issue,
                prediction_id=self._prediction_id,
                status=status,
                scheduled_at=self._window.start if self._window else None,
                deadline=self._deadline,
                maintenance_type=self._chosen.chosen if self._chosen else None,
                decision_id=self._chosen.decision_id if self._chosen else None,
                window=self._window,
                detail=message,
                completed=completed,
            ),
            start_to_close_timeout=STORE_TIMEOUT,
            retry_policy=STORE_RETRY,
        )
        workflow.metric_meter().create_counter(
            "nofx_maintenance_jobs_total", "Maintenance job transitions, by status"
        ).add(1, {"status": status, "issue": self._inp.issue})

    # ---- Hooks of the remediation runner ----------------------------------------------------

    async def resumed(self, message: str) -> None:
        if self._status == "awaiting_approval":  # a person let the step go ahead
            await self._set("running", message)
        else:
            self._note(message)

    async def ask_person(self, step: PlaybookStep, why: str) -> str:
        """A guardrail wants a person for this step: a decision about the running plan."""
        assert self._chosen is not None
        assert self._chosen.chosen_candidate is not None
        self._asks += 1
        waiting = f"{step.action} needs a person ({why}): decision waits for `approve`"
        if workflow.patched("job-shows-awaiting-approval"):
            # The job's row and status say it waits, not that it runs.
            await self._set("awaiting_approval", waiting)
        else:
            self._note(waiting)
        go = await self._decision([self._chosen.chosen_candidate], why, f"-ask{self._asks}")
        return self.approved_by(step, go)


# A pass over every limited metric (forecasts, training): long, heartbeating, retried.
LONG_ACTIVITY: dict[str, Any] = {
    "start_to_close_timeout": timedelta(minutes=30),
    "heartbeat_timeout": timedelta(minutes=2),
    "retry_policy": STORE_RETRY,
}


async def _tell(job_id: str, notice: PredictionChanged) -> bool:
    """Signal the job its prediction changed; False when no such job runs."""
    try:
        await workflow.get_external_workflow_handle(job_id).signal(
            MaintenanceJobWorkflow.prediction_changed, notice
        )
    except ApplicationError:
        return False
    return True


@workflow.defn
class PredictionPassWorkflow:
    """One forecasting pass (scheduled): every new or moved prediction gets its maintenance job
    (started, or told of the change), and a withdrawn one tells its job to stand down."""

    @workflow.run
    async def run(self, inp: PredictionPassInput) -> PredictionPassReport:
        report = await workflow.execute_activity_method(
            MaintenanceActivities.predict,
            inp,
            **LONG_ACTIVITY,
        )
        for change in report.changes:
            job_id = job_workflow_id(change.service, change.issue)
            notice = PredictionChanged(
                prediction_id=change.prediction_id,
                status="withdrawn" if change.change == "withdrawn" else "open",
                deadline=change.deadline,
                probability=change.probability,
            )
            if change.change == "withdrawn":
                await _tell(job_id, notice)  # no job: nothing to stand down
                continue
            if change.change not in ("opened", "updated") or change.deadline is None:
                continue
            try:
                await workflow.start_child_workflow(
                    MaintenanceJobWorkflow.run,
                    MaintenanceJobInput(
                        component=change.service,
                        issue=change.issue,
                        deadline=change.deadline,
                        prediction_id=change.prediction_id,
                        metric=change.metric,
                        recurring=change.recurring,
                    ),
                    id=job_id,
                    parent_close_policy=ParentClosePolicy.ABANDON,
                )
                report.jobs_started.append(job_id)
            except WorkflowAlreadyStartedError:
                if await _tell(job_id, notice):  # else it ended in between: the next pass
                    report.jobs_moved.append(job_id)
        return report


@workflow.defn
class PredictionValidationWorkflow:
    """Stored predictions against what happened (scheduled daily; `nofx predictive validate`)."""

    @workflow.run
    async def run(self, inp: ValidationInput) -> ValidationReport:
        report = await workflow.execute_activity_method(
            MaintenanceActivities.validate_predictions,
            inp,
            **LONG_ACTIVITY,
        )
        # The day's outcomes are the failure classifier's new labels: learn from them.
        trained = await workflow.execute_activity_method(
            MaintenanceActivities.train_failure_classifier,
            FailureTrainInput(),
            **LONG_ACTIVITY,
        )
        return report.model_copy(update={"classifier": trained})
