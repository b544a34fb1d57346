"""Alerts in, end to end: a real Prometheus scrapes the fleet and evaluates a rule, a real
Alertmanager (Debian `prometheus-alertmanager`) routes the alert to the platform's HTTP API, and
the incident of the killed service is opened; a malformed payload is refused field by field and
opens nothing."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from sqlalchemy import text
from sqlalchemy.engine import Engine
from temporalio.client import Client

from models.decisions import Operator
from nofx.api import tokens
from nofx.api.app import ApiContext, create_app
from nofx.client import incident_workflow_id
from nofx.decisions import store
from nofx.settings import get_settings
from pilot.fleet import Fleet, free_port
from tests.fixtures_prometheus import JOB_NAME, StartPrometheus
from tests.helpers import serving

ALERTMANAGER = "prometheus-alertmanager"


@pytest.fixture
def alertmanager_binary() -> str:
    found = os.environ.get("NOFX_ALERTMANAGER_BINARY") or shutil.which(ALERTMANAGER)
    if not found:
        pytest.skip(
            "Alertmanager is not installed (Debian: apt-get install prometheus-alertmanager)"
        )
    return found


@pytest.fixture
async def api_url(client: Client, db_engine: Engine) -> AsyncIterator[tuple[str, str]]:
    """The HTTP API on a free port, and a token of an operator who may send alerts."""
    name = f"alertmanager-{uuid.uuid4().hex[:6]}"
    store.add_operator(db_engine, Operator(name=name, permissions=["alerts:ingest"]), actor="t")
    token = tokens.issue(db_engine, name, actor="test")[1]
    app = create_app(ApiContext(client, db_engine, get_settings()))
    async with serving(app) as url:
        yield url, token


@pytest.fixture
def start_alertmanager(alertmanager_binary: str, tmp_path: Path) -> Iterator[Any]:
    started: list[subprocess.Popen[bytes]] = []

    def start(webhook: str, token: str) -> str:
        config = {
            "route": {
                "receiver": "nofx",
                "group_by": ["alertname", "service"],
                "group_wait": "1s",
                "group_interval": "2s",
                "repeat_interval": "1h",
            },
            "receivers": [
                {
                    "name": "nofx",
                    "webhook_configs": [
                        {
                            "url": webhook,
                            "send_resolved": True,
                            "http_config": {
                                "authorization": {"type": "Bearer", "credentials": token}
                            },
                        }
                    ],
                }
            ],
        }
        (tmp_path / "alertmanager.yml").write_text(yaml.safe_dump(config))
        port = free_port()
        log = (tmp_path / "alertmanager.log").open("wb")
        process = subprocess.Popen(
            [
                alertmanager_binary,
                f"--config.file={tmp_path / 'alertmanager.yml'}",
                f"--storage.path={tmp_path / 'alertmanager-data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--cluster.listen-address=",  # one instance: no gossip port
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        started.append(process)
        return f"127.0.0.1:{port}"

    try:
        yield start
    finally:
        for process in started:
            process.terminate()
            process.wait(timeout=15)


async def wait_ready(url: str, timeout: float = 30) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    async with httpx.AsyncClient() as http:
        while True:
            try:
                if (await http.get(f"{url}/-/ready", timeout=2)).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            assert asyncio.get_running_loop().time() < deadline, f"{url} not ready"
            await asyncio.sleep(0.2)


def alert_rows(engine: Engine, service: str) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [
            dict(r)
            for r in conn.execute(
                text(
                    "SELECT status, pattern, outcome, workflow_id, alertname, received_by"
                    " FROM alert_events WHERE service = :s ORDER BY id"
                ),
                {"s": service},
            ).mappings()
        ]


@pytest.mark.e2e
@pytest.mark.timeout(300)
async def test_a_prometheus_alert_routed_by_alertmanager_opens_the_incident(
    live_fleet: Fleet,
    db_engine: Engine,
    client: Client,
    api_url: tuple[str, str],
    start_prometheus: StartPrometheus,
    start_alertmanager: Any,
    tmp_path: Path,
) -> None:
    url, token = api_url
    victim = live_fleet.spec.services[0].name
    alertmanager = start_alertmanager(f"{url}/api/alerts/alertmanager", token)
    await wait_ready(f"http://{alertmanager}")
    rules = tmp_path / "rules.yml"
    rules.write_text(
        yaml.safe_dump(
            {
                "groups": [
                    {
                        "name": "nofx",
                        "interval": "1s",
                        "rules": [
                            {
                                "alert": "PilotDown",
                                "expr": f'up{{job="{JOB_NAME}"}} == 0',
                                "labels": {"nofx_pattern": "service_down", "severity": "page"},
                                "annotations": {"summary": "{{ $labels.service }} is down"},
                            }
                        ],
                    }
                ]
            }
        )
    )
    prometheus = start_prometheus(
        {s.name: f"127.0.0.1:{s.port}" for s in live_fleet.spec.services},
        {
            "rule_files": [str(rules)],
            "alerting": {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]},
        },
    )
    await asyncio.to_thread(prometheus.wait_for_targets_up)
    assert alert_rows(db_engine, victim) == []  # all up: nothing fires

    live_fleet.inject("kill", victim)
    deadline = asyncio.get_running_loop().time() + 120
    while not (rows := alert_rows(db_engine, victim)):
        assert asyncio.get_running_loop().time() < deadline, (
            tmp_path / "alertmanager.log"
        ).read_text()[-3000:]
        await asyncio.sleep(0.5)
    first = rows[0]
    assert (first["status"], first["pattern"], first["alertname"]) == (
        "firing",
        "service_down",
        "PilotDown",
    )
    assert first["workflow_id"] == incident_workflow_id(victim, "service_down")
    assert first["outcome"] in ("opened", "joined"), first
    assert first["received_by"].startswith("alertmanager-")
    described = await client.get_workflow_handle(first["workflow_id"]).describe()
    assert described.workflow_type == "HealingIncidentWorkflow"
    # the others were up all along: no alert, no incident for them
    for other in live_fleet.spec.services[1:]:
        assert alert_rows(db_engine, other.name) == []


async def test_a_malformed_alertmanager_payload_is_refused_field_by_field(
    api_url: tuple[str, str], db_engine: Engine, live_fleet: Fleet
) -> None:
    url, token = api_url
    service = live_fleet.spec.services[0].name
    good = {
        "status": "firing",
        "labels": {"alertname": "X", "service": service, "nofx_pattern": "service_down"},
        "startsAt": "2026-12-06T10:00:00Z",
        "fingerprint": "abc",
    }
    payload = {
        "version": "4",
        "status": "firing",
        "alerts": [
            good,
            {**good, "labels": {"alertname": "Y", "service": "nope"}},
            {**good, "labels": {"service": service, "nofx_pattern": "sky_falling"}},
        ],
    }
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=url, headers=headers) as http:
        refused = await http.post("/api/alerts/alertmanager", json=payload)
        assert refused.status_code == 422, refused.text
        where = [p["loc"] for p in refused.json()["detail"]]
        assert ["body", "alerts", 1, "labels", "nofx_pattern"] in where  # missing
        assert ["body", "alerts", 2, "labels", "nofx_pattern"] in where  # not a pattern
        assert not [w for w in where if w[2] == 0], where  # the good one is not blamed
        stranger = {**good, "labels": {**good["labels"], "service": "nope"}}
        unknown = await http.post(
            "/api/alerts/alertmanager", json={**payload, "alerts": [good, stranger]}
        )
        assert unknown.status_code == 404, unknown.text
        assert unknown.json()["detail"] == "alerts.1.labels.service: 'nope' is not in the inventory"
        no_version = await http.post("/api/alerts/alertmanager", json={**payload, "version": "3"})
        assert no_version.status_code == 422
        unauthenticated = await http.post(
            "/api/alerts/alertmanager", json=payload, headers={"Authorization": ""}
        )
        assert unauthenticated.status_code == 401
    assert alert_rows(db_engine, service) == []  # the good alert of a refused call: not acted on
