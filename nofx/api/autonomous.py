"""`/api/autonomous/*` (the specification's five) and `/api/approvals`: the decision engine's
operations (`nofx.operations.autonomous`) over HTTP.

The caller is the token's operator: `decide` is requested by them, an approval, rejection or
override is theirs (the decision checks their permissions against the playbook's
`required_permissions`, as it does for the CLI and the Web UI), and training a model needs
`decisions:train`.
"""

from __future__ import annotations

from fastapi import APIRouter, Path
from pydantic import BaseModel, Field

from models.decisions import (
    Approve,
    DecideRequest,
    DecisionRecord,
    Override,
    Reject,
    SimulateRequest,
    Simulation,
    SuccessModelReport,
    TrainRequest,
    VerdictAck,
)
from nofx.api.app import ApiContext, Ctx, Who, audited, require
from nofx.operations.autonomous import AutonomousOperations

router = APIRouter(prefix="/api/autonomous", tags=["autonomous"])
approvals = APIRouter(prefix="/api/approvals", tags=["approvals"])

DecisionRef = Path(
    min_length=1,
    max_length=200,
    description="a decision's id, or the id of the workflow that made it",
)
TRAIN = "decisions:train"


def ops(ctx: ApiContext) -> AutonomousOperations:
    return AutonomousOperations(ctx.temporal, ctx.engine, task_queue=ctx.decisions_queue)


class OverrideRequest(BaseModel):
    """Run another candidate than the one chosen: `{"decision": "…", "action": "…",
    "reason": "…"}`; it is learnt from."""

    decision: str = Field(min_length=1, max_length=200, description="the decision's id")
    action: str = Field(min_length=1, description="the candidate to run instead")
    reason: str = Field(min_length=1, description="why: kept and learnt from")


class Answer(BaseModel):
    """An approval: the reason is optional."""

    reason: str = ""


class Refusal(BaseModel):
    """A rejection: the reason is required, kept and learnt from."""

    reason: str = Field(min_length=1)


@router.post("/decide", response_model=DecisionRecord)
async def decide(body: DecideRequest, ctx: Ctx, who: Who) -> DecisionRecord:
    """Ask the engine about a service's problem; answers once it has decided (it may then wait
    for a person: see `/api/approvals`)."""
    request = body.model_copy(update={"requested_by": who.name})
    made = await ops(ctx).decide(request)
    await audited(ctx, who, "decide", "decision", made.decision_id, {"service": body.service})
    return made


@router.post("/simulate", response_model=Simulation)
async def simulate(body: SimulateRequest, ctx: Ctx, who: Who) -> Simulation:
    """What the engine would decide now and why; nothing is recorded, nothing runs."""
    return await ops(ctx).simulate(body)


@router.post("/override", response_model=VerdictAck)
async def override(body: OverrideRequest, ctx: Ctx, who: Who) -> VerdictAck:
    """A person's override of a waiting decision: another candidate runs, and the engine learns
    from it."""
    ack = await ops(ctx).override(
        body.decision, Override(approver=who.name, action=body.action, reason=body.reason)
    )
    await audited(ctx, who, "override", "decision", ack.decision_id, {"action": body.action})
    return ack


@router.get("/explain/{decision}", response_model=DecisionRecord)
async def explain(ctx: Ctx, who: Who, decision: str = DecisionRef) -> DecisionRecord:
    """A decision with its explanation, criteria and approval record."""
    return await ops(ctx).explain(decision)


@router.post("/train", response_model=SuccessModelReport)
async def train(body: TrainRequest, ctx: Ctx, who: Who) -> SuccessModelReport:
    """Retrain the success model on the decision history and answer with its report (it
    replaces the champion only when better). Needs `decisions:train`."""
    require(who, TRAIN, "train a model")
    report = await ops(ctx).train(body)
    await audited(ctx, who, "train", "model", report.model_id or "skipped")
    return report


@approvals.get("", response_model=list[DecisionRecord])
async def pending(ctx: Ctx, who: Who) -> list[DecisionRecord]:
    """Decisions waiting for a person, oldest first."""
    return await ops(ctx).pending()


@approvals.post("/{decision}/approve", response_model=VerdictAck)
async def approve(body: Answer, ctx: Ctx, who: Who, decision: str = DecisionRef) -> VerdictAck:
    """Approve a waiting decision as the token's operator."""
    ack = await ops(ctx).approve(decision, Approve(approver=who.name, reason=body.reason))
    await audited(ctx, who, "approve", "decision", ack.decision_id)
    return ack


@approvals.post("/{decision}/reject", response_model=VerdictAck)
async def reject(body: Refusal, ctx: Ctx, who: Who, decision: str = DecisionRef) -> VerdictAck:
    """Reject a waiting decision as the token's operator; nothing runs."""
    ack = await ops(ctx).reject(decision, Reject(approver=who.name, reason=body.reason))
    await audited(ctx, who, "reject", "decision", ack.decision_id)
    return ack
