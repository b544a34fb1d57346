"""Forecast one metric of one service from the telemetry the platform reads, with its exhaustion.

The history comes from the configured metric source (scraped samples in `metric_samples`,
Prometheus, or a CSV replay), on the request's step; the forecaster fits on it as it is, and
what had to be repaired (gaps, duplicates, NaN, a clock that went back) is in the report. When
the service's inventory entry has a limit for the metric, the report says when the forecast —
or the recent rise — reaches it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np

from models.forecasting import (
    ExhaustionEstimate,
    ForecastPoint,
    ForecastReport,
    ForecastRequest,
    HistoryPoint,
)
from nofx.forecasting.exhaustion import Quantiles, assess
from nofx.forecasting.forecaster import Forecast, Forecaster
from nofx.forecasting.series import Regular, regular
from nofx.telemetry.sources import MetricSource, SeriesNotFoundError


class ForecastError(ValueError):
    """The forecast cannot be made (no history, say); the message names what is missing."""


def _at(seconds: float | None) -> datetime | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, UTC)


def history(source: MetricSource, request: ForecastRequest, now: datetime) -> Regular:
    """The metric's history on the request's grid.

    Raises:
        ForecastError: no sample of the metric in the window.
    """
    end = request.until or now
    start = end - timedelta(hours=request.history_hours)
    step = timedelta(seconds=request.step_seconds)
    try:
        series = source.query_range(request.service, request.metric, start, end, step)
    except SeriesNotFoundError as err:
        raise ForecastError(f"{request.service} {request.metric}: {err}") from None
    finite = series.dropna()
    if finite.empty:
        raise ForecastError(
            f"no samples of {request.metric} for {request.service} between"
            f" {start.isoformat()} and {end.isoformat()}"
        )
    stamps = np.array([t.timestamp() for t in series.index], dtype=np.float64)
    return regular(stamps, series.to_numpy(dtype=np.float64), request.step_seconds)


def forecast_metric(
    source: MetricSource,
    request: ForecastRequest,
    *,
    limit: float | None = None,
    now: datetime | None = None,
    forecaster: Forecaster | None = None,
) -> ForecastReport:
    """The forecast of `request`, with the time to `limit` when there is one.

    Raises:
        ForecastError: no usable history.
    """
    reg = history(source, request, now or datetime.now(UTC))
    if len(reg.values) < 2:
        raise ForecastError(
            f"{request.service} {request.metric}: {len(reg.values)} step(s) of history,"
            " at least 2 are needed"
        )
    horizon = request.horizon_steps
    made = (forecaster or Forecaster((horizon,))).forecast([(request.service, reg)])[horizon][0]
    return report(request, reg, made, limit)


def report(
    request: ForecastRequest, reg: Regular, made: Forecast, limit: float | None
) -> ForecastReport:
    times = made.times()
    estimate = None
    if limit is not None:
        quantiles = Quantiles.of(times, made.mean, made.bands[80], made.bands[95])
        warning = assess(reg.start, reg.step, reg.values, limit, made.horizon, forecast=quantiles)
        if warning is not None:
            estimate = ExhaustionEstimate(
                limit=limit,
                probability=warning.probability,
                eta=_at(warning.eta),
                earliest=_at(warning.earliest),
                latest=_at(warning.latest),
                source=warning.source,
            )
        else:
            estimate = ExhaustionEstimate(limit=limit, probability=0.0, source="none")
    return ForecastReport(
        service=request.service,
        metric=request.metric,
        step_seconds=reg.step,
        model=made.model,
        backtest_mae=made.backtest_mae,
        calibration_paths=made.calibration_paths,
        repairs=reg.repairs.summary(),
        notes=made.notes,
        history=[
            HistoryPoint(ts=datetime.fromtimestamp(t, UTC), value=float(v))
            for t, v in zip(reg.times(), reg.values, strict=True)
        ],
        points=[
            ForecastPoint(
                ts=datetime.fromtimestamp(float(t), UTC),
                mean=float(made.mean[i]),
                lo80=float(made.lower(80)[i]),
                hi80=float(made.upper(80)[i]),
                lo95=float(made.lower(95)[i]),
                hi95=float(made.upper(95)[i]),
            )
            for i, t in enumerate(times)
        ],
        exhaustion=estimate,
    )
