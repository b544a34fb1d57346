"""Chaos experiments on `nofx-healing`: inject a real fault and judge how the platform heals it.

`ChaosExperimentWorkflow` runs one experiment (models.chaos explains the loop); it never helps
the healing track — it only injects, watches what the platform records, and checks the service
from outside. `ChaosSuiteWorkflow` runs a suite's experiments one after another as children, each
on the service that has been left alone longest, and answers `progress` with the results so far
(`nofx chaos run` prints from it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, Literal

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

from workflows.saga import COMPENSATION_RETRY

with workflow.unsafe.imports_passed_through():
    from activities._support import STORE_RETRY
    from activities.actions import ActionActivities
    from activities.chaos import ChaosActivities
    from activities.infra import InfraActivities
    from models.actions import ActionRequest
    from models.chaos import (
        ChaosExperimentInput,
        ChaosResult,
        ChaosSuiteInput,
        ChaosSuiteProgress,
        IncidentSeen,
        Injected,
        RollbackCheck,
        SteadyState,
        WatchIncident,
    )
    from models.common import AbortRequest, Contract
    from models.healing import ActionOutcome, ServiceActionInput
    from nofx.chaos import fault_label
    from nofx.faults import expected_pattern
    from workflows.healing import HealingIncidentWorkflow

CHECK_TIMEOUT = timedelta(seconds=60)
STEADY_POLL = timedelta(seconds=5)
FAULT_RETRY = RetryPolicy(maximum_attempts=3, non_retryable_error_types=["FaultRefused"])


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return round((end - start).total_seconds(), 2)


def rollback_checks(actions: list[dict[str, object]]) -> list[RollbackCheck]:
    """The compensations an incident ran, each with whether it put the prior state back."""
    checks = []
    for action in actions:
        name = str(action.get("action", ""))
        if not (name.startswith("undo_") or name == "restore_service_running"):
            continue
        detail = action.get("detail") or {}
        assert isinstance(detail, dict)
        checks.append(
            RollbackCheck(
                action=name,
                performed=bool(action.get("performed")),
                restored=bool(detail.get("prior_state_restored")),
                detail=str(detail.get("prior_state_check", "not checked")),
            )
        )
    return checks


@workflow.defn
class ChaosExperimentWorkflow:
    @workflow.run
    async def run(self, inp: ChaosExperimentInput) -> ChaosResult:
        result = ChaosResult(
            experiment_id=inp.experiment_id,
            suite=inp.suite,
            service=inp.service,
            fault=inp.fault,
            expected_pattern=expected_pattern(inp.fault.kind, inp.fault.params),
            outcome="error",
        )
        steady = await self._wait_for_steady(inp, inp.steady_timeout_seconds, before=True)
        if not steady.steady:
            result.outcome = "not_steady"
            result.note = "; ".join(steady.problems)
            return result
        try:
            injected: Injected = await workflow.execute_activity_method(
                ChaosActivities.inject_fault,
                inp,
                start_to_close_timeout=timedelta(seconds=90),
                retry_policy=FAULT_RETRY,
            )
        except ActivityError as err:
            result.note = f"fault refused: {err.cause or err}"
            return result
        result.injected_at = injected.injected_at
        try:
            await self._observe(inp, injected, result)
        finally:
            # Whatever happened above, the fault must not outlive the experiment.
            removal = workflow.execute_activity_method(
                ChaosActivities.remove_fault,
                inp.service,
                start_to_close_timeout=timedelta(seconds=120),
                retry_policy=STORE_RETRY,
            )
            result.removed_by_experiment = await asyncio.shield(asyncio.ensure_future(removal))
        if result.outcome in ("escalated", "failed", "rolled_back", "undetected"):
            # Leave the service as found: steady again once the fault is gone.
            await self._wait_for_steady(inp, inp.rto_seconds, before=False)
        return result

    async def _observe(
        self, inp: ChaosExperimentInput, injected: Injected, result: ChaosResult
    ) -> None:
        seen = await self._watch(inp, injected, "opened", None, inp.detect_timeout_seconds)
        if seen is None:
            result.outcome = "undetected"
            result.note = f"no incident within {inp.detect_timeout_seconds:g}s"
            return
        result.detected = True
        result.incident_id = seen.incident_id
        result.incident_workflow_id = seen.workflow_id
        result.incident_type = seen.incident_type
        result.pattern_correct = seen.incident_type == result.expected_pattern
        result.mttd_seconds = _seconds(injected.injected_at, seen.detected_at)
        if inp.fault.rollback_drill:
            seen = await self._drill(inp, injected, seen)
        ended = await self._watch(inp, injected, "ended", seen.incident_id, inp.rto_seconds * 2)
        assert ended is not None
        result.incident_status = ended.status
        result.actions = [str(a.get("action")) for a in ended.actions]
        result.rollbacks = rollback_checks(ended.actions)
        if ended.status == "awaiting_approval" or ended.status == "escalated":
            result.outcome = "escalated"
            result.note = "handed to a person"
            if ended.status == "awaiting_approval":
                await self._close(ended, "chaos experiment over: the fault is removed")
            return
        if ended.status == "failed":
            result.outcome = "rolled_back" if inp.fault.rollback_drill else "failed"
            result.note = ended.failure or ""
            return
        if ended.status != "resolved":
            result.outcome = "error"
            result.note = f"incident still {ended.status} after {inp.rto_seconds * 2:g}s"
            return
        if inp.fault.rollback_drill:
            # The incident healed before the abort landed: run its compensations now, as the
            # saga would have, and check each put the prior state back.
            undone = await self._compensate(ended)
            result.rollbacks = rollback_checks([a.model_dump(mode="json") for a in undone])
            result.outcome = "rolled_back"
            result.note = "healed before the abort landed; its compensations were run after"
            return
        result.auto_resolved = True
        deadline = injected.injected_at + timedelta(seconds=inp.rto_seconds)
        remaining = max(5.0, (deadline - workflow.now()).total_seconds())
        steady = await self._wait_for_steady(inp, remaining, before=False)
        result.mttr_seconds = _seconds(injected.injected_at, steady.checked_at)
        result.within_rto = steady.steady and steady.checked_at <= deadline
        result.outcome = "healed" if result.within_rto else "healed_late"
        if not steady.steady:
            result.note = "; ".join(steady.problems)

    async def _drill(
        self, inp: ChaosExperimentInput, injected: Injected, seen: IncidentSeen
    ) -> IncidentSeen:
        """Abort the incident once it has acted, as a person would from the Web UI."""
        acted = await self._watch(inp, injected, "acted", seen.incident_id, inp.rto_seconds)
        assert acted is not None
        if acted.status in ("resolved", "failed", "escalated"):
            return acted
        await self._close(acted, "chaos rollback drill: undo what healing did")
        return acted

    async def _compensate(self, seen: IncidentSeen) -> list[ActionOutcome]:
        """Run a resolved incident's compensations, newest first, with the very activities (and
        idempotency keys) its saga uses; each outcome says whether the prior state is back."""
        steps: list[ActionRequest] = await workflow.execute_activity_method(
            ChaosActivities.incident_compensations,
            seen,
            start_to_close_timeout=CHECK_TIMEOUT,
            retry_policy=STORE_RETRY,
        )
        outcomes = []
        for step in steps:
            if step.action == "restart_service":
                undo: Callable[[Any, Any], ActionOutcome] = InfraActivities.restore_service_running
                arg: Contract = ServiceActionInput(
                    idempotency_key=f"{step.idempotency_key}/undo",
                    workflow_id=step.workflow_id,
                    step=f"{step.step}/undo",
                    service=step.service,
                    not_before=step.not_before,
                )
            else:
                undo, arg = ActionActivities.undo_action, step
            outcomes.append(
                await workflow.execute_activity_method(
                    undo,
                    arg,
                    start_to_close_timeout=timedelta(seconds=60),
                    heartbeat_timeout=timedelta(seconds=10),
                    retry_policy=COMPENSATION_RETRY,
                )
            )
        return outcomes

    async def _close(self, seen: IncidentSeen, reason: str) -> None:
        handle = workflow.get_external_workflow_handle(seen.workflow_id)
        try:
            await handle.signal(
                HealingIncidentWorkflow.abort,
                AbortRequest(requested_by=f"chaos:{workflow.info().workflow_id}", reason=reason),
            )
        except Exception:  # noqa: BLE001 - it ended in the meantime: nothing left to stop
            workflow.logger.info("incident %s ended before the abort", seen.workflow_id)

    async def _watch(
        self,
        inp: ChaosExperimentInput,
        injected: Injected,
        until: Literal["opened", "acted", "ended"],
        incident_id: str | None,
        timeout: float,
    ) -> IncidentSeen | None:
        return await workflow.execute_activity_method(
            ChaosActivities.watch_incident,
            WatchIncident(
                service=inp.service,
                since=injected.injected_at,
                timeout_seconds=timeout,
                until=until,
                incident_id=incident_id,
            ),
            start_to_close_timeout=timedelta(seconds=timeout + 60),
            heartbeat_timeout=timedelta(seconds=30),
            retry_policy=STORE_RETRY,
        )

    async def _wait_for_steady(
        self, inp: ChaosExperimentInput, timeout: float, *, before: bool
    ) -> SteadyState:
        deadline = workflow.now() + timedelta(seconds=timeout)
        while True:
            steady: SteadyState = await workflow.execute_activity_method(
                ChaosActivities.steady_state,
                args=[inp.service, before],
                start_to_close_timeout=CHECK_TIMEOUT,
                retry_policy=STORE_RETRY,
            )
            if steady.steady or workflow.now() >= deadline:
                return steady
            await workflow.sleep(STEADY_POLL)


@workflow.defn
class ChaosSuiteWorkflow:
    def __init__(self) -> None:
        self._progress: ChaosSuiteProgress | None = None

    @workflow.query
    def progress(self) -> ChaosSuiteProgress | None:
        return self._progress

    @workflow.run
    async def run(self, inp: ChaosSuiteInput) -> ChaosSuiteProgress:
        progress = self._progress = ChaosSuiteProgress(suite=inp.suite, total=len(inp.faults))
        last_used = {service: -1 for service in inp.services}
        seen_kinds: dict[str, set[str]] = {service: set() for service in inp.services}
        busy: set[str] = set()

        async def experiment(index: int, service: str) -> None:
            fault = inp.faults[index]
            experiment_id = f"{workflow.info().workflow_id}-{index + 1:03d}-{fault.kind}"
            label = f"{experiment_id} on {service}"
            progress.running.append(label)
            try:
                result: ChaosResult = await workflow.execute_child_workflow(
                    ChaosExperimentWorkflow.run,
                    ChaosExperimentInput(
                        experiment_id=experiment_id,
                        suite=inp.suite,
                        service=service,
                        fault=fault,
                        rto_seconds=inp.rto_seconds,
                        detect_timeout_seconds=inp.detect_timeout_seconds,
                    ),
                    id=experiment_id,
                )
                progress.results.append(result)
            finally:
                progress.running.remove(label)
                busy.discard(service)

        tasks = []
        for index in range(len(inp.faults)):
            await workflow.wait_condition(lambda: len(busy) < inp.parallel)
            # A free service that has not had this kind of fault yet, else the one left alone
            # longest (its cooldown is most likely over): each run is then a first occurrence
            # for the detectors, as a fault in production mostly is.
            kind = fault_label(inp.faults[index])
            service = min(
                (s for s in inp.services if s not in busy),
                key=lambda s: (kind in seen_kinds[s], last_used[s]),
            )
            last_used[service] = index
            seen_kinds[service].add(kind)
            busy.add(service)
            tasks.append(asyncio.ensure_future(experiment(index, service)))
        await asyncio.gather(*tasks)
        return progress
