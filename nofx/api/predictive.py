"""`/api/predictive/*` (the specification's five: forecast, maintenance, optimize, schedule,
validate): the predictive track's operations (`nofx.operations.predictive`) over HTTP.

Reading needs a token. Applying or aborting an optimisation needs `optimization:apply` (the
change itself is then a decision, approved by its risk as any other); moving a maintenance job
needs `maintenance:schedule`. The caller is who asked, on the job and in the audit trail.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal
from uuid import UUID

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, Field, create_model

from models.common import AbortRequest, IsoTime
from models.forecasting import ForecastReport, ForecastRequest
from models.maintenance import CancelJob, JobAck, Reschedule, RunNow, ValidationReport
from models.operations import MaintenanceJobView, MaintenancePredictionView, RecommendationView
from models.optimization import ApplyInput, ApplyStatusView
from nofx.api.app import ApiContext, Ctx, Who, audited, require
from nofx.api.tokens import Caller
from nofx.operations.predictive import PredictiveOperations

router = APIRouter(prefix="/api/predictive", tags=["predictive"])

APPLY = "optimization:apply"
SCHEDULE = "maintenance:schedule"
Service = Annotated[str | None, Query(max_length=200, description="only this service")]
Recommendation = Annotated[UUID, Path(description="the recommendation's id")]
Job = Annotated[
    str, Path(min_length=1, max_length=300, description="maintenance-<service>-<issue>")
]

# ApplyInput without what the path and the token say (the recommendation, who asks).
_FROM_CALLER = {"recommendation_id", "requested_by"}
ApplyOptions: type[BaseModel] = create_model(  # type: ignore[call-overload]
    "ApplyOptions",
    __doc__="How to apply and judge the change: settle time, measuring requests, tolerance.",
    __config__={"extra": "forbid"},
    **{
        name: (field.annotation, field)
        for name, field in ApplyInput.model_fields.items()
        if name not in _FROM_CALLER
    },
)


class Because(BaseModel):
    """Why: kept on the job or the change, and in the audit trail."""

    reason: str = Field(min_length=1)


class MoveTo(Because):
    at: IsoTime = Field(description="the new start, with its time zone")


def ops(ctx: ApiContext) -> PredictiveOperations:
    return PredictiveOperations(ctx.temporal, ctx.engine, ctx.settings)


@router.post("/forecast", response_model=ForecastReport)
async def forecast(body: ForecastRequest, ctx: Ctx, who: Who) -> ForecastReport:
    """Resource and performance forecasting: a service metric's forecast with 80% and 95%
    intervals, its history, and its time to the inventory's limit when it has one."""
    return await ops(ctx).forecast(body)


@router.get("/maintenance", response_model=list[MaintenancePredictionView])
async def maintenance(
    ctx: Ctx, who: Who, service: Service = None
) -> list[MaintenancePredictionView]:
    """Maintenance predictions: what runs out on which service, when, and what to do first."""
    return await ops(ctx).maintenance(service)


@router.get("/optimize", response_model=list[RecommendationView])
async def optimize(ctx: Ctx, who: Who, service: Service = None) -> list[RecommendationView]:
    """Optimisation recommendations: the change, the expected gain and the risk it buys."""
    return await ops(ctx).optimize(service)


@router.post("/optimize/{recommendation}/apply", response_model=ApplyStatusView, status_code=202)
async def apply(
    body: ApplyOptions,  # type: ignore[valid-type]
    ctx: Ctx,
    who: Who,
    recommendation: Recommendation,
) -> ApplyStatusView:
    """Apply an open recommendation as a decision: measured before and after, kept or rolled
    back. Answers at once with its status; follow it at `GET /optimize/{recommendation}`."""
    require(who, APPLY, "apply optimisations")
    fields: dict[str, Any] = BaseModel.model_dump(body, exclude_unset=True)
    request = ApplyInput.model_validate(
        {**fields, "recommendation_id": recommendation, "requested_by": who.name}
    )
    view = await ops(ctx).apply(request)
    await audited(ctx, who, "optimize.apply", "recommendation", str(recommendation))
    return view


@router.get("/optimize/{recommendation}", response_model=ApplyStatusView)
async def optimization(ctx: Ctx, who: Who, recommendation: Recommendation) -> ApplyStatusView:
    """How applying a recommendation goes: decision, measurements, verdict, rollback."""
    return await ops(ctx).optimization(str(recommendation))


@router.post("/optimize/{recommendation}/abort", status_code=204)
async def abort(body: Because, ctx: Ctx, who: Who, recommendation: Recommendation) -> None:
    """Stop applying: before the change it ends declined, after it the change rolls back."""
    require(who, APPLY, "abort optimisations")
    await ops(ctx).abort_optimization(
        str(recommendation), AbortRequest(requested_by=who.name, reason=body.reason)
    )
    await audited(ctx, who, "optimize.abort", "recommendation", str(recommendation))


@router.get("/schedule", response_model=list[MaintenanceJobView])
async def schedule(
    ctx: Ctx,
    who: Who,
    service: Service = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 20,
) -> list[MaintenanceJobView]:
    """Automated scheduling: maintenance jobs, those still to run first, with their windows."""
    return await ops(ctx).schedule(service, limit)


@router.post("/schedule/{job}/reschedule", response_model=JobAck)
async def reschedule(body: MoveTo, ctx: Ctx, who: Who, job: Job) -> JobAck:
    """Move a waiting job (refused when a blackout, freeze or budget forbids the time)."""
    return await _move(
        ctx, who, job, "reschedule", Reschedule(requested_by=who.name, **body.model_dump())
    )


@router.post("/schedule/{job}/{move}", response_model=JobAck)
async def run_or_cancel(
    body: Because,
    ctx: Ctx,
    who: Who,
    job: Job,
    move: Annotated[Literal["run-now", "cancel"], Path(description="what to do with it")],
) -> JobAck:
    """Run a waiting job now, or cancel it (a running one rolls back)."""
    model = RunNow if move == "run-now" else CancelJob
    return await _move(ctx, who, job, move, model(requested_by=who.name, reason=body.reason))


async def _move(
    ctx: ApiContext, who: Caller, job: str, move: str, request: Reschedule | RunNow | CancelJob
) -> JobAck:
    require(who, SCHEDULE, "move maintenance jobs")
    ack = await ops(ctx).move_job(job, request)
    await audited(ctx, who, f"schedule.{move}", "maintenance_job", job)
    return ack


@router.get("/validate", response_model=ValidationReport)
async def validate(
    ctx: Ctx,
    who: Who,
    days: Annotated[float, Query(gt=0, le=365, description="judge this many days")] = 30,
) -> ValidationReport:
    """Prediction accuracy: stored predictions against what happened (precision, recall, lead
    time, time-to-failure and forecast error)."""
    return await ops(ctx).validate(days)
