"""Staging: forecast-driven scaling against reactive scaling and a fixed peak-sized group, on the
time-compressed daily load cycle — replica-hours and minutes of SLO violation.

    python benchmarks/scaling.py [--cycle-seconds 300] [--days 1] [--interval-seconds 2.5]
        [--peak-rps 48] [--shape cosine|business] [--out benchmarks/results/scaling.json]

A replica group of the staging fleet (one pilot, `--spares` spare slots under its supervisord
and HAProxy, each pilot serving GET / with `--work-ms` of work on `--workers` worker slots) takes
the daily cycle of pilot/load.py (`DailyCycle`, a day compressed into `--cycle-seconds`:
`cosine`, a trough at night and the peak at 15:00 with a smooth cosine between; `business`, the
trough all night, a surge from 08:00 to 09:00, a working day near the peak, the fall at 19:00)
through its HAProxy frontend. Three strategies run one after another, each for `--days`
compressed days from midnight, every change made by the platform's real `scale_out` / `scale_in`
actions (nofx.optimization.scaling_actions, called directly):

* fixed: the group sized for the peak (``ceil(peak / (capacity * utilisation))``) all day;
* reactive: every interval, scale out by one when the measured utilisation (requests/s over
  replicas * capacity) is above `--high` or the p95 is over the SLO; scale in by one when it
  has stayed below `--low` for the cool-down;
* forecast: nofx.optimization.scaling's plan over the day, fed by a seasonal forecast (the
  cycle's period) of the load the benchmark measured on the days before (the other strategies'
  runs): per phase of the day the highest rate seen plus the 95th percentile of how far the
  days differed, the same capacity, target utilisation, cool-down, a lead and a budget.

One configuration for every run. Each run starts with the replicas its strategy has at midnight
(fixed: the peak size; forecast: its plan's; reactive: the fewest that keep the midnight load
under `--high`). Each interval of `--interval-seconds` is judged on the requests it answered: an
SLO violation when their p95 is over `--slo-p95-ms` or more than `--max-error` of them failed;
the first interval of a run is warm-up (the load generator's clients all start at once) and is
judged for none. Replica-hours and violation minutes are scaled to the real day (a compressed day
is 24 h). JSON: ``{"strategies": [{"strategy", "replica_hours", "slo_violation_minutes",
"changes"}], "config": {...}, "intervals": {...}}``.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from models.actions import ScaleInParams, ScaleOutParams
from models.healing import FleetTarget
from nofx.healing.action_base import ActionContext
from nofx.inventory import parse, row_of
from nofx.optimization.scaling import ScalingPolicy, plan_replicas
from nofx.optimization.scaling_actions import ScaleIn, ScaleOut
from nofx.providers.haproxy import HAProxyRuntime
from pilot.config import PilotConfig, VersionedConfig, config_path, write_config
from pilot.fleet import Fleet, FleetSpec, GroupSpec, ServiceSpec, free_port
from pilot.load import DailyCycle, LoadGenerator

ROOT = Path(__file__).resolve().parent.parent
DAY_S = 86_400.0
DAY0 = 20_000 * DAY_S  # the plan's clock: a UTC midnight, the real-time image of a run's start


def say(message: str) -> None:
    print(f"[{datetime.now().astimezone():%H:%M:%S}] {message}", file=sys.stderr, flush=True)


@dataclass
class Interval:
    """One measuring interval of a run."""

    phase_s: float  # compressed seconds since the run's midnight (the interval's end)
    seconds: float  # how long it lasted (compressed)
    sent: int
    rps: float
    p95_ms: float | None
    error_ratio: float
    replicas: int  # in rotation during it
    violated: bool


@dataclass
class Run:
    strategy: str
    intervals: list[Interval] = field(default_factory=list)
    changes: int = 0
    refused: list[str] = field(default_factory=list)

    def replica_hours(self, scale: float) -> float:
        return sum(i.replicas * i.seconds for i in self.intervals) * scale / 3600

    def violation_minutes(self, scale: float) -> float:
        return sum(i.seconds for i in self.intervals if i.violated) * scale / 60


class Group:
    """The replica group as the platform reaches it: its inventory entry, its providers, the
    real scaling actions."""

    def __init__(self, fleet: Fleet) -> None:
        entry = next(
            e for e in parse(fleet.inventory()).services if e.providers.replicas is not None
        )
        row = row_of(entry)
        self.target = FleetTarget(
            service=entry.name,
            endpoint=row["endpoint"],
            provider=row["provider"],
            metadata=row["metadata"],
        )
        self.backend = str(row["metadata"]["haproxy_backend"])
        self.runtime = HAProxyRuntime(Path(row["metadata"]["haproxy_socket"]))

    def in_rotation(self) -> int:
        return sum(s.admin_state == "ready" for s in self.runtime.servers(self.backend))

    def scale(self, to: int, *, minimum: int) -> int:
        """Bring the group to `to` replicas in rotation with the real actions; changes made."""
        now = self.in_rotation()
        if to == now:
            return 0
        # The scaling actions use neither the database nor its URL: only their providers.
        ctx = ActionContext(self.target, None, None, uuid.uuid4().hex)  # type: ignore[arg-type]
        if to > now:
            out, params = ScaleOut(), ScaleOutParams(replicas=to - now)
            out.perform(ctx, params, out.capture(ctx, params))
        else:
            into, inp = ScaleIn(), ScaleInParams(replicas=now - to, min_replicas=minimum)
            into.perform(ctx, inp, into.capture(ctx, inp))
        return 1


def seasonal_upper(history: list[list[float]], quantile: float = 0.95) -> np.ndarray:
    """Per interval of the day, the highest rate any earlier day had there (over the interval
    and its neighbours: a forecast's timing is not exact), plus the `quantile` of how far the
    days differed from their mean at the same phase."""
    days = np.asarray(history, dtype=np.float64)
    padded = np.pad(days, ((0, 0), (1, 1)), mode="edge")
    highest = np.max([padded[:, :-2], padded[:, 1:-1], padded[:, 2:]], axis=(0, 1))
    spread = np.abs(days - days.mean(axis=0))
    return np.asarray(highest + float(np.quantile(spread, quantile)), dtype=np.float64)


def run_strategy(
    name: str,
    group: Group,
    url: str,
    args: argparse.Namespace,
    *,
    peak_sized: int,
    upper: np.ndarray | None,
) -> Run:
    """One strategy for `--days` compressed days from midnight; every interval measured."""
    run = Run(name)
    scale = DAY_S / args.cycle_seconds
    steps_per_day = round(args.cycle_seconds / args.interval_seconds)
    plan = None
    cycle = DailyCycle(args.cycle_seconds, trough_share=args.trough_share, shape=args.shape)
    # Each run starts as its strategy would have left the group the night before.
    start = peak_sized
    if name == "reactive":  # the fewest replicas the midnight load keeps under `--high`
        start = math.ceil(args.peak_rps * cycle.share(0) / (args.capacity * args.high))
    elif name == "forecast":
        assert upper is not None
        times = DAY0 + np.arange(steps_per_day * args.days) * args.interval_seconds * scale
        plan = plan_replicas(
            times,
            np.tile(upper, args.days),
            ScalingPolicy(
                capacity_per_replica=args.capacity,
                target_utilisation=args.utilisation,
                min_replicas=args.min_replicas,
                max_replicas=args.min_replicas + args.spares,
                lead_s=args.lead_minutes * 60,
                cooldown_s=args.cooldown_minutes * 60,
                max_changes_per_day=args.max_changes_per_day,
            ),
            current=group.in_rotation(),
        )
        start = int(plan.replicas[0])
        say(
            f"forecast plan: {len(plan.steps)} change(s), "
            + ", ".join(f"{(s.at - DAY0) / 3600:.1f} h -> {s.to_replicas}" for s in plan.steps[:12])
        )
    group.scale(start, minimum=args.min_replicas)
    load = LoadGenerator(
        [url], concurrency=args.concurrency, rate=args.peak_rps, cycle=cycle, timeout=5.0
    )
    low_since: float | None = None
    total = steps_per_day * args.days
    with load:
        started = time.monotonic()
        load.window()
        last = started
        for k in range(1, total + 1):
            time.sleep(max(0.0, started + k * args.interval_seconds - time.monotonic()))
            replicas = group.in_rotation()
            window = load.window()
            now = time.monotonic()
            seconds, last = now - last, now
            p95 = window.p95_ms
            # The first interval is warm-up, judged for no strategy: the generator's clients
            # all send their first request within a fraction of a second.
            violated = k > 1 and (
                (p95 is not None and p95 > args.slo_p95_ms) or window.error_ratio > args.max_error
            )
            rps = window.sent / seconds if seconds > 0 else 0.0
            run.intervals.append(
                Interval(
                    round(now - started, 3),
                    round(seconds, 3),
                    window.sent,
                    round(rps, 2),
                    p95,
                    round(window.error_ratio, 4),
                    replicas,
                    violated,
                )
            )
            if k == total:
                break
            target = replicas
            if name == "reactive":
                utilisation = rps / (replicas * args.capacity)
                if utilisation > args.high or (p95 is not None and p95 > args.slo_p95_ms):
                    target, low_since = replicas + 1, None
                elif utilisation < args.low:
                    low_since = now if low_since is None else low_since
                    if (now - low_since) * scale >= args.cooldown_minutes * 60:
                        target, low_since = replicas - 1, now
                else:
                    low_since = None
            elif plan is not None:
                # the plan's count for the interval that starts now
                target = int(plan.replicas[min(k, len(plan.replicas) - 1)])
            target = max(args.min_replicas, min(args.min_replicas + args.spares, target))
            try:
                run.changes += group.scale(target, minimum=args.min_replicas)
            except Exception as err:  # noqa: BLE001 - a refused change is recorded, the run goes on
                run.refused.append(f"{now - started:.0f}s: {err}")
                say(f"{name}: change to {target} refused: {err}")
            if k % max(1, steps_per_day // 8) == 0:
                hour = (now - started) % args.cycle_seconds * scale / 3600
                say(
                    f"{name} day {int((now - started) // args.cycle_seconds) + 1} {hour:4.1f} h:"
                    f" {rps:5.1f} req/s on {replicas} replica(s), p95 {p95 or 0:.0f} ms,"
                    f" violations so far {sum(i.violated for i in run.intervals)}"
                )
    return run


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--cycle-seconds", type=float, default=300.0, help="one compressed day")
    add("--days", type=int, default=1, help="compressed days each strategy runs")
    add("--interval-seconds", type=float, default=2.5, help="measuring and deciding interval")
    add("--peak-rps", type=float, default=48.0, help="the cycle's peak rate")
    add("--trough-share", type=float, default=0.2, help="the trough's share of the peak")
    add(
        "--shape",
        choices=DailyCycle.SHAPES,
        default="cosine",
        help="the day's shape (pilot/load.py)",
    )
    add("--concurrency", type=int, default=32, help="load generator clients")
    add("--work-ms", type=float, default=100.0, help="service time of one GET / on a pilot")
    add("--workers", type=int, default=2, help="GET / a pilot serves at once")
    add("--capacity", type=float, default=16.0, help="requests/s one replica serves in its SLO")
    add("--utilisation", type=float, default=0.75, help="target utilisation of a replica")
    add("--min-replicas", type=int, default=1, help="the group's own replicas")
    add("--spares", type=int, default=4, help="spare replica slots")
    add("--slo-p95-ms", type=float, default=500.0)
    add("--max-error", type=float, default=0.01, help="error ratio over which an interval fails")
    add("--lead-minutes", type=float, default=30.0, help="forecast: scale out this far ahead")
    add("--cooldown-minutes", type=float, default=60.0, help="both: low this long to scale in")
    add("--max-changes-per-day", type=int, default=8, help="forecast: the disruption budget")
    add("--high", type=float, default=0.8, help="reactive: scale out above this utilisation")
    add("--low", type=float, default=0.45, help="reactive: scale in below this utilisation")
    add("--strategies", default="fixed,reactive,forecast", help="in this order")
    add("--out", type=Path, default=ROOT / "benchmarks/results/scaling.json")
    args = parser.parse_args(argv)
    strategies = args.strategies.split(",")
    unknown = set(strategies) - {"fixed", "reactive", "forecast"}
    if unknown:
        parser.error(f"unknown strategies {sorted(unknown)}: fixed, reactive, forecast")
    if "forecast" in strategies and strategies[0] == "forecast":
        parser.error("forecast needs a day of load seen first: run another strategy before it")
    if args.interval_seconds * 4 > args.cycle_seconds:
        parser.error("--interval-seconds must be at most a quarter of --cycle-seconds")
    if args.min_replicas != 1:
        parser.error("the staging group has one replica of its own: --min-replicas 1")
    args.strategy_list = strategies
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    command = shlex.join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])])
    scale = DAY_S / args.cycle_seconds
    per_replica = args.capacity * args.utilisation
    peak_sized = min(args.min_replicas + args.spares, math.ceil(args.peak_rps / per_replica))
    home = Path(tempfile.mkdtemp(prefix="nofx-scaling-"))
    group_name = "web"
    fleet = Fleet(
        home,
        FleetSpec(
            services=[ServiceSpec(name="web-1", port=free_port(), group=group_name)],
            groups=[
                GroupSpec(
                    name=group_name,
                    port=free_port(),
                    spare_ports=[free_port() for _ in range(args.spares)],
                )
            ],
        ),
    )
    if fleet.haproxy is None:
        raise SystemExit("haproxy is not installed (Debian package: haproxy)")
    config = PilotConfig(work_ms=args.work_ms, workers=args.workers)
    for spec in [*fleet.spec.services, *fleet.spec.spares()]:
        write_config(
            config_path(fleet.state_dir, spec.name), VersionedConfig(version=1, config=config)
        )
    say(f"starting a replica group of 1 + {args.spares} spare slot(s) under {home}")
    fleet.start()
    runs: list[Run] = []
    began = time.monotonic()
    try:
        group = Group(fleet)
        url = fleet.group_url(group_name, "/")
        seen: list[list[float]] = []
        steps_per_day = round(args.cycle_seconds / args.interval_seconds)
        for name in args.strategy_list:
            group.scale(args.min_replicas, minimum=args.min_replicas)
            upper = seasonal_upper(seen) if name == "forecast" else None
            say(f"{name}: {args.days} day(s) of {args.cycle_seconds:g} s")
            run = run_strategy(name, group, url, args, peak_sized=peak_sized, upper=upper)
            runs.append(run)
            rates = [i.rps for i in run.intervals]
            for d in range(args.days):
                day = rates[d * steps_per_day : (d + 1) * steps_per_day]
                if len(day) == steps_per_day:
                    seen.append(day)
            say(
                f"{name}: {run.replica_hours(scale):.1f} replica-hours,"
                f" {run.violation_minutes(scale):.0f} min of SLO violation, {run.changes} changes"
            )
        group.scale(args.min_replicas, minimum=args.min_replicas)
    finally:
        fleet.stop()
    report: dict[str, Any] = {
        "strategies": [
            {
                "strategy": r.strategy,
                "replica_hours": round(r.replica_hours(scale), 2),
                "slo_violation_minutes": round(r.violation_minutes(scale), 1),
                "changes": r.changes,
                "refused": r.refused,
            }
            for r in runs
        ],
        "config": {
            k: (str(v) if isinstance(v, Path) else v)
            for k, v in vars(args).items()
            if k not in ("out", "strategy_list")
        }
        | {"peak_sized_replicas": peak_sized, "real_seconds_per_compressed_second": scale},
        "intervals": {
            r.strategy: [
                [i.phase_s, i.rps, i.p95_ms, i.error_ratio, i.replicas, i.violated]
                for i in r.intervals
            ]
            for r in runs
        },
        "interval_columns": ["phase_s", "rps", "p95_ms", "error_ratio", "replicas", "violated"],
        "command": command,
        "wall_seconds": round(time.monotonic() - began),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{'strategy':<10} {'replica-hours':>14} {'SLO violation min':>18} {'changes':>8}")
    for row in report["strategies"]:
        print(
            f"{row['strategy']:<10} {row['replica_hours']:>14.1f}"
            f" {row['slo_violation_minutes']:>18.0f} {row['changes']:>8}"
        )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
