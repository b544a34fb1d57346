"""Aborting an optimisation over the HTTP API (`POST /api/predictive/optimize/{id}/abort`), on a
real Temporal dev server, real PostgreSQL, the real decisions and maintenance workers and a live
fleet.

An index build waits for its low-impact window (`scheduled`): an operator who may apply
optimisations aborts it over HTTP and it ends declined with nothing built, the recommendation
open again. A caller without `optimization:apply` is refused (403), a second abort of the
finished change is a 409 naming the rule, an unknown recommendation a 404 — and a refusal
changes nothing.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, text
from temporalio.client import Client

from models.decisions import Operator
from models.optimization import ApplyStatusView, apply_workflow_id
from nofx.api import tokens
from nofx.api.app import ApiContext, create_app
from nofx.decisions import store as operators
from nofx.settings import Settings
from tests.test_optimization_apply import (
    INDEX_TUNING,
    index_draft,
    indexes,
    merge_metadata,
    recommendation,
    row,
)

# the client; per role (applier, reader) its Authorization header and its operator's name
Api = tuple[httpx.AsyncClient, dict[str, str], dict[str, str]]


@pytest.fixture
async def api(client: Client, db_engine: Engine, database_url: str) -> AsyncIterator[Api]:
    """The app in process over the session's database; a token for one operator who may apply
    optimisations and one who may only read."""
    tag = uuid.uuid4().hex[:6]
    people = {"applier": (f"ops-{tag}", ["optimization:apply"]), "reader": (f"ro-{tag}", [])}
    auth = {}
    for role, (name, permissions) in people.items():
        operators.add_operator(db_engine, Operator(name=name, permissions=permissions), actor="t")
        auth[role] = "Bearer " + tokens.issue(db_engine, name, actor="test")[1]
    app = create_app(ApiContext(client, db_engine, Settings(database_url=database_url)))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as http:
        yield http, auth, {role: name for role, (name, _) in people.items()}


def audited_aborts(engine: Engine, recommendation_id: str) -> list[str]:
    with engine.connect() as conn:
        return list(
            conn.execute(
                text(
                    "SELECT actor FROM audit_events WHERE action = 'api.optimize.abort'"
                    " AND entity_id = :i"
                ),
                {"i": recommendation_id},
            ).scalars()
        )


async def status_of(http: httpx.AsyncClient, auth: str, recommendation_id: str) -> dict[str, Any]:
    seen = await http.get(
        f"/api/predictive/optimize/{recommendation_id}", headers={"Authorization": auth}
    )
    assert seen.status_code == 200, seen.text
    body: dict[str, Any] = seen.json()
    return body


async def test_an_optimisation_waiting_for_its_window_is_aborted_over_http(
    client: Client,
    decisions_worker: None,
    maintenance_worker: None,
    api: Api,
    live_fleet: Any,
    db_engine: Engine,
) -> None:
    http, auth, names = api
    service = live_fleet.spec.services[1].name
    merge_metadata(db_engine, service, {"optimization": {"index": INDEX_TUNING}})
    name = f"nofx_test_{uuid.uuid4().hex[:8]}"
    rec = recommendation(db_engine, service, index_draft(name))
    window = datetime.now(UTC) + timedelta(hours=2)
    started = await http.post(
        f"/api/predictive/optimize/{rec}/apply",
        json={"not_before": window.isoformat(), "settle_seconds": 1},
        headers={"Authorization": auth["applier"]},
    )
    assert started.status_code == 202, started.text
    handle = client.get_workflow_handle(apply_workflow_id(rec), result_type=ApplyStatusView)

    # Decided and waiting for its window: nothing is built before it.
    deadline = asyncio.get_running_loop().time() + 90
    while (view := await status_of(http, auth["reader"], rec))["status"] != "scheduled":
        assert view["status"] in ("claimed", "deciding"), view["timeline"]
        assert asyncio.get_running_loop().time() < deadline, f"still {view['status']}"
        await asyncio.sleep(0.2)
    assert view["window_start"] is not None

    refused = await http.post(
        f"/api/predictive/optimize/{rec}/abort",
        json={"reason": "not mine to stop"},
        headers={"Authorization": auth["reader"]},
    )
    assert refused.status_code == 403, refused.text
    assert "optimization:apply" in refused.json()["detail"]
    assert (await status_of(http, auth["reader"], rec))["status"] == "scheduled"
    assert audited_aborts(db_engine, rec) == []

    aborted = await http.post(
        f"/api/predictive/optimize/{rec}/abort",
        json={"reason": "quarter-end freeze"},
        headers={"Authorization": auth["applier"]},
    )
    assert aborted.status_code == 204, aborted.text
    done = await handle.result()
    assert done.status == "declined", done.timeline
    assert "quarter-end freeze" in done.timeline[-1].message
    assert not any(n.status == "running" for n in done.timeline)  # the change never began
    assert name not in indexes(db_engine)
    assert row(db_engine, rec)["status"] == "open"  # not applied: it can be applied later
    assert audited_aborts(db_engine, rec) == [names["applier"]]

    again = await http.post(
        f"/api/predictive/optimize/{rec}/abort",
        json={"reason": "once more"},
        headers={"Authorization": auth["applier"]},
    )
    assert again.status_code == 409, again.text
    assert again.json()["rule"] == "not_running"
    after = await status_of(http, auth["reader"], rec)
    assert (after["status"], len(after["timeline"])) == ("declined", len(done.timeline))
    assert len(audited_aborts(db_engine, rec)) == 1
    assert row(db_engine, rec)["status"] == "open"

    unknown = await http.post(
        f"/api/predictive/optimize/{uuid.uuid4()}/abort",
        json={"reason": "no such thing"},
        headers={"Authorization": auth["applier"]},
    )
    assert unknown.status_code == 404, unknown.text
    assert unknown.json()["detail"]
