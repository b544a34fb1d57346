"""Activities that observe the fleet: health probes, classified into the failure they look like."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

from sqlalchemy.engine import Engine
from temporalio import activity

from activities.infra import check_health, supervisor_for
from activities.store import list_fleet_targets
from models.healing import (
    FleetTarget,
    ProbeFailure,
    ProbeFleetInput,
    ProbeFleetResult,
    ProbeResult,
)
from nofx.providers.supervisor import SupervisorError


def probe_target(target: FleetTarget, timeout_seconds: float) -> ProbeResult:
    """Probe one service and name the failure.

    A refused connection with the process not running is `service_down`; a process that is
    running but does not answer in time is `service_hung`. The provider's view is evidence, not
    the verdict: a service that answers its health check is healthy whatever supervisord says.
    """
    healthy, detail, latency = check_health(target.endpoint, timeout_seconds)
    process_state: str | None = None
    if target.provider == "supervisor":
        try:
            provider, process = supervisor_for(target)
            state = provider.process_state(process)
            process_state = "FROZEN" if state.frozen else state.state
        except (SupervisorError, ValueError) as err:
            process_state = f"unknown ({err})"
    failure: ProbeFailure | None = None
    if not healthy:
        timed_out = detail.startswith("no answer")
        running = process_state in ("RUNNING", "FROZEN", None)
        failure = "service_hung" if timed_out and running else "service_down"
    return ProbeResult(
        service=target.service,
        healthy=healthy,
        failure=failure,
        detail=detail,
        latency_ms=round(latency, 1),
        process_state=process_state,
        observed_at=datetime.now(UTC),
    )


class TelemetryActivities:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    @activity.defn
    def probe_fleet(self, inp: ProbeFleetInput) -> ProbeFleetResult:
        """Probe every service of the inventory at once (a hung one costs one timeout, not N)."""
        targets = list_fleet_targets(self._engine)
        if not targets:
            return ProbeFleetResult(probes=[])
        with ThreadPoolExecutor(max_workers=min(16, len(targets))) as pool:
            probes = list(pool.map(lambda t: probe_target(t, inp.timeout_seconds), targets))
        return ProbeFleetResult(probes=probes)
