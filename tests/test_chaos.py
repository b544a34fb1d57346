"""Chaos experiments: the suite's figures, and a suite run for real against the live fleet."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError
from sqlalchemy import Engine, text
from temporalio.client import Client

from models.chaos import ChaosFault, ChaosResult, ChaosSuiteInput, RollbackCheck
from models.healing import MonitorInput
from nofx import chaos
from nofx.client import NofxClient
from nofx.faults import FAULT_KINDS
from nofx.settings import TASK_QUEUE_HEALING
from pilot.fleet import Fleet
from pilot.load import LoadGenerator
from workflows.monitor import FleetMonitorWorkflow


def result(label: str, outcome: str, **fields: Any) -> ChaosResult:
    fault = chaos.fault(label, drill=fields.pop("drill", False))
    return ChaosResult(
        experiment_id=uuid.uuid4().hex,
        suite="t",
        service="svc",
        fault=fault,
        expected_pattern="x",
        outcome=outcome,  # type: ignore[arg-type]
        **fields,
    )


def test_figures_by_type_overall_and_drills() -> None:
    restored = RollbackCheck(
        action="undo_rollback_config", performed=True, restored=True, detail=""
    )
    lost = RollbackCheck(action="undo_resize_pool", performed=True, restored=False, detail="")
    results = [
        result("kill", "healed", detected=True, auto_resolved=True, mttd_seconds=2.0,
               mttr_seconds=6.0, within_rto=True, pattern_correct=True),
        result("kill", "healed", detected=True, auto_resolved=True, mttd_seconds=4.0,
               mttr_seconds=10.0, within_rto=True, pattern_correct=True),
        result("kill", "undetected"),
        result("bad_config", "failed", detected=True, mttd_seconds=30.0, rollbacks=[restored],
               pattern_correct=False),
        result("disk_fill", "not_steady"),  # never injected: counts for nothing
        result("bad_config", "rolled_back", drill=True, detected=True, mttd_seconds=20.0,
               rollbacks=[restored, lost]),
    ]  # fmt: skip
    summary = chaos.summarise(results)

    kill = summary["by_type"]["kill"]
    assert (kill["injected"], kill["detected"], kill["auto_resolved"]) == (3, 2, 2)
    assert kill["detection_rate"] == pytest.approx(0.667)
    assert kill["auto_resolution_rate"] == 1.0
    assert (kill["mttd_p50_s"], kill["mttd_p95_s"]) == (2.0, 4.0)
    assert (kill["mttr_p50_s"], kill["mttr_p95_s"]) == (6.0, 10.0)

    overall = summary["overall"]  # drills excluded, the not-steady run not injected
    assert (overall["experiments"], overall["injected"], overall["detected"]) == (5, 4, 3)
    assert overall["auto_resolution_rate"] == pytest.approx(0.667)
    assert (overall["rollbacks_run"], overall["rollbacks_restored"]) == (1, 1)
    assert overall["outcomes"] == {"healed": 2, "undetected": 1, "failed": 1, "not_steady": 1}

    drills = summary["rollback_drills"]
    assert (drills["rollbacks_run"], drills["rollbacks_restored"]) == (2, 1)
    table = chaos.table(summary)
    assert "kill" in table
    assert "rollback drills" in table
    assert "1/2" in table


def test_suites_cover_every_fault_kind_and_the_full_suite_has_thirty() -> None:
    full = chaos.suite_faults("full")
    assert len([f for f in full if not f.rollback_drill]) >= 30
    assert {f.kind for f in full} == set(FAULT_KINDS)
    assert {chaos.fault_label(f) for f in full} >= {"latency_regression", "bad_config"}
    with pytest.raises(ValueError, match="unknown chaos suite 'nope'; known: smoke"):
        chaos.suite_faults("nope")


def test_suite_input_is_checked() -> None:
    with pytest.raises(ValidationError, match="parallel 3 needs as many services; got 2"):
        ChaosSuiteInput(suite="t", services=["a", "b"], faults=[chaos.fault("kill")], parallel=3)
    with pytest.raises(ValidationError, match="services"):
        ChaosSuiteInput(suite="t", services=[], faults=[chaos.fault("kill")])


@pytest.mark.e2e
@pytest.mark.timeout(420)
async def test_a_suite_heals_a_real_fault_and_drills_a_rollback(
    client: Client, healing_worker: None, live_fleet: Fleet, db_engine: Engine
) -> None:
    api, orders = (s.name for s in live_fleet.spec.services)
    monitor = await client.start_workflow(
        FleetMonitorWorkflow.run,
        MonitorInput(interval_seconds=1.0, iterations_before_continue_as_new=500),
        id=f"monitor-chaos-{uuid.uuid4().hex[:6]}",
        task_queue=TASK_QUEUE_HEALING,
    )
    started = datetime.now(UTC)
    seen: list[ChaosResult] = []
    # Users' reads: a stale cache shows only in what they are served.
    load = LoadGenerator([live_fleet.url(n, "/") for n in (api, orders)], concurrency=2, rate=10)
    load.start()
    try:
        progress = await NofxClient(client).run_chaos_suite(
            ChaosSuiteInput(
                suite="pytest",
                services=[api, orders],
                faults=[
                    ChaosFault(kind="kill"),
                    ChaosFault(kind="kill", rollback_drill=True),
                    # heals in about a second: the drill outruns it and runs the compensations
                    ChaosFault(kind="stale_cache", rollback_drill=True),
                ],
                rto_seconds=120,
                detect_timeout_seconds=60,
            ),
            on_result=seen.append,
        )
    finally:
        load.stop()
        await monitor.cancel()
    healed, drill, cache = progress.results
    assert [r.experiment_id for r in seen] == [r.experiment_id for r in progress.results]
    assert healed.service == api
    assert drill.service == orders

    assert healed.outcome == "healed", healed
    assert healed.detected
    assert healed.auto_resolved
    assert healed.pattern_correct
    assert healed.incident_type == "service_down"
    assert healed.mttd_seconds is not None
    assert healed.mttr_seconds is not None
    assert 0 <= healed.mttd_seconds <= healed.mttr_seconds <= 120
    assert "restart_service" in healed.actions
    assert not healed.rollbacks

    assert drill.outcome == "rolled_back", drill
    assert drill.incident_status == "failed"
    assert not drill.auto_resolved
    assert [c.action for c in drill.rollbacks] == ["restore_service_running"]
    assert all(c.restored for c in drill.rollbacks), drill.rollbacks
    assert live_fleet.answers_health(orders)  # left as found

    assert cache.outcome == "rolled_back", cache
    assert cache.incident_type == "stale_cache"
    assert [c.action for c in cache.rollbacks] == ["undo_invalidate_cache"]
    assert cache.rollbacks[0].restored, cache.rollbacks  # the entries' DUMPs are back

    with db_engine.connect() as conn:
        recorded = conn.execute(
            text(
                "SELECT service, source, cleared_at IS NOT NULL FROM fault_injections"
                " WHERE injected_at >= :t AND source = 'chaos' ORDER BY injected_at"
            ),
            {"t": started},
        ).all()
    assert [(r[0], r[1]) for r in recorded] == [(api, "chaos"), (orders, "chaos"), (api, "chaos")]
    assert all(r[2] for r in recorded)  # every fault closed on the record
    summary = chaos.summarise(progress.results)
    assert summary["overall"]["detection_rate"] == 1.0
    assert summary["rollback_drills"]["rollbacks_restored"] == 2
