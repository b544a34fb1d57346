"""The worker factory every track uses: settings, logging, metrics, database, client, Worker.

A track's module only names its task queue, workflows and activities; how a worker process is
put together (and shut down on SIGTERM without losing a task) lives here once.

Stopping: on SIGTERM or SIGINT the worker stops polling and gives the activities it is running
`worker_shutdown_grace_seconds` (NOFX_WORKER_SHUTDOWN_GRACE_SECONDS) to finish; a restart half
done is worse than one that waits. Whatever still runs then is cancelled: a heartbeating
activity sees the cancellation and ends, and Temporal retries it on another worker. The log says
what was in flight when the stop began and how each of those ended.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy.engine import Engine
from temporalio import activity
from temporalio.client import Client
from temporalio.exceptions import CancelledError
from temporalio.worker import (
    ActivityInboundInterceptor,
    ExecuteActivityInput,
    Interceptor,
    Worker,
)

from activities.actions import ActionActivities
from activities.guardrails import GuardrailActivities
from activities.infra import InfraActivities
from nofx.db import make_engine
from nofx.logging import configure_logging, get_logger
from nofx.payloads import ContractWorkflowRunner, contract_data_converter
from nofx.settings import Settings, get_settings
from nofx.temporal import connect, metrics_runtime

ACTIVITY_CONCURRENCY = 16


@dataclass(frozen=True)
class Dependencies:
    """What activities are built from: one engine and one client per worker process."""

    engine: Engine
    client: Client
    settings: Settings


ActivityFactory = Callable[[Dependencies], Sequence[Callable[..., object]]]


def remediation_activities(deps: Dependencies) -> list[Callable[..., object]]:
    """What the shared remediation runner (workflows/remediation.py) calls on the worker of the
    workflow that runs it: restarts and checks, provider actions and their undo, guardrails."""
    infra = InfraActivities(deps.engine)
    actions = ActionActivities(deps.engine, deps.settings)
    guardrails = GuardrailActivities(deps.engine)
    return [
        infra.restart_service,
        infra.restore_service_running,
        infra.validate_health,
        actions.perform_action,
        actions.undo_action,
        actions.validate_requests,
        guardrails.check_guardrails,
        guardrails.release_lease,
    ]


class InFlight(Interceptor):
    """The activities this worker runs now, so that a stop can say what it waited for.

    After `stopping()` each of them logs how it ended: completed, cancelled (the grace ran out)
    or failed.
    """

    def __init__(self) -> None:
        self.running: dict[bytes, str] = {}
        self._log: Any = None

    def stopping(self, log: Any) -> list[str]:
        """Note that the worker is stopping; returns what runs now."""
        self._log = log
        return sorted(self.running.values())

    def ended(self, what: str, outcome: str) -> None:
        if self._log is not None:
            self._log.info("activity ended while stopping", what=what, outcome=outcome)

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _Tracked(next, self)


class _Tracked(ActivityInboundInterceptor):
    def __init__(self, next: ActivityInboundInterceptor, owner: InFlight) -> None:
        super().__init__(next)
        self._owner = owner

    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        info = activity.info()
        what = f"{info.activity_type} of {info.workflow_id} (attempt {info.attempt})"
        self._owner.running[info.task_token] = what
        outcome = "failed"
        try:
            result = await super().execute_activity(input)
            outcome = "completed"
            return result
        except (asyncio.CancelledError, CancelledError):
            outcome = "cancelled"
            raise
        finally:
            del self._owner.running[info.task_token]
            self._owner.ended(what, outcome)


def build_worker(
    deps: Dependencies,
    task_queue: str,
    workflows: Sequence[type],
    activities: ActivityFactory,
    *,
    in_flight: InFlight | None = None,
) -> Worker:
    """A Worker for one track; sync activities run on a pool sized to the activity slots.

    Its workflows refuse input that does not fit their contract (`nofx.payloads`): a malformed
    start fails the run at once with a typed `InvalidInput` naming each field, rather than
    failing its workflow task forever and holding the workflow id. Shut down, it lets running
    activities finish for `worker_shutdown_grace_seconds` before cancelling them.
    """
    config = deps.client.config()
    config["data_converter"] = contract_data_converter(deps.client.data_converter)
    return Worker(
        Client(**config),
        task_queue=task_queue,
        workflows=list(workflows),
        activities=list(activities(deps)),
        activity_executor=ThreadPoolExecutor(ACTIVITY_CONCURRENCY),
        max_concurrent_activities=ACTIVITY_CONCURRENCY,
        workflow_runner=ContractWorkflowRunner(),
        graceful_shutdown_timeout=timedelta(seconds=deps.settings.worker_shutdown_grace_seconds),
        interceptors=[in_flight] if in_flight is not None else [],
    )


async def serve(task_queue: str, workflows: Sequence[type], activities: ActivityFactory) -> None:
    """Run one track's worker until SIGTERM/SIGINT, then finish in-flight tasks and exit."""
    settings = get_settings()
    configure_logging(settings.log_level)
    log = get_logger("nofx.worker").bind(task_queue=task_queue)
    if not settings.database_url:
        raise SystemExit("NOFX_DATABASE_URL is not set: a worker needs the platform database")
    metrics = f"{settings.metrics_host}:{settings.metrics_port or settings.metrics_base_port}"
    client = await connect(settings, runtime=metrics_runtime(metrics))
    engine = make_engine(settings.database_url, pool_size=ACTIVITY_CONCURRENCY)
    deps = Dependencies(engine=engine, client=client, settings=settings)
    in_flight = InFlight()
    worker = build_worker(deps, task_queue, workflows, activities, in_flight=in_flight)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    log.info(
        "worker started", temporal=settings.temporal_address, metrics=f"http://{metrics}/metrics"
    )
    async with worker:
        await stop.wait()
        log.info(
            "worker stopping",
            grace_seconds=settings.worker_shutdown_grace_seconds,
            in_flight=in_flight.stopping(log),
        )
    engine.dispose()
    log.info("worker stopped")
