"""Forecast-driven scaling: the replica plan on hand-checkable load series, and the scale_out /
scale_in actions on a real replica group that can grow (a private supervisord running the
pilots, a real haproxy balancing them), each undone through the same activity the saga uses and
checked against HAProxy's `show servers state` and supervisord's process states.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import numpy as np
import pytest
from sqlalchemy import Engine, text
from temporalio.client import Client, WorkflowFailureError
from temporalio.exceptions import ApplicationError

from models.actions import ServiceCapabilities
from models.common import AbortRequest
from models.healing import FleetTarget
from models.inventory import ScalingTuning
from models.optimization import ApplyInput, ApplyStatusView
from nofx import inventory
from nofx.client import start_optimization
from nofx.healing.action_base import ActionContext, ActionError
from nofx.healing.actions import capabilities
from nofx.inventory import find_target, register_fleet, unregister
from nofx.optimization.recommendations import Draft, open_recommendations, refresh, store
from nofx.optimization.scaling import (
    ScalingPolicy,
    needed_replicas,
    plan_replicas,
    policy_of,
    recommend_scaling,
)
from nofx.optimization.scaling_actions import ScaleIn, ScaleOut
from nofx.providers.haproxy import HAProxyRuntime
from nofx.telemetry.sources import CsvReplaySource
from pilot.fleet import Fleet, FleetSpec, GroupSpec, ServiceSpec, free_port
from pilot.haproxy import haproxy_binary
from tests.fixtures_traffic import traffic_step
from tests.helpers import query_until
from workflows.optimization import OptimizationWorkflow

DAY0 = 20_000 * 86_400.0  # a UTC midnight
MINUTE = 60.0


def minutes(n: int) -> np.ndarray:
    """A forecast grid of `n` one-minute steps from DAY0."""
    return DAY0 + MINUTE * np.arange(n, dtype=np.float64)


def step_load(n: int, rise: int, fall: int, low: float, high: float) -> np.ndarray:
    """`low` everywhere but `high` on the minutes [rise, fall)."""
    load = np.full(n, low)
    load[rise:fall] = high
    return load


def policy(**kw: Any) -> ScalingPolicy:
    base: dict[str, Any] = {
        "capacity_per_replica": 50.0,
        "target_utilisation": 1.0,
        "lead_s": 30 * MINUTE,
        "cooldown_s": 60 * MINUTE,
    }
    return ScalingPolicy(**{**base, **kw})


def at_minute(seconds: float) -> float:
    return (seconds - DAY0) / MINUTE


# ---- the recommender ----------------------------------------------------------------------


def test_replicas_carry_the_load_at_the_target_utilisation_within_the_bounds() -> None:
    p = policy(target_utilisation=0.5, min_replicas=2, max_replicas=5)
    # 25 requests/s per replica planned: 0 -> min 2; 50 -> exactly 2; 51 -> 3; 1000 -> max 5
    assert needed_replicas([0, 50, 51, 75, 1000], p).tolist() == [2, 2, 3, 3, 5]


def test_a_step_load_is_met_lead_minutes_before_and_released_a_cooldown_after() -> None:
    plan = plan_replicas(minutes(1440), step_load(1440, 600, 1200, 10, 140), policy(), current=1)
    # 140 requests/s at 50 a replica: 3 replicas from minute 600 to 1199
    assert [(at_minute(s.at), s.from_replicas, s.to_replicas) for s in plan.steps] == [
        (570.0, 1, 3),  # 30 minutes (the lead) before the rise
        (1260.0, 3, 1),  # the forecast was low from 1200, for the 60-minute cool-down
    ]
    assert [s.action for s in plan.steps] == ["scale_out", "scale_in"]
    assert plan.short_steps == 0
    assert plan.replica_hours(MINUTE) == pytest.approx((1440 + 2 * (1260 - 570)) / 60)


def test_a_dip_shorter_than_the_cooldown_keeps_the_capacity() -> None:
    load = step_load(1440, 600, 1200, 10, 140)
    load[800:830] = 10  # a 30-minute dip inside the peak
    plan = plan_replicas(minutes(1440), load, policy(), current=1)
    assert [(at_minute(s.at), s.to_replicas) for s in plan.steps] == [(570.0, 3), (1260.0, 1)]


def test_the_group_scales_in_only_a_cooldown_after_the_plan_starts() -> None:
    plan = plan_replicas(minutes(240), np.full(240, 10.0), policy(), current=4)
    assert [(at_minute(s.at), s.from_replicas, s.to_replicas) for s in plan.steps] == [(60.0, 4, 1)]


def test_min_and_max_clamp_the_plan() -> None:
    plan = plan_replicas(
        minutes(1440),
        step_load(1440, 600, 1200, 0, 10_000),
        policy(min_replicas=2, max_replicas=4),
        current=2,
    )
    assert plan.replicas.min() == 2
    assert plan.replicas.max() == 4
    assert [(s.from_replicas, s.to_replicas) for s in plan.steps] == [(2, 4), (4, 2)]


def test_the_disruption_budget_caps_the_changes_and_never_leaves_a_peak_short() -> None:
    # Three peaks of an hour, three hours apart: unbounded, six changes.
    load = np.full(1440, 10.0)
    for start in (300, 600, 900):
        load[start : start + 60] = 140
    free = plan_replicas(minutes(1440), load, policy(), current=1)
    assert len(free.steps) == 6
    capped = plan_replicas(minutes(1440), load, policy(max_changes_per_day=3), current=1)
    assert len(capped.steps) <= 3
    assert capped.changes_per_day() == {20_000: len(capped.steps)}
    assert capped.short_steps == 0  # the budget costs replica-hours, never a peak
    assert capped.held_back > 0
    assert capped.replica_hours(MINUTE) > free.replica_hours(MINUTE)
    # The last change of the day goes to the rest of the day's peak at once.
    budget_one = plan_replicas(minutes(1440), load, policy(max_changes_per_day=1), current=1)
    assert [(at_minute(s.at), s.to_replicas) for s in budget_one.steps] == [(270.0, 3)]


def test_the_budget_is_per_day() -> None:
    n = 2 * 1440
    load = np.full(n, 10.0)
    for day in (0, 1):
        load[day * 1440 + 600 : day * 1440 + 700] = 140
    plan = plan_replicas(minutes(n), load, policy(max_changes_per_day=2), current=1)
    assert plan.changes_per_day() == {20_000: 2, 20_001: 2}


def test_bad_input_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="capacity_per_replica"):
        ScalingPolicy(capacity_per_replica=0)
    with pytest.raises(ValueError, match="min_replicas <= max_replicas"):
        ScalingPolicy(capacity_per_replica=1, min_replicas=3, max_replicas=2)
    with pytest.raises(ValueError, match="increase"):
        plan_replicas([2.0, 1.0], [1.0, 1.0], policy(), current=1)
    with pytest.raises(ValueError, match="finite"):
        plan_replicas([1.0, 2.0], [1.0, float("nan")], policy(), current=1)
    with pytest.raises(ValueError, match="min_replicas 3 is above max_replicas 2"):
        ScalingTuning(load_metric="rps", capacity_per_replica=5, min_replicas=3, max_replicas=2)


def test_the_recommendation_applies_the_next_change_and_prices_the_plan() -> None:
    tuning = ScalingTuning(
        load_metric="pilot_requests_total",
        capacity_per_replica=50,
        target_utilisation=1.0,
        lead_minutes=30,
        cooldown_minutes=60,
    ).model_dump()
    found = recommend_scaling(
        minutes(1440),
        step_load(1440, 600, 1200, 10, 140),
        policy_of(tuning),
        current=2,
        step_s=MINUTE,
        metric="pilot_requests_total",
        model="seasonal_naive",
        quantile=95,
    )
    # From 2: in to 1 after the cool-down (minute 60), out to 3 at 570, in to 1 at 1260.
    assert [(s["action"], s["from"], s["to"]) for s in found.recommended["schedule"]] == [  # type: ignore[attr-defined]
        ("scale_in", 2, 1),
        ("scale_out", 1, 3),
        ("scale_in", 3, 1),
    ]
    assert found.steps[0] == {"action": "scale_in", "params": {"replicas": 1}}
    hours = (60 * 2 + 510 * 1 + 690 * 3 + 180 * 1) / 60
    assert found.recommended["replica_hours"] == pytest.approx(hours, abs=1e-3)
    assert found.improvement["replica_hours_saved_vs_peak_sized"] == pytest.approx(
        3 * 24 - hours, abs=1e-3
    )


# ---- the actions on a real replica group ---------------------------------------------------


def test_spare_slots_are_configured_not_started_and_declared_disabled(tmp_path: Path) -> None:
    spec = FleetSpec(
        services=[ServiceSpec(name="web-1", port=20001, group="web")],
        groups=[GroupSpec(name="web", port=20000, spare_ports=[20002, 20003])],
    )
    assert [(s.name, s.port) for s in spec.spares()] == [
        ("web-spare-1", 20002),
        ("web-spare-2", 20003),
    ]
    assert spec.get("web-spare-2").group == "web"
    fleet = Fleet(tmp_path, spec)
    conf = fleet.write_config().read_text()
    spare = conf[conf.index("[program:web-spare-1]") :].split("\n\n")[0]
    assert "autostart=false" in spare
    if fleet.haproxy is not None:
        lb = fleet.lb_config.read_text()
        assert "server web-spare-1 127.0.0.1:20002 disabled" in lb
        assert "server web-1 127.0.0.1:20001\n" in lb
    [entry] = inventory.parse(fleet.inventory()).services
    if fleet.haproxy is not None:
        assert entry.providers.replicas is not None
        assert [s.program for s in entry.providers.replicas.slots] == ["web-spare-1", "web-spare-2"]
    with pytest.raises(ValueError, match="ports repeat"):
        FleetSpec(
            services=[ServiceSpec(name="web-1", port=20001, group="web")],
            groups=[GroupSpec(name="web", port=20000, spare_ports=[20001])],
        )
    with pytest.raises(ValueError, match="named like a service"):
        FleetSpec(
            services=[
                ServiceSpec(name="web-1", port=20001, group="web"),
                ServiceSpec(name="web-spare-1", port=20005),
            ],
            groups=[GroupSpec(name="web", port=20000, spare_ports=[20002])],
        )


@pytest.fixture
def growable(tmp_path: Path, db_engine: Engine, database_url: str) -> Iterator[Fleet]:
    """A replica group of two pilots with two spare slots, behind the fleet's haproxy, in the
    inventory (so the actions find it as they would any service)."""
    if haproxy_binary() is None:
        pytest.skip("haproxy is not installed (Debian package: haproxy)")
    tag = uuid.uuid4().hex[:6]
    group = f"g{tag}"
    fleet = Fleet(
        Path(tmp_path),
        FleetSpec(
            services=[
                ServiceSpec(name=f"{group}-{n}", port=free_port(), group=group) for n in "ab"
            ],
            groups=[
                GroupSpec(name=group, port=free_port(), spare_ports=[free_port(), free_port()])
            ],
        ),
        database_url=database_url,
    )
    fleet.start()
    names = register_fleet(db_engine, fleet)
    try:
        yield fleet
    finally:
        unregister(db_engine, names)
        fleet.stop()


def snapshot(fleet: Fleet) -> tuple[dict[str, tuple[int, int]], dict[str, str]]:
    """HAProxy's `show servers state` of the group (admin flags, weight) and supervisord's state
    of every program of the group."""
    group = fleet.spec.groups[0].name
    answer = HAProxyRuntime(fleet.lb_socket).command(f"show servers state {group}")
    lines = [line for line in answer.splitlines() if line.strip()]
    header = lines[1].lstrip("#").split()
    rows = [dict(zip(header, line.split(), strict=False)) for line in lines[2:]]
    servers = {r["srv_name"]: (int(r["srv_admin_state"]), int(r["srv_uweight"])) for r in rows}
    infos: list[dict[str, Any]] = fleet.rpc().supervisor.getAllProcessInfo()  # type: ignore[assignment]
    processes = {
        str(info["name"]): str(info["statename"])
        for info in infos
        if str(info["name"]).startswith(group)
    }
    return servers, processes


def answering(fleet: Fleet, count: int = 30) -> Counter[str]:
    """Which replica answered each of `count` real GET / through the group's frontend."""
    url = fleet.group_url(fleet.spec.groups[0].name, "/")
    seen: Counter[str] = Counter()
    with httpx.Client(timeout=5, limits=httpx.Limits(max_keepalive_connections=0)) as http:
        for _ in range(count):
            response = http.get(url, headers={"Connection": "close"})
            assert response.status_code == 200, response.text
            seen[response.json()["service"]] += 1
    return seen


def in_rotation(fleet: Fleet) -> set[str]:
    group = fleet.spec.groups[0].name
    return {
        s.server for s in HAProxyRuntime(fleet.lb_socket).servers(group) if s.admin_state == "ready"
    }


e2e = pytest.mark.e2e


@e2e
def test_the_group_offers_scaling_and_out_serves_real_requests_and_undo_restores(
    growable: Fleet, db_engine: Engine, act: Any
) -> None:
    base, other = (s.name for s in growable.spec.services)
    spare1, spare2 = (s.name for s in growable.spec.spares())
    target = find_target(db_engine, base)
    assert target is not None
    assert capabilities(target)["replicas.scale"] == "supervisor-haproxy"
    assert (
        ServiceCapabilities(
            service=base, known=True, capabilities=capabilities(target)
        ).missing_for(["scale_out", "scale_in"])
        == []
    )
    before = snapshot(growable)
    assert before[1] == {base: "RUNNING", other: "RUNNING", spare1: "STOPPED", spare2: "STOPPED"}
    assert set(answering(growable)) == {base, other}

    step = traffic_step(base, "scale_out", {"replicas": 1})
    outcome = act(step)
    assert outcome.performed, outcome.detail
    assert in_rotation(growable) == {base, other, spare1}
    assert snapshot(growable)[1][spare1] == "RUNNING"
    # the new replica serves real requests through the group's frontend
    assert set(answering(growable)) == {base, other, spare1}
    assert act(step).detail == outcome.detail  # exactly once: the recorded outcome
    assert in_rotation(growable) == {base, other, spare1}

    undone = act(step, undo=True)
    assert undone.performed, undone.detail
    assert snapshot(growable) == before
    assert set(answering(growable)) == {base, other}


@e2e
def test_scale_in_removes_the_newest_added_and_undo_brings_it_back(
    growable: Fleet, db_engine: Engine, act: Any
) -> None:
    base, other = (s.name for s in growable.spec.services)
    spare1, spare2 = (s.name for s in growable.spec.spares())
    assert act(traffic_step(base, "scale_out", {"replicas": 2})).performed
    assert in_rotation(growable) == {base, other, spare1, spare2}
    grown = snapshot(growable)

    step = traffic_step(base, "scale_in", {"replicas": 1})
    outcome = act(step)
    assert outcome.performed, outcome.detail
    # both spares started in the same call; spare2 after spare1: the newest goes first
    assert in_rotation(growable) == {base, other, spare1}
    assert snapshot(growable)[1][spare2] == "STOPPED"
    assert set(answering(growable)) == {base, other, spare1}

    assert act(step, undo=True).performed
    assert snapshot(growable) == grown
    assert set(answering(growable, 40)) == {base, other, spare1, spare2}


@e2e
def test_refusals_change_nothing(growable: Fleet, db_engine: Engine, act: Any) -> None:
    base = growable.spec.services[0].name
    before = snapshot(growable)
    # Below the minimum: two replicas in rotation, the step asks to keep two.
    with pytest.raises(ApplicationError, match="below the minimum of 2"):
        act(traffic_step(base, "scale_in", {"replicas": 1, "min_replicas": 2}))
    # Below the inventory's minimum (one): two in rotation, two to remove.
    with pytest.raises(ApplicationError, match="below the minimum of 1"):
        act(traffic_step(base, "scale_in", {"replicas": 2}))
    # The group's own replicas are never the platform's to remove.
    with pytest.raises(ApplicationError, match=r"only 0 of those .* never removed"):
        act(traffic_step(base, "scale_in", {"replicas": 1}))
    # Above the slots: two spares.
    with pytest.raises(ApplicationError, match="only 2 spare slot"):
        act(traffic_step(base, "scale_out", {"replicas": 3}))
    # Above a maximum the step names.
    with pytest.raises(ApplicationError, match="above the maximum of 3"):
        act(traffic_step(base, "scale_out", {"replicas": 2, "max_replicas": 3}))
    assert snapshot(growable) == before
    # One added: removing two would take one of the group's own.
    assert act(traffic_step(base, "scale_out", {"replicas": 1})).performed
    grown = snapshot(growable)
    with pytest.raises(ApplicationError, match=r"only 1 of those .* never removed"):
        act(traffic_step(base, "scale_in", {"replicas": 2}))
    assert snapshot(growable) == grown


@e2e
def test_an_unknown_group_or_slot_is_refused_by_name(growable: Fleet, db_engine: Engine) -> None:
    target = find_target(db_engine, growable.spec.services[0].name)
    assert target is not None
    before = snapshot(growable)
    meta = dict(target.metadata)
    for broken, message in (
        ({"haproxy_backend": "no-such-group"}, "no backend 'no-such-group'"),
        (
            {"replica_slots": {"slots": [{"program": "ghost", "server": "ghost"}]}},
            "no server 'ghost'",
        ),
        ({"replica_slots": None}, "no metadata.replica_slots"),
    ):
        ctx = ActionContext(
            FleetTarget(
                service=target.service, endpoint=target.endpoint, metadata={**meta, **broken}
            ),
            db_engine,
            None,
            uuid.uuid4().hex,
        )
        with pytest.raises(ActionError, match=message):
            ScaleOut().capture(ctx, None)
        with pytest.raises(ActionError, match=message):
            ScaleIn().capture(ctx, None)
    assert snapshot(growable) == before


# ---- the recommendation pass --------------------------------------------------------------


def test_a_pass_plans_the_group_from_the_forecast_of_its_load(
    tmp_path: Path, fresh_engine: Any
) -> None:
    """Seven days of 10 requests/s with 140 from 12:00 to 14:00 UTC: the plan for the next day
    adds replicas before noon and gives them back after the peak and its cool-down."""
    step, days = 300, 7
    stamps = DAY0 + step * np.arange(days * 288)
    hour = (stamps % 86_400) // 3600
    rng = np.random.default_rng(7)
    rps = np.where((hour >= 12) & (hour < 14), 140.0, 10.0) + rng.normal(0, 0.5, len(stamps))
    csv = tmp_path / "web.csv"
    csv.write_text(
        "timestamp,rps\n" + "".join(f"{int(t)},{v:.3f}\n" for t, v in zip(stamps, rps, strict=True))
    )
    document = {
        "services": [
            {
                "name": "web",
                "endpoint": "http://127.0.0.1:1",
                "capacity": 1,
                "optimization": {
                    "scaling": {
                        "load_metric": "rps",
                        "capacity_per_replica": 50,
                        "target_utilisation": 1.0,
                        "lead_minutes": 30,
                        "cooldown_minutes": 60,
                        "max_replicas": 6,
                    }
                },
            }
        ]
    }
    inventory.apply(fresh_engine, inventory.parse(document))
    now = datetime.fromtimestamp(float(stamps[-1]), UTC)
    [written] = [
        w
        for w in refresh(fresh_engine, CsvReplaySource(csv), now=now, services=["web"])
        if w.optimization_type == "scaling"
    ]
    assert written.change == "opened", written.reason
    [row] = [
        r for r in open_recommendations(fresh_engine, "web") if r["optimization_type"] == "scaling"
    ]
    schedule = row["recommended_state"]["schedule"]
    outs = [s for s in schedule if s["action"] == "scale_out"]
    ins = [s for s in schedule if s["action"] == "scale_in"]
    noon = datetime.fromtimestamp(DAY0 + days * 86_400 + 12 * 3600, UTC)
    first_out = datetime.fromisoformat(outs[0]["at"])
    assert noon - timedelta(minutes=45) <= first_out <= noon - timedelta(minutes=25)
    assert max(s["to"] for s in outs) >= 3  # 140 requests/s at 50 each
    last_in = datetime.fromisoformat(ins[-1]["at"])
    assert last_in >= noon + timedelta(hours=2, minutes=60)
    assert ins[-1]["to"] == 1
    assert row["implementation_steps"][0]["action"] == "scale_out"
    assert row["current_state"]["replicas"] == 1
    assert row["expected_improvement"]["replica_hours_saved_vs_peak_sized"] > 0


@e2e
async def test_a_scaling_recommendation_is_applied_as_a_decision_and_an_abort_undoes_it(
    client: Client,
    decisions_worker: None,
    maintenance_worker: None,
    growable: Fleet,
    db_engine: Engine,
) -> None:
    """Through OptimizationWorkflow: the decision, scale_out by the remediation runner, measured
    through the group's load balancer; a second change aborted while settling is rolled back to
    exactly the replicas before it."""
    base = growable.spec.services[0].name
    spare1, spare2 = (s.name for s in growable.spec.spares())

    def scaling(replicas: int) -> Draft:
        return Draft(
            "scaling",
            "replicas",
            "replicas",
            {"replicas": 2},
            {"replicas": 2 + replicas},
            {"replicas_added": replicas},
            [
                {"action": "scale_out", "params": {"replicas": replicas}},
                {"action": "validate_requests", "params": {"via_frontend": True}},
            ],
            {},
        )

    first = store(db_engine, base, scaling(1), "a test", datetime.now(UTC))
    assert first.id is not None
    inp = ApplyInput(
        recommendation_id=UUID(first.id),
        requested_by="alice@sre",
        settle_seconds=1,
        requests=20,
        tolerance=10,  # a loaded machine's p95 is noise here: errors are what is judged
    )
    handle, _ = await start_optimization(client, inp, base)
    view: ApplyStatusView = await handle.result()
    assert view.status == "applied", view.timeline
    assert spare1 in in_rotation(growable)
    assert view.before is not None
    assert view.before.requests == 20  # measured through the frontend, all answered
    assert view.after is not None
    assert view.after.error_ratio == 0.0
    with db_engine.connect() as conn:
        status = conn.execute(
            text("SELECT status FROM optimization_recommendations WHERE id = CAST(:i AS uuid)"),
            {"i": first.id},
        ).scalar_one()
    assert status == "applied"

    before = snapshot(growable)
    second = store(db_engine, base, scaling(1), "another", datetime.now(UTC))
    assert second.id is not None
    handle, _ = await start_optimization(
        client,
        inp.model_copy(update={"recommendation_id": second.id, "settle_seconds": 3600}),
        base,
    )
    await query_until(
        handle,
        OptimizationWorkflow.status,
        lambda v: v.status == "settling",
        lambda v: f"still {v.status}: {v.timeline[-3:]}",
        timeout=180,
    )
    assert spare2 in in_rotation(growable)
    await handle.signal("abort", AbortRequest(requested_by="alice@sre", reason="budget"))
    with pytest.raises(WorkflowFailureError):
        await handle.result()
    assert snapshot(growable) == before  # exactly the replicas and states before it
