"""The `nofx` command as a newcomer uses it: bad settings, busy ports, and the whole demo.

These run the real CLI in a subprocess with its own NOFX_HOME and free ports, so they never touch
a developer's running stack.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from nofx.db import make_engine
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
        "NOFX_API_PORT": str(free_port()),
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
                 "worker-maintenance", "fleet", "api"):  # fmt: skip
        assert " running " in lines[part], status.stdout
    assert "healthy" in lines["pilot-api"]

    # the HTTP API runs with the stack: a token made on the command line reads through it
    api = f"http://127.0.0.1:{stack_env['NOFX_API_PORT']}"
    assert httpx.get(f"{api}/api/health", timeout=10).json()["status"] == "ok"
    added = nofx(stack_env, "operators", "add", "ci-reader", "--permission", "healing:*")
    assert added.returncode == 0, added.stderr
    token = nofx(stack_env, "operators", "token", "ci-reader", "--label", "test")
    assert token.returncode == 0, token.stderr
    headers = {"Authorization": f"Bearer {token.stdout.strip()}"}
    assert httpx.get(f"{api}/api/approvals", headers=headers, timeout=10).json() == []
    assert httpx.get(f"{api}/api/approvals", timeout=10).status_code == 401
    # and serves the dashboard, everything it loads from the platform itself
    page = httpx.get(f"{api}/dashboard", timeout=10)
    assert page.status_code == 200
    assert "NOFX Autonomy" in page.text
    for part in re.findall(r'(?:src|href)="(/[^"]+)"', page.text):
        assert httpx.get(f"{api}{part}", timeout=10).status_code == 200, part

    audit = nofx(stack_env, "audit", "verify")
    assert audit.returncode == 0, audit.stderr
    assert "audit chain intact" in audit.stdout

    down = nofx(stack_env, "down", timeout=120)
    assert down.returncode == 0
    assert not port_in_use(int(stack_env["NOFX_TEMPORAL_ADDRESS"].rsplit(":", 1)[1]))
    assert not port_in_use(int(stack_env["NOFX_FLEET_BASE_PORT"]))
    assert not port_in_use(int(stack_env["NOFX_API_PORT"]))


def _rows(url: str, sql: str, **params: object) -> list[dict[str, Any]]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return [dict(r) for r in conn.execute(text(sql), params).mappings()]
    finally:
        engine.dispose()


@pytest.mark.e2e
def test_demo_in_assist_mode_waits_for_a_person_heals_after_the_approval_and_puts_the_mode_back(
    fresh_database_url: str, stack_env: dict[str, str]
) -> None:
    """`nofx demo --mode assist --approve-as NAME` on a fresh stack whose database has no
    operator: the decision waits, the demo shows it and how to approve, adds the operator,
    approves through the update, and the incident heals; then a demo stopped by Ctrl-C while
    its decision waits still puts the service's mode back. (The database is the test server's,
    requested first so that `nofx down` runs before it is dropped.)"""
    env = {**stack_env, "NOFX_DATABASE_URL": fresh_database_url}
    me = getpass.getuser()
    result = nofx(env, "demo", "--mode", "assist", "--approve-as", me, timeout=240)
    out = result.stdout
    assert result.returncode == 0, out[-3000:] + result.stderr[-2000:]

    assert f"added operator {me} with healing:*" in out
    found = re.search(r"waiting for a person: decision (\S+) \(workflow (\S+)\)", out)
    assert found, out
    decision_id, decision_wf = found.groups()
    decision = _rows(
        fresh_database_url,
        "SELECT status, decided_by, chosen_action, approval, workflow_id,"
        " context_data->>'incident_id' AS incident_id FROM autonomous_decisions WHERE id = :d",
        d=decision_id,
    )[0]
    assert (decision["status"], decision["decided_by"]) == ("approved", me)
    assert decision["workflow_id"] == decision_wf
    verdict = decision["approval"]["verdicts"][0]
    assert (verdict["approver"], verdict["via"], verdict["accepted"]) == (me, "update", True)
    # What the demo showed: the choice, why it waits, the rollback plan and how to approve.
    assert f"chose {decision['chosen_action']}: risk " in out
    assert "why it waits: assist mode: every action waits for a person" in out
    assert "rollback plan: restore_service_running(" in out
    body = json.dumps({"approver": me, "reason": "looks right"})
    ui = f"http://127.0.0.1:{env['NOFX_TEMPORAL_UI_PORT']}/namespaces/default/workflows"
    assert f"Web UI: {ui}/{decision_wf}" in out
    dashboard = f"http://127.0.0.1:{env['NOFX_API_PORT']}/dashboard#/decisions/{decision_id}"
    assert f"Dashboard: {dashboard}" in out
    assert f"Signal `approve` with {body}" in out
    assert (
        f"temporal workflow signal --address {env['NOFX_TEMPORAL_ADDRESS']}"
        f" --workflow-id {decision_wf} --name approve --input '{body}'"
    ) in out
    assert f"nofx autonomous approve {decision_id}" in out
    assert f"approved as {me} (update approve_decision): decision approved" in out

    # The incident waited for the person, then healed; the decision's answer was learnt from.
    states = [line.split()[2] for line in out.splitlines() if re.match(r"\d\d:\d\d:\d\d\.", line)]
    assert states.index("awaiting_approval") < states.index("healing") < states.index("resolved")
    incident = _rows(
        fresh_database_url,
        "SELECT status FROM healing_incidents WHERE id = :i",
        i=decision["incident_id"],
    )
    assert incident == [{"status": "resolved"}]
    incident_audit = _rows(
        fresh_database_url,
        "SELECT action FROM audit_events WHERE entity_id = :i ORDER BY id",
        i=decision["incident_id"],
    )
    actions = [a["action"] for a in incident_audit]
    assert actions.index("incident.awaiting_approval") < actions.index("incident.healing")
    assert actions[-1] == "incident.resolved"
    decision_audit = _rows(
        fresh_database_url,
        "SELECT action, actor, details FROM audit_events WHERE entity_id = :d ORDER BY id",
        d=decision_id,
    )
    assert [(a["action"], a["details"]["status"]) for a in decision_audit] == [
        ("decision.made", "awaiting_approval"),
        ("decision.approve", "approved"),
    ]
    assert decision_audit[1]["actor"] == me
    feedback = _rows(
        fresh_database_url,
        "SELECT feedback_type, lessons_learned FROM learning_feedback WHERE decision_id = :d"
        " ORDER BY created_at",
        d=decision_id,
    )
    assert [f["feedback_type"] for f in feedback] == ["approval", "outcome"]
    assert feedback[0]["lessons_learned"]["approver"] == me
    assert feedback[1]["lessons_learned"]["resolved"] is True
    operators = _rows(fresh_database_url, "SELECT name, permissions FROM operators")
    assert operators == [{"name": me, "permissions": ["healing:*"]}]
    mode = "SELECT decision_mode FROM services WHERE name = 'pilot-api'"
    assert _rows(fresh_database_url, mode) == [{"decision_mode": None}]  # put back

    # Ctrl-C while the decision waits: the demo stops and the service's mode is put back.
    demo = subprocess.Popen(
        [sys.executable, "-c", "from nofx.cli import run; run()", "demo", "--mode", "assist"],
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        for line in demo.stdout or []:
            lines.put(line)

    threading.Thread(target=read, daemon=True).start()
    seen: list[str] = []
    deadline = time.monotonic() + 180
    while not any(line.startswith("          nofx autonomous approve") for line in seen):
        assert time.monotonic() < deadline, "".join(seen)
        assert demo.poll() is None, "".join(seen)
        with contextlib.suppress(queue.Empty):
            seen.append(lines.get(timeout=1))
    assert _rows(fresh_database_url, mode) == [{"decision_mode": "assist"}]
    demo.send_signal(signal.SIGINT)
    assert demo.wait(timeout=60) == 128 + signal.SIGINT
    assert _rows(fresh_database_url, mode) == [{"decision_mode": None}]
