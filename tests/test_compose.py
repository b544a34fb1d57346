"""The distributed deployment (docker-compose.yml) runs what the code expects.

These tests read the compose file as data: a renamed task queue, a worker pointed at the wrong
module, a worker that cannot be scaled or a search attribute the dev stack has but the
deployment does not would otherwise only show up when someone runs `docker compose up`.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from nofx.settings import (
    SEARCH_ATTRIBUTES,
    TASK_QUEUE_DECISIONS,
    TASK_QUEUE_HEALING,
    TASK_QUEUE_MAINTENANCE,
)

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
PROMETHEUS_FILE = ROOT / "deploy" / "prometheus.yml"

WORKERS = {
    "worker-decisions": ("workers.decisions", TASK_QUEUE_DECISIONS),
    "worker-healing": ("workers.healing", TASK_QUEUE_HEALING),
    "worker-maintenance": ("workers.maintenance", TASK_QUEUE_MAINTENANCE),
}
SERVICES = {
    "postgresql",
    "temporal",
    "temporal-admin-tools",
    "temporal-ui",
    "nofx-bootstrap",
    "api",
    "prometheus",
    *WORKERS,
}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def _argv(command: str | list[str]) -> list[str]:
    return command.split() if isinstance(command, str) else [str(part) for part in command]


def _depends_on(service: dict[str, Any]) -> dict[str, str]:
    """Service name -> condition, for both the short (list) and the long (map) syntax."""
    depends = service.get("depends_on", {})
    if isinstance(depends, list):
        return dict.fromkeys(depends, "service_started")
    return {name: spec.get("condition", "service_started") for name, spec in depends.items()}


def _image_tag(image: str) -> str:
    name = image.rsplit("/", 1)[-1]
    return name.split(":", 1)[1] if ":" in name else ""


def test_every_service_of_the_deployment_is_defined(services: dict[str, Any]) -> None:
    missing = SERVICES - services.keys()
    assert not missing, f"docker-compose.yml lacks services: {sorted(missing)}"


@pytest.mark.parametrize(("name", "module", "queue"), [(n, *v) for n, v in WORKERS.items()])
def test_worker_runs_its_track_on_its_task_queue(
    services: dict[str, Any], name: str, module: str, queue: str
) -> None:
    worker = services[name]
    assert _argv(worker["command"]) == ["python", "-m", module]
    env = worker["environment"]
    assert env["NOFX_TASK_QUEUE"] == queue
    assert env["NOFX_TEMPORAL_ADDRESS"] == "temporal:7233"
    assert env["NOFX_DATABASE_URL"].startswith("postgresql://")
    assert "@postgresql:5432/" in env["NOFX_DATABASE_URL"]
    for variable in ("NOFX_TEMPORAL_NAMESPACE", "NOFX_LOG_LEVEL", "NOFX_METRICS_PORT"):
        assert variable in env, f"{name} does not set {variable}"


@pytest.mark.parametrize("name", sorted(WORKERS))
def test_worker_can_be_scaled(services: dict[str, Any], name: str) -> None:
    """`docker compose up --scale worker-X=3` fails on a fixed container name or host port."""
    worker = services[name]
    assert "container_name" not in worker
    assert "ports" not in worker


@pytest.mark.parametrize("name", sorted(WORKERS))
def test_worker_is_health_checked_on_its_metrics(services: dict[str, Any], name: str) -> None:
    healthcheck = services[name].get("healthcheck")
    assert healthcheck, f"{name} has no healthcheck"
    assert not healthcheck.get("disable", False)
    assert "/metrics" in " ".join(_argv(healthcheck["test"]))


@pytest.mark.parametrize("name", [*sorted(WORKERS), "api"])
def test_worker_waits_for_temporal_and_the_bootstrap(services: dict[str, Any], name: str) -> None:
    depends = _depends_on(services[name])
    assert depends.get("temporal") == "service_healthy"
    assert depends.get("nofx-bootstrap") == "service_completed_successfully"


def test_workers_share_one_image_with_the_bootstrap(services: dict[str, Any]) -> None:
    bootstrap = services["nofx-bootstrap"]
    assert _argv(bootstrap["command"]) == ["nofx", "bootstrap"]
    assert _depends_on(bootstrap).get("postgresql") == "service_healthy"
    assert _depends_on(bootstrap).get("temporal") == "service_healthy"
    images = {services[name]["image"] for name in [*WORKERS, "nofx-bootstrap", "api"]}
    assert len(images) == 1, f"workers, API and bootstrap use different images: {images}"


def test_temporal_persists_in_the_postgresql_service(services: dict[str, Any]) -> None:
    temporal = services["temporal"]
    assert temporal["image"].startswith("temporalio/auto-setup:")
    assert re.fullmatch(r"\d+\.\d+\.\d+", _image_tag(temporal["image"])), "pin a release"
    env = temporal["environment"]
    assert env["DB"] == "postgres12"
    assert env["POSTGRES_SEEDS"] == "postgresql"
    assert _depends_on(temporal).get("postgresql") == "service_healthy"
    assert "healthcheck" in temporal
    assert services["postgresql"]["image"] == "postgres:16"
    assert "pg_isready" in " ".join(_argv(services["postgresql"]["healthcheck"]["test"]))


def test_images_are_pinned(services: dict[str, Any]) -> None:
    for name in SERVICES - WORKERS.keys() - {"nofx-bootstrap", "api"}:
        tag = _image_tag(services[name]["image"])
        assert tag not in {"", "latest"}, f"{name} runs an unpinned image"


def test_admin_tools_register_the_search_attributes_of_settings(
    services: dict[str, Any],
) -> None:
    admin = services["temporal-admin-tools"]
    assert admin["image"].startswith("temporalio/admin-tools:")
    pairs = admin["environment"]["NOFX_SEARCH_ATTRIBUTES"].split()
    assert dict(pair.split(":", 1) for pair in pairs) == SEARCH_ATTRIBUTES
    script = " ".join(_argv(admin["entrypoint"]) + _argv(admin["command"]))
    assert "temporal operator search-attribute create" in script
    # Workers start only once the attributes exist: starting a workflow with an unknown search
    # attribute fails.
    for name in WORKERS:
        assert _depends_on(services[name]).get("temporal-admin-tools") == "service_healthy"


def test_ui_reaches_temporal(services: dict[str, Any]) -> None:
    ui = services["temporal-ui"]
    assert ui["environment"]["TEMPORAL_ADDRESS"] == "temporal:7233"
    assert any(str(port).endswith("8080:8080") for port in ui["ports"])


def test_prometheus_discovers_every_worker_replica(services: dict[str, Any]) -> None:
    mounts = [str(volume) for volume in services["prometheus"]["volumes"]]
    assert any(m.startswith("./deploy/prometheus.yml:") for m in mounts)
    config = yaml.safe_load(PROMETHEUS_FILE.read_text())
    discovered: dict[str, int] = {}
    for job in config["scrape_configs"]:
        for sd in job.get("dns_sd_configs", []):
            for dns_name in sd["names"]:
                discovered[dns_name] = sd["port"]
    for name in WORKERS:
        port = int(services[name]["environment"]["NOFX_METRICS_PORT"])
        assert discovered.get(name) == port, f"Prometheus does not scrape {name} on :{port}"


def _compose_tools() -> list[list[str]]:
    tools = []
    if shutil.which("docker-compose"):
        tools.append(["docker-compose"])
    if shutil.which("docker"):
        probe = subprocess.run(
            ["docker", "compose", "version"], capture_output=True, text=True, check=False
        )
        if probe.returncode == 0:
            tools.append(["docker", "compose"])
    return tools


def test_compose_file_is_accepted_by_docker_compose() -> None:
    tools = _compose_tools()
    if not tools:
        pytest.skip(
            "neither `docker-compose` (Debian package docker-compose) nor the `docker compose` "
            "plugin is installed, so the file cannot be validated by Compose itself"
        )
    for tool in tools:
        result = subprocess.run(
            [*tool, "-f", str(COMPOSE_FILE), "config", "-q"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        assert result.returncode == 0, f"{' '.join(tool)} config -q: {result.stderr}"
