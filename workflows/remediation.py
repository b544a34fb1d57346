"""The remediation runner: the workflow side of acting on a service, shared by every track that
changes something (healing incidents, maintenance jobs, applied optimisations).

A plain module, not a workflow: the workflow that owns the operation builds a `Remediation`
with its `Hooks` (how it notes, records, asks a person, learns of an abort) and runs its steps
through it. Each state-changing step passes the guardrails (waiting out holds, asking a person
where a guardrail says so, holding a lease while it acts), registers its undo with the saga
*before* it runs, and runs once (the activity's idempotency key); checks (health, real
requests) validate. The saga's compensations are the operation's rollback plan.

Moved out of `HealingIncidentWorkflow` unchanged: the commands it issues, in their order, are
the same, so recorded incident histories replay (tests/test_replay.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError

from workflows.saga import COMPENSATION_RETRY, Saga

with workflow.unsafe.imports_passed_through():
    from activities._support import ACTION_RETRY, STORE_RETRY
    from activities.actions import ActionActivities
    from activities.decisions import DecisionActivities
    from activities.guardrails import GuardrailActivities
    from activities.infra import InfraActivities
    from models.actions import CHECKS, ActionRequest, ValidateRequestsParams, compensation
    from models.common import AbortRequest, Contract
    from models.decisions import DecisionOutcome, DecisionResult
    from models.guardrails import GuardrailCheck, ReleaseLease
    from models.healing import ActionOutcome, PlaybookStep, ServiceActionInput, ValidateHealthInput
    from nofx.settings import TASK_QUEUE_DECISIONS

STORE_TIMEOUT = timedelta(seconds=30)


def aborted(request: AbortRequest) -> ApplicationError:
    """A person asked to stop: the failure the saga rolls back from."""
    return ApplicationError(
        f"aborted by {request.requested_by}: {request.reason}", type="Aborted", non_retryable=True
    )


class Hooks(Protocol):
    """What the owning workflow does when the runner has something to say or to ask."""

    def note(self, message: str) -> None: ...

    async def validating(self, message: str) -> None: ...

    async def resumed(self, message: str) -> None: ...

    async def acted(self, outcome: ActionOutcome, note: str) -> None: ...

    async def ask_person(self, step: PlaybookStep, why: str) -> str: ...

    async def await_person(self, why: str) -> None: ...

    def abort_request(self) -> AbortRequest | None: ...

    def approver(self) -> str | None: ...


class DecidedHooks:
    """The `Hooks` every job that asks the decision engine shares (maintenance jobs, applied
    optimisations): notes go to its timeline (`_note`), a guardrail that wants a person is a
    decision of its own (`ask_person`, the owner's), and `approved_by` turns its answer into
    the approver or the refusal."""

    _abort: AbortRequest | None
    _approver: str | None
    _runner: Remediation | None

    async def _outcome_of(self, choice: DecisionResult, *, resolved: bool, detail: str) -> None:
        """How the decision's choice turned out (recovery time: from the runner's start)."""
        await record_decision_outcome(
            DecisionOutcome(
                decision_id=choice.decision_id,
                resolved=resolved,
                recovery_seconds=(
                    (workflow.now() - self._runner.not_before).total_seconds()
                    if resolved and self._runner
                    else None
                ),
                rolled_back=not resolved,
                detail=detail,
            )
        )

    def _note(self, message: str) -> None:
        raise NotImplementedError

    def note(self, message: str) -> None:
        self._note(message)

    async def validating(self, message: str) -> None:
        self._note(message)

    async def acted(self, outcome: ActionOutcome, note: str) -> None:
        count_action(outcome)
        self._note(note)

    def approved_by(self, step: PlaybookStep, go: DecisionResult | None) -> str:
        """Who approved the step, or the failure that stops it (a rejection, no decision)."""
        if go is None or not go.act:
            raise ApplicationError(
                f"{step.action} not approved ({go.status if go else 'no decision'})",
                type="Rejected",
                non_retryable=True,
            )
        self._approver = go.decided_by
        return go.decided_by

    async def await_person(self, why: str) -> None:
        # Only histories from before the decision engine waited here; these jobs never did.
        raise ApplicationError(why, type="Rejected", non_retryable=True)

    def abort_request(self) -> AbortRequest | None:
        return self._abort

    def approver(self) -> str | None:
        return self._approver


@dataclass
class Remediation:
    """The steps run on `service` so far, their outcomes and the saga that undoes them."""

    service: str
    not_before: datetime
    hooks: Hooks
    saga: Saga = field(default_factory=Saga)
    actions: list[ActionOutcome] = field(default_factory=list)

    def _abort_request(self) -> AbortRequest:
        request = self.hooks.abort_request()
        assert request is not None  # only asked once an abort is known
        return request

    async def run_step(self, index: int, step: PlaybookStep, key: str) -> None:
        """One step: guarded (a lease held while it acts) unless it is a check."""
        if step.action in CHECKS or not workflow.patched("guardrails"):
            await self.run_unguarded(index, step, key)
            return
        await self.pass_guardrails(step, key)
        try:
            await self.run_unguarded(index, step, key)
        finally:
            # The lease must go even when the step failed or the operation is being cancelled.
            release = workflow.execute_activity_method(
                GuardrailActivities.release_lease,
                ReleaseLease(idempotency_key=key),
                start_to_close_timeout=STORE_TIMEOUT,
                retry_policy=STORE_RETRY,
            )
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(asyncio.ensure_future(release))

    async def unless_aborted(self, step: Coroutine[Any, Any, None]) -> None:
        """Run a step, but stop it as soon as an abort arrives."""
        if self.hooks.abort_request() is not None:
            step.close()
            raise aborted(self._abort_request())
        task = asyncio.ensure_future(step)
        abort_wait = asyncio.ensure_future(
            workflow.wait_condition(lambda: self.hooks.abort_request() is not None)
        )
        await workflow.wait([task, abort_wait], return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            task.cancel()
            await settle(task)
            assert self.hooks.abort_request() is not None
            raise aborted(self._abort_request())
        abort_wait.cancel()
        await task
        if self.hooks.abort_request() is not None and workflow.patched("abort-after-step"):
            # The abort arrived in the same task as the step's end: it still stops the incident.
            raise aborted(self._abort_request())

    async def pass_guardrails(self, step: PlaybookStep, key: str) -> None:
        """Wait out temporary holds, ask a person where automation must stop (module doc of
        nofx.healing.guardrails); return once the step holds its lease."""
        began = workflow.now()
        held_by: str | None = None
        approver = self.hooks.approver()
        while True:
            verdict = await workflow.execute_activity_method(
                GuardrailActivities.check_guardrails,
                GuardrailCheck(
                    idempotency_key=key,
                    workflow_id=workflow.info().workflow_id,
                    service=self.service,
                    action=step.action,
                    approved_by=approver,
                ),
                start_to_close_timeout=STORE_TIMEOUT,
                retry_policy=STORE_RETRY,
            )
            workflow.metric_meter().create_counter(
                "nofx_guardrail_verdicts_total", "Guardrail checks by verdict and guardrail"
            ).add(1, {"verdict": verdict.verdict, "guardrail": verdict.guardrail or "none"})
            if verdict.verdict == "allow":
                if held_by is not None or approver is not None:
                    self.hooks.note(f"guardrails passed: {verdict.reason}")
                return
            if verdict.verdict == "ask" and workflow.patched("decision-engine"):
                # A guardrail that must not be passed alone: its own decision, its own approval.
                approver = await self.hooks.ask_person(
                    step, f"guardrail {verdict.guardrail}: {verdict.reason}"
                )
                await self.hooks.resumed(f"approved by {approver}: {step.action} goes ahead")
                continue
            if verdict.verdict == "ask":
                await self.hooks.await_person(
                    f"guardrail {verdict.guardrail}: {verdict.reason}; waiting for `approve`"
                )
                await self.hooks.resumed(f"approved: {step.action} goes ahead")
                continue
            if held_by != verdict.guardrail:
                held_by = verdict.guardrail
                self.hooks.note(f"held by guardrail {verdict.guardrail}: {verdict.reason}")
            if (workflow.now() - began).total_seconds() > verdict.max_wait_seconds:
                raise ApplicationError(
                    f"held by guardrail {verdict.guardrail} for more than"
                    f" {verdict.max_wait_seconds:g}s: {verdict.reason}",
                    type="GuardrailTimeout",
                    non_retryable=True,
                )
            with contextlib.suppress(TimeoutError):
                await workflow.wait_condition(
                    lambda: self.hooks.abort_request() is not None,
                    timeout=verdict.retry_after_seconds,
                )
            if self.hooks.abort_request() is not None:
                raise aborted(self._abort_request())

    async def run_unguarded(self, index: int, step: PlaybookStep, key: str) -> None:
        if step.action == "restart_service":
            action = ServiceActionInput(
                idempotency_key=key,
                workflow_id=workflow.info().workflow_id,
                step=f"{index}-{step.action}",
                service=self.service,
                not_before=self.not_before,
                params=step.params,
            )
            undo = action.model_copy(
                update={"idempotency_key": f"{key}/undo", "step": f"{action.step}/undo"}
            )
            self.saga.register(
                compensation(step.action, self.service),
                lambda: self.compensate(InfraActivities.restore_service_running, undo),
            )
            outcome = await workflow.execute_activity_method(
                InfraActivities.restart_service,
                action,
                start_to_close_timeout=timedelta(seconds=step.timeout_seconds),
                heartbeat_timeout=timedelta(seconds=10),
                retry_policy=ACTION_RETRY,
            )
            await self.hooks.acted(
                outcome,
                f"restart_service: {outcome.detail.get('reason', '')}"
                if outcome.detail
                else "restart_service done",
            )
        elif step.action == "validate_health":
            await self.hooks.validating(
                f"waiting for {step.params.get('consecutive_passes', 3)} passing health checks",
            )
            check = ValidateHealthInput(service=self.service, **step.params)
            result = await workflow.execute_activity_method(
                InfraActivities.validate_health,
                check,
                start_to_close_timeout=timedelta(seconds=check.timeout_seconds + 30),
                heartbeat_timeout=timedelta(seconds=10),
                retry_policy=RetryPolicy(maximum_attempts=2),
            )
            if not result.passed:
                raise ApplicationError(
                    f"recovery not validated after {result.attempts} probes: {result.detail}",
                    type="ValidationFailed",
                    non_retryable=True,
                )
            self.hooks.note(
                f"validated: {result.consecutive_passes} health checks passed in a row"
                f" ({result.attempts} probes)"
            )
        elif step.action == "validate_requests":
            await self.validate_requests(index, step)
        else:
            await self.act(index, step, key)

    def action_request(self, index: int, step: PlaybookStep, key: str) -> ActionRequest:
        return ActionRequest(
            idempotency_key=key,
            workflow_id=workflow.info().workflow_id,
            step=f"{index}-{step.action}",
            service=self.service,
            action=step.action,
            params=step.params,
            not_before=self.not_before,
        )

    async def act(self, index: int, step: PlaybookStep, key: str) -> None:
        """A state-changing action: its undo is registered first, then it runs once."""
        request = self.action_request(index, step, key)
        self.saga.register(
            compensation(step.action, self.service),
            lambda: self.undo(request),
        )
        outcome = await workflow.execute_activity_method(
            ActionActivities.perform_action,
            request,
            start_to_close_timeout=timedelta(seconds=step.timeout_seconds),
            heartbeat_timeout=timedelta(seconds=10),
            retry_policy=ACTION_RETRY,
        )
        await self.hooks.acted(outcome, f"{step.action}: {_summary(outcome.detail)}")

    async def undo(self, request: ActionRequest) -> None:
        await self.compensate(ActionActivities.undo_action, request)

    async def validate_requests(self, index: int, step: PlaybookStep) -> None:
        checks = ValidateRequestsParams.model_validate(step.params)
        await self.hooks.validating(
            f"sending {checks.requests} real requests to {checks.path} per round",
        )
        result = await workflow.execute_activity_method(
            ActionActivities.validate_requests,
            self.action_request(index, step, f"validate-{index}"),
            start_to_close_timeout=timedelta(
                seconds=checks.attempts
                * (checks.interval_seconds + checks.requests * checks.request_timeout_seconds)
                + 30
            ),
            heartbeat_timeout=timedelta(seconds=max(30, checks.requests * 2 + 10)),
            retry_policy=RetryPolicy(maximum_attempts=2),
        )
        if not result.passed:
            raise ApplicationError(
                f"recovery not validated after {result.rounds} rounds: {result.detail}",
                type="ValidationFailed",
                non_retryable=True,
            )
        self.hooks.note(f"validated by real requests: {result.detail}")

    async def compensate(
        self, activity_method: Callable[[Any, Any], ActionOutcome], inp: Contract
    ) -> None:
        """Run one compensation (a saga undo) and keep what it did on the incident."""
        outcome = await workflow.execute_activity_method(
            activity_method,
            inp,
            start_to_close_timeout=timedelta(seconds=60),
            heartbeat_timeout=timedelta(seconds=10),
            retry_policy=COMPENSATION_RETRY,
        )
        self.actions.append(outcome)
        count_action(outcome)


async def settle(task: asyncio.Future[Any]) -> None:
    """Wait for a cancelled task to finish unwinding, whatever it raises."""
    with contextlib.suppress(BaseException):  # only waiting for it to stop
        await task


def _summary(detail: dict[str, Any]) -> str:
    """A one-line account of an action's detail for the timeline."""
    parts = [f"{k}={v}" for k, v in detail.items() if not isinstance(v, (dict, list)) or not v]
    parts += [f"{k}={len(v)} item(s)" for k, v in detail.items() if isinstance(v, list) and v]
    return ", ".join(parts[:6]) or "done"


def count_action(outcome: ActionOutcome) -> None:
    """`nofx_healing_actions_total{action, performed}` on the worker's /metrics."""
    workflow.metric_meter().create_counter(
        "nofx_healing_actions_total", "Healing actions and undos, by whether they changed anything"
    ).add(1, {"action": outcome.action, "performed": str(outcome.performed).lower()})


async def record_decision_outcome(outcome: DecisionOutcome) -> None:
    """How the decision's choice turned out, written on the decision (and learnt from), by the
    decisions worker."""
    await workflow.execute_activity_method(
        DecisionActivities.record_outcome,
        outcome,
        task_queue=TASK_QUEUE_DECISIONS,
        start_to_close_timeout=STORE_TIMEOUT,
        retry_policy=STORE_RETRY,
    )
