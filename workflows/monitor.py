"""The fleet monitor: probe every few seconds, open an incident for each confirmed failure.

A long-running workflow (id `monitor-fleet`) rather than a Schedule, so detection latency is one
probe interval rather than a schedule tick; it continues as new before its history grows large.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities._support import STORE_RETRY
    from activities.incidents import IncidentActivities
    from activities.telemetry import TelemetryActivities
    from models.healing import (
        IncidentInput,
        MonitorInput,
        OpenIncidentInput,
        ProbeFleetInput,
        ProbeResult,
    )

MONITOR_WORKFLOW_ID = "monitor-fleet"


def confirmed(probe: ProbeResult, streak: int, settings: MonitorInput) -> bool:
    """Is a failing probe confirmed enough to open an incident?

    A process that is not running is certain at once; a slow answer might be a blip, so a hang
    needs `confirm_hung_after` failed probes in a row.
    """
    needed = 1 if probe.failure == "service_down" else settings.confirm_hung_after
    return streak >= needed


@workflow.defn
class FleetMonitorWorkflow:
    @workflow.init
    def __init__(self, settings: MonitorInput) -> None:
        self._streaks: dict[str, int] = dict(settings.failure_streaks)
        self._ticks = 0
        self._last: list[ProbeResult] = []

    @workflow.query
    def last_probes(self) -> list[ProbeResult]:
        return list(self._last)

    @workflow.run
    async def run(self, settings: MonitorInput) -> None:
        while self._ticks < settings.iterations_before_continue_as_new:
            self._ticks += 1
            result = await workflow.execute_activity_method(
                TelemetryActivities.probe_fleet,
                ProbeFleetInput(timeout_seconds=settings.probe_timeout_seconds),
                start_to_close_timeout=timedelta(seconds=settings.probe_timeout_seconds * 4 + 10),
                retry_policy=STORE_RETRY,
            )
            self._last = result.probes
            for probe in result.probes:
                if probe.healthy:
                    self._streaks.pop(probe.service, None)
                    continue
                streak = self._streaks[probe.service] = self._streaks.get(probe.service, 0) + 1
                if probe.failure is not None and confirmed(probe, streak, settings):
                    await workflow.execute_activity_method(
                        IncidentActivities.open_incident,
                        OpenIncidentInput(
                            incident=IncidentInput(
                                service=probe.service,
                                incident_type=probe.failure,
                                detected_at=probe.observed_at,
                                evidence=probe.model_dump(mode="json"),
                            ),
                            reopen_cooldown_seconds=settings.reopen_cooldown_seconds,
                        ),
                        start_to_close_timeout=timedelta(seconds=30),
                        retry_policy=STORE_RETRY,
                    )
            await workflow.sleep(timedelta(seconds=settings.interval_seconds))
        await workflow.wait_condition(workflow.all_handlers_finished)
        workflow.continue_as_new(
            settings.model_copy(update={"failure_streaks": dict(self._streaks)})
        )
