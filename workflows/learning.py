"""What the training workflows share (a plain module, no workflow of its own): train once on the
history up to when the run started, and end green when a scheduled run finds too little of it.

`DetectorTrainingWorkflow` (workflows/maintenance.py) and `TrainingWorkflow`
(workflows/decisions.py) run their training activity through `train_once`.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any, Protocol, TypeVar

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities._support import STORE_RETRY

R = TypeVar("R")


class TrainingInput(Protocol):
    until: Any
    skip_without_history: bool

    def model_copy(self, *, update: dict[str, Any]) -> Any: ...


async def train_once(method: Any, inp: TrainingInput, skipped: Callable[[str], R]) -> R:
    """Run the training activity `method`; a history too short for it (`NotEnoughHistory`)
    ends the run with `skipped(reason)` when the input allows it, else fails it.

    The history ends when the run starts, recorded in its history: a replay or a retried
    activity trains on the same window.
    """
    if inp.until is None:
        inp = inp.model_copy(update={"until": workflow.now()})
    try:
        result: R = await workflow.execute_activity_method(
            method,
            inp,
            start_to_close_timeout=timedelta(minutes=30),
            heartbeat_timeout=timedelta(minutes=2),
            retry_policy=STORE_RETRY,
        )
    except ActivityError as err:
        cause = err.cause
        if not (
            inp.skip_without_history
            and isinstance(cause, ApplicationError)
            and cause.type == "NotEnoughHistory"
        ):
            raise
        return skipped(f"skipped: {cause.message}")
    return result
