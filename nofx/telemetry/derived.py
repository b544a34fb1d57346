"""Derived series detectors need: counter rates and latency quantiles from histogram buckets.

Sources return what the exporter exposes, and for counters and histograms that is a running
total, useless to a detector as is: a request counter only ever grows, and restarts from zero
when the process restarts (exactly when something interesting happens). These functions turn
totals into per-second rates and latency quantiles with Prometheus' semantics, so a threshold
learnt against one source means the same against another:

* a decrease of a counter is a reset: the increase across it is the new value (the counter
  restarted from zero and has counted that much since), never a negative rate;
* a quantile is interpolated linearly inside the bucket that holds the rank, as PromQL's
  ``histogram_quantile`` does, from the increase of each cumulative bucket over a window.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime, timedelta

import numpy as np
import pandas as pd

from nofx.telemetry.cleaning import clean_series, empty_series
from nofx.telemetry.sources import MetricSource

DEFAULT_QUANTILE = 0.95


def _increase_of(counter: pd.Series) -> tuple[pd.Series, pd.Series]:
    """(the cleaned counter, its per-sample increase); the increase is empty below 2 samples."""
    series = clean_series(counter)
    if len(series) < 2:
        return series, empty_series(series.name)
    values = series.to_numpy()
    deltas = np.diff(values)
    # After a reset the counter restarted from 0, so all of its current value is new.
    grown = np.where(deltas < 0, values[1:], deltas)
    return series, pd.Series(grown, index=series.index[1:], name=series.name)


def increase(counter: pd.Series) -> pd.Series:
    """How much a counter grew between each sample and the one before, resets included.

    Args:
        counter: a counter's running total (cleaned or not: it is cleaned without a grid here).

    Returns:
        One value per sample but the first, at the later sample's time; never negative.
    """
    return _increase_of(counter)[1]


def rate(counter: pd.Series, window: timedelta | None = None) -> pd.Series:
    """Per-second rate of a counter, robust to counter resets.

    Args:
        counter: a counter's running total over time.
        window: when given, each point is the average rate over the trailing ``window`` (like
            PromQL's ``rate(x[window])``, but over the span the samples actually cover, without
            extrapolation); when ``None``, the rate between each pair of consecutive samples.

    Returns:
        Rates indexed by the later sample's time; empty when fewer than two samples.

    Raises:
        ValueError: ``window`` is not positive.
    """
    if window is not None and pd.Timedelta(window) <= pd.Timedelta(0):
        raise ValueError(f"window must be positive, got {window!r}")
    series, grown = _increase_of(counter)
    if grown.empty:
        return grown
    elapsed = pd.Series(np.diff(series.index.asi8) / 1e9, index=grown.index, name=series.name)
    if window is None:
        return grown / elapsed
    span = pd.Timedelta(window)
    return grown.rolling(span).sum() / elapsed.rolling(span).sum()


def _bucket_bounds(columns: pd.Index) -> list[tuple[float, object]]:
    """(upper bound, column) of every column whose name parses as a bucket bound, sorted."""
    bounds: list[tuple[float, object]] = []
    for column in columns:
        try:
            bound = float(str(column))
        except ValueError:
            continue
        if not math.isnan(bound):
            bounds.append((bound, column))
    return sorted(bounds, key=lambda pair: pair[0])


def _quantiles(q: float, bounds: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """PromQL ``histogram_quantile`` for each row of cumulative ``counts`` (rows x buckets)."""
    rows = counts.shape[0]
    result = np.full(rows, np.nan)
    if len(bounds) < 2 or not math.isinf(bounds[-1]) or rows == 0:
        return result  # a classic histogram always has a +Inf bucket; without it, no answer
    # Buckets are cumulative; scrapes at slightly different moments can break that, and
    # Prometheus repairs it the same way (each bucket at least the one below it).
    counts = np.maximum.accumulate(np.nan_to_num(counts, nan=0.0), axis=1)
    total = counts[:, -1]
    rank = q * total
    idx = np.argmax(counts >= rank[:, None], axis=1)
    upper = bounds[idx]
    lower = np.where(idx > 0, bounds[np.maximum(idx - 1, 0)], 0.0)
    lower = np.where((idx == 0) & (bounds[0] <= 0), bounds[0], lower)
    below = np.where(idx > 0, counts[np.arange(rows), np.maximum(idx - 1, 0)], 0.0)
    inside = counts[np.arange(rows), idx] - below
    with np.errstate(divide="ignore", invalid="ignore"):
        value = np.where(inside > 0, lower + (upper - lower) * (rank - below) / inside, upper)
    # The rank fell into the +Inf bucket: the best answer is the highest finite bound.
    value = np.where(idx == len(bounds) - 1, bounds[-2], value)
    return np.where(total > 0, value, np.nan)


def histogram_quantile(q: float, buckets: Mapping[str, float] | Mapping[float, float]) -> float:
    """The ``q``-quantile of a histogram given its cumulative bucket counts.

    Args:
        q: the quantile, in [0, 1] (0.95 for p95).
        buckets: cumulative count per upper bound (``le``), as numbers or label strings such as
            ``"0.25"`` and ``"+Inf"``; typically the increase of each bucket over a window.

    Returns:
        The interpolated quantile, or NaN when there were no observations or no +Inf bucket.

    Raises:
        ValueError: ``q`` is outside [0, 1].
    """
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile must be in [0, 1], got {q}")
    counts_by_label: dict[object, float] = {key: float(count) for key, count in buckets.items()}
    parsed = _bucket_bounds(pd.Index(list(counts_by_label)))
    if not parsed:
        return math.nan
    bounds = np.array([bound for bound, _ in parsed])
    counts = np.array([[counts_by_label[column] for _, column in parsed]])
    return float(_quantiles(q, bounds, counts)[0])


def latency_quantile(
    buckets: pd.DataFrame, q: float = DEFAULT_QUANTILE, window: timedelta | None = None
) -> pd.Series:
    """A latency quantile over time from a histogram's bucket counters.

    Args:
        buckets: one column per bucket bound (``le``: a number or a label string such as
            ``"+Inf"``), values the cumulative bucket counters over time, as returned by
            ``MetricSource.query_range_by(..., by="le")`` on ``<histogram>_bucket``.
        q: the quantile, in [0, 1].
        window: each point covers the trailing ``window``; ``None`` means the interval since
            the previous sample.

    Returns:
        The quantile at each time the buckets were observed; NaN where nothing was observed.

    Raises:
        ValueError: ``q`` is outside [0, 1].
    """
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile must be in [0, 1], got {q}")
    parsed = _bucket_bounds(buckets.columns)
    if not parsed or buckets.empty:
        return empty_series()
    grown: dict[float, pd.Series] = {}
    for bound, column in parsed:
        per_sample = increase(buckets[column])
        if window is not None and not per_sample.empty:
            per_sample = per_sample.rolling(pd.Timedelta(window)).sum()
        grown[bound] = per_sample
    frame = pd.DataFrame(grown).sort_index()
    if frame.empty:
        return empty_series()
    values = _quantiles(q, np.array(list(frame.columns), dtype=float), frame.to_numpy())
    return pd.Series(values, index=frame.index)


def window_quantile(
    source: MetricSource,
    service: str,
    histogram: str,
    start: datetime,
    end: datetime,
    step: timedelta,
    q: float = DEFAULT_QUANTILE,
    labels: Mapping[str, str] | None = None,
) -> float:
    """One latency quantile (p95 by default) of a histogram over ``[start, end]``.

    The count each bucket gained over the window (resets included) is one histogram of the
    requests served in that window; its quantile is what an SLO on latency is judged by.

    Args:
        source: where the bucket counters are read from.
        service: the service whose histogram it is.
        histogram: the histogram's name, e.g. ``pilot_request_duration_seconds`` (a name that
            already ends in ``_bucket`` is accepted too).
        start: beginning of the window.
        end: end of the window.
        step: resolution the buckets are read at (the scrape interval or coarser).
        q: the quantile, in [0, 1].
        labels: further label matchers, e.g. ``{"path": "/"}``.

    Returns:
        The quantile in the histogram's unit, or NaN when nothing was observed in the window.
    """
    metric = histogram if histogram.endswith("_bucket") else f"{histogram}_bucket"
    frame = source.query_range_by(service, metric, "le", start, end, step, labels)
    counts: dict[str, float] = {}
    for column in frame.columns:
        counts[str(column)] = float(increase(frame[column]).sum())
    return histogram_quantile(q, counts)
