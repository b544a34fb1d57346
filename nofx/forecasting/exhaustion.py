"""Time to exhaustion: when a resource's forecast reaches its limit, and how sure that is.

Two views of the same series, the earlier warning wins:

- the forecast's quantiles (`Forecaster`: the mean as the median, the 80% and 95% bands as the
  10/90 and 2.5/97.5 percentiles): the probability that the value is above the limit at each
  step ahead, read off a piecewise-linear distribution through those five points;
- the recent trend (`recent_trend`): a Theil-Sen line through the last samples with its 95%
  confidence band for the slope, plus the residual spread. Trees do not extrapolate, and a leak
  that began an hour ago is not in a day of history: only a trend sees a ramp to the limit. A
  trend counts only when its slope is positive with 95% confidence. A trend is the level's
  rise, and the peaks riding on the level reach the limit first: its times to exhaustion are
  those at which the level comes within the series' usual peak (`usual_peak`) of the limit.

`Exhaustion.eta` is when the median path crosses the limit (for a trend: comes within the usual
peak of it); `earliest` and `latest` bracket it (where the upper and lower quantiles cross);
`probability` is the largest probability of being over the limit within the horizon.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pandas as pd
from scipy.stats import theilslopes

FloatArray = npt.NDArray[np.float64]

# The peaks a trend's level carries (`usual_peak`): a high quantile of the excursions seen.
PEAK_QUANTILE = 0.995

# The five points of a forecast's distribution at each step, low to high.
_LEVELS = np.array([0.025, 0.10, 0.50, 0.90, 0.975])


@dataclass(frozen=True)
class Quantiles:
    """A forecast's distribution per step ahead: `paths[k]` is the `_LEVELS[k]` quantile."""

    times: FloatArray
    paths: FloatArray  # shape (5, steps)

    @classmethod
    def of(
        cls,
        times: FloatArray,
        mean: FloatArray,
        band80: tuple[FloatArray, FloatArray],
        band95: tuple[FloatArray, FloatArray],
    ) -> Quantiles:
        paths = np.vstack([band95[0], band80[0], mean, band80[1], band95[1]])
        return cls(np.asarray(times, dtype=np.float64), np.sort(paths, axis=0))

    def over(self, limit: float) -> FloatArray:
        """Probability of being above `limit` at each step."""
        out = np.empty(self.paths.shape[1])
        for i in range(self.paths.shape[1]):
            q = self.paths[:, i]
            if limit <= q[0]:
                out[i] = 1 - _LEVELS[0] * _tail(limit, q[0], q[1] - q[0], below=True)
            elif limit >= q[-1]:
                out[i] = (1 - _LEVELS[-1]) * _tail(limit, q[-1], q[-1] - q[-2], below=False)
            else:
                out[i] = 1 - float(np.interp(limit, q, _LEVELS))
        return out

    def crossing(self, row: int, limit: float) -> float | None:
        """When quantile path `row` first reaches `limit`; None within the horizon."""
        path = self.paths[row]
        hit = np.flatnonzero(path >= limit)
        if not len(hit):
            return None
        i = int(hit[0])
        if i == 0:
            return float(self.times[0])
        # linear between the step before and the step that reached it
        before, after = path[i - 1], path[i]
        share = (limit - before) / (after - before) if after > before else 1.0
        return float(self.times[i - 1] + share * (self.times[i] - self.times[i - 1]))


def _tail(limit: float, edge: float, width: float, *, below: bool) -> float:
    """How much of the outer 2.5% lies beyond `limit` (exponential tail; 1 at the edge)."""
    width = max(width, 1e-12)
    distance = (edge - limit) if below else (limit - edge)
    return float(np.exp(-max(distance, 0.0) / width))


@dataclass(frozen=True)
class Exhaustion:
    """When a series reaches its limit, as far as the horizon goes."""

    limit: float
    probability: float
    eta: float | None
    earliest: float | None
    latest: float | None
    source: str  # "forecast", "trend" or "none"


def exhaustion(
    quantiles: Quantiles,
    limit: float,
    source: str,
    peak: float = 0.0,
    peaks: Peaks | None = None,
) -> Exhaustion:
    """How sure the paths are to reach `limit` within the horizon, and when. With `peak` (how far
    samples rise above the paths' level) the times are those at which the level comes within
    `peak` of the limit: its peaks reach the limit then. With `peaks` (the excursions the
    level's samples have shown) the probability is also that of a sample riding on the level
    reaching the limit (`Peaks.reach`), the larger of the two counting."""
    over = quantiles.over(limit)
    probability = float(over.max()) if len(over) else 0.0
    if peaks is not None:
        probability = max(probability, peaks.reach(quantiles, limit))
    reached = limit - max(peak, 0.0)
    return Exhaustion(
        limit=limit,
        probability=round(probability, 4),
        eta=quantiles.crossing(2, reached),
        earliest=quantiles.crossing(4, reached),
        latest=quantiles.crossing(0, reached),
        source=source if probability > 0.025 else "none",
    )


def seasonal_expectation(values: npt.ArrayLike, season: int, days: int = 3) -> FloatArray:
    """What each step would be on an ordinary day: the mean of the same step on up to `days`
    earlier days (NaN where there is none). A daily rise is expected; a leak is not."""
    y = np.asarray(values, dtype=np.float64)
    stack = np.full((days, len(y)), np.nan)
    for d in range(1, days + 1):
        if d * season < len(y):
            stack[d - 1, d * season :] = y[: len(y) - d * season]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: no earlier day
        return np.asarray(np.nanmean(stack, axis=0), dtype=np.float64)


def usual_rise(departures: npt.ArrayLike, window: int, quantile: float = 0.99) -> float | None:
    """How steep a rise over `window` steps the departures have shown before: the `quantile`
    of the least-squares slopes (per step) of every earlier window of the rolling median, None
    with fewer than a hundred of them. A busy day rises too; only a rise steeper than what was
    seen is a trend."""
    y = np.asarray(departures, dtype=np.float64)[:-window]  # the windows before the current
    if len(y) < window + 100:
        return None
    # A spike is no rise: the slopes are of the rolling median, as a leak survives it.
    width = max(3, window // 6)
    y = pd.Series(y).rolling(width, center=True, min_periods=1).median().to_numpy()
    x = np.arange(window, dtype=np.float64) - (window - 1) / 2
    kernel = x[::-1] / float(np.sum(x * x))
    filled = np.where(np.isfinite(y), y, np.nan)
    slopes = np.convolve(np.nan_to_num(filled), kernel, mode="valid")
    valid = np.convolve(np.isfinite(filled).astype(np.float64), np.ones(window), mode="valid")
    slopes = slopes[valid == window]
    return float(np.quantile(slopes, quantile)) if len(slopes) >= 100 else None


def usual_peak(values: npt.ArrayLike, width: int, quantile: float = PEAK_QUANTILE) -> float:
    """How far a sample rises above its level: the `quantile` of the excursions of `values`
    above their centred rolling median over `width` steps (0 with fewer than 2 * `width`
    finite samples, never negative). A leak raises the level; the resource fails at the first
    peak riding on it that reaches the limit, not when the level does."""
    y = pd.Series(np.asarray(values, dtype=np.float64))
    if int(y.notna().sum()) < 2 * width:
        return 0.0
    level = y.rolling(width, center=True, min_periods=1).median()
    excursion = (y - level).to_numpy()
    excursion = excursion[np.isfinite(excursion)]
    return max(0.0, float(np.quantile(excursion, quantile))) if len(excursion) else 0.0


# How likely each of a forecast's five quantile paths is, as a scenario of the level: the
# probability mass nearest each point of `_LEVELS` (the midpoints between them are the cuts).
_PATH_WEIGHTS = np.diff(np.concatenate([[0.0], (_LEVELS[1:] + _LEVELS[:-1]) / 2, [1.0]]))


@dataclass(frozen=True)
class Peaks:
    """The highest excursion above its level that a series showed in each block of `width`
    steps (one block of samples at a time: a spike that lasts several samples is one peak)."""

    width: int
    block_max: FloatArray  # sorted, ascending

    @classmethod
    def of(cls, values: npt.ArrayLike, width: int) -> Peaks | None:
        """The peaks of `values` about their centred rolling median over `width` steps; None
        with fewer than ten whole blocks of finite samples."""
        y = pd.Series(np.asarray(values, dtype=np.float64))
        excursion = (y - y.rolling(width, center=True, min_periods=1).median()).to_numpy()
        blocks = len(excursion) // width
        if blocks < 10:
            return None
        shaped = excursion[len(excursion) - blocks * width :].reshape(blocks, width)
        whole = np.isfinite(shaped).all(axis=1)
        if int(whole.sum()) < 10:
            return None
        return cls(width, np.sort(shaped[whole].max(axis=1)))

    def survival(self, needed: FloatArray) -> FloatArray:
        """The share of blocks whose peak rose at least `needed` above the level."""
        at_least = len(self.block_max) - np.searchsorted(self.block_max, needed, side="left")
        return np.asarray(at_least / len(self.block_max), dtype=np.float64)

    def reach(self, quantiles: Quantiles, limit: float) -> float:
        """The probability that some sample reaches `limit` within the paths' horizon: each
        quantile path is a scenario of the level (weighted by the probability mass it stands
        for); along one, every block of `width` steps fails when its peak reaches from the
        block's highest level to the limit, blocks independently, as the peaks were seen."""
        steps = quantiles.paths.shape[1]
        blocks = -(-steps // self.width)
        padded = np.full((len(_LEVELS), blocks * self.width), -np.inf)
        padded[:, :steps] = quantiles.paths
        level = padded.reshape(len(_LEVELS), blocks, self.width).max(axis=2)
        quiet = np.prod(1.0 - self.survival(limit - level), axis=1)
        return float(np.sum(_PATH_WEIGHTS * (1.0 - quiet)))


def recent_trend(
    times: npt.ArrayLike,
    values: npt.ArrayLike,
    horizon_times: npt.ArrayLike,
    *,
    expected: npt.ArrayLike | None = None,
    expected_ahead: npt.ArrayLike | None = None,
    trust: float = 4.0,
    floor: float | None = None,
) -> Quantiles | None:
    """Quantile paths of a Theil-Sen line through (times, values), or None without a rising
    trend (slope not above 0 with 95% confidence, or fewer than 6 samples).

    With `expected` (the ordinary value at each of `times`, as `seasonal_expectation` gives)
    the line goes through the departures from it, and the paths ride on `expected_ahead`: the
    day's own rise is no trend, a leak on top of it is. A line is trusted `trust` times its own
    span ahead; beyond that the paths end. With `floor` (a slope per second, as `usual_rise`
    gives per step divided by the step) the slope must also be above it.
    """
    stamps, ys = np.asarray(times, dtype=np.float64), np.asarray(values, dtype=np.float64)
    ahead_times = np.asarray(horizon_times, dtype=np.float64)
    base_now = np.zeros_like(ys) if expected is None else np.asarray(expected, dtype=np.float64)
    base_ahead = (
        np.zeros_like(ahead_times)
        if expected_ahead is None
        else np.asarray(expected_ahead, dtype=np.float64)
    )
    departure = ys - base_now
    finite = np.isfinite(departure) & np.isfinite(stamps)
    t, y = stamps[finite], departure[finite]
    if len(y) < 6 or np.ptp(t) <= 0:
        return None
    slope, intercept, low95, high95 = theilslopes(y, t, alpha=0.95)
    if not low95 > 0 or (floor is not None and not slope > floor):
        return None
    _, _, low80, high80 = theilslopes(y, t, alpha=0.80)
    residual = y - (intercept + slope * t)
    spread80, spread95 = np.quantile(np.abs(residual), [0.80, 0.95])
    anchor = t[-1]
    keep = (ahead_times > anchor) & (ahead_times <= anchor + trust * np.ptp(t))
    keep &= np.isfinite(base_ahead)
    if not keep.any():
        return None
    level = intercept + slope * anchor
    ahead = ahead_times[keep] - anchor
    base = base_ahead[keep]
    paths = np.vstack(
        [
            base + level + low95 * ahead - spread95,
            base + level + low80 * ahead - spread80,
            base + level + slope * ahead,
            base + level + high80 * ahead + spread80,
            base + level + high95 * ahead + spread95,
        ]
    )
    return Quantiles(ahead_times[keep], paths)


def earliest_warning(candidates: list[Exhaustion]) -> Exhaustion:
    """The candidate that warns first: of those sure enough to alarm, the earliest eta (a short
    window sees a leak's true slope where a long one still averages it with the calm before);
    with none, the highest probability, then the earliest eta."""
    sure = [c for c in candidates if c.eta is not None and c.probability >= ALARM_PROBABILITY]
    if sure:
        return min(sure, key=lambda e: (e.eta if e.eta is not None else 0.0, -e.probability))
    return min(
        candidates,
        key=lambda e: (-e.probability, e.eta if e.eta is not None else float("inf")),
    )


# The product's alarm rule, the same offline (benchmarks/prevention.py) and live.
TREND_WINDOWS = (36, 72, 144)  # steps: 3, 6 and 12 hours at 5-minute steps
TREND_TRUST = 1.0  # a trend is extrapolated at most its own span ahead
PEAK_WIDTH_S = 3600.0  # a sample's level: the median of the hour around it
ALARM_PROBABILITY = 0.8
CONFIRM_CHECKS = 2  # alarms in a row before maintenance is booked, as detection confirms


def assess(
    start: float,
    step: float,
    values: npt.ArrayLike,
    limit: float,
    horizon: int,
    *,
    forecast: Quantiles | None = None,
) -> Exhaustion | None:
    """The earliest warning for a series (one value per `step` from `start`) against `limit`:
    the forecast's quantiles, and the rise of the last 3, 6 and 12 hours (in steps) over what
    an ordinary day does, when it is steeper than any such rise before or goes where the series
    has never been — None when nothing points at the limit. A trend is the level's: the alarm's
    probability is of the level reaching the limit (an ordinary rise carrying spikes is no
    leak), but its times are those at which the level's usual peaks (`usual_peak` of the samples
    before the rise) reach it, as the first sample over the limit is the failure. The
    forecast's bands are of samples, peaks included, and are judged against the limit itself."""
    y = np.asarray(values, dtype=np.float64)
    if len(y) < 6:
        return None
    season = max(1, round(86_400.0 / step))
    now = start + (len(y) - 1) * step
    ahead_times = now + step * np.arange(1, horizon + 1, dtype=np.float64)
    found: list[Exhaustion] = []
    if forecast is not None:
        keep = forecast.times > now
        if keep.any():
            found.append(
                exhaustion(
                    Quantiles(forecast.times[keep], forecast.paths[:, keep]), limit, "forecast"
                )
            )
    has_days = len(y) > season
    expected = seasonal_expectation(y, season) if has_days else np.zeros_like(y)
    expected_ahead = (
        seasonal_expectation(np.concatenate([y, np.full(horizon, np.nan)]), season)[len(y) :]
        if has_days
        else np.zeros(horizon)
    )
    departures = y - expected
    times = start + step * np.arange(len(y), dtype=np.float64)
    peak_width = max(3, round(PEAK_WIDTH_S / step))
    for window in TREND_WINDOWS:
        if window > len(y):
            continue
        # Rising steeper than ever before, or rising where it has never been: either is a trend
        # (a series that jumps about has steep rises, but not to a level it never reached).
        # "Never been" is of the level: a spike of the past is not a level it held.
        unprecedented = (
            bool(np.median(y[-6:]) > _highest_level(y[:-window], peak_width))
            if len(y) > window
            else False
        )
        usual = usual_rise(departures, window) if has_days and not unprecedented else None
        trend = recent_trend(
            times[-window:],
            y[-window:],
            ahead_times,
            expected=expected[-window:],
            expected_ahead=expected_ahead,
            trust=TREND_TRUST,
            floor=None if usual is None else max(usual, 0.0) / step,
        )
        if trend is not None:
            # the level's peaks reach the limit before it does: those seen before the rise
            before = y[:-window] if len(y) > window else y[:0]
            peak = usual_peak(before, peak_width)
            found.append(
                exhaustion(
                    trend,
                    limit,
                    f"trend {window * step / 3600:g}h",
                    peak,
                    Peaks.of(before, peak_width),
                )
            )
    return earliest_warning(found) if found else None


def _highest_level(values: FloatArray, width: int) -> float:
    """The highest the series' level (its centred rolling median over `width` steps) has been."""
    if not np.isfinite(values).any():
        return -np.inf
    level = pd.Series(values).rolling(width, center=True, min_periods=1).median()
    return float(np.nanmax(level.to_numpy()))


def alarming(warning: Exhaustion | None) -> bool:
    """Whether a warning is an alarm (before confirmation)."""
    return (
        warning is not None and warning.eta is not None and warning.probability >= ALARM_PROBABILITY
    )
