"""Track C's operations: forecast, maintenance predictions, the maintenance schedule (and moving
a job on it), optimisation recommendations (and applying one as a decision), validation.

One implementation behind the CLI (`nofx predictive ...`), the Python client and the HTTP API
(`/api/predictive/*`). Forecasts read the configured telemetry source; a service outside the
inventory is `NotFound`, a metric without history a `RuleConflict` (rule `history`).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.engine import Engine
from temporalio.client import Client, WorkflowUpdateFailedError
from temporalio.service import RPCError, RPCStatusCode

from models.common import AbortRequest
from models.forecasting import ForecastReport, ForecastRequest
from models.maintenance import CancelJob, JobAck, Reschedule, RunNow, ValidationReport
from models.operations import MaintenanceJobView, MaintenancePredictionView, RecommendationView
from models.optimization import (
    APPLY_TERMINAL,
    ApplyInput,
    ApplyStatusView,
    CostReport,
    apply_workflow_id,
)
from nofx import inventory as inventory_store
from nofx.operations.errors import InvalidRequest, NotFound, RuleConflict
from nofx.settings import Settings


def limit_of(engine: Engine, service: str, metric: str) -> float | None:
    """The inventory's limit for `metric` of `service` (None when it declares none).

    Raises:
        NotFound: the service is not in the inventory.
    """
    rows = inventory_store.describe(engine, service)
    if not rows:
        raise NotFound(f"service: {service} is not in the inventory (nofx services list)")
    value = ((rows[0]["metadata"] or {}).get("limits") or {}).get(metric)
    return float(value) if value is not None else None


def _ids(row: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {**row, **{k: str(row[k]) for k in keys if row.get(k) is not None}}


class PredictiveOperations:
    """The predictive track's operations against one Temporal client and the database."""

    def __init__(self, temporal: Client | None, engine: Engine, settings: Settings) -> None:
        self._temporal = temporal
        self.engine = engine
        self.settings = settings

    @property
    def temporal(self) -> Client:
        """The Temporal client the job and optimisation operations need (the reads do not)."""
        if self._temporal is None:
            raise RuntimeError("this operation needs Temporal: give PredictiveOperations a client")
        return self._temporal

    def _source(self) -> Any:
        from nofx.telemetry.routing import metric_source

        return metric_source(self.engine, self.settings)

    def _known(self, service: str | None) -> None:
        if service is not None and not inventory_store.describe(self.engine, service):
            raise NotFound(f"service: {service!r} is not in the inventory (nofx services list)")

    # ---- forecasts and predictions ------------------------------------------------------

    async def forecast(self, request: ForecastRequest) -> ForecastReport:
        """The metric's forecast with 80% and 95% intervals, and its time to the inventory's
        limit when it has one."""
        from nofx.forecasting.service import ForecastError, forecast_metric
        from nofx.telemetry.sources import MetricSourceError

        def run() -> ForecastReport:
            limit = limit_of(self.engine, request.service, request.metric)
            if request.until is not None and request.until.tzinfo is None:
                asked = request.model_copy(update={"until": request.until.replace(tzinfo=UTC)})
            else:
                asked = request
            try:
                return forecast_metric(self._source(), asked, limit=limit)
            except ForecastError as err:
                raise RuleConflict(str(err), rule="history") from None
            except MetricSourceError as err:
                raise RuleConflict(f"telemetry: {err}", rule="telemetry") from None

        return await asyncio.to_thread(run)

    async def maintenance(
        self, service: str | None = None, *, refresh: bool = False
    ) -> list[MaintenancePredictionView]:
        """The open maintenance predictions, soonest failure first; `refresh` runs a
        prediction pass first."""
        from nofx.maintenance.predictions import open_predictions, predict

        def run() -> list[dict[str, Any]]:
            self._known(service)
            if refresh:
                predict(self.engine, self._source(), services=[service] if service else None)
            return open_predictions(self.engine, service)

        rows = await asyncio.to_thread(run)
        return [MaintenancePredictionView.model_validate(_ids(r, "id")) for r in rows]

    async def cost(self, service: str | None = None) -> CostReport:
        """What the services cost an hour (the settings' prices), what the open recommendations
        would save and the SLO risk each buys, and what applied ones saved."""
        from nofx.optimization.cost import report

        def run() -> CostReport:
            self._known(service)
            return report(self.engine, self.settings.cost_model(), service)

        return await asyncio.to_thread(run)

    async def train_failure_model(self, hours: float, holdout: float) -> Any:
        """Train the LightGBM failure classifier on the last `hours` of incidents and injected
        faults (it goes live only when its held-out figures clear the bar).

        Raises:
            RuleConflict: too little to learn from (rule `enough_history`).
        """
        from nofx.detection.learned import TrainingError
        from nofx.maintenance.failure_model import train_classifier

        if not 0 < hours <= 24 * 90 or not 0 < holdout < 1:
            raise InvalidRequest(["hours: in (0, 2160]; holdout: a share in (0, 1)"])
        until = datetime.now(UTC)

        def run() -> Any:
            return train_classifier(
                self.engine,
                self._source(),
                until - timedelta(hours=hours),
                until,
                holdout_share=holdout,
            )

        try:
            return await asyncio.to_thread(run)
        except TrainingError as err:
            raise RuleConflict(f"not trained: {err}", rule="enough_history") from None

    async def validate(self, days: float = 30.0) -> ValidationReport:
        """Stored predictions against what happened: precision, recall, lead time, error."""
        from nofx.maintenance.validation import validate

        if not 0 < days <= 365:
            raise InvalidRequest([f"days: must be in (0, 365] (got {days})"])
        return await asyncio.to_thread(lambda: validate(self.engine, self._source(), days=days))

    # ---- the maintenance schedule -------------------------------------------------------

    async def schedule(
        self, service: str | None = None, limit: int = 20
    ) -> list[MaintenanceJobView]:
        """Maintenance jobs, those still to run first: when, before which failure, why."""
        from nofx.maintenance.jobs import list_schedules

        if not 1 <= limit <= 1000:
            raise InvalidRequest([f"limit: must be between 1 and 1000 (got {limit})"])

        def run() -> list[dict[str, Any]]:
            self._known(service)
            return list_schedules(self.engine, service, limit)

        rows = await asyncio.to_thread(run)
        return [MaintenanceJobView.model_validate(_ids(r, "id", "decision_id")) for r in rows]

    async def move_job(self, workflow_id: str, request: Reschedule | RunNow | CancelJob) -> JobAck:
        """Reschedule a waiting job, run it now or cancel it (a running one rolls back);
        refused before it reaches the job's history when the job cannot take it."""
        update = {Reschedule: "reschedule_job", RunNow: "run_job_now", CancelJob: "cancel_job"}[
            type(request)
        ]
        handle = self.temporal.get_workflow_handle(workflow_id)
        try:
            ack: JobAck = await handle.execute_update(update, request, result_type=JobAck)
        except WorkflowUpdateFailedError as err:
            cause = err.cause
            message = getattr(cause, "message", None) or str(cause or err)
            raise RuleConflict(f"{workflow_id}: {message}", rule="job_state") from None
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                raise NotFound(f"job: no maintenance job {workflow_id!r}") from None
            raise
        return ack

    # ---- optimisation -------------------------------------------------------------------

    async def optimize(self, service: str | None = None) -> list[RecommendationView]:
        """The open optimisation recommendations, by service and type."""
        from nofx.optimization.recommendations import open_recommendations

        def run() -> list[dict[str, Any]]:
            self._known(service)
            return open_recommendations(self.engine, service)

        rows = await asyncio.to_thread(run)
        return [RecommendationView.model_validate(_ids(r, "id")) for r in rows]

    async def apply(self, request: ApplyInput) -> ApplyStatusView:
        """Apply an open recommendation as a decision (OptimizationWorkflow); its status now.

        Raises:
            NotFound: no such recommendation. RuleConflict: it is not open (rule `open`).
        """
        from nofx.client import start_optimization
        from nofx.optimization.apply import applicable

        service = await asyncio.to_thread(applicable, self.engine, str(request.recommendation_id))
        handle, _ = await start_optimization(self.temporal, request, service)
        view: ApplyStatusView = await handle.query("status", result_type=ApplyStatusView)
        return view

    async def optimization(self, recommendation_id: str) -> ApplyStatusView:
        """How applying a recommendation goes (or went)."""
        handle = self.temporal.get_workflow_handle(apply_workflow_id(recommendation_id))
        try:
            view: ApplyStatusView = await handle.query("status", result_type=ApplyStatusView)
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                raise NotFound(f"recommendation: {recommendation_id!r} was never applied") from None
            raise
        return view

    async def abort_optimization(self, recommendation_id: str, request: AbortRequest) -> None:
        """Stop applying: before the change it ends declined, after it the change rolls back."""
        view = await self.optimization(recommendation_id)
        if view.status in APPLY_TERMINAL:
            raise RuleConflict(
                f"recommendation {recommendation_id} is {view.status}: nothing to abort",
                rule="not_running",
            )
        handle = self.temporal.get_workflow_handle(apply_workflow_id(recommendation_id))
        await handle.signal("abort", request)
