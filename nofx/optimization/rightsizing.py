"""Rightsizing: what size a resource needs, by time of day, with the risk of outgrowing it stated.

From the last days of a usage series (memory, CPU, a pool's busy connections) at a fixed step:

1. the trend: the slope of the daily means when they rise (a size that ignores growth is outgrown
   by the next day), never negative — a falling series is sized as if flat; every day is brought
   to the last day's level before the rest;
2. the profile: per step of the day, the usual day's peak near it — the median over the days of
   each day's highest usage within an hour either side — and one day's growth on top, since the
   size serves the day after;
3. the headroom: calibrated, not guessed, by leaving each day out (the jackknife): the profile of
   the other days is set against the day left out, the excesses of all days are pooled and the
   headroom is their `1 - risk` quantile. Each day is judged by a profile built like the one
   recommended, so the share of steps the recommendation is outgrown on the days after is close
   to `risk` (`exceed_probability` is that share on the days seen, with the chosen headroom).
   Calibrating on earlier days only (profile of days 1..k judged on day k+1) judges profiles of
   fewer days than the one recommended; with a median profile it understates the risk.

Measured on the shipped traces (`benchmarks/rightsizing.py --data ../shared/datasets/traces`,
7 days, risk 0.01): usage was above this recommendation in 0.68% of the following days' steps
for Google's memory (37.7% saved against its assigned memory) and in 1.16% on average over the
usage-only series (18.7% saved against the peak + 15%). The earlier profile, the highest of all
days with a headroom calibrated forward (profile of days 1..k judged on day k+1), was outgrown in
0.91% and 1.03% and saved 38.4% and 15.6%: with a median profile, forward calibration judges
profiles of fewer days than the one recommended and understated the risk (2.3% outgrown).

With under four days there is nothing to calibrate on: the profile gets the usual 15% margin
(a day or more) or the whole history's peak + 15% (less than a day), and the notes say so.
A resource that cannot change size with the time of day takes `static()`, the profile's peak.

The input is a `Regular` series (`nofx.forecasting.series`): duplicates, order, NaN and gaps are
already repaired and reported there; the notes carry that report on.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from nofx.forecasting.series import Regular

FloatArray = npt.NDArray[np.float64]

DAY_S = 86_400.0
MARGIN = 0.15  # the conventional margin where calibration is impossible
MIN_CALIBRATION_DAYS = 4  # three days to build a profile from and one to judge it on


@dataclass(frozen=True)
class Rightsizing:
    """A recommended size for each step of the day, valid from `end` on."""

    step: float
    end: float  # time just after the last sample the recommendation saw
    profile: FloatArray  # size per step of the day, indexed by (time % day) // step
    trend_per_day: float
    headroom: float
    risk: float
    exceed_probability: float | None  # measured on the forward-chained backtest; None if none
    days: int
    notes: list[str] = field(default_factory=list)

    def size_at(self, times: npt.ArrayLike) -> FloatArray:
        """The recommended size at each of `times` (seconds), growing by a day's trend for each
        day started after `end`."""
        t = np.asarray(times, dtype=np.float64)
        slots = (np.floor(np.mod(t, DAY_S) / self.step).astype(np.int64)) % len(self.profile)
        days_on = np.maximum(np.ceil((t - self.end) / DAY_S), 1.0) - 1.0
        sized: FloatArray = self.profile[slots] + self.trend_per_day * days_on
        return sized

    def static(self) -> float:
        """One size for the whole of the next day: the profile's peak."""
        return float(np.max(self.profile))


def recommend(series: Regular, *, days: float = 7.0, risk: float = 0.01) -> Rightsizing:
    """The time-of-day size for `series` from its last `days`, exceeded in a share `risk` of
    the steps of its own backtest.

    Raises:
        ValueError: `risk` outside (0, 0.5], a step longer than an hour, or no finite sample.
    """
    if not 0 < risk <= 0.5:
        raise ValueError(f"risk must be in (0, 0.5], not {risk!r}")
    if not 0 < series.step <= 3600:
        raise ValueError(f"step must be in (0, 3600] seconds, not {series.step!r}")
    per_day = round(DAY_S / series.step)
    if per_day * series.step != DAY_S:
        raise ValueError(f"step {series.step!r} s does not divide a day")
    values = np.asarray(series.values, dtype=np.float64)
    keep = round(days * per_day)
    first = max(0, len(values) - keep)
    values = values[first:]
    start = series.start + first * series.step
    end = start + len(values) * series.step
    if not np.isfinite(values).any():
        raise ValueError("no finite sample to size from")
    repaired = series.repairs.summary()
    notes = [] if repaired == "clean" else [f"series repaired: {repaired}"]
    # Align to the clock: index 0 of `grid` is the step of the day at 00:00.
    offset = round(float(np.mod(start, DAY_S)) / series.step) % per_day
    whole = (offset + len(values) + per_day - 1) // per_day
    grid = np.full(whole * per_day, np.nan)
    grid[offset : offset + len(values)] = values
    table = grid.reshape(whole, per_day)
    width = max(1, round(3600 / series.step))
    complete = int(np.sum(np.isfinite(table).all(axis=1)))
    if whole < 2 or complete < 1:
        peak = float(np.nanmax(values))
        notes.append(f"{len(values)} steps, under a day: the peak + {MARGIN:.0%} all day")
        size = peak + MARGIN * abs(peak)
        return Rightsizing(
            series.step, end, np.full(per_day, size), 0.0, MARGIN * abs(peak), risk, None, 0, notes
        )
    profile, slope = _profile(table, width)
    if whole < MIN_CALIBRATION_DAYS:
        headroom = MARGIN * float(np.nanmax(np.abs(profile)))
        notes.append(f"{whole} days: too few to calibrate the headroom, {MARGIN:.0%} margin")
        return Rightsizing(
            series.step, end, profile + headroom, slope, headroom, risk, None, whole, notes
        )
    adjusted = _level(table, slope)
    excess = [
        adjusted[k] - _shape(np.delete(adjusted, k, axis=0), width) for k in range(len(adjusted))
    ]
    pooled = np.concatenate(excess)
    pooled = pooled[np.isfinite(pooled)]
    headroom = max(0.0, float(np.quantile(pooled, 1 - risk))) if len(pooled) else 0.0
    measured = float(np.mean(pooled > headroom)) if len(pooled) else None
    return Rightsizing(
        series.step, end, profile + headroom, slope, headroom, risk, measured, whole, notes
    )


def _profile(table: FloatArray, width: int) -> tuple[FloatArray, float]:
    """The size per step of the day before headroom — the usual day's peak within `width` steps
    either side, at the last day's level, plus one day's growth — and that growth per day."""
    slope = _slope(table)
    return _shape(_level(table, slope), width) + slope, slope


def _slope(table: FloatArray) -> float:
    """Growth per day: the slope of the daily means, never below 0 (three days or more)."""
    means = np.array([np.nanmean(row) if np.isfinite(row).any() else math.nan for row in table])
    seen = np.isfinite(means)
    if seen.sum() < 3:
        return 0.0
    return max(0.0, float(np.polyfit(np.flatnonzero(seen), means[seen], 1)[0]))


def _level(table: FloatArray, slope: float) -> FloatArray:
    """Every day brought to the last day's level."""
    leveled: FloatArray = table - slope * (np.arange(len(table)) - (len(table) - 1))[:, None]
    return leveled


def _shape(table: FloatArray, width: int) -> FloatArray:
    """Per step of the day, the median over the days of each day's highest value within `width`
    steps either side (a step of the day never seen takes the shape's peak)."""
    wrapped = np.concatenate([table[:, -width:], table, table[:, :width]], axis=1)
    windows = np.lib.stride_tricks.sliding_window_view(wrapped, 2 * width + 1, axis=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN window or day: handled below
        peaks = np.nanmax(windows, axis=2)
        shape: FloatArray = np.nanmedian(peaks, axis=0)
    if not np.isfinite(shape).all():
        shape = np.where(np.isfinite(shape), shape, np.nanmax(shape))
    return shape
