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
    from activities.telemetry import DetectionActivities, TelemetryActivities
    from models.detection import FleetDiagnosis, ScrapeFleetInput, ServiceEvidence
    from models.healing import (
        DiagnoseFleetInput,
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
        self._diagnosis = FleetDiagnosis()

    @workflow.query
    def last_probes(self) -> list[ProbeResult]:
        return list(self._last)

    @workflow.query
    def last_diagnoses(self) -> FleetDiagnosis:
        return self._diagnosis

    @workflow.run
    async def run(self, settings: MonitorInput) -> None:
        while self._ticks < settings.iterations_before_continue_as_new:
            self._ticks += 1
            if workflow.patched("detect-and-diagnose"):
                await self._tick(settings)
            else:
                await self._probe_only_tick(settings)
            await workflow.sleep(timedelta(seconds=settings.interval_seconds))
        await workflow.wait_condition(workflow.all_handlers_finished)
        workflow.continue_as_new(
            settings.model_copy(update={"failure_streaks": dict(self._streaks)})
        )

    async def _probe(self, settings: MonitorInput) -> list[ProbeResult]:
        result = await workflow.execute_activity_method(
            TelemetryActivities.probe_fleet,
            ProbeFleetInput(timeout_seconds=settings.probe_timeout_seconds),
            start_to_close_timeout=timedelta(seconds=settings.probe_timeout_seconds * 4 + 10),
            retry_policy=STORE_RETRY,
        )
        self._last = result.probes
        return result.probes

    async def _tick(self, settings: MonitorInput) -> None:
        """Scrape, probe, detect and diagnose; open an incident per confirmed diagnosis."""
        at = workflow.now()
        await workflow.execute_activity_method(
            DetectionActivities.scrape_fleet,
            ScrapeFleetInput(at=at),
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=STORE_RETRY,
        )
        probes = await self._probe(settings)
        self._diagnosis = await workflow.execute_activity_method(
            DetectionActivities.diagnose_fleet,
            DiagnoseFleetInput(at=at, probes=probes),
            start_to_close_timeout=timedelta(seconds=60),
            retry_policy=STORE_RETRY,
        )
        # Detected when last observed: the probe of this tick ran after the tick began.
        observed = {p.service: p.observed_at for p in probes}
        current = {f"{d.service}/{d.pattern.pattern}": d for d in self._diagnosis.diagnoses}
        self._streaks = {key: self._streaks.get(key, 0) + 1 for key in current}
        for key, diagnosis in current.items():
            pattern = diagnosis.pattern.pattern
            needed = {
                "service_down": 1,
                "service_hung": settings.confirm_hung_after,
                "latency_regression": settings.confirm_generic_after,
            }.get(pattern, settings.confirm_after)
            if self._streaks[key] < needed:
                continue
            evidence = self._diagnosis.evidence.get(diagnosis.service)
            by_probe = pattern in ("service_down", "service_hung")
            await self._open(
                settings,
                IncidentInput(
                    service=diagnosis.service,
                    incident_type=pattern,
                    detection_method="health_probe" if by_probe else "anomaly_ensemble",
                    detected_at=max(at, observed.get(diagnosis.service, at)),
                    evidence=evidence_summary(evidence),
                    diagnosis=diagnosis,
                ),
            )

    async def _probe_only_tick(self, settings: MonitorInput) -> None:
        """The monitor before detection: probes alone (kept for runs started before it)."""
        for probe in await self._probe(settings):
            if probe.healthy:
                self._streaks.pop(probe.service, None)
                continue
            streak = self._streaks[probe.service] = self._streaks.get(probe.service, 0) + 1
            if probe.failure is not None and confirmed(probe, streak, settings):
                await self._open(
                    settings,
                    IncidentInput(
                        service=probe.service,
                        incident_type=probe.failure,
                        detected_at=probe.observed_at,
                        evidence=probe.model_dump(mode="json"),
                    ),
                )

    async def _open(self, settings: MonitorInput, incident: IncidentInput) -> None:
        await workflow.execute_activity_method(
            IncidentActivities.open_incident,
            OpenIncidentInput(
                incident=incident, reopen_cooldown_seconds=settings.reopen_cooldown_seconds
            ),
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=STORE_RETRY,
        )


def evidence_summary(evidence: ServiceEvidence | None) -> dict[str, object]:
    """The incident's `evidence`: a readable detail first, then the signals and anomalies."""
    if evidence is None:
        return {}
    first = evidence.notes[:1] or [r for a in evidence.anomalies for r in a.reasons[:1]][:1]
    return {
        "detail": first[0] if first else "",
        "signals": list(evidence.signals),
        "anomalies": [a.model_dump(mode="json") for a in evidence.anomalies],
        "notes": list(evidence.notes),
    }
