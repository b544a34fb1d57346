"""The oversight paths of the HTTP API on a real uvicorn server, Temporal dev server, PostgreSQL
and decisions worker: decisions and their timelines, incidents, Schedules, autonomy metrics, the
controls (admin only, audited, a refusal changes nothing) and the audit trail as server-sent
events."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import timedelta
from typing import Any

import httpx
from sqlalchemy import text
from sqlalchemy.engine import Engine
from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleIntervalSpec,
    ScheduleSpec,
    ScheduleState,
)

from models.decisions import Operator
from nofx.api import tokens
from nofx.api.app import ApiContext, create_app
from nofx.decisions import store
from nofx.settings import get_settings
from tests.helpers import serving
from tests.test_decision_operations import SERVICE, add_service, serve


def controls_row(engine: Engine) -> tuple[Any, ...]:
    with engine.connect() as conn:
        row = conn.execute(
            text("SELECT paused, reason, policy::text FROM platform_controls")
        ).one_or_none()
        freezes = conn.execute(text("SELECT count(*) FROM change_freezes")).scalar_one()
    return (tuple(row) if row else None, freezes)


async def next_events(stream: Any, count: int, timeout: float = 60) -> list[dict[str, Any]]:
    """The next `count` audit events of a server-sent event stream."""
    found: list[dict[str, Any]] = []
    fields: dict[str, str] = {}

    async def read() -> None:
        async for line in stream.aiter_lines():
            if line == "":
                if fields.get("event") == "audit":
                    found.append({"id": int(fields["id"]), **json.loads(fields["data"])})
                    if len(found) == count:
                        return
                fields.clear()
            elif not line.startswith(":"):
                key, _, value = line.partition(":")
                fields[key] = value.lstrip()

    await asyncio.wait_for(read(), timeout)
    return found


async def test_oversight_paths_controls_and_the_event_stream(
    client: Client, fresh_engine: Engine
) -> None:
    queue = f"decisions-{uuid.uuid4().hex[:8]}"
    add_service(fresh_engine)
    people = {"alice": ["healing:*"], "root": ["platform:admin"]}
    auth = {}
    for name, permissions in people.items():
        store.add_operator(fresh_engine, Operator(name=name, permissions=permissions), actor="t")
        auth[name] = {"Authorization": f"Bearer {tokens.issue(fresh_engine, name, actor='t')[1]}"}
    schedule_id = f"oversight-{uuid.uuid4().hex[:6]}"
    await client.create_schedule(
        schedule_id,
        Schedule(
            action=ScheduleActionStartWorkflow(
                "PredictionWorkflow", id=schedule_id, task_queue="nowhere"
            ),
            spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=timedelta(minutes=30))]),
            state=ScheduleState(paused=True, note="kept still by the test"),
        ),
    )
    app = create_app(ApiContext(client, fresh_engine, get_settings(), decisions_queue=queue))
    try:
        async with (
            await serve(client, fresh_engine, queue),
            serving(app) as url,
            httpx.AsyncClient(base_url=url, timeout=120) as http,
        ):
            me = await http.get("/api/whoami", headers=auth["root"])
            assert me.json() == {"name": "root", "permissions": ["platform:admin"], "admin": True}

            # the stream follows from now: what happens next arrives as it is recorded
            async with http.stream("GET", "/api/events", headers=auth["alice"]) as stream:
                assert stream.headers["content-type"].startswith("text/event-stream")
                made = await http.post(
                    "/api/autonomous/decide",
                    json={"service": SERVICE, "incident_type": "service_down"},
                    headers=auth["alice"],
                )
                assert made.status_code == 200, made.text
                decision = made.json()
                seen = await next_events(stream, 2)
            assert [(e["action"], e["details"]["entity_id"]) for e in seen] == [
                ("decision.made", decision["decision_id"]),
                ("api.decide", decision["decision_id"]),
            ]
            # ... and resumes after the last event it gave (Last-Event-ID)
            headers = {**auth["alice"], "Last-Event-ID": str(seen[0]["id"])}
            async with http.stream("GET", "/api/events", headers=headers) as stream:
                [again] = await next_events(stream, 1)
            assert again["id"] == seen[1]["id"]

            listed = await http.get("/api/decisions?limit=5", headers=auth["alice"])
            assert [d["decision_id"] for d in listed.json()] == [decision["decision_id"]]
            assert listed.json()[0]["risk"] == decision["risk"]["level"]
            shown = await http.get(
                f"/api/decisions/{decision['workflow_id']}", headers=auth["alice"]
            )
            assert shown.json()["explanation"]["criteria"]
            steps = await http.get(
                f"/api/decisions/{decision['decision_id']}/timeline", headers=auth["alice"]
            )
            assert [e["action"] for e in steps.json()][:1] == ["decision.made"]

            for path, status in (
                ("/api/incidents/not-a-uuid", 404),
                (f"/api/incidents/{uuid.uuid4()}", 404),
                ("/api/decisions/nope", 404),
                ("/api/incidents?limit=0", 422),
                ("/api/metrics/autonomy?hours=0", 422),
            ):
                answered = await http.get(path, headers=auth["alice"])
                assert answered.status_code == status, (path, answered.text)
            assert (await http.get("/api/incidents", headers=auth["alice"])).json() == []

            schedules = await http.get("/api/schedules", headers=auth["alice"])
            [ours] = [s for s in schedules.json() if s["schedule_id"] == schedule_id]
            assert (ours["workflow"], ours["every_seconds"], ours["paused"]) == (
                "PredictionWorkflow",
                1800.0,
                True,
            )
            assert ours["note"] == "kept still by the test"

            metrics = (await http.get("/api/metrics/autonomy", headers=auth["alice"])).json()
            assert (metrics["decisions"], metrics["decisions_by_person"]) == (1, 0)
            assert metrics["human_intervention_rate"] == 0.0
            assert [r["count"] for r in metrics["by_status"]] == [1]
            assert metrics["by_mode"] == [{"key": decision["mode"], "count": 1}]

            # the controls: read by anyone, changed by an admin only; a refusal changes nothing
            before = controls_row(fresh_engine)
            for method, path, body in (
                ("POST", "/api/controls/kill-switch", {"paused": True, "reason": "no"}),
                ("PATCH", "/api/controls/guardrails", {"max_concurrent_actions": 1}),
                ("POST", "/api/controls/freezes", {"reason": "no", "hours": 2}),
                ("PUT", "/api/controls/mode", {"mode": "observe"}),
            ):
                refused = await http.request(method, path, json=body, headers=auth["alice"])
                assert refused.status_code == 403, (path, refused.text)
                assert "platform:admin" in refused.json()["detail"]
            for path, body, field in (
                ("/api/controls/kill-switch", {"paused": 1, "reason": "x"}, "paused"),
                ("/api/controls/freezes", {"reason": "x", "starts_at": 0}, "starts_at"),
                ("/api/controls/freezes", {"reason": "x", "hours": 0}, "hours"),
            ):
                refused = await http.post(path, json=body, headers=auth["root"])
                assert refused.status_code == 422, (path, refused.text)
                assert refused.json()["detail"][0]["loc"][:2] == ["body", field]
            over = await http.post(
                "/api/controls/freezes",
                json={"reason": "x", "starts_at": "2000-01-01T00:00:00Z"},
                headers=auth["root"],
            )
            assert (over.status_code, over.json()["rule"]) == (409, "freeze_ahead")
            unknown = await http.put(
                "/api/controls/mode",
                json={"mode": "observe", "service": "nope"},
                headers=auth["root"],
            )
            assert unknown.status_code == 404
            assert controls_row(fresh_engine) == before

            paused = await http.post(
                "/api/controls/kill-switch",
                json={"paused": True, "reason": "game day"},
                headers=auth["root"],
            )
            assert paused.status_code == 200, paused.text
            assert (paused.json()["paused"], paused.json()["changed_by"]) == (True, "root")
            limits = await http.patch(
                "/api/controls/guardrails",
                json={"max_concurrent_actions": 1},
                headers=auth["root"],
            )
            assert limits.json()["policy"]["max_concurrent_actions"] == 1
            frozen = await http.post(
                "/api/controls/freezes",
                json={"reason": "release", "hours": 2, "scope": SERVICE},
                headers=auth["root"],
            )
            assert frozen.status_code == 201, frozen.text
            moded = await http.put(
                "/api/controls/mode",
                json={"mode": "assist", "service": SERVICE},
                headers=auth["root"],
            )
            assert moded.json()["service_modes"] == {SERVICE: "assist"}
            shown_controls = (await http.get("/api/controls", headers=auth["alice"])).json()
            assert shown_controls["paused"] is True
            assert [f["scope"] for f in shown_controls["freezes"]] == [SERVICE]
    finally:
        await client.get_schedule_handle(schedule_id).delete()
    with fresh_engine.connect() as conn:
        audited = conn.execute(
            text(
                "SELECT actor, action FROM audit_events WHERE action LIKE 'api.%'"
                " AND action <> 'api.decide' ORDER BY id"
            )
        ).all()
    assert [tuple(r) for r in audited] == [
        ("root", "api.pause"),
        ("root", "api.guardrails.set"),
        ("root", "api.freeze.add"),
        ("root", "api.mode.set"),
    ]
