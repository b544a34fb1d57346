"""The `nofx` command as a newcomer uses it: bad settings, busy ports, and the whole demo.

These run the real CLI in a subprocess with its own NOFX_HOME and free ports, so they never touch
a developer's running stack.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from nofx.settings import Settings, SettingsError
from pilot.fleet import free_port, port_in_use

ROOT = Path(__file__).resolve().parent.parent


def nofx(env: dict[str, str], *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from nofx.cli import run; run()", *args],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture
def stack_env() -> Iterator[dict[str, str]]:
    """Settings for a private stack: its own home (outside pytest's 0700 tmp, which the embedded
    PostgreSQL's unprivileged user could not enter) and ports nobody else uses."""
    home = tempfile.mkdtemp(prefix="nofx-stack-test-")
    os.chmod(home, 0o755)  # noqa: S103 - the embedded PostgreSQL runs as its own user
    env = {
        "NOFX_HOME": home,
        "NOFX_TEMPORAL_ADDRESS": f"127.0.0.1:{free_port()}",
        "NOFX_TEMPORAL_UI_PORT": str(free_port()),
        "NOFX_METRICS_BASE_PORT": str(free_port(span=3)),
        "NOFX_FLEET_BASE_PORT": str(free_port(span=4)),
        "NOFX_PROBE_INTERVAL_SECONDS": "1",
    }
    env.pop("NOFX_DATABASE_URL", None)
    try:
        yield env
    finally:
        nofx(env, "down", timeout=120)
        shutil.rmtree(home, ignore_errors=True)


def test_bad_setting_is_named() -> None:
    with pytest.raises(SettingsError, match="NOFX_TEMPORAL_UI_PORT"):
        Settings.from_env({"NOFX_TEMPORAL_UI_PORT": "eighty"})
    with pytest.raises(SettingsError, match="NOFX_TEMPORAL_ADDRESS"):
        Settings.from_env({"NOFX_TEMPORAL_ADDRESS": "localhost"})


def test_cli_reports_a_bad_setting_in_one_line(stack_env: dict[str, str]) -> None:
    result = nofx({**stack_env, "NOFX_PROBE_INTERVAL_SECONDS": "-3"}, "status")
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1
    assert "NOFX_PROBE_INTERVAL_SECONDS" in result.stderr
    assert "Traceback" not in result.stderr


def test_busy_port_is_named_and_nothing_starts(stack_env: dict[str, str]) -> None:
    port = int(stack_env["NOFX_TEMPORAL_UI_PORT"])
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        result = nofx(stack_env, "up")
    assert result.returncode == 1
    assert f"port {port} (Temporal Web UI) is already in use" in result.stderr
    assert "Traceback" not in result.stderr
    assert not port_in_use(int(stack_env["NOFX_TEMPORAL_ADDRESS"].rsplit(":", 1)[1]))
    assert not list(Path(stack_env["NOFX_HOME"], "run").glob("*.pid"))


def test_failed_start_stops_what_it_started(stack_env: dict[str, str]) -> None:
    env = {**stack_env, "NOFX_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"}
    result = nofx(env, "up")
    assert result.returncode == 1
    assert "NOFX_DATABASE_URL: cannot connect" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    # Temporal had started before the database check failed: it must be gone again.
    assert not port_in_use(int(stack_env["NOFX_TEMPORAL_ADDRESS"].rsplit(":", 1)[1]))
    assert not list(Path(stack_env["NOFX_HOME"], "run").glob("*.pid"))


@pytest.mark.e2e
def test_demo_heals_a_killed_service_on_embedded_defaults(stack_env: dict[str, str]) -> None:
    """The README's first command, minus the install: `nofx demo` on a fresh home."""
    result = nofx(stack_env, "demo", "--json", timeout=240)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["state"] == "resolved"
    assert 0 < summary["time_to_detect_s"] < summary["time_to_recover_s"]

    status = nofx(stack_env, "status")
    assert status.returncode == 0
    lines = {line.split()[0]: line for line in status.stdout.splitlines()}
    for part in ("temporal", "postgres", "worker-decisions", "worker-healing",
                 "worker-maintenance", "fleet"):  # fmt: skip
        assert " running " in lines[part], status.stdout
    assert "healthy" in lines["pilot-api"]

    audit = nofx(stack_env, "audit", "verify")
    assert audit.returncode == 0, audit.stderr
    assert "audit chain intact" in audit.stdout

    down = nofx(stack_env, "down", timeout=120)
    assert down.returncode == 0
    assert not port_in_use(int(stack_env["NOFX_TEMPORAL_ADDRESS"].rsplit(":", 1)[1]))
    assert not port_in_use(int(stack_env["NOFX_FLEET_BASE_PORT"]))
