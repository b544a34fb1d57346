"""The HTTP API fuzzed by schemathesis, as a client would meet it: a real uvicorn server over a
real Temporal dev server, PostgreSQL and decisions worker, every operation of `/openapi.json`
with bounded examples (valid and invalid), every check schemathesis has.

Beyond schemathesis' checks (no 5xx, every status and body as documented), the server itself
checks that a refused request changed nothing: around each request it fingerprints the tables
the API writes, and a 4xx with a changed fingerprint is a failure.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import sys
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pytest
from fastapi import Request, Response
from sqlalchemy import text
from sqlalchemy.engine import Engine
from temporalio.client import Client

from models.decisions import Operator
from nofx.api import tokens
from nofx.api.app import ApiContext, create_app
from nofx.decisions import store
from nofx.settings import get_settings
from tests.helpers import serving
from tests.test_decision_operations import add_service, serve

MAX_EXAMPLES = 5  # per operation and phase: bounded, so CI stays quick
# What a request may write, and how a change shows: row counts and the latest update.
WRITTEN = {
    "autonomous_decisions": "count(*), max(updated_at)",
    "recovery_playbooks": "count(*), max(updated_at), count(*) FILTER (WHERE enabled)",
    "optimization_recommendations": "count(*), max(updated_at)",
    "maintenance_schedules": "count(*), max(updated_at)",
    "audit_events": "count(*)",
    "operators": "count(*)",
    "api_tokens": "count(*), count(revoked_at)",
    "decision_models": "count(*)",
    "platform_controls": "count(*), max(changed_at), bool_or(paused), max(policy::text)",
    "change_freezes": "count(*)",
    "services": "count(*), count(decision_mode), max(decision_mode)",
}
# The event stream never ends on its own (a client follows it): it has its own test.
STREAMING = "/api/events"


def fingerprint(engine: Engine) -> dict[str, Any]:
    with engine.connect() as conn:
        return {
            table: tuple(conn.execute(text(f"SELECT {what} FROM {table}")).one())
            for table, what in WRITTEN.items()
        }


@pytest.mark.timeout(900)
async def test_schemathesis_finds_no_server_error_no_undocumented_answer_and_no_half_write(
    client: Client, fresh_engine: Engine, tmp_path: Path
) -> None:
    binary = shutil.which("schemathesis") or str(Path(sys.executable).parent / "schemathesis")
    queue = f"decisions-{uuid.uuid4().hex[:8]}"
    add_service(fresh_engine)
    store.add_operator(fresh_engine, Operator(name="fuzzer", permissions=["*"]), actor="test")
    token = tokens.issue(fresh_engine, "fuzzer", actor="test")[1]
    app = create_app(ApiContext(client, fresh_engine, get_settings(), decisions_queue=queue))
    half_written: list[str] = []

    @app.middleware("http")
    async def refused_changes_nothing(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        before = await asyncio.to_thread(fingerprint, fresh_engine)
        response = await call_next(request)
        if 400 <= response.status_code < 500:
            after = await asyncio.to_thread(fingerprint, fresh_engine)
            changed = [t for t in WRITTEN if before[t] != after[t]]
            if changed:
                half_written.append(
                    f"{request.method} {request.url.path} -> {response.status_code}"
                    f" changed {changed}"
                )
        return response

    junit = tmp_path / "junit.xml"
    async with await serve(client, fresh_engine, queue), serving(app) as url:
        run = await asyncio.create_subprocess_exec(
            binary,
            "run",
            f"{url}/openapi.json",
            "--exclude-path",
            STREAMING,
            "--header",
            f"Authorization: Bearer {token}",
            "--checks",
            "all",
            "--max-examples",
            str(MAX_EXAMPLES),
            "--workers",
            "1",
            "--seed",
            "20261206",
            "--request-timeout",
            "120",
            "--generation-database",
            "none",
            "--no-color",
            "--report",
            "junit",
            "--report-junit-path",
            str(junit),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            cwd=tmp_path,  # its own state directory (.schemathesis) stays out of the tree
        )
        output, _ = await asyncio.wait_for(run.communicate(), timeout=800)
    said = output.decode(errors="replace")
    (tmp_path / "schemathesis.log").write_text(said)  # kept with the test's artefacts
    report = ElementTree.parse(junit).getroot()  # noqa: S314 - this run wrote it
    operations = len(report.findall(".//testcase"))
    failures = len(report.findall(".//failure")) + len(report.findall(".//error"))
    cases = re.search(r"Test cases:\s*(\d+) generated", said)
    figures = {
        "operations": operations,
        "test_cases": int(cases.group(1)) if cases else None,
        "failures": failures,
        "half_written": len(half_written),
    }
    print(json.dumps(figures))  # the closing note quotes these (pytest -s)
    assert half_written == [], half_written
    assert run.returncode == 0, said[-6000:]
    assert failures == 0, said[-6000:]
    assert operations >= 25, said[-3000:]
