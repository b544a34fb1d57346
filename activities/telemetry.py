"""Activities that observe the fleet: health probes, classified into the failure they look like."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

from sqlalchemy.engine import Engine
from temporalio import activity

from activities.infra import supervisor_for
from activities.store import list_fleet_targets
from models.detection import FleetDiagnosis, ScrapeFleetInput, ScrapeFleetResult
from models.healing import (
    DiagnoseFleetInput,
    FleetTarget,
    ProbeFailure,
    ProbeFleetInput,
    ProbeFleetResult,
    ProbeResult,
)
from nofx.detection.learned import TrainingError
from nofx.diagnosis.diagnose import diagnose_fleet
from nofx.diagnosis.evidence import DetectorCache
from nofx.diagnosis.training import active_model_id, load_detector
from nofx.healing.probes import check_health
from nofx.logging import get_logger
from nofx.providers.supervisor import SupervisorError
from nofx.settings import Settings
from nofx.telemetry.routing import metric_source
from nofx.telemetry.scrape import inventory_targets, scrape_targets

log = get_logger(__name__)
# How often the monitor's worker looks for a newly activated learned detector.
MODEL_REFRESH_SECONDS = 30.0


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


class DetectionActivities:
    """Scrape, then detect and diagnose; one detector cache per worker process."""

    def __init__(self, engine: Engine, settings: Settings) -> None:
        self._engine = engine
        self._settings = settings
        self._source = metric_source(engine, settings)
        self._cache = DetectorCache()
        self._model_checked = -MODEL_REFRESH_SECONDS

    def _refresh_model(self) -> None:
        """Give the ensembles the active learned detector (none, or a newer one, likewise)."""
        if time.monotonic() - self._model_checked < MODEL_REFRESH_SECONDS:
            return
        self._model_checked = time.monotonic()
        wanted = active_model_id(self._engine)
        current = self._cache.model
        if wanted == (current.model_id if current else None):
            return
        try:
            model = load_detector(self._engine, wanted) if wanted else None
        except TrainingError as err:
            log.warning("learned detector not loaded", model=wanted, error=str(err))
            return
        self._cache.use_model(model)
        log.info("learned detector in use", model=model.version if model else None)

    @activity.defn
    def scrape_fleet(self, inp: ScrapeFleetInput) -> ScrapeFleetResult:
        """Store one sample per series for this tick (embedded telemetry only)."""
        if self._settings.telemetry != "scrape":
            return ScrapeFleetResult(skipped=True)
        results = scrape_targets(
            self._engine, inventory_targets(self._engine), inp.timeout_seconds, at=inp.at
        )
        return ScrapeFleetResult(
            scraped=sum(r.ok for r in results),
            failed={r.service: r.error or "failed" for r in results if not r.ok},
        )

    @activity.defn
    def diagnose_fleet(self, inp: DiagnoseFleetInput) -> FleetDiagnosis:
        """Evidence for every service at the tick, and the diagnoses it supports."""
        self._refresh_model()
        services = [t.service for t in list_fleet_targets(self._engine)]
        diagnoses, evidence = diagnose_fleet(
            self._engine,
            self._source,
            self._cache,
            services,
            {p.service: p for p in inp.probes},
            inp.at,
        )
        return FleetDiagnosis(
            diagnoses=diagnoses,
            evidence={name: ev for name, ev in evidence.items() if ev.signals},
        )
