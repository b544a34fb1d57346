"""Activities of the maintenance job (the logic: nofx.maintenance.jobs).

Each is safe to retry: planning reads, the schedule row is an upsert on its id, the readings
only read (taking a scrape of the one service where the platform keeps its own samples), and
labelling a prediction averted changes only an open one.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from sqlalchemy.engine import Engine
from temporalio import activity

from activities._support import heartbeating, invalid_input
from models.maintenance import (
    Captured,
    FailureModelReport,
    FailureTrainInput,
    OutcomeCheck,
    OutcomeVerdict,
    PredictionChange,
    PredictionPassInput,
    PredictionPassReport,
    ScheduleRecord,
    ValidationInput,
    ValidationReport,
    WindowPlan,
    WindowRequest,
)
from nofx.detection.learned import TrainingError
from nofx.maintenance import failure_model, jobs, predictions, validation
from nofx.settings import Settings
from nofx.telemetry.routing import metric_source
from nofx.telemetry.scrape import inventory_targets, scrape_targets


def scraper(engine: Engine, settings: Settings, service: str) -> Callable[[], None] | None:
    """What scrapes `service` now, when the platform keeps its own samples (else None)."""
    if settings.telemetry != "scrape":
        return None
    targets = [t for t in inventory_targets(engine) if t.service == service]

    def scrape() -> None:
        scrape_targets(engine, targets)

    return scrape


class MaintenanceActivities:
    def __init__(self, engine: Engine, settings: Settings) -> None:
        self._engine = engine
        self._settings = settings

    def _refresh(self, service: str) -> Callable[[], None] | None:
        return scraper(self._engine, self._settings, service)

    @activity.defn
    def plan_window(self, req: WindowRequest) -> WindowPlan:
        """The job's window and why (a refused start a person asked for fails, with why)."""
        with heartbeating(step="plan_window"):
            try:
                return jobs.plan_window(
                    self._engine, metric_source(self._engine, self._settings), req
                )
            except jobs.JobError as err:
                raise invalid_input(str(err)) from None

    @activity.defn
    def record_schedule(self, rec: ScheduleRecord) -> None:
        jobs.record_schedule(self._engine, rec)

    @activity.defn
    def capture_metric(self, check: OutcomeCheck) -> Captured:
        """The metric that runs out, read fresh just before the work."""
        with heartbeating(step="capture_metric"):
            return jobs.capture(
                metric_source(self._engine, self._settings),
                check,
                self._refresh(check.component),
            )

    @activity.defn
    def judge_outcome(self, check: OutcomeCheck) -> OutcomeVerdict:
        """After the work: averted or not, and the prediction labelled when it was."""
        with heartbeating(step="judge_outcome"):
            try:
                return jobs.judge_outcome(
                    self._engine,
                    metric_source(self._engine, self._settings),
                    check,
                    datetime.now(UTC),
                    self._refresh(check.component),
                )
            except jobs.JobError as err:
                raise invalid_input(str(err)) from None

    @activity.defn
    def predict(self, inp: PredictionPassInput) -> PredictionPassReport:
        """One forecasting pass over the limited metrics: what opened, moved or went."""
        with heartbeating(step="predict"):
            recorded = predictions.predict(
                self._engine,
                metric_source(self._engine, self._settings),
                services=inp.services,
                step_seconds=inp.step_seconds,
                horizon_steps=inp.horizon_steps,
                history_hours=inp.history_hours,
                classifier=failure_model.FailureClassifier.active(self._engine),
            )
        return PredictionPassReport(
            changes=[
                PredictionChange(
                    service=r.service,
                    metric=r.metric,
                    issue=r.issue,
                    change=r.change,  # type: ignore[arg-type]
                    prediction_id=r.prediction_id,
                    deadline=(r.estimate.earliest or r.estimate.eta) if r.estimate else None,
                    probability=r.estimate.probability if r.estimate else None,
                    recurring=r.recurring,
                )
                for r in recorded
            ]
        )

    @activity.defn
    def validate_predictions(self, inp: ValidationInput) -> ValidationReport:
        """Settle the predictions whose fate is known and judge the period's."""
        with heartbeating(step="validate_predictions"):
            return validation.validate(
                self._engine, metric_source(self._engine, self._settings), days=inp.days
            )

    @activity.defn
    def train_failure_classifier(self, inp: FailureTrainInput) -> FailureModelReport:
        """Train the failure classifier on the recent history (nothing to learn is no failure)."""
        until = datetime.now(UTC)
        with heartbeating(step="train_failure_classifier"):
            try:
                trained = failure_model.train_classifier(
                    self._engine,
                    metric_source(self._engine, self._settings),
                    until - timedelta(hours=inp.hours),
                    until,
                    holdout_share=inp.holdout_share,
                )
            except TrainingError as err:
                return FailureModelReport(verdict=f"not trained: {err}")
        return FailureModelReport(
            model_id=trained.model_id,
            version=trained.version,
            active=trained.active,
            verdict=trained.verdict,
            metrics=trained.metrics,
            training=trained.training,
        )
