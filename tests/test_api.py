"""The HTTP API on a real Temporal dev server and a real PostgreSQL: tokens acting as
operators, the decision engine's operations and approvals, typed errors as 401/403/404/409/422
(a refused request changes nothing), every write audited with its caller, and the OpenAPI
document naming every model and error."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine
from temporalio.client import Client

from models.decisions import Operator
from nofx.api import tokens
from nofx.api.app import ApiContext, create_app
from nofx.decisions import store
from nofx.settings import Settings, get_settings
from tests.test_decision_operations import SERVICE, add_service, serve

Api = httpx.AsyncClient


def rows(engine: Engine, sql: str, **params: Any) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(text(sql), params).all())


@pytest.fixture
async def api(client: Client, fresh_engine: Engine) -> AsyncIterator[tuple[Api, dict[str, str]]]:
    """The app in process over a decisions worker on its own queue; a token per operator."""
    queue = f"decisions-{uuid.uuid4().hex[:8]}"
    add_service(fresh_engine)
    people = {"alice": ["healing:*"], "trainer": ["decisions:train"], "mallory": []}
    issued = {}
    for name, permissions in people.items():
        store.add_operator(fresh_engine, Operator(name=name, permissions=permissions), actor="t")
        issued[name] = tokens.issue(fresh_engine, name, actor="test")[1]
    ctx = ApiContext(client, fresh_engine, get_settings(), decisions_queue=queue)
    app = create_app(ctx)
    async with await serve(client, fresh_engine, queue):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as http:
            yield http, {k: f"Bearer {v}" for k, v in issued.items()}


async def test_tokens_act_as_operators_and_nothing_else_gets_in(
    api: tuple[Api, dict[str, str]], fresh_engine: Engine
) -> None:
    http, auth = api
    health = await http.get("/api/health")
    assert health.status_code == 200
    assert health.json()["status"] == "ok"
    asked = {"service": SERVICE, "incident_type": "service_down"}
    for headers in (
        {},
        {"Authorization": "Bearer nofx_000000000000_" + "x" * 43},  # well-formed, unknown
        {"Authorization": "Bearer not-a-token"},
        {"Authorization": "Basic YWxpY2U6cHc="},
    ):
        refused = await http.post("/api/autonomous/simulate", json=asked, headers=headers)
        assert refused.status_code == 401, (headers, refused.text)
        assert refused.headers["www-authenticate"] == "Bearer"
        assert refused.json()["detail"]
    ok = await http.post(
        "/api/autonomous/simulate", json=asked, headers={"Authorization": auth["alice"]}
    )
    assert ok.status_code == 200, ok.text
    assert ok.json()["chosen"]
    # a revoked token, and a token whose operator was removed, authenticate nobody
    token_id = auth["mallory"].split("_")[1]
    tokens.revoke(fresh_engine, token_id, actor="test")
    gone = await http.post(
        "/api/autonomous/simulate", json=asked, headers={"Authorization": auth["mallory"]}
    )
    assert gone.status_code == 401
    store.remove_operator(fresh_engine, "trainer")
    removed = await http.post(
        "/api/autonomous/simulate", json=asked, headers={"Authorization": auth["trainer"]}
    )
    assert removed.status_code == 401
    [(used,)] = rows(fresh_engine, "SELECT last_used_at FROM api_tokens WHERE operator = 'alice'")
    assert used is not None


async def test_a_decision_waits_is_refused_to_the_unpermitted_and_approved_over_http(
    api: tuple[Api, dict[str, str]], fresh_engine: Engine
) -> None:
    http, auth = api
    store.set_mode(fresh_engine, "assist")
    made = await http.post(
        "/api/autonomous/decide",
        json={"service": SERVICE, "incident_type": "service_down"},
        headers={"Authorization": auth["alice"]},
    )
    assert made.status_code == 200, made.text
    decision = made.json()
    assert decision["status"] == "awaiting_approval"
    waiting = await http.get("/api/approvals", headers={"Authorization": auth["mallory"]})
    assert [d["decision_id"] for d in waiting.json()] == [decision["decision_id"]]

    refused = await http.post(
        f"/api/approvals/{decision['decision_id']}/approve",
        json={"reason": "me too"},
        headers={"Authorization": auth["mallory"]},
    )
    assert refused.status_code == 403, refused.text
    assert "mallory lacks permission" in refused.json()["detail"]
    still = await http.get(
        f"/api/autonomous/explain/{decision['workflow_id']}",
        headers={"Authorization": auth["alice"]},
    )
    assert still.json()["status"] == "awaiting_approval"  # the refusal changed nothing

    approved = await http.post(
        f"/api/approvals/{decision['decision_id']}/approve",
        json={"reason": "seen it"},
        headers={"Authorization": auth["alice"]},
    )
    assert approved.status_code == 200, approved.text
    assert (approved.json()["status"], approved.json()["approvals"]) == ("approved", 1)
    again = await http.post(
        f"/api/approvals/{decision['decision_id']}/reject",
        json={"reason": "changed my mind"},
        headers={"Authorization": auth["alice"]},
    )
    assert again.status_code == 409, again.text
    assert again.json()["rule"] == "not_waiting"
    closed = await until_closed(http, auth["alice"], decision["decision_id"])
    assert (closed["decided_by"], closed["act"]) == ("alice", True)

    audit = rows(
        fresh_engine,
        "SELECT actor, action, entity_id FROM audit_events WHERE action LIKE 'api.%' ORDER BY id",
    )
    assert [tuple(r) for r in audit] == [
        ("alice", "api.decide", decision["decision_id"]),
        ("alice", "api.approve", decision["decision_id"]),
    ]


async def until_closed(http: Api, auth: str, ref: str, timeout: float = 60) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        record = (
            await http.get(f"/api/autonomous/explain/{ref}", headers={"Authorization": auth})
        ).json()
        if not record["running"]:
            return record
        assert asyncio.get_running_loop().time() < deadline, record
        await asyncio.sleep(0.2)


async def test_typed_errors_are_404_409_422_403_field_by_field_and_change_nothing(
    api: tuple[Api, dict[str, str]], fresh_engine: Engine
) -> None:
    http, auth = api
    alice = {"Authorization": auth["alice"]}
    before = rows(fresh_engine, "SELECT count(*) FROM autonomous_decisions")
    unknown = await http.post(
        "/api/autonomous/decide",
        json={"service": "nope", "incident_type": "service_down"},
        headers=alice,
    )
    assert unknown.status_code == 404, unknown.text
    assert "'nope' is not in the inventory" in unknown.json()["detail"]
    malformed = await http.post(
        "/api/autonomous/decide",
        json={"service": "", "incident_type": "the_sky_is_falling", "wait_seconds": "soon"},
        headers=alice,
    )
    assert malformed.status_code == 422
    where = {tuple(p["loc"]) for p in malformed.json()["detail"]}
    assert {("body", "service"), ("body", "incident_type"), ("body", "wait_seconds")} <= where
    assert all(p["msg"] for p in malformed.json()["detail"])
    not_json = await http.post(
        "/api/autonomous/simulate",
        content=b"{not json",
        headers={**alice, "Content-Type": "application/json"},
    )
    assert not_json.status_code == 422
    candidates = await http.post(
        "/api/autonomous/simulate",
        json={"service": SERVICE, "incident_type": "service_down", "candidates": ["x-y"]},
        headers=alice,
    )
    assert candidates.status_code == 422
    assert candidates.json()["detail"][0]["loc"] == ["body", "candidates"]
    missing = await http.post(f"/api/approvals/{uuid.uuid4()}/approve", json={}, headers=alice)
    assert missing.status_code == 404
    explain = await http.get(f"/api/autonomous/explain/{uuid.uuid4()}", headers=alice)
    assert explain.status_code == 404
    override = await http.post(
        "/api/autonomous/override",
        json={"decision": str(uuid.uuid4()), "action": "restart-service", "reason": "x"},
        headers=alice,
    )
    assert override.status_code == 404
    train = await http.post("/api/autonomous/train", json={}, headers=alice)
    assert train.status_code == 403
    assert "decisions:train" in train.json()["detail"]
    assert rows(fresh_engine, "SELECT count(*) FROM autonomous_decisions") == before
    assert rows(fresh_engine, "SELECT count(*) FROM audit_events WHERE action LIKE 'api.%'") == [
        (0,)
    ]


async def test_openapi_documents_every_model_and_error(api: tuple[Api, dict[str, str]]) -> None:
    http, _ = api
    spec = (await http.get("/openapi.json")).json()
    schemas = spec["components"]["schemas"]
    named = ("DecideRequest", "DecisionRecord", "Simulation", "VerdictAck")
    for model in (*named, "ErrorBody", "ConflictBody", "InvalidBody"):
        assert model in schemas, model
    for path, methods in spec["paths"].items():
        for method, operation in methods.items():
            if path == "/api/health":
                continue
            assert {"401", "403", "404", "409", "422"} <= operation["responses"].keys(), (
                path,
                method,
            )
            assert operation.get("security"), (path, method)
    for name in ("decide", "simulate", "override", "explain/{decision}", "train"):
        assert f"/api/autonomous/{name}" in spec["paths"], name


async def test_healing_reads_and_playbook_writes_with_permissions_and_refusals(
    api: tuple[Api, dict[str, str]], fresh_engine: Engine
) -> None:
    http, auth = api
    alice, mallory = {"Authorization": auth["alice"]}, {"Authorization": auth["mallory"]}
    books = await http.get("/api/healing/playbooks?incident_type=service_down", headers=mallory)
    assert books.status_code == 200, books.text
    assert books.json()[0]["playbook_name"] == "restart-service"
    patterns = (await http.get("/api/healing/patterns", headers=mallory)).json()
    assert "service_down" in {p["problem_signature"] for p in patterns}
    assert (await http.get("/api/healing/status?limit=5", headers=mallory)).json() == []
    assert (await http.get("/api/healing/status?limit=0", headers=mallory)).status_code == 422
    metrics = (await http.get("/api/healing/metrics?hours=1", headers=mallory)).json()
    assert metrics["since_hours"] == 1
    plan = await http.post(
        "/api/healing/simulate",
        json={"playbook": "restart-service", "service": SERVICE},
        headers=mallory,
    )
    assert plan.status_code == 200, plan.text
    assert (plan.json()["touched"], plan.json()["steps"][0]["action"]) == (
        "nothing",
        "restart_service",
    )
    nowhere = await http.post(
        "/api/healing/simulate",
        json={"playbook": "restart-service", "service": "nope"},
        headers=mallory,
    )
    assert nowhere.status_code == 404

    count = "SELECT count(*) FROM recovery_playbooks"
    before = rows(fresh_engine, count)
    bad = {
        "incident_type": "overload",
        "playbook_name": "Bad Name",
        "recovery_steps": [{"action": "resize_pool", "params": {"factor": 0.5}}],
        "automation_level": "sometimes",
    }
    refused = await http.post("/api/healing/playbooks", json=bad, headers=alice)
    assert refused.status_code == 422
    where = {tuple(p["loc"][1:3]) for p in refused.json()["detail"]}
    assert ("playbook_name",) in {w[:1] for w in where}
    assert ("automation_level",) in {w[:1] for w in where}
    good = {
        "incident_type": "overload",
        "playbook_name": "grow-pool",
        "recovery_steps": [{"action": "resize_pool", "params": {"factor": 2}}],
        "required_permissions": ["healing:config"],
    }
    forbidden = await http.post("/api/healing/playbooks", json=good, headers=mallory)
    assert forbidden.status_code == 403
    assert rows(fresh_engine, count) == before  # refusals wrote nothing
    made = await http.post("/api/healing/playbooks", json=good, headers=alice)
    assert made.status_code == 201, made.text
    again = await http.post("/api/healing/playbooks", json=good, headers=alice)
    assert (again.status_code, again.json()["rule"]) == (409, "unique_playbook_name")
    changed = await http.patch(
        "/api/healing/playbooks/grow-pool", json={"escalation_rank": 3}, headers=alice
    )
    assert changed.json()["escalation_rank"] == 3
    empty = await http.patch("/api/healing/playbooks/grow-pool", json={}, headers=alice)
    assert empty.status_code == 422
    off = await http.post("/api/healing/playbooks/grow-pool/disable", headers=alice)
    assert off.json()["enabled"] is False
    missing = await http.post("/api/healing/playbooks/no-such/enable", headers=alice)
    assert missing.status_code == 404
    audit = rows(
        fresh_engine,
        "SELECT actor, action FROM audit_events WHERE action LIKE 'api.playbook%' ORDER BY id",
    )
    assert [tuple(r) for r in audit] == [
        ("alice", "api.playbook.create"),
        ("alice", "api.playbook.update"),
        ("alice", "api.playbook.disable"),
    ]


async def test_predictive_operations_over_http(
    client: Client, fresh_engine: Engine, tmp_path: Path
) -> None:
    """Forecast from a replayed CSV (three days of a cycle, then a leak toward the inventory's
    limit), the listings, and the refusals of apply and of moving a job."""
    from nofx import inventory

    step, start = 300, 1_700_000_000
    hours = np.arange(3 * 288) * step / 3600
    values = 20 + 5 * np.sin(2 * np.pi * hours / 24)
    values[-36:] += 0.5 * np.arange(36)
    csv = tmp_path / "api.csv"
    csv.write_text(
        "timestamp,memory\n" + "".join(f"{start + i * step},{v}\n" for i, v in enumerate(values))
    )
    inventory.apply(
        fresh_engine,
        inventory.parse(
            {
                "services": [
                    {"name": "api", "endpoint": "http://127.0.0.1:1", "limits": {"memory": 60}}
                ]
            }
        ),
    )
    people = {"reader": [], "planner": ["optimization:apply", "maintenance:schedule"]}
    auth = {}
    for name, permissions in people.items():
        store.add_operator(fresh_engine, Operator(name=name, permissions=permissions), actor="t")
        auth[name] = {"Authorization": f"Bearer {tokens.issue(fresh_engine, name, actor='t')[1]}"}
    settings = Settings(telemetry="csv", telemetry_csv_path=csv)
    app = create_app(ApiContext(client, fresh_engine, settings))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as http:
        until = datetime.fromtimestamp(start + (len(values) - 1) * step, UTC).isoformat()
        asked = {"service": "api", "metric": "memory", "horizon_steps": 48, "history_hours": 72}
        made = await http.post(
            "/api/predictive/forecast", json={**asked, "until": until}, headers=auth["reader"]
        )
        assert made.status_code == 200, made.text
        report = made.json()
        assert len(report["points"]) == 48
        assert report["exhaustion"]["limit"] == 60
        assert report["exhaustion"]["eta"] is not None  # the leak reaches the limit
        for body, status in (
            ({**asked, "service": "nope"}, 404),
            ({**asked, "metric": "cpu"}, 409),
            ({**asked, "horizon_steps": 0}, 422),
        ):
            refused = await http.post("/api/predictive/forecast", json=body, headers=auth["reader"])
            assert refused.status_code == status, (body, refused.text)
        for path in ("maintenance", "optimize", "schedule"):
            listed = await http.get(f"/api/predictive/{path}", headers=auth["reader"])
            assert listed.json() == [], (path, listed.text)
            unknown = await http.get(f"/api/predictive/{path}?service=nope", headers=auth["reader"])
            assert unknown.status_code == 404, path
        checked = await http.get("/api/predictive/validate?days=7", headers=auth["reader"])
        assert checked.status_code == 200, checked.text
        assert checked.json()["predictions"] == 0

        with fresh_engine.begin() as conn:
            superseded = str(
                conn.execute(
                    text(
                        "INSERT INTO optimization_recommendations (optimization_type,"
                        " current_state, recommended_state, service, target, status)"
                        " VALUES ('cache', '{}', '{}', 'api', 'ttl', 'superseded') RETURNING id"
                    )
                ).scalar_one()
            )
        apply = "/api/predictive/optimize/{}/apply"
        forbidden = await http.post(apply.format(superseded), json={}, headers=auth["reader"])
        assert forbidden.status_code == 403
        for ref, body, status in (
            (superseded, {}, 409),
            (str(uuid.uuid4()), {}, 404),
            ("not-a-uuid", {}, 422),
            (superseded, {"settle_seconds": -1}, 422),
            (superseded, {"requested_by": "someone-else"}, 422),  # the token says who asks
        ):
            refused = await http.post(apply.format(ref), json=body, headers=auth["planner"])
            assert refused.status_code == status, (ref, body, refused.text)
        assert (await http.post(apply.format(superseded), json={}, headers=auth["planner"])).json()[
            "rule"
        ] == "open"
        job = "/api/predictive/schedule/maintenance-api-memory/run-now"
        assert (
            await http.post(job, json={"reason": "now"}, headers=auth["reader"])
        ).status_code == 403
        gone = await http.post(job, json={"reason": "now"}, headers=auth["planner"])
        assert gone.status_code == 404, gone.text
        no_reason = await http.post(job, json={}, headers=auth["planner"])
        assert no_reason.status_code == 422
    assert rows(fresh_engine, "SELECT count(*) FROM audit_events WHERE action LIKE 'api.%'") == [
        (0,)
    ]
