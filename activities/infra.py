"""Activities that act on infrastructure through its provider (supervisord for the staging fleet).

Each action is idempotent twice over: the provider reads the current state and does nothing when
the goal already holds, and the `action_log` row keyed by workflow id + step records what ran, so
an attempt retried after a worker crash neither repeats the action nor loses its record.
"""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities._support import heartbeating, invalid_input
from activities.store import get_fleet_target
from models.healing import (
    ActionOutcome,
    FleetTarget,
    ServiceActionInput,
    ValidateHealthInput,
    ValidationResult,
)
from nofx.healing.action_log import log_action
from nofx.healing.probes import check_health
from nofx.providers.supervisor import (
    SupervisorProvider,
    SupervisorUnavailableError,
    UnknownTargetError,
)

# How long the restart compensation waits for the service to answer before it judges.
RESTORE_WAIT_SECONDS = 20.0


def supervisor_for(target: FleetTarget) -> tuple[SupervisorProvider, str]:
    """The provider and process name for an inventory entry managed by supervisord."""
    if target.provider != "supervisor":
        raise invalid_input(
            f"service {target.service!r} uses provider {target.provider!r}, which cannot restart"
        )
    socket = target.metadata.get("supervisor_socket")
    if not socket:
        raise invalid_input(f"service {target.service!r} has no metadata.supervisor_socket")
    return SupervisorProvider(Path(socket)), str(target.metadata.get("process", target.service))


class InfraActivities:
    """Actions on the fleet; the inventory (table services) says how to reach each target."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def _log_action(self, inp: ServiceActionInput, action: str, status: str, detail: Any) -> None:
        log_action(
            self._engine,
            inp.idempotency_key,
            inp.workflow_id,
            inp.step,
            action,
            inp.service,
            status,
            detail,
        )

    @activity.defn
    def restart_service(self, inp: ServiceActionInput) -> ActionOutcome:
        """Restart the service's process unless it already restarted since `not_before`."""
        started_at = datetime.now(UTC)
        provider, process = supervisor_for(get_fleet_target(self._engine, inp.service))
        self._log_action(inp, "restart_service", "started", {"attempt": activity.info().attempt})
        try:
            with heartbeating(step=inp.step):
                # supervisord reports start times in whole seconds.
                outcome = provider.restart(
                    process, not_before=math.floor(inp.not_before.timestamp())
                )
        except UnknownTargetError as err:
            self._log_action(inp, "restart_service", "failed", {"error": str(err)})
            raise ApplicationError(str(err), type="UnknownTarget", non_retryable=True) from err
        except SupervisorUnavailableError as err:
            self._log_action(inp, "restart_service", "failed", {"error": str(err)})
            raise
        detail = outcome.model_dump()
        self._log_action(
            inp, "restart_service", "succeeded" if outcome.restarted else "skipped", detail
        )
        activity.logger.info("restart_service %s: %s", inp.service, outcome.reason)
        return ActionOutcome(
            action="restart_service",
            service=inp.service,
            performed=outcome.restarted,
            detail=detail,
            started_at=started_at,
            finished_at=datetime.now(UTC),
        )

    @activity.defn
    def restore_service_running(self, inp: ServiceActionInput) -> ActionOutcome:
        """Compensation of a restart: never leave down a process that the restart stopped.

        A restart that stopped the process and then failed to start it would leave the service
        worse than before; this starts it again when it is not running, and does nothing if it is.
        It then waits (heartbeating) up to RESTORE_WAIT_SECONDS for the service to answer
        /health; a process that died again meanwhile (say its port was still taken) is not
        restored: the attempt fails and Temporal retries it with backoff.
        """
        started_at = datetime.now(UTC)
        target = get_fleet_target(self._engine, inp.service)
        provider, process = supervisor_for(target)
        state = provider.process_state(process)
        performed = False
        with heartbeating(step=inp.step):
            if state.state != "RUNNING":
                provider.restart(process, not_before=math.floor(time.time()))
                performed = True
            deadline = time.monotonic() + RESTORE_WAIT_SECONDS
            healthy, seen, _ = check_health(target.endpoint, 2.0)
            while not healthy and time.monotonic() < deadline:
                time.sleep(0.5)
                healthy, seen, _ = check_health(target.endpoint, 2.0)
        after = provider.process_state(process).state
        if after != "RUNNING":
            raise ApplicationError(
                f"{inp.service} not restored yet: its process is {after} ({seen})",
                type="NotRestored",
            )
        self._log_action(
            inp, "restore_service_running", "compensated", {"state_before": state.model_dump()}
        )
        return ActionOutcome(
            action="restore_service_running",
            service=inp.service,
            performed=performed,
            detail={
                "state_before": state.state,
                "prior_state_restored": after == "RUNNING",
                "prior_state_check": f"process {after}, health {seen}",
            },
            started_at=started_at,
            finished_at=datetime.now(UTC),
        )

    @activity.defn
    def validate_health(self, inp: ValidateHealthInput) -> ValidationResult:
        """Probe until the health check passes N times in a row, or the time runs out."""
        target = get_fleet_target(self._engine, inp.service)
        deadline = time.monotonic() + inp.timeout_seconds
        attempts = streak = 0
        detail = ""
        while time.monotonic() < deadline:
            attempts += 1
            healthy, detail, _ = check_health(target.endpoint, inp.probe_timeout_seconds)
            streak = streak + 1 if healthy else 0
            activity.heartbeat({"attempts": attempts, "streak": streak})
            if activity.is_cancelled():
                raise ApplicationError("validation cancelled", type="Cancelled")
            if streak >= inp.consecutive_passes:
                return ValidationResult(
                    service=inp.service,
                    passed=True,
                    attempts=attempts,
                    consecutive_passes=streak,
                    detail=detail,
                )
            time.sleep(inp.interval_seconds)
        return ValidationResult(
            service=inp.service,
            passed=False,
            attempts=attempts,
            consecutive_passes=streak,
            detail=f"last probe: {detail}",
        )
