"""The HAProxy traffic provider and the pilot's haproxy launcher, against a real haproxy.

Real HTTP backends (one thread-served HTTP server per replica, each answering with its own name)
sit behind a real haproxy; the tests send requests through the frontend and check where they
land, as the healing track will when it drains a bad replica or shifts weights, and that the
compensation (`restore`) brings the previous split back.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from nofx.providers.haproxy import (
    AdminState,
    HAProxyRuntime,
    HAProxyUnavailableError,
    TrafficChange,
    TrafficSetting,
    UnknownServerError,
)
from pilot.fleet import HOST, free_port
from pilot.haproxy import (
    HAProxyConfigError,
    HAProxyProcess,
    HAProxySpec,
    haproxy_binary,
    render_config,
    validate_config,
)

if haproxy_binary() is None:
    pytest.skip("haproxy is not installed (Debian package: haproxy)", allow_module_level=True)

SERVICE = "web"
REPLICAS = ("web-a", "web-b")
REQUESTS = 20


class _NamedHandler(BaseHTTPRequestHandler):
    """Answers /health with 200 and anything else with the replica's name."""

    server: _NamedServer

    def do_GET(self) -> None:
        body = b"ok" if self.path == "/health" else self.server.replica.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # haproxy checks every second; the test output does not need them


class _NamedServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, replica: str, port: int) -> None:
        self.replica = replica
        super().__init__((HOST, port), _NamedHandler)


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll `predicate` until it holds; haproxy applies some changes asynchronously."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout}s")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def backends() -> Iterator[dict[str, int]]:
    """The replicas' ports, by name; the servers only answer, so tests can share them."""
    servers = [_NamedServer(name, free_port()) for name in REPLICAS]
    threads = [threading.Thread(target=server.serve_forever, daemon=True) for server in servers]
    for thread in threads:
        thread.start()
    try:
        yield {server.replica: server.server_address[1] for server in servers}
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


@pytest.fixture
def spec(tmp_path: Path, backends: dict[str, int]) -> HAProxySpec:
    # Servers as plain (name, host, port) tuples, the form fleet code will pass.
    return HAProxySpec.model_validate(
        {
            "socket_path": tmp_path / "admin.sock",
            "frontends": [
                {
                    "name": SERVICE,
                    "bind_port": free_port(),
                    "servers": [(name, HOST, port) for name, port in backends.items()],
                }
            ],
        }
    )


@pytest.fixture
def haproxy(spec: HAProxySpec, tmp_path: Path) -> Iterator[HAProxyProcess]:
    with HAProxyProcess(spec, tmp_path / "haproxy") as process:
        runtime = HAProxyRuntime(process.spec.socket_path)
        # haproxy counts servers UP before the first check; this catches a replica that
        # does not answer before a test blames the provider for it.
        wait_for(
            lambda: all(s.operational_state == "up" for s in runtime.servers(SERVICE)),
        )
        yield process


@pytest.fixture
def runtime(haproxy: HAProxyProcess) -> HAProxyRuntime:
    return HAProxyRuntime(haproxy.spec.socket_path)


def hits(haproxy: HAProxyProcess, count: int = REQUESTS) -> Counter[str]:
    """Which replica answered each of `count` requests through the frontend, on new connections.

    No keep-alive: drain stops new sessions, so a reused client connection would prove nothing.
    """
    url = haproxy.frontend_url(SERVICE) + "/"
    seen: Counter[str] = Counter()
    limits = httpx.Limits(max_keepalive_connections=0)
    with httpx.Client(timeout=2.0, limits=limits, trust_env=False) as client:
        for _ in range(count):
            response = client.get(url, headers={"Connection": "close"})
            assert response.status_code == 200, response.text
            seen[response.text] += 1
    return seen


def assert_split(seen: Counter[str]) -> None:
    """Round-robin over two equal replicas: both answer, neither takes almost everything."""
    assert set(seen) == set(REPLICAS), seen
    assert min(seen.values()) >= REQUESTS // 4, seen


def test_rendered_config_is_valid(spec: HAProxySpec, tmp_path: Path) -> None:
    text = render_config(spec)
    assert f"stats socket {spec.socket_path} mode 600 level admin expose-fd listeners" in text
    assert "option httpchk GET /health" in text
    assert "default-server inter 1s fall 2 rise 2 check" in text
    assert "balance roundrobin" in text
    path = tmp_path / "haproxy.cfg"
    path.write_text(text)
    validate_config(path)

    path.write_text(text + "    server broken 127.0.0.1:notaport\n")
    with pytest.raises(HAProxyConfigError, match="broken"):
        validate_config(path)


def test_servers_report_config_and_health(
    runtime: HAProxyRuntime, backends: dict[str, int]
) -> None:
    states = runtime.servers(SERVICE)
    assert [s.server for s in states] == list(REPLICAS)
    for state in states:
        assert state.backend == SERVICE
        assert (state.address, state.port) == (HOST, backends[state.server])
        assert state.weight == state.initial_weight == 1
        assert state.admin_state == "ready"
        assert state.operational_state == "up"
        assert state.takes_new_traffic
    assert runtime.server(SERVICE, "web-b").port == backends["web-b"]
    # The first checks land within `inter` (1s) of start.
    wait_for(lambda: all(s.check_status == "L7OK" for s in runtime.servers(SERVICE)))


def test_round_robin_spreads_requests(haproxy: HAProxyProcess) -> None:
    assert_split(hits(haproxy))


@pytest.mark.parametrize("state", ["drain", "maint"])
def test_state_change_moves_traffic_and_restore_brings_it_back(
    haproxy: HAProxyProcess, runtime: HAProxyRuntime, state: AdminState
) -> None:
    change = runtime.set_state(SERVICE, "web-a", state)
    assert change.changed
    assert change.before.admin_state == "ready"
    assert change.after.admin_state == state
    assert change.before.weight == change.after.weight == 1
    assert runtime.server(SERVICE, "web-a").admin_state == state
    assert hits(haproxy) == Counter({"web-b": REQUESTS})

    restored = runtime.restore(change)
    assert restored.changed
    assert restored.after == change.before
    wait_for(lambda: runtime.server(SERVICE, "web-a").takes_new_traffic)
    assert_split(hits(haproxy))


def test_weight_zero_and_back(haproxy: HAProxyProcess, runtime: HAProxyRuntime) -> None:
    change = runtime.set_weight(SERVICE, "web-a", 0)
    assert change.changed
    assert (change.before.weight, change.after.weight) == (1, 0)
    assert change.after.admin_state == "ready"  # weight alone; the admin state is untouched
    assert hits(haproxy) == Counter({"web-b": REQUESTS})

    runtime.restore(change)
    assert runtime.server(SERVICE, "web-a").weight == 1
    assert_split(hits(haproxy))


def test_weights_shift_the_split(haproxy: HAProxyProcess, runtime: HAProxyRuntime) -> None:
    change = runtime.set_weight(SERVICE, "web-a", 3)
    seen = hits(haproxy)
    assert seen["web-a"] > 2 * seen["web-b"] > 0, seen
    runtime.restore(change)
    assert_split(hits(haproxy))


def test_changes_and_restores_are_idempotent(runtime: HAProxyRuntime) -> None:
    first = runtime.set_state(SERVICE, "web-b", "drain")
    again = runtime.set_state(SERVICE, "web-b", "drain")
    assert first.changed
    assert not again.changed
    assert again.before == again.after == first.after

    weight = runtime.set_weight(SERVICE, "web-b", 5)
    assert weight.changed
    assert weight.before.admin_state == weight.after.admin_state == "drain"
    assert not runtime.set_weight(SERVICE, "web-b", 5).changed

    # Compensations run in reverse order, each possibly twice.
    for change in (weight, first):
        assert runtime.restore(change).changed
        assert not runtime.restore(change).changed
    state = runtime.server(SERVICE, "web-b")
    assert (state.weight, state.admin_state) == (1, "ready")


def test_restore_undoes_a_combined_change(runtime: HAProxyRuntime) -> None:
    """A compensation restores weight and state together, from a recorded `before`."""
    runtime.set_weight(SERVICE, "web-a", 7)
    runtime.set_state(SERVICE, "web-a", "maint")
    recorded = TrafficChange.model_validate_json(
        TrafficChange(
            backend=SERVICE,
            server="web-a",
            action="set_state",
            before=TrafficSetting(weight=1, admin_state="ready"),
            after=TrafficSetting(weight=7, admin_state="maint"),
            changed=True,
        ).model_dump_json()
    )
    restored = runtime.restore(recorded)
    assert restored.before.weight == 7
    assert restored.before.admin_state == "maint"
    assert restored.after == recorded.before


def test_unknown_backend_and_server_are_named(runtime: HAProxyRuntime) -> None:
    with pytest.raises(UnknownServerError, match="'nope'"):
        runtime.servers("nope")
    with pytest.raises(UnknownServerError, match="'nope'"):
        runtime.set_state("nope", "web-a", "drain")
    with pytest.raises(UnknownServerError, match=r"'web-z'.*'web'"):
        runtime.server(SERVICE, "web-z")
    with pytest.raises(UnknownServerError, match="'web-z'"):
        runtime.set_weight(SERVICE, "web-z", 1)
    with pytest.raises(UnknownServerError, match="'web-a; shutdown'"):
        runtime.set_weight(SERVICE, "web-a; shutdown", 1)


def test_out_of_range_weight_and_bad_state_are_refused(runtime: HAProxyRuntime) -> None:
    for weight in (-1, 257):
        with pytest.raises(ValueError, match=r"0\.\.256"):
            runtime.set_weight(SERVICE, "web-a", weight)
    with pytest.raises(ValueError, match="admin state"):
        runtime.set_state(SERVICE, "web-a", "up")  # type: ignore[arg-type]
    assert runtime.server(SERVICE, "web-a").weight == 1


def test_unreachable_socket_is_retryable(tmp_path: Path) -> None:
    missing = tmp_path / "missing.sock"
    with pytest.raises(HAProxyUnavailableError, match=re.escape(str(missing))):
        HAProxyRuntime(missing).servers(SERVICE)

    # A socket file nobody listens on: the connection is refused.
    stale = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(stale))
        with pytest.raises(HAProxyUnavailableError, match=re.escape(str(stale))):
            HAProxyRuntime(stale, timeout=1.0).server(SERVICE, "web-a")


def test_stopped_haproxy_is_unavailable(spec: HAProxySpec, tmp_path: Path) -> None:
    process = HAProxyProcess(spec, tmp_path / "haproxy")
    with process:
        pid = process.pid
        assert pid is not None
        assert "Name: HAProxy" in HAProxyRuntime(process.spec.socket_path).command("show info")
    with pytest.raises(HAProxyUnavailableError):
        HAProxyRuntime(process.spec.socket_path, timeout=1.0).command("show info")
