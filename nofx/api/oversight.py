"""`/api/incidents`, `/api/decisions`, `/api/schedules`, `/api/metrics/autonomy`,
`/api/controls` and `/api/events`: what a person overseeing the platform reads and the controls
they hold (`nofx.operations.oversight`, `nofx.operations.controls`) over HTTP.

Reading needs a token. Changing a control — the kill switch, the guardrail limits, a freeze, a
mode — needs an admin (`platform:admin`), and is audited with the caller. `/api/events` streams
the audit trail as server-sent events: each incident step, decision, answer and API write, as it
is recorded; the dashboard refreshes what an event touches.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, Strict, create_model
from pydantic.json_schema import SkipJsonSchema

from models.decisions import DecisionRecord
from models.guardrails import GuardrailPolicy
from models.operations import (
    AutonomyMetrics,
    ControlsView,
    DecisionSummary,
    FreezeRequest,
    FreezeView,
    IncidentDetail,
    IncidentSummary,
    KillSwitch,
    ModeChange,
    ScheduleView,
    TimelineEvent,
)
from nofx.api.app import ApiContext, Ctx, Who, audited, require
from nofx.api.autonomous import DecisionRef
from nofx.api.autonomous import ops as autonomous_ops
from nofx.api.tokens import ADMIN
from nofx.operations.controls import ControlsOperations
from nofx.operations.errors import InvalidRequest
from nofx.operations.healing import HealingOperations
from nofx.operations.oversight import OversightOperations

incidents = APIRouter(prefix="/api/incidents", tags=["incidents"])
decisions = APIRouter(prefix="/api/decisions", tags=["decisions"])
platform = APIRouter(prefix="/api", tags=["platform"])
controls = APIRouter(prefix="/api/controls", tags=["controls"])

# How often the event stream looks for new audit events, and says it is alive when none came.
POLL_SECONDS = 1.0
KEEPALIVE_SECONDS = 15.0


def ops(ctx: ApiContext) -> OversightOperations:
    return OversightOperations(ctx.temporal, ctx.engine)


def controls_ops(ctx: ApiContext) -> ControlsOperations:
    return ControlsOperations(ctx.engine)


Limit = Annotated[int, Query(ge=1, le=1000)]
Service = Annotated[str | None, Query(min_length=1, max_length=200, description="one only")]


# ---- incidents -------------------------------------------------------------------------------


@incidents.get("", response_model=list[IncidentSummary])
async def incident_list(
    ctx: Ctx, who: Who, service: Service = None, limit: Limit = 50
) -> list[IncidentSummary]:
    """Incidents: running ones first, then the most recent."""
    return await HealingOperations(ctx.engine).status(service, limit)


@incidents.get("/{incident}", response_model=IncidentDetail)
async def incident_detail(
    ctx: Ctx,
    who: Who,
    incident: Annotated[str, Path(min_length=1, max_length=100, description="its id")],
) -> IncidentDetail:
    """An incident with its timeline (from the audit trail), its actions, the decision waiting
    for a person if one does, and its rollback plan while it runs."""
    return await ops(ctx).incident(incident)


# ---- decisions -------------------------------------------------------------------------------


@decisions.get("", response_model=list[DecisionSummary])
async def decision_list(
    ctx: Ctx,
    who: Who,
    status: Annotated[str | None, Query(min_length=1, max_length=40)] = None,
    service: Service = None,
    limit: Limit = 50,
) -> list[DecisionSummary]:
    """Recent decisions, newest first: mode, risk, choice, confidence, who decided."""
    return await ops(ctx).decisions(limit=limit, status=status, subject=service)


@decisions.get("/{decision}", response_model=DecisionRecord)
async def decision_detail(ctx: Ctx, who: Who, decision: str = DecisionRef) -> DecisionRecord:
    """A decision with its criteria table, explanation, risk, rollback plan and approvals
    (the same as `/api/autonomous/explain/{decision}`)."""
    return await autonomous_ops(ctx).explain(decision)


@decisions.get("/{decision}/timeline", response_model=list[TimelineEvent])
async def decision_timeline(ctx: Ctx, who: Who, decision: str = DecisionRef) -> list[TimelineEvent]:
    """A decision's steps from the audit trail: made, asked, answered, acted, learnt."""
    record = await autonomous_ops(ctx).explain(decision)
    return await ops(ctx).decision_timeline(record.decision_id)


# ---- who, schedules, metrics, events ---------------------------------------------------------


class Me(BaseModel):
    """The token's operator and what they may do."""

    name: str
    permissions: list[str]
    admin: bool = Field(description="may change the platform's controls (`platform:admin`)")


@platform.get("/whoami", response_model=Me)
async def whoami(who: Who) -> Me:
    """Who this token acts as (the dashboard shows it, and offers controls to admins only)."""
    return Me(name=who.name, permissions=who.permissions, admin=who.admin)


@platform.get("/schedules", response_model=list[ScheduleView], tags=["platform"])
async def schedules(ctx: Ctx, who: Who) -> list[ScheduleView]:
    """The Temporal Schedules that run the platform's standing jobs: what, how often, when."""
    return await ops(ctx).schedules()


@platform.get("/metrics/autonomy", response_model=AutonomyMetrics, tags=["platform"])
async def autonomy(
    ctx: Ctx,
    who: Who,
    hours: Annotated[float, Query(ge=0.01, le=24 * 90, description="the window, in hours")] = 24,
) -> AutonomyMetrics:
    """Auto-resolution, MTTD/MTTR, the human intervention rate, decisions by mode and risk."""
    return await ops(ctx).autonomy(hours)


EVENT_STREAM: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "server-sent events, one per audit event: `id` (resume with"
        " `Last-Event-ID`), `event: audit`, `data` a TimelineEvent as JSON; a comment line"
        " every 15 s keeps the connection alive",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    }
}


@platform.get("/events", response_class=StreamingResponse, responses=EVENT_STREAM)
async def events(
    request: Request,
    ctx: Ctx,
    who: Who,
    after: Annotated[
        int | None, Query(ge=0, description="resume after this event id (default: from now)")
    ] = None,
    last_event_id: Annotated[int | None, Header(ge=0, include_in_schema=False)] = None,
) -> StreamingResponse:
    """The audit trail as it grows, as server-sent events (the dashboard's live updates)."""
    reader = ops(ctx)
    start = last_event_id if last_event_id is not None else after
    if start is None:
        start = await reader.last_event_id()

    async def stream() -> AsyncIterator[str]:
        seen = start
        loop = asyncio.get_running_loop()
        quiet_since = loop.time()
        yield f"retry: 2000\nid: {seen}\nevent: ready\ndata: {json.dumps({'after': seen})}\n\n"
        while not await request.is_disconnected():
            fresh = await reader.events_after(seen)
            for event in fresh:
                seen = event.id
                yield f"id: {event.id}\nevent: audit\ndata: {event.model_dump_json()}\n\n"
            if fresh:
                quiet_since = loop.time()
                continue
            if loop.time() - quiet_since >= KEEPALIVE_SECONDS:
                quiet_since = loop.time()
                yield ": alive\n\n"
            await asyncio.sleep(POLL_SECONDS)

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


# ---- controls (admin) ------------------------------------------------------------------------


def _strict(annotation: Any, metadata: list[Any]) -> Any:
    """`annotation` with its constraints, strictly: `false` is no number, `1` no boolean."""
    return Annotated[annotation, *metadata, Strict()]


def _policy_changes() -> Any:
    """GuardrailPolicy's fields, each optional, at least one: a PATCH of the limits."""
    fields: dict[str, Any] = {
        name: (
            _strict(info.annotation, info.metadata) | SkipJsonSchema[None],  # type: ignore[misc]
            Field(default=None, description=info.description),
        )
        for name, info in GuardrailPolicy.model_fields.items()
    }
    return create_model(
        "GuardrailChanges",
        __config__=ConfigDict(extra="forbid", json_schema_extra={"minProperties": 1}),
        __doc__="Guardrail limits to change (at least one; the rest stay), each checked as the"
        " policy checks it.",
        **fields,
    )


GuardrailChanges: Any = _policy_changes()
DOING = "change the platform's controls"


@controls.get("", response_model=ControlsView)
async def controls_show(ctx: Ctx, who: Who) -> ControlsView:
    """The kill switch, the guardrail limits, the modes, the freezes and recent refusals."""
    return await controls_ops(ctx).show()


@controls.post("/kill-switch", response_model=ControlsView)
async def kill_switch(body: KillSwitch, ctx: Ctx, who: Who) -> ControlsView:
    """Pause every automated action (incidents hold and say why) or resume. Admin only."""
    require(who, ADMIN, DOING)
    shown = await controls_ops(ctx).kill_switch(body, actor=who.name)
    await audited(
        ctx,
        who,
        "pause" if body.paused else "resume",
        "controls",
        "platform",
        {"reason": body.reason},
    )
    return shown


@controls.patch("/guardrails", response_model=ControlsView)
async def guardrails(body: GuardrailChanges, ctx: Ctx, who: Who) -> ControlsView:
    """Change guardrail limits; the whole policy is validated before it is kept. Admin only."""
    require(who, ADMIN, DOING)
    changes = body.model_dump(exclude_unset=True)
    nulls = sorted(k for k, v in changes.items() if v is None)
    if nulls:
        raise InvalidRequest([f"{k}: give a value to change it to, not null" for k in nulls])
    shown = await controls_ops(ctx).set_policy(changes)
    await audited(ctx, who, "guardrails.set", "controls", "platform", changes)
    return shown


@controls.post("/freezes", response_model=FreezeView, status_code=201)
async def freeze(body: FreezeRequest, ctx: Ctx, who: Who) -> FreezeView:
    """Open a change-freeze window: no automated change to the scope inside it. Admin only."""
    require(who, ADMIN, DOING)
    made = await controls_ops(ctx).add_freeze(body, actor=who.name)
    await audited(ctx, who, "freeze.add", "change_freeze", made.id, {"scope": made.scope})
    return made


@controls.put("/mode", response_model=ControlsView)
async def mode(body: ModeChange, ctx: Ctx, who: Who) -> ControlsView:
    """Set the global decision mode, or one service's (the strictest applies). Admin only."""
    require(who, ADMIN, DOING)
    shown = await controls_ops(ctx).set_mode(body)
    await audited(ctx, who, "mode.set", "controls", body.service or "platform", {"mode": body.mode})
    return shown


ROUTERS = (incidents, decisions, platform, controls)
