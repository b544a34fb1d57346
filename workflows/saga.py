"""The saga: every step registers its compensation before it runs; on failure, cancellation or an
abort the compensations run in reverse order, each retried, shielded from workflow cancellation.

The list of registered compensations is the operation's rollback plan; workflows expose it in
their `status` query and store it with the incident.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

COMPENSATION_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=10,
)


@dataclass
class Compensation:
    """An undo step: a name for the rollback plan and the coroutine factory that performs it."""

    name: str
    undo: Callable[[], Awaitable[object]]


@dataclass
class Saga:
    """Compensations registered so far, in the order their steps ran."""

    compensations: list[Compensation] = field(default_factory=list)
    compensated: list[str] = field(default_factory=list)
    compensation_errors: list[str] = field(default_factory=list)

    def register(self, name: str, undo: Callable[[], Awaitable[object]]) -> None:
        """Register an undo *before* running its step, so a step that half-ran is undone too."""
        self.compensations.append(Compensation(name, undo))

    @property
    def rollback_plan(self) -> list[str]:
        """Compensation names in the order they would run (reverse of registration)."""
        return [c.name for c in reversed(self.compensations)]

    async def compensate(self) -> None:
        """Run every compensation in reverse, each to completion even if the workflow is cancelled.

        A compensation that still fails after its retries is recorded and the rest still run: a
        partial rollback is better than none, and the errors are reported with the incident.
        """
        while self.compensations:
            step = self.compensations.pop()
            try:
                await asyncio.shield(asyncio.ensure_future(step.undo()))
                self.compensated.append(step.name)
            except BaseException as err:  # noqa: BLE001 - keep rolling back whatever happened
                workflow.logger.error("compensation %s failed: %s", step.name, err)
                self.compensation_errors.append(f"{step.name}: {err}")
