"""A global LightGBM forecaster, direct and multi-horizon: one model for every step ahead.

One row per (origin, steps ahead): what the series did just before the origin (lags and rolling
means, relative to the value at the origin), what it did a day and a week earlier over the same
stretch of clock (the seasonal lags), the time of day and week of the target, and the number of
steps ahead. The target is the change from the origin to the target step, in units of the
series' own scale, so one model learns from every series of a family whatever their levels, and
a forecast of any horizon is one vectorised prediction (no recursion, so no error fed back).

Why not mlforecast: its recursive strategy feeds each step's prediction into the next (errors
compound over the 288 steps of a day) and its direct strategy trains one model per horizon (288
models); a horizon feature gives one model and one vectorised predict for all of them, and the
backtest and conformal calibration need predictions at many origins, which this does without a
loop over origins.
"""

from __future__ import annotations

from dataclasses import dataclass

import lightgbm as lgb
import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

DAY_S = 86_400.0
RECENT_LAGS = (1, 2, 3, 6, 12, 24, 48)
WINDOWS = (12, 48)
SEASONAL_DAYS = (1, 2, 7)
# The horizons training rows are made for; a prediction at another horizon falls between them.
TRAIN_HORIZONS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 36, 48, 72, 96, 144, 192, 240, 288)

PARAMS: dict[str, object] = {
    "objective": "l1",  # the median: MASE and sMAPE are absolute errors
    "learning_rate": 0.05,
    "num_leaves": 31,
    "min_data_in_leaf": 50,
    "feature_fraction": 0.8,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "lambda_l2": 1.0,
    "verbose": -1,
    "num_threads": 2,
    "seed": 7,
    "deterministic": True,
}
ROUNDS = 250


def scale_of(values: FloatArray) -> float:
    """The unit a series' changes are measured in: its mean absolute deviation (never 0)."""
    if len(values) == 0:
        return 1.0
    mad = float(np.mean(np.abs(values - np.mean(values))))
    return max(mad, 1e-6 * max(1.0, float(np.mean(np.abs(values)))), 1e-12)


def season_steps(step: float) -> int:
    """Steps in a day."""
    return max(1, round(DAY_S / step))


@dataclass(frozen=True)
class Track:
    """One series as the model reads it."""

    values: FloatArray
    start: float
    step: float
    scale: float


def features(track: Track, origins: IntArray, horizons: IntArray) -> FloatArray:
    """Rows for every (origin, horizon) pair, origin-major."""
    y = track.values
    season = season_steps(track.step)
    n = len(y)
    origin = np.repeat(origins, len(horizons))
    ahead = np.tile(horizons, len(origins))
    level = y[origin]
    cumsum = np.concatenate([[0.0], np.cumsum(y)])
    cumsq = np.concatenate([[0.0], np.cumsum(y * y)])

    def at(index: IntArray) -> FloatArray:
        # only what was known at the origin: nothing after it (no leak in training rows)
        known = (index >= 0) & (index <= origin)
        return np.where(known, y[np.clip(index, 0, n - 1)], np.nan)

    def rel(values: FloatArray) -> FloatArray:
        return (values - level) / track.scale

    columns: list[FloatArray] = [ahead.astype(np.float64), ahead / season]
    columns += [rel(at(origin - k)) for k in RECENT_LAGS]
    for width in (*WINDOWS, season):
        first = origin + 1 - width
        ok = first >= 0
        lo = np.clip(first, 0, n)
        total = cumsum[origin + 1] - cumsum[lo]
        squares = cumsq[origin + 1] - cumsq[lo]
        mean = np.where(ok, total / width, np.nan)
        columns.append(rel(mean))
        if width != season:
            var = np.maximum(squares / width - mean * mean, 0.0)
            columns.append(np.where(ok, np.sqrt(var), np.nan) / track.scale)
    for days in SEASONAL_DAYS:
        back = days * season
        then = at(origin + ahead - back)
        columns.append((then - at(origin - back)) / track.scale)  # that day's change
        columns.append(rel(then))  # that day's value at the target's time
    around = np.nanmean(
        np.stack([at(origin + ahead - season + j) for j in (-2, -1, 0, 1, 2)]), axis=0
    )
    columns.append(rel(around))
    target_time = track.start + (origin + ahead) * track.step
    origin_time = track.start + origin * track.step
    for moment in (target_time, origin_time):
        phase = 2 * np.pi * (moment % DAY_S) / DAY_S
        columns += [np.sin(phase), np.cos(phase)]
    columns.append(np.floor(target_time / DAY_S + 4) % 7)  # day of week (1970-01-01: Thursday)
    return np.column_stack(columns)


FEATURE_COUNT = 2 + len(RECENT_LAGS) + 2 * len(WINDOWS) + 1 + 2 * len(SEASONAL_DAYS) + 1 + 5


def _training_origins(length: int, season: int, horizon: int, budget: int) -> IntArray:
    """Origins with a day behind them and at least one step ahead, thinned to `budget`."""
    first, last = season, length - 2
    if last < first:
        return np.empty(0, dtype=np.int64)
    stride = max(1, (last - first + 1) // budget)
    return np.arange(last, first - 1, -stride, dtype=np.int64)[::-1]


class DirectLightGBM:
    """The model of one family of series, for horizons up to `horizon` steps."""

    def __init__(self, horizon: int, *, origins_per_series: int = 1500) -> None:
        self.horizon = horizon
        self.origins_per_series = origins_per_series
        self.booster: lgb.Booster | None = None
        self.rows = 0
        self.spread_h = np.ones(1)
        self.spread = np.ones(1)

    def min_length(self, step: float) -> int:
        """Samples a series needs before it can be learnt from: two days."""
        return 2 * season_steps(step)

    def fit(self, tracks: list[Track]) -> bool:
        """Train on every series long enough; False (and no model) when none is."""
        horizons = np.array([h for h in TRAIN_HORIZONS if h <= self.horizon], dtype=np.int64)
        if self.horizon not in horizons:
            horizons = np.append(horizons, self.horizon)
        blocks, targets = [], []
        for track in tracks:
            if len(track.values) < self.min_length(track.step):
                continue
            season = season_steps(track.step)
            origins = _training_origins(
                len(track.values), season, self.horizon, self.origins_per_series
            )
            x = features(track, origins, horizons)
            ahead = np.repeat(origins, len(horizons)) + np.tile(horizons, len(origins))
            keep = ahead < len(track.values)
            y = (
                track.values[np.minimum(ahead, len(track.values) - 1)]
                - track.values[np.repeat(origins, len(horizons))]
            ) / track.scale
            blocks.append(x[keep])
            targets.append(y[keep])
        if not blocks:
            self.booster = None
            return False
        x_all, y_all = np.concatenate(blocks), np.concatenate(targets)
        # Changes a day ahead dwarf those a step ahead: each horizon's targets are divided by
        # their typical size, so every horizon weighs the same in the loss.
        ahead_all = x_all[:, 0]
        self.spread_h = horizons.astype(np.float64)
        self.spread = np.array(
            [max(float(np.mean(np.abs(y_all[ahead_all == h]))), 1e-9) for h in horizons]
        )
        y_all = y_all / self._spread_at(ahead_all)
        self.rows = len(y_all)
        self.booster = lgb.train(
            PARAMS, lgb.Dataset(x_all, label=y_all, free_raw_data=True), num_boost_round=ROUNDS
        )
        return True

    def _spread_at(self, ahead: FloatArray) -> FloatArray:
        """The typical size of a change `ahead` steps on (interpolated in log steps)."""
        return np.interp(np.log(ahead), np.log(self.spread_h), self.spread)

    def predict(self, track: Track, origins: IntArray, horizon: int) -> FloatArray:
        """Forecast paths (len(origins) x horizon) from each origin, in the series' units."""
        if self.booster is None:
            raise RuntimeError("the model is not fitted")
        horizons = np.arange(1, horizon + 1, dtype=np.int64)
        x = features(track, origins, horizons)
        change = np.asarray(self.booster.predict(x), dtype=np.float64) * self._spread_at(x[:, 0])
        level = np.repeat(track.values[origins], horizon)
        return (level + change * track.scale).reshape(len(origins), horizon)
