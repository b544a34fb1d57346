"""Activities of applying a recommendation (the logic: nofx.optimization.apply).

Claiming is idempotent for the workflow that claimed (a retry gets the same answer), measuring
only reads and sends real requests, judging is pure, and releasing writes only a recommendation
still `applying`.
"""

from __future__ import annotations

from sqlalchemy.engine import Engine
from temporalio import activity

from activities._support import heartbeating, invalid_input
from activities.maintenance import scraper
from models.optimization import (
    ApplyRecord,
    ApplyVerdict,
    ClaimedRecommendation,
    ClaimInput,
    JudgeInput,
    MeasureInput,
    Measurement,
)
from nofx.optimization import apply
from nofx.settings import Settings
from nofx.telemetry.routing import metric_source


class OptimizationActivities:
    def __init__(self, engine: Engine, settings: Settings) -> None:
        self._engine = engine
        self._settings = settings

    @activity.defn
    def claim_recommendation(self, inp: ClaimInput) -> ClaimedRecommendation:
        """Take an open recommendation for applying; a refusal says why and is not retried."""
        try:
            return apply.claim(self._engine, inp)
        except apply.ApplyError as err:
            raise invalid_input(str(err)) from None

    @activity.defn
    def measure_service(self, inp: MeasureInput) -> Measurement:
        """Real requests to the service and the type's counters around them."""
        with heartbeating(step=f"measure {inp.label}"):
            return apply.measure(
                metric_source(self._engine, self._settings),
                inp,
                scraper(self._engine, self._settings, inp.claimed.service),
            )

    @activity.defn
    def judge_change(self, inp: JudgeInput) -> ApplyVerdict:
        return apply.judge(inp)

    @activity.defn
    def release_recommendation(self, record: ApplyRecord) -> None:
        apply.release(self._engine, record, cost=self._settings.cost_model())
