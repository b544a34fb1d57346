"""Contracts of the predictive track: a forecast of a service's metric, and its exhaustion."""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from models.common import Contract


class ForecastRequest(Contract):
    service: str = Field(min_length=1)
    metric: str = Field(min_length=1, description="the metric as the telemetry source names it")
    horizon_steps: int = Field(default=288, ge=1, le=4032)
    step_seconds: float = Field(default=300.0, ge=1.0, le=86_400.0)
    history_hours: float = Field(default=7 * 24.0, gt=0, le=90 * 24.0)
    until: datetime | None = Field(default=None, description="the forecast origin; default now")


class ForecastPoint(Contract):
    ts: datetime
    mean: float
    lo80: float
    hi80: float
    lo95: float
    hi95: float


class HistoryPoint(Contract):
    ts: datetime
    value: float


class ExhaustionEstimate(Contract):
    """When the metric reaches the service's limit (inventory `limits`), within the horizon."""

    limit: float
    probability: float = Field(ge=0, le=1)
    eta: datetime | None = None
    earliest: datetime | None = None
    latest: datetime | None = None
    source: str = Field(description="forecast, trend <window> or none")


class ForecastReport(Contract):
    service: str
    metric: str
    step_seconds: float
    model: str = Field(description="the candidate the recent backtest chose")
    backtest_mae: dict[str, float] = Field(
        description="each candidate's held-out mean absolute error, in units of the series' scale"
    )
    calibration_paths: int
    repairs: str = Field(description="what was done to the history to make it regular")
    notes: list[str] = Field(default_factory=list)
    history: list[HistoryPoint]
    points: list[ForecastPoint]
    exhaustion: ExhaustionEstimate | None = None
