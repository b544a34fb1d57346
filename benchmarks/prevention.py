"""Does maintenance come before the failure? Offline, on real traces with injected exhaustion.

    python benchmarks/prevention.py --data FILE.csv|DIR [...] [--ramps 3] [--seed N]
        [--out F.json]

Every numeric column of each CSV (300-second steps; see benchmarks/forecast.py for the format)
is a resource. For each, `--ramps` exhaustion ramps are injected at seeded times in the last 7
days (at least two days of history before): from its start the series climbs linearly, in 6 to
36 hours (seeded), to its limit — the highest value in its history plus half its range, the
headroom a capacity limit has — and the failure is the first step at or above the limit. Each
ramp also has an uninjected copy: the same stretch of the real series, where any alarm is false.

The platform watches each copy from 12 hours before the ramp's start to the failure (or the
same span on the copy), every 15 minutes, with the product's rule
(`nofx.forecasting.exhaustion.assess` and `alarming`): the time to exhaustion from the forecast
(`nofx.forecasting.forecaster.Forecaster`, refitted every `--forecast-every-hours`) and from the
rise of the last 3, 6 and 12 hours over an ordinary day's (steeper than any such rise seen
before, extrapolated no further than its own span) — the earlier warning wins; an alarm is a
probability of at least 0.8 of reaching the limit, confirmed by the next check. The alarm books
a 30-minute maintenance job in the lowest-load window before the earliest plausible failure,
leaving the product's default share of the time left unused (`MaintenancePolicy.spare`;
`nofx.maintenance.windows.choose_window`; load = the file's first column, forecast by the
seasonal naive rule; a disruption budget of one job a day), and later checks move it when the
prediction changes. The job prevents the failure when it starts after the ramp began and ends
before the failure.

Figures: `prevented` (share of injected failures whose maintenance ended before them),
`alarm_precision` (alarms on injected copies before their failure, over all alarms),
`window_in_lowest_quarter` (share of jobs whose window starts in the lowest-load quarter of the
starts that were possible that day, judged on the actual load), `tte_error_hours` (median
absolute error of the time to exhaustion at the first alarm) and `lead_time_hours` (median time
from the first alarm to the failure). Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from _data import csv_files, write_report  # benchmarks/, beside this script

from models.inventory import MaintenancePolicy
from nofx.forecasting.exhaustion import CONFIRM_CHECKS, Quantiles, alarming, assess
from nofx.forecasting.forecaster import Forecaster, seasonal_naive_paths
from nofx.forecasting.series import Regular, Repairs, read_csv
from nofx.maintenance.windows import DisruptionBudget, choose_window, spared_deadline

STEP = 300.0
SEASON = 288
HORIZON = SEASON  # a day ahead
CHECK_EVERY = 3  # steps: 15 minutes
WATCH_BEFORE = 144  # steps: 12 hours
DURATION_S = 1800.0
SPARE = MaintenancePolicy().spare  # the product's default share of the time left unused
HEADROOM = 0.5  # the limit: the highest value seen plus half the range
RAMP_STEPS = (72, 432)  # 6 to 36 hours


@dataclass
class Case:
    file: str
    series: str
    injected: bool
    ramp_start: int
    failure: int | None
    limit: float
    failure_time: float | None = None
    ramp_time: float = 0.0
    first_alarm: int | None = None
    eta_at_alarm: float | None = None
    alarm_source: str | None = None
    job_start: float | None = None
    job_end: float | None = None
    window_rank: float | None = None
    alarms: int = 0
    jobs: list[tuple[float, float]] = field(default_factory=list)
    outcome: str = ""


def inject(values: np.ndarray, start: int, steps: int, limit: float) -> tuple[np.ndarray, int]:
    """`values` plus a linear climb from `start` that brings its level to `limit` after
    `steps`; and the failure, the first step at or above the limit."""
    out = values.copy()
    base = float(np.median(values[max(0, start - 12) : start + 1]))
    slope = (limit - base) / steps
    out[start:] = values[start:] + slope * np.arange(len(values) - start, dtype=np.float64)
    hit = np.flatnonzero(out[start:] >= limit)
    return out, start + int(hit[0]) if len(hit) else len(values)


def watch(
    case: Case,
    values: np.ndarray,
    load: np.ndarray,
    start_time: float,
    forecaster: Forecaster,
    forecast_every: int,
) -> None:
    """Run the platform's checks over one copy; fills in the case's alarm and job."""
    end = case.failure if case.failure is not None else case.ramp_start + RAMP_STEPS[1]
    end = min(end, len(values) - 1)
    quantiles: Quantiles | None = None
    fitted_at = -(10**9)
    streak = 0
    for t in range(max(SEASON * 2, case.ramp_start - WATCH_BEFORE), end + 1, CHECK_EVERY):
        now = start_time + t * STEP
        if case.job_end is not None and now >= case.job_end:
            case.jobs.append((case.job_start or now, case.job_end))  # the job ran
            case.job_start = case.job_end = None
        times = start_time + STEP * np.arange(1, HORIZON + 1) + t * STEP
        if t - fitted_at >= forecast_every:
            family = [("s", Regular(start_time, STEP, values[: t + 1], Repairs()))]
            made = forecaster.forecast(family)[HORIZON][0]
            quantiles = Quantiles.of(made.times(), made.mean, made.bands[80], made.bands[95])
            fitted_at = t
        warning = assess(start_time, STEP, values[: t + 1], case.limit, HORIZON, forecast=quantiles)
        if not alarming(warning):
            streak = 0
            continue
        assert warning is not None
        assert warning.eta is not None
        streak += 1
        if streak < CONFIRM_CHECKS:
            continue
        case.alarms += 1
        if case.first_alarm is None:
            case.first_alarm = t
            case.eta_at_alarm = warning.eta
            case.alarm_source = f"{warning.source} p={warning.probability}"
        if case.job_start is not None and case.job_start <= now:
            continue  # the job is under way: it is not moved (nor is it in the product)
        deadline = warning.earliest if warning.earliest is not None else warning.eta
        done_by = spared_deadline(now, deadline, SPARE)
        if case.job_start is not None and case.job_end is not None and case.job_end <= done_by:
            continue  # the booked job still comes first, with time to spare
        load_times = times
        load_path = seasonal_naive_paths(load[: t + 1], np.array([t]), HORIZON, SEASON)[0]
        # the group's budget: the jobs that ran count; the booked one is being moved
        budget = DisruptionBudget(per_day=1, booked=tuple(start for start, _ in case.jobs))
        choice = choose_window(
            now,
            deadline,
            DURATION_S,
            load_times,
            load_path,
            [budget.refuses],
            lead_s=0.0,
            spare=SPARE,
        )
        if choice.start is None:
            choice = choose_window(now, now + DURATION_S, DURATION_S, load_times, load_path)
        if choice.start is not None:
            case.job_start, case.job_end = choice.start, choice.end
            case.window_rank = _actual_rank(load, start_time, choice.start, now, deadline)


def _actual_rank(
    load: np.ndarray, start_time: float, start: float, now: float, deadline: float
) -> float:
    """Where the chosen start's actual load ranks among that day's possible starts (0 = lowest)."""
    day = int(start // 86_400)
    first = max(now, day * 86_400.0)
    last = min(deadline - DURATION_S, (day + 1) * 86_400.0)
    span = int(DURATION_S // STEP)

    def actual(moment: float) -> float:
        i = round((moment - start_time) / STEP)
        return float(np.mean(load[max(0, i) : max(0, i) + span])) if i < len(load) else np.nan

    starts = np.arange(first, max(first, last) + 1, STEP)
    loads = np.array([actual(s) for s in starts])
    mine = actual(start)
    finite = loads[np.isfinite(loads)]
    return float(np.mean(finite < mine)) if len(finite) > 1 else 0.0


def _all_jobs(case: Case) -> list[tuple[float, float]]:
    """The jobs that ran, and the one booked last (it runs unless the failure comes first)."""
    booked = [(case.job_start, case.job_end)] if case.job_start and case.job_end else []
    return case.jobs + booked


def judge(case: Case) -> None:
    if not case.injected:
        case.outcome = "false_alarm" if case.alarms else "quiet"
        return
    failure_time = case.failure_time
    if case.first_alarm is None:
        case.outcome = "missed"
    elif failure_time is not None and any(
        case.ramp_time <= start and end <= failure_time for start, end in _all_jobs(case)
    ):
        case.outcome = "prevented"
    else:
        case.outcome = "late"


def run(paths: list[Path], ramps: int, seed: int, forecast_every_hours: float) -> dict[str, Any]:
    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    forecaster = Forecaster((HORIZON,))
    cases: list[Case] = []
    for path in paths:
        series = read_csv(path, STEP)
        if not series:
            continue
        load_key = next(iter(series))
        for key, reg in series.items():
            values = reg.values
            n = len(values)
            first = max(2 * SEASON + WATCH_BEFORE, n - 7 * SEASON)
            last = n - 1 - RAMP_STEPS[1] - 12
            if last <= first:
                print(f"skipped {path.name}:{key} ({n} steps: too short)", file=sys.stderr)
                continue
            load = series[load_key].values
            if len(load) != n:
                load = values
            spread = float(np.nanmax(values) - np.nanmin(values)) or 1.0
            limit = float(np.nanmax(values)) + HEADROOM * spread
            for _ in range(ramps):
                start = int(rng.integers(first, last))
                steps = int(rng.integers(RAMP_STEPS[0], RAMP_STEPS[1] + 1))
                ramped, failure = inject(values, start, steps, limit)
                for injected, copy in ((True, ramped), (False, values)):
                    case = Case(
                        path.name, key, injected, start, failure if injected else None, limit
                    )
                    case.ramp_time = reg.start + start * STEP
                    if injected:
                        case.failure_time = reg.start + failure * STEP
                    t0 = time.perf_counter()
                    watch(case, copy, load, reg.start, forecaster, round(forecast_every_hours * 12))
                    judge(case)
                    cases.append(case)
                    print(
                        f"{path.name}:{key} ramp@{start} {'injected' if injected else 'copy'}:"
                        f" {case.outcome} ({time.perf_counter() - t0:.1f}s)",
                        file=sys.stderr,
                        flush=True,
                    )
    return summarise(cases, time.perf_counter() - started)


def summarise(cases: list[Case], seconds: float) -> dict[str, Any]:
    injected = [c for c in cases if c.injected]
    copies = [c for c in cases if not c.injected]
    prevented = [c for c in injected if c.outcome == "prevented"]
    true_alarms = sum(1 for c in injected if c.first_alarm is not None)
    false_alarms = sum(1 for c in copies if c.alarms) + sum(
        1 for c in injected if c.first_alarm is not None and c.first_alarm < c.ramp_start
    )
    true_alarms -= sum(
        1 for c in injected if c.first_alarm is not None and c.first_alarm < c.ramp_start
    )
    errors = [
        abs(c.eta_at_alarm - c.failure_time) / 3600
        for c in injected
        if c.eta_at_alarm is not None and c.failure_time is not None
    ]
    leads = [
        (c.failure - c.first_alarm) * STEP / 3600
        for c in injected
        if c.first_alarm is not None and c.failure is not None
    ]
    ranks = [c.window_rank for c in prevented if c.window_rank is not None]
    return {
        "failures": len(injected),
        "prevented": round(len(prevented) / len(injected), 4) if injected else None,
        "outcomes": {
            o: sum(1 for c in injected if c.outcome == o) for o in ("prevented", "late", "missed")
        },
        "copies": len(copies),
        "false_alarm_copies": sum(1 for c in copies if c.alarms),
        "alarm_precision": round(true_alarms / (true_alarms + false_alarms), 4)
        if true_alarms + false_alarms
        else None,
        "window_in_lowest_quarter": round(float(np.mean([r < 0.25 for r in ranks])), 4)
        if ranks
        else None,
        "tte_error_hours": round(float(np.median(errors)), 3) if errors else None,
        "lead_time_hours": round(float(np.median(leads)), 3) if leads else None,
        "cases": [asdict(c) for c in cases],
        "seconds": round(seconds, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", required=True, help="CSV files or directories")
    parser.add_argument("--ramps", type=int, default=3, help="ramps injected per series")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--forecast-every-hours", type=float, default=24.0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    report = run(csv_files(args.data), args.ramps, args.seed, args.forecast_every_hours)
    write_report(args.out, report)
    shown = {k: v for k, v in report.items() if k != "cases"}
    for key, value in shown.items():
        print(f"{key:<26} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
