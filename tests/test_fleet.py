"""The staging fleet and the supervisord provider, on real processes under a real supervisord.

These tests inject real faults (SIGKILL, SIGSTOP) and check what an operator would see: the
service stops answering, supervisord and the kernel report it, and the provider's restart brings
it back exactly once per incident, even when called again as a retried activity would.
"""

from __future__ import annotations

import math
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from nofx.providers.haproxy import HAProxyRuntime
from nofx.providers.supervisor import SupervisorProvider, UnknownTargetError
from pilot.fleet import Fleet, FleetError, FleetSpec, answers, free_port
from pilot.haproxy import haproxy_binary

API = "pilot-api"
ORDERS = "pilot-orders"


def wait_for(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    """Poll `predicate` until it holds; supervisord learns of a death asynchronously."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout}s")
        time.sleep(0.05)


def pilot_processes(fleet: Fleet) -> list[psutil.Process]:
    """Live pilot processes of this fleet (found by their state dir), zombies excluded."""
    found = []
    for process in psutil.process_iter(["cmdline", "status"]):
        cmdline = process.info["cmdline"] or []
        if (
            "pilot.service" in cmdline
            and str(fleet.state_dir) in cmdline
            and process.info["status"] != psutil.STATUS_ZOMBIE
        ):
            found.append(process)
    return found


def health(fleet: Fleet, name: str) -> dict[str, Any]:
    response = httpx.get(fleet.health_url(name), timeout=1.0)
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    return body


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    fleet = Fleet(tmp_path, FleetSpec.default(free_port(span=4)))
    try:
        fleet.start()
        yield fleet
    finally:
        fleet.stop()


@pytest.fixture
def provider(fleet: Fleet) -> SupervisorProvider:
    return SupervisorProvider(fleet.socket_path)


def test_every_service_answers_health_and_metrics(
    fleet: Fleet, provider: SupervisorProvider
) -> None:
    for name in (API, ORDERS):
        body = health(fleet, name)
        assert body["status"] == "ok"
        assert body["service"] == name
        assert body["pid"] == provider.process_state(name).pid
        assert [start["pid"] for start in fleet.starts(name)] == [body["pid"]]

    port = fleet.spec.get(API).port
    bodies = [httpx.get(f"http://127.0.0.1:{port}/", timeout=1.0).json() for _ in range(3)]
    assert [body["n"] for body in bodies] == [1, 2, 3]
    # The source advances every second and invalidates the entry, so on a slow machine a later
    # read may miss too: the counters must agree with what each response said it was.
    hits = [body["cache"]["hit"] for body in bodies]
    assert hits[0] is False

    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=1.0).text
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    assert samples[("pilot_up", ())] == 1
    assert samples[("pilot_requests_total", (("path", "/"), ("status", "200")))] == 3
    # What the faults of tests/test_faults.py move, at rest: config version 1, an empty data dir
    # under its quota, a cache that loaded on its first read, an idle worker queue.
    assert samples[("pilot_config_version", ())] == 1
    assert samples[("pilot_disk_used_bytes", ())] == 0
    assert samples[("pilot_disk_quota_bytes", ())] == 256 * 1024 * 1024
    assert samples[("pilot_cache_misses_total", ())] == hits.count(False)
    assert samples[("pilot_cache_hits_total", ())] == hits.count(True)
    assert samples[("pilot_requests_queued", ())] == 0
    assert any(name == "pilot_request_duration_seconds_count" for name, _ in samples)
    assert any(name == "process_start_time_seconds" for name, _ in samples)
    build = [labels for name, labels in samples if name == "pilot_build_info"]
    assert ("service", API) in build[0]


def test_killed_service_is_restarted_once_per_incident(
    fleet: Fleet, provider: SupervisorProvider
) -> None:
    not_before = time.time()
    killed = fleet.inject("kill", API)["pid"]

    wait_for(lambda: provider.process_state(API).state == "EXITED")
    with pytest.raises(httpx.ConnectError):
        httpx.get(fleet.health_url(API), timeout=1.0)

    outcome = provider.restart(API, not_before=not_before)
    assert outcome.restarted
    assert outcome.new_pid not in (None, killed)
    # RUNNING to supervisord is not serving yet: the new process may still be binding its port.
    assert fleet.wait_serving(API) == outcome.new_pid
    assert health(fleet, API)["pid"] == outcome.new_pid
    assert len(fleet.starts(API)) == 2

    # A retried activity (same incident, same not_before) must not restart it again.
    again = provider.restart(API, not_before=not_before)
    assert not again.restarted
    assert "already running since" in again.reason
    assert again.new_pid == outcome.new_pid
    assert len(fleet.starts(API)) == 2
    assert health(fleet, API)["pid"] == outcome.new_pid


def test_hung_service_is_seen_frozen_and_restarted(
    fleet: Fleet, provider: SupervisorProvider
) -> None:
    not_before = time.time()
    hung = fleet.inject("hang", ORDERS)["pid"]

    with pytest.raises(httpx.TimeoutException):
        httpx.get(fleet.health_url(ORDERS), timeout=1.0)
    state = provider.process_state(ORDERS)
    assert state.state == "RUNNING"  # supervisord cannot tell
    assert state.frozen
    assert state.pid == hung

    outcome = provider.restart(ORDERS, not_before=not_before)
    assert outcome.restarted
    assert outcome.old_pid == hung
    assert not psutil.pid_exists(hung) or psutil.Process(hung).status() == psutil.STATUS_ZOMBIE
    assert fleet.wait_serving(ORDERS) == outcome.new_pid
    assert health(fleet, ORDERS)["pid"] == outcome.new_pid
    assert not provider.process_state(ORDERS).frozen
    assert len(fleet.starts(ORDERS)) == 2


def test_clear_resumes_a_hung_service_and_starts_a_dead_one(
    fleet: Fleet, provider: SupervisorProvider
) -> None:
    pid = fleet.inject("hang", API)["pid"]
    assert fleet.clear(API) == [f"hang: resumed pid {pid}"]
    assert health(fleet, API)["pid"] == pid

    fleet.inject("kill", API)
    wait_for(lambda: provider.process_state(API).state == "EXITED")
    cleared = fleet.clear(API)
    restarted = health(fleet, API)["pid"]
    assert cleared == [f"kill: started {API} (pid {restarted})"]
    assert restarted != pid
    assert fleet.clear(API) == []
    assert len(fleet.starts(API)) == 2


def test_unknown_targets_are_refused_by_name(fleet: Fleet, provider: SupervisorProvider) -> None:
    with pytest.raises(FleetError, match="pilot-nope"):
        fleet.inject("kill", "pilot-nope")
    with pytest.raises(FleetError, match="melt"):
        fleet.inject("melt", API)
    with pytest.raises(FleetError, match="pilot-nope"):
        fleet.clear("pilot-nope")
    # A bad config push is the platform's to make (nofx.faults), not the fleet's.
    with pytest.raises(FleetError, match="unknown fault kind 'bad_config'"):
        fleet.inject("bad_config", API)
    # This fleet has no database: what needs one says so instead of half-working.
    with pytest.raises(FleetError, match="no database"):
        fleet.inject("connection_leak", API)
    with pytest.raises(UnknownTargetError, match="pilot-nope"):
        provider.restart("pilot-nope", not_before=time.time())


def test_port_in_use_fails_start_and_leaves_nothing_running(tmp_path: Path) -> None:
    base = free_port(span=4)
    fleet = Fleet(tmp_path, FleetSpec.default(base))
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", base + 1))
        squatter.listen()
        try:
            with pytest.raises(FleetError, match=f"port {base + 1}"):
                fleet.start()
        finally:
            fleet.stop()
    assert not fleet.is_running()
    assert not pilot_processes(fleet)
    assert not [
        p
        for p in psutil.process_iter(["cmdline"])
        if str(fleet.conf_path) in (p.info["cmdline"] or [])
    ]


def test_stop_leaves_no_pilot_processes(fleet: Fleet) -> None:
    assert len(pilot_processes(fleet)) == len(fleet.spec.services)
    fleet.inject("hang", ORDERS)  # a frozen process must not outlive the fleet either

    fleet.stop()

    assert not fleet.is_running()
    assert not pilot_processes(fleet)
    fleet.stop()  # stopping a stopped fleet is fine
    with pytest.raises(FleetError, match="not running"):
        fleet.inject("kill", API)


def test_replica_groups_are_checked() -> None:
    def spec(**extra: Any) -> FleetSpec:
        return FleetSpec.model_validate(
            {
                "services": [
                    {"name": "a1", "port": 21001, "group": "a"},
                    {"name": "a2", "port": 21002, "group": extra.pop("second", "a")},
                ],
                "groups": extra.pop("groups", [{"name": "a", "port": 21003}]),
            }
        )

    assert [s.group for s in spec().services] == ["a", "a"]
    with pytest.raises(ValueError, match="a2 is in unknown group 'b'"):
        spec(second="b")
    with pytest.raises(ValueError, match="groups without a replica: \\['z'\\]"):
        spec(groups=[{"name": "a", "port": 21003}, {"name": "z", "port": 21004}])
    with pytest.raises(ValueError, match="service and group ports repeat"):
        spec(groups=[{"name": "a", "port": 21001}])


@pytest.mark.skipif(haproxy_binary() is None, reason="haproxy is not installed (Debian: haproxy)")
def test_a_replica_group_is_balanced_by_the_fleets_haproxy(tmp_path: Path) -> None:
    base = free_port(span=3)
    spec = FleetSpec.model_validate(
        {
            "services": [
                {"name": "web-1", "port": base, "group": "web"},
                {"name": "web-2", "port": base + 1, "group": "web"},
            ],
            "groups": [{"name": "web", "port": base + 2}],
        }
    )
    fleet = Fleet(tmp_path, spec)
    try:
        fleet.start()
        served = {
            httpx.get(fleet.group_url("web", "/health"), timeout=2.0).json()["service"]
            for _ in range(6)
        }
        assert served == {"web-1", "web-2"}  # round robin over both replicas
        entry = next(e for e in fleet.inventory()["services"] if e["name"] == "web-2")
        assert entry["group"] == "web"
        assert entry["providers"]["traffic"] == {
            "kind": "haproxy",
            "socket": str(fleet.lb_socket),
            "backend": "web",
            "server": "web-2",
            "frontend": f"http://127.0.0.1:{base + 2}",
        }
        runtime = HAProxyRuntime(fleet.lb_socket)
        assert {s.server for s in runtime.servers("web")} == {"web-1", "web-2"}
    finally:
        fleet.stop()
    assert not answers(fleet.group_url("web", "/health"))  # the load balancer went with it


def test_a_business_day_surges_in_the_morning_and_falls_in_the_evening() -> None:
    from pilot.load import DailyCycle

    day = DailyCycle(day_seconds=24.0, trough_share=0.2, shape="business")  # a second an hour
    assert day.share(3.0) == pytest.approx(0.2, abs=1e-3)  # night: the trough
    assert day.share(22.0) == pytest.approx(0.2, abs=1e-3)
    # the surge: 10% of the way up at 08:00, 90% at 09:00 (the working day's level is 0.8 to 1
    # of the peak, so the share there is between 0.2 + 0.8 * 0.8 and 1.0)
    assert day.share(8.0) == pytest.approx(0.2 + 0.8 * 0.1 * (0.8 + 0.2 * day_hump(8)), abs=0.01)
    assert day.share(9.0) == pytest.approx(0.2 + 0.8 * 0.9 * (0.8 + 0.2 * day_hump(9)), abs=0.01)
    assert day.share(15.0) == pytest.approx(1.0, abs=1e-3)  # the peak
    assert all(0.84 <= day.share(h) <= 1.0 for h in range(10, 18))
    assert day.share(20.0) < 0.25  # closed
    with pytest.raises(ValueError, match="shape"):
        DailyCycle(day_seconds=24.0, shape="weekly")
    with pytest.raises(ValueError, match="opens_at"):
        DailyCycle(day_seconds=24.0, shape="business", opens_at=0.8, closes_at=0.5)


def day_hump(hour: float) -> float:
    """The working day's hump of `DailyCycle` at `hour` (1 at 15:00, 0 at 03:00)."""
    return (1 + math.cos(2 * math.pi * (hour / 24 - 0.625))) / 2


def test_a_compressed_daily_cycle_makes_quiet_and_busy_hours(live_fleet: Fleet) -> None:
    from pilot.load import DailyCycle, LoadGenerator

    cycle = DailyCycle(day_seconds=8.0, trough_share=0.1, peak_at=0.5)
    assert cycle.share(0.0) == pytest.approx(0.1)  # midnight: the trough
    assert cycle.share(4.0) == pytest.approx(1.0)  # midday: the peak
    assert cycle.share(8.0) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="trough_share"):
        DailyCycle(day_seconds=8.0, trough_share=0.0)
    with pytest.raises(ValueError, match="give a rate"):
        LoadGenerator(["http://127.0.0.1:1/"], cycle=cycle)

    url = live_fleet.url(live_fleet.spec.services[1].name, "/")
    sent: list[tuple[float, int]] = []
    with LoadGenerator([url], concurrency=2, rate=40.0, cycle=cycle) as load:
        began = time.monotonic()
        while (elapsed := time.monotonic() - began) < 8.0:
            sent.append((elapsed, load.stats().sent))
            time.sleep(0.1)

    def between(lo: float, hi: float) -> int:
        inside = [n for t, n in sent if lo <= t <= hi]
        return inside[-1] - inside[0] if len(inside) > 1 else 0

    night, day = between(0.0, 2.0), between(3.0, 5.0)
    assert day > 2 * max(night, 1), (night, day)
