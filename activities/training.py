"""The activity that trains the learned anomaly detector (nofx.diagnosis.training)."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import text
from sqlalchemy.engine import Engine
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities._support import progress_reporter
from models.detection import DetectorModelReport, TrainDetectorInput
from nofx.detection.learned import TrainingError
from nofx.diagnosis.training import train_detector
from nofx.logging import get_logger
from nofx.settings import Settings
from nofx.telemetry.routing import metric_source

log = get_logger(__name__)


class TrainingActivities:
    def __init__(self, engine: Engine, settings: Settings) -> None:
        self._engine = engine
        self._settings = settings

    def _services(self, inp: TrainDetectorInput, since: datetime) -> list[str]:
        if inp.services:
            return list(inp.services)
        with self._engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT name FROM services UNION SELECT service FROM fault_injections"
                    " WHERE injected_at >= :since ORDER BY 1"
                ),
                {"since": since},
            ).scalars()
            return list(rows)

    @activity.defn
    def train_anomaly_detector(self, inp: TrainDetectorInput) -> DetectorModelReport:
        """Learn from the labelled history, judge on its later part, store, maybe activate.

        A history that cannot train a model (no labelled fault, no telemetry) fails at once
        with the reason: retrying would not add history.
        """
        if inp.until is None:
            raise ApplicationError("until is required", type="InvalidInput", non_retryable=True)
        since = inp.until - timedelta(hours=inp.hours)

        try:
            stored = train_detector(
                self._engine,
                metric_source(self._engine, self._settings),
                self._services(inp, since),
                since,
                inp.until,
                holdout_share=inp.holdout_share,
                holdout_from=inp.holdout_from,
                activate=inp.activate,
                progress=progress_reporter("detector training"),
            )
        except TrainingError as err:
            raise ApplicationError(str(err), type="NotEnoughHistory", non_retryable=True) from err
        log.info(
            "detector trained",
            model=stored.version,
            active=stored.active,
            verdict=stored.verdict,
            holdout=stored.metrics["holdout"],
        )
        return DetectorModelReport(
            model_id=stored.model_id,
            version=stored.version,
            active=stored.active,
            verdict=stored.verdict,
            holdout=stored.metrics["holdout"],
            training=stored.training,
        )
