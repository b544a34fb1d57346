"""`/api/healing/*` (the specification's five: status, patterns, playbooks, simulate, metrics):
the healing track's operations (`nofx.operations.healing`) over HTTP.

Reading needs a token; writing a playbook needs `healing:playbooks` (held through `healing:*`
or `*`), since a playbook decides what the platform may do on its own.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query

from models.operations import (
    HealingMetrics,
    HealingSimulation,
    IncidentSummary,
    PatternSummary,
    PlaybookChanges,
    PlaybookView,
    SimulateHealing,
)
from nofx.api.app import ApiContext, Ctx, Who, audited, require
from nofx.healing.operations import PlaybookSpec
from nofx.operations.healing import HealingOperations

router = APIRouter(prefix="/api/healing", tags=["healing"])

WRITE = "healing:playbooks"
Name = Annotated[str, Path(min_length=1, max_length=100, description="the playbook's name")]


def ops(ctx: ApiContext) -> HealingOperations:
    return HealingOperations(ctx.engine)


@router.get("/status", response_model=list[IncidentSummary])
async def status(
    ctx: Ctx,
    who: Who,
    service: Annotated[str | None, Query(max_length=200, description="only this service")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 20,
) -> list[IncidentSummary]:
    """Current healing operations: running incidents first, then the most recent."""
    return await ops(ctx).status(service, limit)


@router.get("/patterns", response_model=list[PatternSummary])
async def patterns(ctx: Ctx, who: Who) -> list[PatternSummary]:
    """Known problem patterns, their success rate, resolution time and proven playbooks."""
    return await ops(ctx).patterns()


@router.get("/playbooks", response_model=list[PlaybookView])
async def playbooks(
    ctx: Ctx,
    who: Who,
    incident_type: Annotated[str | None, Query(max_length=100)] = None,
) -> list[PlaybookView]:
    """Recovery playbooks, by pattern and escalation rank."""
    return await ops(ctx).playbooks(incident_type)


@router.get("/playbooks/{name}", response_model=PlaybookView)
async def playbook(ctx: Ctx, who: Who, name: Name) -> PlaybookView:
    return await ops(ctx).playbook(name)


@router.post("/playbooks", response_model=PlaybookView, status_code=201)
async def create_playbook(body: PlaybookSpec, ctx: Ctx, who: Who) -> PlaybookView:
    """Add a playbook (refused field by field; a name is unique per pattern)."""
    require(who, WRITE, "write playbooks")
    made = await ops(ctx).create_playbook(body)
    await audited(ctx, who, "playbook.create", "playbook", made.playbook_name)
    return made


@router.patch("/playbooks/{name}", response_model=PlaybookView)
async def update_playbook(body: PlaybookChanges, ctx: Ctx, who: Who, name: Name) -> PlaybookView:
    """Change some of a playbook's fields; the result is validated whole before it is kept."""
    require(who, WRITE, "write playbooks")
    changed = await ops(ctx).update_playbook(name, body)
    await audited(ctx, who, "playbook.update", "playbook", name, body.model_dump(exclude_none=True))
    return changed


@router.post("/playbooks/{name}/{switch}", response_model=PlaybookView)
async def switch_playbook(
    ctx: Ctx,
    who: Who,
    name: Name,
    switch: Annotated[Literal["enable", "disable"], Path(description="turn it on or off")],
) -> PlaybookView:
    """Offer the playbook to the engine again, or stop offering it (what runs now finishes)."""
    require(who, WRITE, "write playbooks")
    changed = await ops(ctx).set_enabled(name, switch == "enable")
    await audited(ctx, who, f"playbook.{switch}", "playbook", name)
    return changed


@router.post("/simulate", response_model=HealingSimulation)
async def simulate(body: SimulateHealing, ctx: Ctx, who: Who) -> HealingSimulation:
    """Test a healing strategy: what the playbook would do on the service, step by step, the
    guardrails' verdicts and the rollback plan; nothing is touched."""
    return await ops(ctx).simulate(body.playbook, body.service)


@router.get("/metrics", response_model=HealingMetrics)
async def metrics(
    ctx: Ctx,
    who: Who,
    hours: Annotated[float, Query(ge=0.01, le=24 * 90, description="the window, in hours")] = 24,
) -> HealingMetrics:
    """Healing effectiveness: detection and auto-resolution rates, MTTD and MTTR by pattern."""
    return await ops(ctx).metrics(timedelta(hours=hours))
