"""End to end: every fault type of the staging fleet, injected for real, is detected by the live
monitor (scrape → online ensemble → signals → pattern), opened as an incident of the right type,
and its diagnosis ranks the right root cause first.

One fleet of five independent services under steady load; the faults run at the same time on
different services (so no fault hides in another's wake) after one shared warm-up, in which the
monitor must open no incident at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import Engine, text
from temporalio.client import Client, WorkflowHandle
from temporalio.service import RPCError

from models.detection import TrainDetectorInput
from models.healing import TERMINAL_STATES, IncidentState, MonitorInput
from nofx.client import NofxClient, incident_workflow_id
from nofx.db import make_engine
from nofx.diagnosis.evidence import DetectorCache, derive_series
from nofx.diagnosis.training import ACTIVATION, MODEL_TYPE, load_detector
from nofx.faults import (
    ANOMALY_STAGE,
    PROBE_STAGE,
    clear_recorded,
    expected_pattern,
    incidents_opened,
    inject_recorded,
)
from nofx.inventory import register_fleet, unregister
from nofx.settings import TASK_QUEUE_HEALING
from nofx.telemetry.sources import make_source
from pilot.fleet import Fleet, FleetSpec, ServiceSpec, free_port
from pilot.load import LoadGenerator
from tests.helpers import wait_for_state
from workflows.healing import HealingIncidentWorkflow
from workflows.monitor import FleetMonitorWorkflow

WARM_UP_SECONDS = 80  # detectors need ~30 points of history at the 2 s grid, plus a baseline
DETECT_WITHIN_SECONDS = 90
SETTLE_SECONDS = 20

FAULTS, PROBE_FAULTS = ANOMALY_STAGE, PROBE_STAGE


@pytest.fixture(scope="module")
def detection_fleet(
    tmp_path_factory: pytest.TempPathFactory, database_url: str
) -> Iterator[tuple[Fleet, Engine]]:
    tag = uuid.uuid4().hex[:5]
    engine = make_engine(database_url)
    fleet = Fleet(
        tmp_path_factory.mktemp("detect"),
        FleetSpec(
            services=[ServiceSpec(name=f"d{tag}-{role}", port=free_port()) for role in FAULTS]
        ),
        database_url=database_url,
    )
    fleet.start(timeout=60)
    names = register_fleet(engine, fleet)  # once up: starting is not down
    try:
        yield fleet, engine
    finally:
        for name in names:
            clear_recorded(fleet, engine, name)
        unregister(engine, names)
        fleet.stop()
        engine.dispose()


def service(fleet: Fleet, role: str) -> str:
    return next(s.name for s in fleet.spec.services if s.name.endswith(f"-{role}"))


@pytest.fixture
async def monitored(
    client: Client, healing_worker: None, detection_fleet: tuple[Fleet, Engine]
) -> AsyncIterator[tuple[Fleet, Engine, WorkflowHandle[object, object]]]:
    fleet, engine = detection_fleet
    load = LoadGenerator(
        [fleet.url(s.name, "/") for s in fleet.spec.services], concurrency=8, rate=40
    )
    load.start()
    monitor = await client.start_workflow(
        FleetMonitorWorkflow.run,
        MonitorInput(interval_seconds=1.0, iterations_before_continue_as_new=500),
        id=f"monitor-detect-{uuid.uuid4().hex[:6]}",
        task_queue=TASK_QUEUE_HEALING,
    )
    try:
        yield fleet, engine, monitor
    finally:
        await monitor.cancel()
        load.stop()


async def wait_incident(client: Client, workflow_id: str, since: datetime) -> WorkflowHandle:
    deadline = asyncio.get_running_loop().time() + DETECT_WITHIN_SECONDS
    handle = client.get_workflow_handle(workflow_id)
    while True:
        try:
            described = await handle.describe()
            if described.start_time >= since.replace(microsecond=0):
                return handle
        except RPCError:
            pass
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"no incident {workflow_id} within {DETECT_WITHIN_SECONDS}s")
        await asyncio.sleep(0.5)


async def healing_done(client: Client, fleet: Fleet, timeout: float = 180) -> None:
    """Wait until no incident acts on a service of `fleet` and every service answers again.

    An incident that waits for a person (`approve`) does nothing until one comes, which no test
    sends: it is not healing, and waiting for it would only wait out its hour.
    """
    names = [s.name for s in fleet.spec.services]
    query = "WorkflowType = 'HealingIncidentWorkflow' AND ExecutionStatus = 'Running'"
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        acting = {}
        async for execution in client.list_workflows(query):
            if any(n in execution.id for n in names):
                handle = client.get_workflow_handle(execution.id)
                with contextlib.suppress(RPCError):  # it ended since it was listed
                    status = await handle.query(HealingIncidentWorkflow.status)
                    if status.state not in (IncidentState.AWAITING_APPROVAL, *TERMINAL_STATES):
                        acting[execution.id] = (status.state.value, status.timeline[-2:])
        down = [n for n in names if not fleet.answers_health(n)]
        if not acting and not down:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"still healing {acting}, still down {down}")
        await asyncio.sleep(1.0)


# The grid the detectors' series are derived on: one scrape per step is what they learn from.
GRID_SECONDS = 2.0


async def observed_for(
    engine: Engine, services: list[str], since: datetime, seconds: float, timeout: float = 240
) -> None:
    """Wait until the monitor has scraped every service of `services` for `seconds` from `since`,
    once per grid step at least.

    What the learned detector learns from is what was scraped, not what the wall clock says: on
    a busy machine the monitor's ticks run late, and a fault cleared after a fixed sleep may
    have left too few samples to be an episode.
    """
    query = text(
        "SELECT service, count(DISTINCT ts), max(ts) FROM metric_samples"
        " WHERE service = ANY(:s) AND metric = 'process_resident_memory_bytes' AND ts >= :since"
        " GROUP BY service"
    )
    needed = int(seconds / GRID_SECONDS)
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        with engine.connect() as conn:
            rows = conn.execute(query, {"s": services, "since": since}).all()
        seen = {row[0]: (row[1], row[2]) for row in rows}
        short = {
            name: seen.get(name)
            for name in services
            if name not in seen
            or seen[name][0] < needed
            or (seen[name][1] - since).total_seconds() < seconds
        }
        if not short:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(
                f"{seconds:g}s from {since:%H:%M:%S} not scraped within {timeout:g}s"
                f" (samples, last): {short}"
            )
        await asyncio.sleep(1.0)


async def recorded_evidence(engine: Engine, incident_id: str) -> dict[str, Any]:
    """The evidence stored with the incident's row, once its first activity has written it (the
    workflow answers queries before that activity has run)."""
    query = text("SELECT root_cause->'evidence' FROM healing_incidents WHERE id = :i")
    for _ in range(60):
        with engine.connect() as conn:
            evidence = conn.execute(query, {"i": incident_id}).scalar_one_or_none()
        if evidence is not None:
            return evidence  # type: ignore[no-any-return]
        await asyncio.sleep(0.5)
    raise AssertionError(f"incident {incident_id} has no healing_incidents row after 30 s")


@pytest.mark.e2e
@pytest.mark.timeout(600)
async def test_every_fault_type_is_detected_named_and_its_cause_ranked(
    client: Client, monitored: tuple[Fleet, Engine, WorkflowHandle[object, object]]
) -> None:
    fleet, engine, _ = monitored
    everyone = [s.name for s in fleet.spec.services]
    started = datetime.now(UTC)
    # the detectors' history is what was scraped: wait for it, not for the clock
    await observed_for(engine, everyone, started, WARM_UP_SECONDS)
    assert incidents_opened(engine, everyone, started) == [], "false incidents during warm-up"

    for stage in (FAULTS, PROBE_FAULTS):
        injected_at = datetime.now(UTC)
        expected = {}
        for role, (kind, params) in stage.items():
            name = service(fleet, role)
            inject_recorded(fleet, engine, kind, name, source="test", actor="pytest", **params)
            expected[name] = (kind, expected_pattern(kind, params))
        for name, (kind, pattern) in expected.items():
            handle = await wait_incident(client, incident_workflow_id(name, pattern), injected_at)
            status = await handle.query(HealingIncidentWorkflow.status)
            assert status.incident_type == pattern, (kind, status.incident_type)
            assert status.diagnosis is not None, kind
            assert status.diagnosis.pattern.pattern == pattern
            lead = status.diagnosis.root_causes[0]
            assert lead.service == name, (kind, lead)
            wanted = "configuration" if kind == "bad_config" else "self"
            assert lead.cause == wanted, (kind, lead)
            direct = ("service_down", "service_hung", "stale_cache", "db_pool_exhaustion")
            if pattern not in direct:
                # the ensemble's evidence (which detectors fired, why) is kept with the incident
                evidence = await recorded_evidence(engine, status.incident_id)
                assert evidence["anomalies"], (kind, evidence)
                assert all(a["detectors"] and a["reasons"] for a in evidence["anomalies"])
        # Healing (restarts for down/hung) and escalations finish before the next stage; the
        # faults are cleared after, so clearing never races a restart.
        for name, (kind, pattern) in expected.items():
            handle = client.get_workflow_handle(incident_workflow_id(name, pattern))
            ended = await wait_for_state(
                handle,
                IncidentState.RESOLVED,
                IncidentState.ESCALATED,
                IncidentState.FAILED,
                IncidentState.AWAITING_APPROVAL,
                timeout=240,
            )
            assert ended.state in (IncidentState.RESOLVED, IncidentState.ESCALATED), (
                f"{kind} on {name} not healed ({ended.state.value}): {ended.error};"
                f" actions {[(a.action, a.detail) for a in ended.actions]}"
            )
        for name in expected:
            clear_recorded(fleet, engine, name)
        # Rates are computed over 10 s windows: let the cleared faults' signals fade, or the
        # next stage's incident would rightly carry the previous fault's anomaly as evidence.
        await observed_for(engine, everyone, datetime.now(UTC), SETTLE_SECONDS)

    # Nothing but the injected faults was opened: no incident names a pattern nobody injected.
    opened = {
        (r["root_cause"]["service"], r["incident_type"])
        for r in incidents_opened(engine, everyone, started)
    }  # type: ignore[index]
    wanted = {
        (service(fleet, role), expected_pattern(kind, params))
        for stage in (FAULTS, PROBE_FAULTS)
        for role, (kind, params) in stage.items()
    }
    assert opened <= wanted, opened - wanted


# The learned detector learns from faults the platform recorded: two rounds of the faults whose
# series it watches, the first to learn from, the second held out to judge it.
TRAINING_FAULTS = {role: ANOMALY_STAGE[role] for role in ("cfg", "busy", "mem", "disk")}
FAULT_SECONDS = 35


@pytest.mark.e2e
@pytest.mark.timeout(900)  # it waits on scraped samples, which a busy machine delivers late
async def test_learned_detector_trains_on_recorded_faults_and_goes_live(
    client: Client,
    monitored: tuple[Fleet, Engine, WorkflowHandle[object, object]],
    maintenance_worker: None,
) -> None:
    fleet, engine, _ = monitored
    everyone = [s.name for s in fleet.spec.services]
    started = datetime.now(UTC)
    await observed_for(engine, everyone, started, 60)  # a baseline of normal behaviour under load
    rounds, cleared = [], []
    for _ in range(2):
        await healing_done(client, fleet)  # healing is on: a restart may still be under way
        rounds.append(datetime.now(UTC))
        for role, (kind, params) in TRAINING_FAULTS.items():
            inject_recorded(
                fleet,
                engine,
                kind,
                service(fleet, role),
                source="training",
                actor="pytest",
                **params,
            )
        faulted = [service(fleet, role) for role in TRAINING_FAULTS]
        await observed_for(engine, faulted, rounds[-1], FAULT_SECONDS)
        for name in faulted:
            clear_recorded(fleet, engine, name)
        cleared.append(datetime.now(UTC))
        await observed_for(engine, everyone, cleared[-1], SETTLE_SECONDS + 10)
    until = datetime.now(UTC)
    try:
        report = await NofxClient(client).train_detector(
            TrainDetectorInput(
                hours=(until - started).total_seconds() / 3600,
                until=until,
                holdout_from=rounds[1],
                services=everyone,
            )
        )
        holdout = report.holdout
        # every faulted series of the second round is an episode: errors (cfg), request rate
        # and latency (busy), memory (mem), disk (disk). Healing is on: a fault it fixes within
        # seconds may leave too short an episode in some series, so at least four must be there.
        # Each fault is caught in one of its series, at most one missed; series by series the
        # product's own bar holds (how well beyond it is for benchmarks/detection.py to say).
        assert holdout["episodes"] >= 4, holdout
        assert holdout["faults"] >= 3, holdout
        assert holdout["faults_detected"] >= holdout["faults"] - 1, holdout
        assert holdout["episode_recall"] >= ACTIVATION["episode_recall"], holdout
        # The product's own bar for going live; the detector's accuracy is measured by
        # benchmarks/detection.py, not asserted here on a machine that may be busy.
        assert holdout["roc_auc"] >= ACTIVATION["roc_auc"], holdout
        # Going live also needs the false-positive rate within the product's bar, which the
        # noisier normal of a busy machine can miss by a hair (0.0211 once, in CI): the verdict
        # must follow the bar either way, and the rate stay near it.
        fpr = holdout["false_positive_rate"]
        assert fpr <= 2 * ACTIVATION["false_positive_rate"], holdout
        assert report.active == (fpr <= ACTIVATION["false_positive_rate"]), report.verdict
        assert report.training["windows_by_origin"]["injection"] >= 8, report.training
        with engine.connect() as conn:
            row = conn.execute(
                text(
                    "SELECT model_type, active, performance_metrics->'holdout'->>'episodes'"
                    " FROM decision_models WHERE id = :i"
                ),
                {"i": report.model_id},
            ).one()
        assert tuple(row) == (MODEL_TYPE, report.active, str(holdout["episodes"]))

        # The model, as the monitor loads it, scores the held-out memory leak as faulty and the
        # baseline before any leak as normal, and fires inside the ensemble only while a leak
        # was on (or fading right after it).
        assert report.model_id is not None
        detector = load_detector(engine, report.model_id)
        leaking = service(fleet, "mem")
        rss = derive_series(make_source("scrape", engine=engine), leaking, started, until)
        scorer = detector.scorer("rss_bytes")
        assert scorer is not None
        scored = [(ts.timestamp(), scorer(ts.timestamp(), v)) for ts, v in rss["rss_bytes"].items()]
        in_round_2 = [
            p
            for t, p in scored
            if rounds[1].timestamp() + 10 <= t <= rounds[1].timestamp() + FAULT_SECONDS
        ]
        before = [p for t, p in scored if t < rounds[0].timestamp()]
        assert in_round_2, scored
        assert max(in_round_2) >= 0.5, (report.training, scored)
        assert before, scored
        # The baseline is normal to it, as a rule: on a busy machine a share of its points may
        # score high (0.54 once; 9 of 45 in a CI run sharing the machine with two others),
        # which the ensemble's persistence rule does not fire on (checked strictly below).
        assert statistics.median(before) < 0.5, scored
        cache = DetectorCache()
        cache.use_model(detector)
        firings = cache.feed(leaking, "rss_bytes", rss["rss_bytes"])
        learned = [f for f in firings if "lightgbm" in f[2]]
        leak_on = [
            (r.timestamp(), c.timestamp() + 20) for r, c in zip(rounds, cleared, strict=True)
        ]
        assert learned, firings
        assert all(any(a <= f[0] <= b for a, b in leak_on) for f in learned), (leak_on, learned)
    finally:
        # later tests' monitors must not inherit a model trained on this fleet
        with engine.begin() as conn:
            conn.execute(
                text("UPDATE decision_models SET active = false WHERE model_type = :t"),
                {"t": MODEL_TYPE},
            )
