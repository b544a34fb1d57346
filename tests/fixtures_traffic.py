"""A real haproxy in front of the two pilot replicas of `live_fleet`, and healing steps run
through the real `ActionActivities` (exactly once, prior state in `action_log`).

Shared by the traffic strategies (tests/test_strategies.py) and re-admission
(tests/test_readmission.py).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, text
from temporalio.testing import ActivityEnvironment

from activities.actions import ActionActivities
from models.actions import ActionRequest
from models.healing import ActionOutcome
from nofx.providers.haproxy import HAProxyRuntime
from nofx.settings import Settings
from pilot.fleet import Fleet, free_port
from pilot.haproxy import HAProxyProcess, HAProxySpec, haproxy_binary


def step_request(
    workflow_id: str,
    incident_id: str,
    index: int,
    action: str,
    service: str,
    params: dict[str, Any] | None = None,
) -> ActionRequest:
    """The request the saga built for step `index` (same idempotency key), to undo it."""
    return ActionRequest(
        idempotency_key=f"{workflow_id}/{incident_id}/{index}-{action}",
        workflow_id=workflow_id,
        step=f"{index}-{action}",
        service=service,
        action=action,  # type: ignore[arg-type]
        params=params or {},
        not_before=datetime.now(UTC),
    )


@dataclass
class Traffic:
    """A real haproxy balancing both services of `live_fleet` as the replicas of one backend."""

    process: HAProxyProcess
    backend: str
    replicas: tuple[str, str]

    @property
    def runtime(self) -> HAProxyRuntime:
        return HAProxyRuntime(self.process.spec.socket_path)

    @property
    def url(self) -> str:
        return self.process.frontend_url(self.backend)

    def setting(self, server: str) -> tuple[int, str]:
        state = self.runtime.server(self.backend, server)
        return state.weight, state.admin_state

    def hits(self, count: int = 20) -> Counter[str]:
        """Which replica answered each of `count` real GET / through the frontend.

        A new connection each time: drain and weight act on new sessions only.
        """
        seen: Counter[str] = Counter()
        limits = httpx.Limits(max_keepalive_connections=0)
        with httpx.Client(timeout=5, limits=limits, trust_env=False) as http:
            for _ in range(count):
                response = http.get(f"{self.url}/", headers={"Connection": "close"})
                assert response.status_code == 200, response.text
                seen[response.json()["service"]] += 1
        return seen

    def assert_split(self) -> None:
        seen = self.hits()
        assert set(seen) == set(self.replicas), seen

    def wait_serving(self, timeout: float = 15.0) -> None:
        """Until haproxy's health checks have every replica up and taking traffic."""
        deadline = time.monotonic() + timeout
        while not all(s.takes_new_traffic for s in self.runtime.servers(self.backend)):
            assert time.monotonic() < deadline, self.runtime.servers(self.backend)
            time.sleep(0.1)


@pytest.fixture
def traffic(live_fleet: Fleet, db_engine: Engine, tmp_path: Path) -> Iterator[Traffic]:
    """haproxy in front of both fleet services, recorded in their inventory metadata."""
    if haproxy_binary() is None:
        pytest.skip("haproxy is not installed (Debian package: haproxy)")
    replicas = (live_fleet.spec.services[0].name, live_fleet.spec.services[1].name)
    backend = f"{replicas[0]}-lb"
    # A Unix socket path must fit in 107 bytes; pytest's tmp_path may not.
    socket_dir = Path(tempfile.mkdtemp(prefix="nofx-lb-"))
    spec = HAProxySpec.model_validate(
        {
            "socket_path": socket_dir / "admin.sock",
            "frontends": [
                {
                    "name": backend,
                    "bind_port": free_port(),
                    "servers": [
                        (name, "127.0.0.1", live_fleet.spec.get(name).port) for name in replicas
                    ],
                }
            ],
        }
    )
    try:
        with HAProxyProcess(spec, tmp_path / "haproxy") as process:
            lb = Traffic(process, backend, replicas)
            lb.wait_serving()
            with db_engine.begin() as conn:
                for name in replicas:
                    conn.execute(
                        text(
                            "UPDATE services SET metadata = metadata || CAST(:m AS jsonb)"
                            " WHERE name = :n"
                        ),
                        {
                            "n": name,
                            "m": json.dumps(
                                {
                                    "haproxy_socket": str(spec.socket_path),
                                    "haproxy_backend": backend,
                                    "haproxy_server": name,
                                    "haproxy_frontend": lb.url,
                                }
                            ),
                        },
                    )
            yield lb
    finally:
        shutil.rmtree(socket_dir, ignore_errors=True)


@pytest.fixture
def act(db_engine: Engine, database_url: str) -> Any:
    """Run a healing step through the real activity (exactly once, prior state in action_log)."""
    activities = ActionActivities(db_engine, Settings(database_url=database_url))

    def run(request: ActionRequest, *, undo: bool = False) -> ActionOutcome:
        method = activities.undo_action if undo else activities.perform_action
        outcome: ActionOutcome = ActivityEnvironment().run(method, request)
        return outcome

    return run


def traffic_step(service: str, action: str, params: dict[str, Any] | None = None) -> ActionRequest:
    """A fresh step (its own idempotency key) of `action` on `service`."""
    key = uuid.uuid4().hex[:8]
    return step_request(f"wf-{key}", key, 0, action, service, params)
