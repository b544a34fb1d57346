"""A real Prometheus server for the telemetry tests (the Debian package ``prometheus``).

Loaded as a pytest plugin (``pytest_plugins`` in ``tests/conftest.py``, or ``-p
tests.fixtures_prometheus``). Each server gets a free port, its own storage directory and a
generated config that scrapes the given targets every second, each target labelled
``service=<name>`` (the mapping ``PrometheusSource`` uses by default), all in one job
``nofx-fleet``. It is stopped at the end of the test.

Tests skip only when the ``prometheus`` binary is not installed (``apt-get install prometheus``;
``.ci/run`` installs it); any other failure to start is a test failure with the server's log.

Fixtures:
    prometheus_binary: (session) the path of the ``prometheus`` executable, or a skip.
    start_prometheus: (function) a factory ``start_prometheus({"svc": "127.0.0.1:8080"})``
        returning a ready ``PrometheusServer``.
    fleet_prometheus: (function) a server scraping the two services of ``live_fleet``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from pilot.fleet import Fleet, free_port

PROMETHEUS_ENV = "NOFX_PROMETHEUS_BINARY"
JOB_NAME = "nofx-fleet"
READY_TIMEOUT_SECONDS = 30.0
SCRAPE_INTERVAL = "1s"

StartPrometheus = Callable[..., "PrometheusServer"]


@dataclass
class PrometheusServer:
    """A running Prometheus: where it answers and what it scrapes."""

    url: str
    port: int
    process: subprocess.Popen[bytes]
    root: Path
    targets: dict[str, str]

    @property
    def log_path(self) -> Path:
        return self.root / "prometheus.log"

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def wait_for_targets_up(self, timeout: float = 20.0) -> None:
        """Wait until every target has been scraped successfully at least once."""
        deadline = time.monotonic() + timeout
        health: dict[str, str] = {}
        while time.monotonic() < deadline:
            response = httpx.get(f"{self.url}/api/v1/targets", timeout=2.0)
            active = response.json()["data"]["activeTargets"]
            health = {t["labels"].get("service", "?"): t["health"] for t in active}
            if len(health) == len(self.targets) and all(h == "up" for h in health.values()):
                return
            time.sleep(0.2)
        pytest.fail(f"prometheus targets not all up within {timeout}s: {health}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


def write_config(
    path: Path, targets: Mapping[str, str], extra: Mapping[str, Any] | None = None
) -> None:
    """A config scraping each ``service -> host:port`` every second, labelled ``service``;
    `extra` adds top-level sections (``rule_files``, ``alerting``)."""
    config: dict[str, Any] = {
        "global": {
            "scrape_interval": SCRAPE_INTERVAL,
            "scrape_timeout": SCRAPE_INTERVAL,
            "evaluation_interval": SCRAPE_INTERVAL,
        },
        "scrape_configs": [
            {
                "job_name": JOB_NAME,
                "static_configs": [
                    {"targets": [address], "labels": {"service": service}}
                    for service, address in sorted(targets.items())
                ],
            }
        ],
    }
    config.update(extra or {})
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def _launch(
    binary: str, root: Path, targets: Mapping[str, str], extra: Mapping[str, Any] | None = None
) -> PrometheusServer:
    """Start one server and wait for /-/ready; raise RuntimeError with its log if it fails."""
    root.mkdir(parents=True, exist_ok=True)
    config_path = root / "prometheus.yml"
    write_config(config_path, targets, extra)
    port = free_port()
    log = (root / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={config_path}",
            f"--storage.tsdb.path={root / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--storage.tsdb.retention.time=1h",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=root,
    )
    log.close()
    server = PrometheusServer(
        url=f"http://127.0.0.1:{port}",
        port=port,
        process=process,
        root=root,
        targets=dict(targets),
    )
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"prometheus exited with {process.returncode}:\n{server.log_tail()}")
        try:
            if httpx.get(f"{server.url}/-/ready", timeout=1.0).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    server.stop()
    raise RuntimeError(
        f"prometheus not ready within {READY_TIMEOUT_SECONDS}s:\n{server.log_tail()}"
    )


@pytest.fixture(scope="session")
def prometheus_binary() -> str:
    """The ``prometheus`` executable: ``$NOFX_PROMETHEUS_BINARY``, else the one on PATH."""
    configured = os.environ.get(PROMETHEUS_ENV)
    found = configured or shutil.which("prometheus")
    if not found or not Path(found).exists():
        pytest.skip(
            "the prometheus binary is not installed (Debian: apt-get install prometheus; "
            f"or set {PROMETHEUS_ENV})"
        )
    return found


@pytest.fixture
def start_prometheus(
    prometheus_binary: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[StartPrometheus]:
    """A factory starting real Prometheus servers; all are stopped after the test."""
    started: list[PrometheusServer] = []

    def start(
        targets: Mapping[str, str], extra: Mapping[str, Any] | None = None
    ) -> PrometheusServer:
        last_error: RuntimeError | None = None
        for _ in range(3):  # the free port may be taken between choosing and binding it
            root = tmp_path_factory.mktemp("prometheus")
            try:
                server = _launch(prometheus_binary, root, targets, extra)
            except RuntimeError as err:
                last_error = err
                continue
            started.append(server)
            return server
        pytest.fail(f"prometheus did not start: {last_error}")

    try:
        yield start
    finally:
        for server in started:
            server.stop()


@pytest.fixture
def fleet_prometheus(live_fleet: Fleet, start_prometheus: StartPrometheus) -> PrometheusServer:
    """A Prometheus scraping every pilot service of ``live_fleet``, each up at least once."""
    server = start_prometheus(
        {service.name: f"127.0.0.1:{service.port}" for service in live_fleet.spec.services}
    )
    server.wait_for_targets_up()
    return server
