"""The project's forecaster: the best of its candidates on a recent backtest, with conformal
intervals from that same backtest.

For a family of series (one metric across services, or the columns of one trace), it

1. holds out the last days of each series (the calibration span: a week, or what is left after
   two days to learn from, at least a day) and fits each candidate on what comes before: the
   direct LightGBM model (`nofx.forecasting.direct`), its average with the naive forecast (a
   combination is often better than either), and the naive and seasonal naive forecasts;
2. forecasts from many origins inside the held-out span and keeps every path's errors, in units
   of the series' scale;
3. chooses, per horizon, the candidate with the lowest mean absolute error over the family
   (the choice and every candidate's error are part of the result);
4. refits the chosen candidate on everything and forecasts from the end of each series;
5. puts 80% and 95% intervals around it from the chosen candidate's own held-out errors at the
   same number of steps ahead (split conformal prediction, locally weighted: each error in
   units of how much the series moved just before its origin; quantiles of the signed errors,
   so a skewed series gets a skewed band). A series' band comes from its own errors at the
   steps ahead where it held out enough independent paths, and from the family's pooled errors
   further out, where its own are too few and too overlapping to say much.

Nothing is tuned per series: the same settings serve every family.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from nofx.forecasting.direct import DirectLightGBM, Track, scale_of, season_steps
from nofx.forecasting.series import Regular

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

CANDIDATES = ("lightgbm", "lightgbm+naive", "naive", "seasonal_naive")
LEVELS = (80, 95)
# Fewer held-out paths than this and a band from them would be guesswork: the band then grows
# from the one-step errors as a random walk's does.
MIN_PATHS = 8
# Non-overlapping held-out paths a series needs at a step ahead before its band there comes from
# its own errors alone (the series' errors are the ones exchangeable with its future; pooling
# the family's gives a band the family's restless members widen and its calm ones narrow).
# Measured on the shipped traces (benchmarks/forecast.py): pooled everywhere, the 80% band of the
# short alibaba series covered 0.87-0.96 of 12-step actuals and the family mean 85.5%.
OWN_PATHS = 30


@dataclass
class Forecast:
    """A forecast of one series from the end of its history."""

    key: str
    horizon: int
    model: str
    origin_time: float  # time of the last observed step
    step: float
    mean: FloatArray
    bands: dict[int, tuple[FloatArray, FloatArray]]
    backtest_mae: dict[str, float]
    calibration_paths: int
    notes: list[str] = field(default_factory=list)

    def times(self) -> FloatArray:
        return self.origin_time + self.step * np.arange(1, self.horizon + 1, dtype=np.float64)

    def lower(self, level: int) -> FloatArray:
        return self.bands[level][0]

    def upper(self, level: int) -> FloatArray:
        return self.bands[level][1]


def naive_paths(values: FloatArray, origins: IntArray, horizon: int) -> FloatArray:
    return np.repeat(values[origins][:, None], horizon, axis=1)


def seasonal_naive_paths(
    values: FloatArray, origins: IntArray, horizon: int, season: int
) -> FloatArray:
    """The value one season (or as many as it takes) before each target step."""
    ahead = np.arange(1, horizon + 1)
    back = season * np.ceil(ahead / season).astype(np.int64)
    index = origins[:, None] + ahead[None, :] - back[None, :]
    return np.asarray(values[np.clip(index, 0, len(values) - 1)], dtype=np.float64)


@dataclass
class _Held:
    """One series' held-out paths: origins, actual values, and each candidate's forecasts."""

    track: Track
    origins: IntArray
    actual: FloatArray
    paths: dict[str, FloatArray]


class Forecaster:
    """Forecasts of a family of series for `horizons` steps ahead (one fit serves them all).

    Args:
        horizons: the numbers of steps ahead to forecast; each gets its own model choice.
        calibration_days: the held-out span at the end of each series.
        path_stride: steps between held-out origins.
        candidates: which of `CANDIDATES` may be chosen.
    """

    def __init__(
        self,
        horizons: tuple[int, ...],
        *,
        calibration_days: float = 7.0,
        path_stride: int = 12,
        candidates: tuple[str, ...] = CANDIDATES,
    ) -> None:
        if not horizons or min(horizons) < 1:
            raise ValueError(f"horizons must be positive step counts, not {horizons!r}")
        unknown = sorted(set(candidates) - set(CANDIDATES))
        if unknown:
            raise ValueError(f"unknown candidates {unknown}; expected some of {CANDIDATES}")
        self.horizons = tuple(sorted(set(horizons)))
        self.horizon = max(self.horizons)
        self.calibration_days = calibration_days
        self.path_stride = path_stride
        self.candidates = candidates

    def forecast(self, family: list[tuple[str, Regular]]) -> dict[int, list[Forecast]]:
        """Per horizon, a forecast of each series of `family` (all on the same step).

        Raises:
            ValueError: the series do not share one step, or one is empty.
        """
        steps = {s.step for _, s in family}
        if len(steps) != 1:
            raise ValueError(f"a family's series must share one step, not {sorted(steps)}")
        for key, series in family:
            if len(series.values) < 2:
                raise ValueError(f"{key}: {len(series.values)} sample(s), at least 2 are needed")
        tracks = [Track(s.values, s.start, s.step, scale_of(s.values)) for _, s in family]
        held, notes = self._hold_out(tracks)
        final: DirectLightGBM | None = None
        out: dict[int, list[Forecast]] = {}
        for horizon in self.horizons:
            mae = _mae(held, horizon)
            chosen = min(mae, key=lambda m: (mae[m], CANDIDATES.index(m)))
            if chosen.startswith("lightgbm") and final is None:
                final = DirectLightGBM(self.horizon)
                final.fit(tracks)
            out[horizon] = [
                self._one(key, track, horizon, chosen, mae, final, notes, held, own)
                for (key, _), track, own in zip(family, tracks, held, strict=True)
            ]
        return out

    # -- the held-out span ---------------------------------------------------------------------

    def _hold_out(self, tracks: list[Track]) -> tuple[list[_Held], list[str]]:
        """Fit the candidates before each series' held-out span and forecast inside it."""
        notes: list[str] = []
        cuts = []
        for track in tracks:
            season = season_steps(track.step)
            n = len(track.values)
            # Leave the model its two days to learn from while a day or more is held out;
            # shorter series hold out what they can for the baselines.
            learnable = n - 2 * season
            span = min(
                round(self.calibration_days * season),
                learnable if learnable >= season else n - season - 1,
            )
            cuts.append(max(season, len(track.values) - max(span, 0)))
        model: DirectLightGBM | None = None
        if any(c.startswith("lightgbm") for c in self.candidates):
            model = DirectLightGBM(self.horizon)
            before = [
                Track(t.values[:cut], t.start, t.step, t.scale)
                for t, cut in zip(tracks, cuts, strict=True)
            ]
            usable = all(
                len(b.values) >= model.min_length(b.step) and cut <= len(t.values) - 2
                for b, t, cut in zip(before, tracks, cuts, strict=True)
            )
            if not usable or not model.fit(before):
                model = None
                notes.append("lightgbm: too little history to learn and hold out (2 days + span)")
        held = []
        for track, cut in zip(tracks, cuts, strict=True):
            season = season_steps(track.step)
            n = len(track.values)
            last = n - 2  # an origin needs at least one step after it
            origins = np.arange(cut - 1, last + 1, self.path_stride, dtype=np.int64)
            origins = origins[origins >= 0]
            ahead = origins[:, None] + np.arange(1, self.horizon + 1)[None, :]
            actual = np.where(ahead < n, track.values[np.clip(ahead, 0, n - 1)], np.nan)
            paths: dict[str, FloatArray] = {}
            if "naive" in self.candidates:
                paths["naive"] = naive_paths(track.values, origins, self.horizon)
            if "seasonal_naive" in self.candidates:
                paths["seasonal_naive"] = seasonal_naive_paths(
                    track.values, origins, self.horizon, season
                )
            if model is not None and len(origins):
                paths["lightgbm"] = model.predict(track, origins, self.horizon)
                naive = naive_paths(track.values, origins, self.horizon)
                paths["lightgbm+naive"] = (paths["lightgbm"] + naive) / 2
            held.append(
                _Held(
                    track,
                    origins,
                    actual,
                    {name: p for name, p in paths.items() if name in self.candidates},
                )
            )
        return held, notes

    # -- one series ----------------------------------------------------------------------------

    def _one(
        self,
        key: str,
        track: Track,
        horizon: int,
        chosen: str,
        mae: dict[str, float],
        final: DirectLightGBM | None,
        notes: list[str],
        family_held: list[_Held],
        own_held: _Held,
    ) -> Forecast:
        origin = np.array([len(track.values) - 1], dtype=np.int64)
        season = season_steps(track.step)
        if chosen.startswith("lightgbm"):
            assert final is not None
            mean = final.predict(track, origin, horizon)[0]
            if chosen == "lightgbm+naive":
                mean = (mean + naive_paths(track.values, origin, horizon)[0]) / 2
        elif chosen == "seasonal_naive":
            mean = seasonal_naive_paths(track.values, origin, horizon, season)[0]
        else:
            mean = naive_paths(track.values, origin, horizon)[0]
        # Locally weighted: each held-out error in units of how much the series was moving
        # just before its origin, so the band is wide when the series is restless and narrow
        # when it is calm (the conformal guarantee holds for any such fixed scaling).
        # The family's series share the model and the scaling, so where one series' own errors
        # are too few their scaled errors are pooled: more days behind a long horizon's band
        # than one series holds out.
        errors = _calibration_errors(
            _scaled_errors(own_held, chosen, horizon),
            np.vstack([_scaled_errors(h, chosen, horizon) for h in family_held]),
            self.path_stride,
        )
        paths = int(np.sum(np.isfinite(errors[:, 0]))) if len(errors) else 0
        bands = {
            level: _band(errors, mean, float(_volatility(track.values, origin)[0]), level)
            if paths >= MIN_PATHS
            else _random_walk_band(track, mean, level)
            for level in LEVELS
        }
        own = list(notes)
        if paths < MIN_PATHS:
            own.append(f"{paths} held-out paths: bands grow from the one-step changes")
        return Forecast(
            key=key,
            horizon=horizon,
            model=chosen,
            origin_time=track.start + (len(track.values) - 1) * track.step,
            step=track.step,
            mean=mean,
            bands=bands,
            backtest_mae={m: round(v, 6) for m, v in mae.items()},
            calibration_paths=paths,
            notes=own,
        )


def _mae(held: list[_Held], horizon: int) -> dict[str, float]:
    """Each candidate's mean absolute scaled error over the family's held-out paths."""
    found: dict[str, float] = {}
    names = set.intersection(*(set(h.paths) for h in held)) if held else set()
    for name in sorted(names):
        total, count = 0.0, 0
        for h in held:
            err = np.abs(h.actual[:, :horizon] - h.paths[name][:, :horizon]) / h.track.scale
            finite = np.isfinite(err)
            total += float(err[finite].sum())
            count += int(finite.sum())
        if count:
            found[name] = total / count
    return found or {"naive": math.inf}


def _scaled_errors(held: _Held, chosen: str, horizon: int) -> FloatArray:
    """A series' held-out errors of `chosen`, each in units of the movement before its origin."""
    moving = _volatility(held.track.values, held.origins)[:, None]
    scaled: FloatArray = (held.actual[:, :horizon] - held.paths[chosen][:, :horizon]) / moving
    return scaled


def _calibration_errors(own: FloatArray, pooled: FloatArray, stride: int) -> FloatArray:
    """Per step ahead, the series' own scaled errors where it has `OWN_PATHS` non-overlapping
    paths there (held-out paths start every `stride` steps, so a path of h steps overlaps
    h / stride others), else the family's pooled ones; rows the own errors lack are NaN."""
    counts = np.sum(np.isfinite(own), axis=0)
    steps = np.arange(1, own.shape[1] + 1)
    enough = counts * stride / np.maximum(steps, stride) >= OWN_PATHS
    padded = np.full_like(pooled, np.nan)
    padded[: len(own)] = own
    chosen: FloatArray = np.where(enough[None, :], padded, pooled)
    return chosen


def _volatility(values: FloatArray, origins: IntArray, width: int = 12) -> FloatArray:
    """How much the series moved over the `width` steps before each origin (mean absolute
    change), never below a tenth of its usual movement."""
    changes = np.abs(np.diff(values))
    usual = float(np.mean(changes)) if len(changes) else 0.0
    floor = max(0.1 * usual, 1e-12)
    cumsum = np.concatenate([[0.0], np.cumsum(changes)])
    hi = np.clip(origins, 0, len(changes))
    lo = np.clip(origins - width, 0, len(changes))
    span = np.maximum(hi - lo, 1)
    moved: FloatArray = np.maximum((cumsum[hi] - cumsum[lo]) / span, floor)
    return moved


def _band(
    errors: FloatArray, mean: FloatArray, moving: float, level: int
) -> tuple[FloatArray, FloatArray]:
    """Split-conformal band: quantiles of the held-out signed (scaled) errors at each step
    ahead, pooled with the neighbouring steps (±10%), with the finite-sample correction."""
    alpha = 1 - level / 100
    horizon = len(mean)
    lo, hi = np.empty(horizon), np.empty(horizon)
    last: tuple[int, float, float] | None = None
    for h in range(horizon):
        width = round(0.1 * (h + 1))
        pool = errors[:, max(0, h - width) : h + width + 1]
        pool = pool[np.isfinite(pool)]
        n = len(pool)
        if n < MIN_PATHS and last is not None:
            # Past what the held-out span could see: the band keeps growing as a random walk's.
            grow = math.sqrt((h + 1) / (last[0] + 1))
            lo[h], hi[h] = last[1] * grow, last[2] * grow
            continue
        if n == 0:
            lo[h] = hi[h] = 0.0
            continue
        q_hi = min(1.0, math.ceil((n + 1) * (1 - alpha / 2)) / n)
        q_lo = max(0.0, 1 - q_hi)
        lo[h], hi[h] = np.quantile(pool, q_lo), np.quantile(pool, q_hi)
        last = (h, float(lo[h]), float(hi[h]))
    return mean + lo * moving, mean + hi * moving


def _random_walk_band(track: Track, mean: FloatArray, level: int) -> tuple[FloatArray, FloatArray]:
    """Too few held-out paths: a normal band growing with the square root of the steps."""
    changes = np.diff(track.values)
    sd = float(np.std(changes)) if len(changes) > 1 else track.scale
    z = {80: 1.2816, 95: 1.9600}[level]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        spread = z * sd * np.sqrt(np.arange(1, len(mean) + 1))
    return mean - spread, mean + spread
