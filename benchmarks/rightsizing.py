"""How much does rightsizing save, and how often is usage above the recommendation?

    python benchmarks/rightsizing.py --data FILE.csv|DIR [FILE.csv|DIR ...] [--days 7]
        [--risk 0.01] [--allocation USAGE=ALLOCATION ...] [--out F.json]

Each numeric column of each CSV is a usage series at 300-second steps; a column named
`timestamp` is the clock, else row i is step i (`nofx.forecasting.series.read_csv` puts the series
on the grid and reports what it repaired: duplicates, order, gaps, NaN). A column that is a
usage series' allocation is its baseline instead of a series: named with `--allocation`, or found
by name — a column with `assigned`, `allocated`, `requested` or `limit` in its name belongs to
the column named without that word (Google's `avg_assigned_mem` to `avg_mem`).

For each series, every day after the first `--days` days is judged: each strategy recommends from
the `--days` days before it and the day is compared with the recommendation, step by step:

- `saving`: 1 - (recommended size summed over the day) / (baseline summed over the day), where
  the baseline is the series' allocation at each step where it has one, else the peak of the
  days seen + 15% (a static size someone careful would set);
- `over_ratio`: the share of the day's steps where usage was above the recommendation.

Strategies, one configuration for the whole corpus:

- `nofx`: `nofx.optimization.rightsizing.recommend` — a time-of-day size with its trend and a
  headroom calibrated on its own history to be exceeded in a share `--risk` of the steps;
- `vpa`: the Kubernetes Vertical Pod Autoscaler recommender's rule as its documentation states
  it: the 90th percentile of a decaying histogram (half-life 24 h) plus a 15% safety margin; for
  memory (a series with `mem` in its name) the histogram holds the peak of each 24 h interval,
  for the rest every sample (the quantile is taken of the weighted samples, without the
  histogram's 5%-wide buckets);
- `krr`: Robusta KRR's simple strategy: memory the peak + 15%, everything else the 99th percentile.

Summary per baseline kind (`allocation`, `peak+15%`) and strategy: the mean over series of the
saving and of the over-ratio. Prints a table, writes JSON:

    {"results": [{"file", "series", "strategy", "saving", "over_ratio", "baseline", "days"}],
     "summary": [{"strategy", "baseline", "saving", "over_ratio", "series"}],
     "repairs": {...}, "config": {...}, "seconds": ...}
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from _data import csv_files, write_report  # benchmarks/, beside this script

from nofx.forecasting.series import Regular, read_csv
from nofx.optimization.rightsizing import recommend

STEP = 300.0
DAY = 288
MARGIN = 0.15
HALF_LIFE_DAYS = 1.0
STRATEGIES = ("nofx", "vpa", "krr")
ALLOCATION_WORDS = ("assigned", "allocated", "requested", "limit")


def is_memory(name: str) -> bool:
    return "mem" in name.lower()


def weighted_quantile(values: np.ndarray, weights: np.ndarray, q: float) -> float:
    order = np.argsort(values)
    cumulative = np.cumsum(weights[order])
    at = np.searchsorted(cumulative, q * cumulative[-1])
    return float(values[order][min(at, len(values) - 1)])


def vpa(history: np.ndarray, memory: bool) -> float:
    """VPA recommender target (p90 of the decaying histogram) with its 15% margin."""
    n = len(history)
    if memory:
        peaks = [history[max(0, end - DAY) : end].max() for end in range(n, 0, -DAY)]
        samples = np.asarray(peaks)
        age_days = np.arange(len(samples), dtype=np.float64)
    else:
        samples = history
        age_days = (n - 1 - np.arange(n)) / DAY
    weights = 0.5 ** (age_days / HALF_LIFE_DAYS)
    return (1 + MARGIN) * weighted_quantile(samples, weights, 0.9)


def krr(history: np.ndarray, memory: bool) -> float:
    """KRR's simple strategy: memory peak + 15%, CPU (and the rest) the 99th percentile."""
    return float((1 + MARGIN) * history.max() if memory else np.quantile(history, 0.99))


def allocations(names: list[str], explicit: dict[str, str]) -> dict[str, str]:
    """usage column -> its allocation column."""
    found = dict(explicit)
    for name in names:
        for word in ALLOCATION_WORDS:
            if word in name.lower():
                usage = re.sub(rf"_?{word}_?", "_", name, flags=re.IGNORECASE).strip("_")
                usage = re.sub("__+", "_", usage)
                if usage in names and usage not in found:
                    found[usage] = name
    return found


def judge(
    name: str, series: Regular, allocation: Regular | None, days: float, risk: float
) -> dict[str, Any]:
    """Saving and over-ratio of each strategy on each judged day of one series."""
    values = series.values
    span = round(days * DAY)
    saving: dict[str, list[float]] = defaultdict(list)
    over: dict[str, list[float]] = defaultdict(list)
    judged = 0
    for start in range(span, len(values), DAY):
        history = values[start - span : start]
        future = values[start : start + DAY]
        times = series.start + STEP * np.arange(start, start + len(future))
        if allocation is not None:
            baseline = allocation.values[start : start + len(future)]
            if len(baseline) < len(future):
                future, times = future[: len(baseline)], times[: len(baseline)]
        else:
            baseline = np.full(len(future), (1 + MARGIN) * history.max())
        past = Regular(series.start, STEP, values[:start], series.repairs)
        memory = is_memory(name)
        sizes = {
            "nofx": recommend(past, days=days, risk=risk).size_at(times),
            "vpa": np.full(len(future), vpa(history, memory)),
            "krr": np.full(len(future), krr(history, memory)),
        }
        for strategy, size in sizes.items():
            saving[strategy].append(1 - float(np.sum(size)) / float(np.sum(baseline)))
            over[strategy].append(float(np.mean(future > size)))
        judged += 1
    return {"saving": saving, "over": over, "days": judged}


def run(paths: list[Path], days: float, risk: float, explicit: dict[str, str]) -> dict[str, Any]:
    started = time.perf_counter()
    results: list[dict[str, Any]] = []
    repairs: dict[str, Any] = {}
    skipped: list[str] = []
    for path in paths:
        series = read_csv(path, STEP)
        repairs[path.name] = {k: s.repairs.as_dict() for k, s in series.items()}
        paired = allocations(list(series), explicit)
        for key, reg in series.items():
            if key in paired.values():
                continue
            allocation = series.get(paired[key]) if key in paired else None
            judged = judge(key, reg, allocation, days, risk)
            if not judged["days"]:
                skipped.append(f"{path.name}: {key} ({len(reg.values)} steps: no day to judge)")
                continue
            for name in STRATEGIES:
                results.append(
                    {
                        "file": path.name,
                        "series": key,
                        "strategy": name,
                        "saving": round(float(np.mean(judged["saving"][name])), 4),
                        "over_ratio": round(float(np.mean(judged["over"][name])), 4),
                        "baseline": "allocation" if allocation is not None else "peak+15%",
                        "days": judged["days"],
                    }
                )
            print(f"{path.name} {key}: {judged['days']} days judged", file=sys.stderr, flush=True)
    return {
        "results": results,
        "summary": summarise(results),
        "repairs": repairs,
        "skipped": skipped,
        "config": {"step_s": STEP, "days": days, "risk": risk, "margin": MARGIN},
        "seconds": round(time.perf_counter() - started, 1),
    }


def summarise(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in results:
        groups[(row["baseline"], row["strategy"])].append(row)
    return [
        {
            "strategy": strategy,
            "baseline": baseline,
            "saving": round(float(np.mean([r["saving"] for r in rows])), 4),
            "over_ratio": round(float(np.mean([r["over_ratio"] for r in rows])), 4),
            "series": len(rows),
        }
        for (baseline, strategy), rows in sorted(groups.items())
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", required=True, help="CSV files or directories")
    parser.add_argument("--days", type=float, default=7.0, help="days each recommendation sees")
    parser.add_argument("--risk", type=float, default=0.01, help="nofx's target over-ratio")
    parser.add_argument(
        "--allocation",
        nargs="*",
        default=[],
        metavar="USAGE=ALLOCATION",
        help="a usage column and the column holding its allocation",
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.days < 1:
        parser.error("--days must be at least 1")
    if not 0 < args.risk <= 0.5:
        parser.error("--risk must be in (0, 0.5]")
    explicit = {}
    for pair in args.allocation:
        usage, sep, allocated = pair.partition("=")
        if not sep or not usage or not allocated:
            parser.error(f"--allocation {pair!r}: expected USAGE=ALLOCATION")
        explicit[usage] = allocated
    report = run(csv_files(args.data), args.days, args.risk, explicit)
    write_report(args.out, report)
    print(f"{'baseline':<11} {'strategy':<8} {'saving':>7} {'over':>7} {'series':>6}")
    for row in report["summary"]:
        print(
            f"{row['baseline']:<11} {row['strategy']:<8} {row['saving']:>7.3f}"
            f" {row['over_ratio']:>7.4f} {row['series']:>6}"
        )
    for line in report["skipped"]:
        print(f"skipped: {line}")
    print(f"{report['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
