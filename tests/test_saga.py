"""The saga helper inside a real workflow on the real dev server.

The steps here are test activities that record what ran; they stand for no real component, so
what is under test is only the order of steps and compensations, on failure and on cancellation.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from pydantic import BaseModel
from temporalio import activity, workflow
from temporalio.client import Client, WorkflowFailureError
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError, CancelledError
from temporalio.worker import Worker

from workflows.saga import Saga

JOURNAL: list[str] = []
STEP_STARTED = asyncio.Event()


class SagaPlan(BaseModel):
    steps: list[str]
    fail_at: str | None = None
    block_at: str | None = None


class SagaOutcome(BaseModel):
    rollback_plan: list[str]


@activity.defn
async def do_step(name: str) -> None:
    JOURNAL.append(f"do:{name}")
    if name.startswith("block"):
        STEP_STARTED.set()
        while True:  # until cancelled
            activity.heartbeat()
            await asyncio.sleep(0.1)
    if name.startswith("fail"):
        raise ApplicationError(f"{name} failed", non_retryable=True)


@activity.defn
async def undo_step(name: str) -> None:
    JOURNAL.append(f"undo:{name}")


@workflow.defn
class SagaProbeWorkflow:
    @workflow.run
    async def run(self, plan: SagaPlan) -> SagaOutcome:
        saga = Saga()
        try:
            for name in plan.steps:
                saga.register(name, lambda n=name: _undo(n))
                await workflow.execute_activity(
                    do_step,
                    name,
                    start_to_close_timeout=timedelta(seconds=60),
                    heartbeat_timeout=timedelta(seconds=2),
                    cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
                    retry_policy=RetryPolicy(maximum_attempts=1),
                )
        except BaseException:
            await saga.compensate()
            raise
        return SagaOutcome(rollback_plan=saga.rollback_plan)


async def _undo(name: str) -> None:
    await workflow.execute_activity(undo_step, name, start_to_close_timeout=timedelta(seconds=10))


@pytest.fixture
async def saga_queue(client: Client) -> AsyncIterator[str]:
    queue = f"saga-{uuid.uuid4().hex[:8]}"
    JOURNAL.clear()
    STEP_STARTED.clear()
    async with Worker(
        client, task_queue=queue, workflows=[SagaProbeWorkflow], activities=[do_step, undo_step]
    ):
        yield queue


async def test_failing_step_compensates_earlier_steps_in_reverse(
    client: Client, saga_queue: str
) -> None:
    with pytest.raises(WorkflowFailureError):
        await client.execute_workflow(
            SagaProbeWorkflow.run,
            SagaPlan(steps=["a", "b", "c", "fail-d", "e"]),
            id=f"saga-{uuid.uuid4()}",
            task_queue=saga_queue,
        )
    # d's compensation was registered before it ran, so a half-done step is undone too.
    assert JOURNAL == [
        "do:a", "do:b", "do:c", "do:fail-d",
        "undo:fail-d", "undo:c", "undo:b", "undo:a",
    ]  # fmt: skip


async def test_cancellation_compensates_in_reverse(client: Client, saga_queue: str) -> None:
    handle = await client.start_workflow(
        SagaProbeWorkflow.run,
        SagaPlan(steps=["a", "b", "block-c", "d"]),
        id=f"saga-{uuid.uuid4()}",
        task_queue=saga_queue,
    )
    await asyncio.wait_for(STEP_STARTED.wait(), timeout=30)
    await handle.cancel()
    with pytest.raises(WorkflowFailureError) as failure:
        await handle.result()
    assert isinstance(failure.value.cause, CancelledError)
    assert JOURNAL == ["do:a", "do:b", "do:block-c", "undo:block-c", "undo:b", "undo:a"]


async def test_success_keeps_the_rollback_plan(client: Client, saga_queue: str) -> None:
    outcome = await client.execute_workflow(
        SagaProbeWorkflow.run,
        SagaPlan(steps=["a", "b"]),
        id=f"saga-{uuid.uuid4()}",
        task_queue=saga_queue,
        result_type=SagaOutcome,
    )
    assert outcome.rollback_plan == ["b", "a"]
    assert JOURNAL == ["do:a", "do:b"]
