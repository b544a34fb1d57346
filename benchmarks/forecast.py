"""How good are the forecasts? A rolling-origin backtest on real traces.

    python benchmarks/forecast.py --data FILE.csv|DIR [FILE.csv|DIR ...] [--horizons 12 288]
        [--days 7] [--origin-every 100] [--out F.json]

Each numeric column of each CSV is a series at 300-second steps; a column named `timestamp` is
the clock (the series are put on the 300-second grid by `nofx.forecasting.series.regular`, which
reports what it repaired: duplicates, order, gaps, NaN), else row i is step i. A directory stands
for the CSV files under it.

Origins every `--origin-every` steps (100: not a divisor of a day, so origins fall at every time
of day) over the last `--days` days of each series, each with at
least two days of history before it and the longest horizon after it. At each origin every model
is fitted only on the data up to it and forecasts the longest horizon; the first H steps of that
path are the H-step forecast. Models, in one run and one configuration for the whole corpus:

- `nofx`: the project's forecaster (`nofx.forecasting.forecaster.Forecaster`), all columns of a
  file as one family;
- `naive`, `seasonal_naive` (a day, 288 steps) and `mstl` (MSTL with a daily season and an
  AutoETS trend): statsforecast, with its own 80% and 95% intervals.

Per series, horizon and model: MASE (mean absolute error over the H steps, scaled by the
in-sample mean absolute error of the seasonal naive forecast on the data before the origin,
averaged over origins), sMAPE (%), and the share of actual values inside the 80% and 95%
intervals. Summary per horizon and model: the geometric mean over series of the MASE ratio to
seasonal naive, and to the best baseline of each series and horizon (the better of naive and
seasonal naive there). Prints a table, writes JSON:

    {"results": [{"file", "series", "horizon", "model", "mase", "smape", "coverage_80",
                  "coverage_95", "origins"}],
     "summary": [{"horizon", "model", "mase_ratio_to_seasonal_naive",
                  "mase_ratio_to_best_baseline", "coverage_80", "coverage_95", "series"}],
     "choices": {...}, "repairs": {...}, "seconds": ...}
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from _data import csv_files, write_report  # benchmarks/, beside this script

from nofx.forecasting.forecaster import LEVELS, Forecaster
from nofx.forecasting.series import Regular, read_csv

STEP = 300.0
SEASON = 288
MIN_HISTORY = 2 * SEASON
MODELS = ("nofx", "naive", "seasonal_naive", "mstl")
BASELINES = ("naive", "seasonal_naive")


@dataclass
class Score:
    """Running sums of one (series, horizon, model)."""

    mase: list[float] = field(default_factory=list)
    smape: list[float] = field(default_factory=list)
    inside: dict[int, list[float]] = field(default_factory=lambda: {lv: [] for lv in LEVELS})

    def add(
        self, actual: np.ndarray, mean: np.ndarray, bands: dict[int, Any], scale: float
    ) -> None:
        ok = np.isfinite(actual) & np.isfinite(mean)
        if not ok.any():
            return
        a, m = actual[ok], mean[ok]
        self.mase.append(float(np.mean(np.abs(a - m)) / scale))
        denominator = np.abs(a) + np.abs(m)
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(denominator > 0, 200 * np.abs(a - m) / denominator, 0.0)
        self.smape.append(float(np.mean(terms)))
        for level in LEVELS:
            lo, hi = bands[level]
            self.inside[level].append(float(np.mean((a >= lo[ok]) & (a <= hi[ok]))))


def load(path: Path) -> tuple[dict[str, Regular], dict[str, dict[str, Any]]]:
    """The file's series on the 300-second grid and what was repaired in each."""
    series = read_csv(path, STEP)
    return series, {key: reg.repairs.as_dict() for key, reg in series.items()}


def origins_of(length: int, days: float, every: int, horizon: int) -> list[int]:
    """Origin indices (the last observed step) over the last `days`, newest last."""
    first = max(MIN_HISTORY - 1, length - 1 - round(days * SEASON))
    last = length - 1 - horizon
    return list(range(last, first - 1, -every))[::-1] if last >= first else []


def seasonal_scale(history: np.ndarray) -> float:
    """In-sample MAE of the seasonal naive forecast (the MASE denominator)."""
    diffs = np.abs(history[SEASON:] - history[:-SEASON])
    scale = float(np.mean(diffs)) if len(diffs) else math.nan
    return scale if scale > 0 else max(1e-9, float(np.std(history)) or 1e-9)


def statsforecast_paths(
    histories: dict[str, np.ndarray], horizon: int
) -> dict[str, dict[str, tuple[np.ndarray, dict[int, Any]]]]:
    """statsforecast's naive, seasonal naive and MSTL forecasts (with intervals) per series."""
    from statsforecast import StatsForecast
    from statsforecast.models import MSTL, AutoETS, Naive, SeasonalNaive

    rows = [
        pd.DataFrame(
            {
                "unique_id": key,
                "ds": pd.date_range("2000-01-01", periods=len(values), freq="5min"),
                "y": values,
            }
        )
        for key, values in histories.items()
    ]
    models = [
        Naive(),
        SeasonalNaive(season_length=SEASON),
        MSTL(season_length=SEASON, trend_forecaster=AutoETS(model="ZZN")),
    ]
    engine = StatsForecast(models=models, freq="5min", n_jobs=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = engine.forecast(df=pd.concat(rows), h=horizon, level=list(LEVELS))
    names = {"Naive": "naive", "SeasonalNaive": "seasonal_naive", "MSTL": "mstl"}
    found: dict[str, dict[str, tuple[np.ndarray, dict[int, Any]]]] = defaultdict(dict)
    for key, part in out.groupby("unique_id", sort=False):
        for column, name in names.items():
            bands = {
                level: (
                    part[f"{column}-lo-{level}"].to_numpy(dtype=np.float64),
                    part[f"{column}-hi-{level}"].to_numpy(dtype=np.float64),
                )
                for level in LEVELS
            }
            found[str(key)][name] = (part[column].to_numpy(dtype=np.float64), bands)
    return found


def run(paths: list[Path], horizons: list[int], days: float, every: int) -> dict[str, Any]:
    started = time.perf_counter()
    longest = max(horizons)
    scores: dict[tuple[str, str, int, str], Score] = defaultdict(Score)
    choices: dict[str, Counter[str]] = defaultdict(Counter)
    repairs_all: dict[str, Any] = {}
    skipped: list[str] = []
    forecaster = Forecaster(tuple(horizons))
    for path in paths:
        series, repairs = load(path)
        repairs_all[path.name] = repairs
        by_length: dict[int, list[str]] = defaultdict(list)
        for key, reg in series.items():
            by_length[len(reg.values)].append(key)
        for length, keys in by_length.items():
            origins = origins_of(length, days, every, longest)
            if not origins:
                skipped.append(f"{path.name}: {', '.join(keys)} ({length} steps: too short)")
                continue
            for number, origin in enumerate(origins, 1):
                t0 = time.perf_counter()
                histories = {k: series[k].values[: origin + 1] for k in keys}
                family = [
                    (k, Regular(series[k].start, STEP, histories[k], series[k].repairs))
                    for k in keys
                ]
                ours = forecaster.forecast(family)
                peers = statsforecast_paths(histories, longest)
                for key in keys:
                    values = series[key].values
                    actual = values[origin + 1 : origin + 1 + longest]
                    scale = seasonal_scale(histories[key])
                    for horizon in horizons:
                        mine = next(f for f in ours[horizon] if f.key == key)
                        choices[f"h{horizon}"][mine.model] += 1
                        scores[(path.name, key, horizon, "nofx")].add(
                            actual[:horizon], mine.mean, mine.bands, scale
                        )
                        for model, (mean, bands) in peers[key].items():
                            cut = {
                                lv: (lo[:horizon], hi[:horizon]) for lv, (lo, hi) in bands.items()
                            }
                            scores[(path.name, key, horizon, model)].add(
                                actual[:horizon], mean[:horizon], cut, scale
                            )
                print(
                    f"{path.name} [{', '.join(keys)}] origin {number}/{len(origins)}"
                    f" ({time.perf_counter() - t0:.1f}s)",
                    file=sys.stderr,
                    flush=True,
                )
    results = []
    for (file, key, horizon, model), score in sorted(scores.items()):
        if not score.mase:
            continue
        results.append(
            {
                "file": file,
                "series": key,
                "horizon": horizon,
                "model": model,
                "mase": round(float(np.mean(score.mase)), 4),
                "smape": round(float(np.mean(score.smape)), 3),
                "coverage_80": round(float(np.mean(score.inside[80])), 4),
                "coverage_95": round(float(np.mean(score.inside[95])), 4),
                "origins": len(score.mase),
            }
        )
    return {
        "results": results,
        "summary": summarise(results, horizons),
        "choices": {h: dict(c) for h, c in choices.items()},
        "repairs": repairs_all,
        "skipped": skipped,
        "config": {"step_s": STEP, "season": SEASON, "days": days, "origin_every": every},
        "seconds": round(time.perf_counter() - started, 1),
    }


def summarise(results: list[dict[str, Any]], horizons: list[int]) -> list[dict[str, Any]]:
    table: dict[tuple[str, str, int], dict[str, dict[str, Any]]] = defaultdict(dict)
    for row in results:
        table[(row["file"], row["series"], row["horizon"])][row["model"]] = row
    summary = []
    for horizon in horizons:
        for model in MODELS:
            to_snaive, to_best, cover80, cover95 = [], [], [], []
            for (_, _, h), rows in table.items():
                if h != horizon or model not in rows or not set(BASELINES) <= set(rows):
                    continue
                mase = rows[model]["mase"]
                best = min(rows[b]["mase"] for b in BASELINES)
                if rows["seasonal_naive"]["mase"] > 0 and best > 0 and mase > 0:
                    to_snaive.append(math.log(mase / rows["seasonal_naive"]["mase"]))
                    to_best.append(math.log(mase / best))
                cover80.append(rows[model]["coverage_80"])
                cover95.append(rows[model]["coverage_95"])
            if not to_best:
                continue
            summary.append(
                {
                    "horizon": horizon,
                    "model": model,
                    "mase_ratio_to_seasonal_naive": round(math.exp(float(np.mean(to_snaive))), 4),
                    "mase_ratio_to_best_baseline": round(math.exp(float(np.mean(to_best))), 4),
                    "coverage_80": round(float(np.mean(cover80)), 4),
                    "coverage_95": round(float(np.mean(cover95)), 4),
                    "series": len(to_best),
                }
            )
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", required=True, help="CSV files or directories")
    parser.add_argument("--horizons", nargs="+", type=int, default=[12, 288])
    parser.add_argument("--days", type=float, default=7.0, help="backtest span at the end")
    parser.add_argument(
        "--origin-every",
        type=int,
        default=100,
        help="steps between origins (not a divisor of a day, so origins fall at every time of day)",
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if min(args.horizons) < 1 or args.origin_every < 1 or args.days <= 0:
        parser.error("--horizons, --origin-every and --days must be positive")
    report = run(csv_files(args.data), sorted(set(args.horizons)), args.days, args.origin_every)
    write_report(args.out, report)
    print(f"{'horizon':>7} {'model':<15} {'vs snaive':>9} {'vs best':>8} {'cov80':>6} {'cov95':>6}")
    for row in report["summary"]:
        print(
            f"{row['horizon']:>7} {row['model']:<15} {row['mase_ratio_to_seasonal_naive']:>9.3f}"
            f" {row['mase_ratio_to_best_baseline']:>8.3f} {row['coverage_80']:>6.3f}"
            f" {row['coverage_95']:>6.3f}"
        )
    print(f"choices: {report['choices']}; {report['seconds']} s")
    for line in report["skipped"]:
        print(f"skipped: {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
