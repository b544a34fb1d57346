"""Staging: slow memory leaks and disk fills on the live fleet, predicted and maintained before
they fail — lead time and share prevented.

    python benchmarks/staging_prevention.py --faults 10 [--rate-mb-s 0.2] [--headroom-mb 240]
        [--step 15] [--every 60] [--timeout-minutes 50] [--out F.json]

On the running stack (`nofx up`, started if it is not), a fleet of `--faults` pilot services in
replica groups of two behind HAProxy, under steady load, watched by the stack's monitor (which
opens an incident for any failure it sees). Each service gets an inventory limit `--headroom-mb`
above what it uses now (memory for half of them, disk for the other half) and a slow fault that
fills it at `--rate-mb-s`: with the defaults, about 20 minutes from injection to the limit. Every
`--every` seconds the benchmark runs the platform's own forecasting pass
(`PredictionPassWorkflow`, on a `--step` grid, every service) — the stack's scheduled pass is
paused meanwhile so it does not judge the same services on its coarser grid — and watches the
maintenance jobs the pass starts. One configuration for every fault.

A fault is *prevented* when its maintenance job completed before the metric reached the limit
and no incident opened on the service; its *lead time* is from the job's end to when the limit
would have been reached at the injected rate. JSON:
`{"faults", "prevented", "share_prevented", "lead_minutes_median", "lead_minutes_min",
"warning_minutes_median", "rows": [...], "config", "command"}`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shlex
import statistics
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import chaos as chaos_benchmark  # benchmarks/, beside this script
from sqlalchemy import text
from sqlalchemy.engine import Engine
from temporalio.client import Client
from temporalio.service import RPCError

from models.maintenance import JobStatusView, PredictionPassInput, PredictionPassReport
from nofx.client import FORECASTING_SCHEDULE_ID
from nofx.db import make_engine
from nofx.settings import TASK_QUEUE_MAINTENANCE, get_settings
from nofx.shutdown import StopOnSignals
from nofx.stack import WORKERS, Stack
from nofx.temporal import connect, exit_process
from pilot.fleet import Fleet
from pilot.load import LoadGenerator

ROOT = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024
METRICS = {"memory_leak": "process_resident_memory_bytes", "disk_fill": "pilot_disk_used_bytes"}
say = chaos_benchmark.say


@dataclass
class Row:
    service: str
    kind: str
    metric: str
    limit: float
    base: float
    injected_at: datetime
    would_fail_at: datetime
    predicted_at: datetime | None = None
    predicted_eta: datetime | None = None
    job: str | None = None
    job_run: str | None = None  # the run first seen: a later run of the same id is a new job
    job_status: str | None = None
    maintained_at: datetime | None = None
    reached_limit_at: datetime | None = None
    incident_at: datetime | None = None

    @property
    def settled(self) -> bool:
        return self.job_status in (
            "completed",
            "rolled_back",
            "cancelled",
            "declined",
            "failed",
        ) or (self.reached_limit_at is not None)

    @property
    def prevented(self) -> bool:
        return (
            self.job_status == "completed"
            and self.maintained_at is not None
            and (self.reached_limit_at is None or self.reached_limit_at > self.maintained_at)
            and self.incident_at is None
        )

    def public(self) -> dict[str, Any]:
        out = {
            k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in asdict(self).items()
        }
        out["prevented"] = self.prevented
        out["lead_minutes"] = _minutes(self.would_fail_at, self.maintained_at)
        out["warning_minutes"] = _minutes(self.would_fail_at, self.predicted_at)
        return out


def _minutes(later: datetime | None, earlier: datetime | None) -> float | None:
    if later is None or earlier is None:
        return None
    return round((later - earlier).total_seconds() / 60, 2)


def latest(engine: Engine, service: str, metric: str) -> tuple[datetime, float] | None:
    with engine.connect() as conn:
        row = conn.execute(
            text(
                "SELECT ts, sum(value) AS v FROM metric_samples WHERE service = :s AND metric = :m"
                " GROUP BY ts ORDER BY ts DESC LIMIT 1"
            ),
            {"s": service, "m": metric},
        ).first()
    return (row.ts, float(row.v)) if row is not None else None


def set_limits(engine: Engine, service: str, metric: str, limit: float) -> None:
    policy = {"duration_minutes": 3, "lead_minutes": 0}
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE services SET metadata = metadata || CAST(:m AS jsonb) WHERE name = :n"),
            {"n": service, "m": json.dumps({"limits": {metric: limit}, "maintenance": policy})},
        )


def first_incident(engine: Engine, service: str, since: datetime) -> datetime | None:
    with engine.connect() as conn:
        found: datetime | None = conn.execute(
            text(
                "SELECT min(started_at) FROM healing_incidents"
                " WHERE root_cause->>'service' = :s AND started_at >= :since"
            ),
            {"s": service, "since": since},
        ).scalar_one()
    return found


async def watch(client: Client, engine: Engine, rows: list[Row], args: argparse.Namespace) -> None:
    services = [r.service for r in rows]
    deadline = time.monotonic() + args.timeout_minutes * 60
    passes = 0
    while time.monotonic() < deadline and not all(r.settled for r in rows):
        began = time.monotonic()
        report: PredictionPassReport = await client.execute_workflow(
            "PredictionPassWorkflow",
            PredictionPassInput(
                services=services,
                step_seconds=args.step,
                horizon_steps=args.horizon,
                history_hours=args.history_hours,
            ),
            id=f"staging-pass-{uuid.uuid4().hex[:8]}",
            task_queue=TASK_QUEUE_MAINTENANCE,
            result_type=PredictionPassReport,
        )
        passes += 1
        now = datetime.now(UTC)
        by_service = {r.service: r for r in rows}
        for change in report.changes:
            row = by_service[change.service]
            if change.change in ("opened", "updated") and row.predicted_at is None:
                row.predicted_at, row.predicted_eta = now, change.deadline
        for job in report.jobs_started:
            service = next(s for s in services if job.startswith(f"maintenance-{s}-"))
            by_service[service].job = by_service[service].job or job
        for row in rows:
            await observe(client, engine, row)
        settled = sum(r.settled for r in rows)
        say(
            f"pass {passes}: {len(report.changes)} change(s), {len(report.jobs_started)} job(s)"
            f" started; {sum(r.predicted_at is not None for r in rows)} predicted,"
            f" {sum(r.prevented for r in rows)} prevented, {settled}/{len(rows)} settled"
        )
        await asyncio.sleep(max(0.0, args.every - (time.monotonic() - began)))


async def observe(client: Client, engine: Engine, row: Row) -> None:
    sample = latest(engine, row.service, row.metric)
    reached = sample is not None and sample[1] >= row.limit
    if (
        reached
        and sample is not None
        and row.reached_limit_at is None
        and row.maintained_at is None
    ):
        row.reached_limit_at = sample[0]
    if row.incident_at is None:
        row.incident_at = first_incident(engine, row.service, row.injected_at)
    if row.job is None or row.job_status in ("completed", "rolled_back", "cancelled", "declined"):
        return
    with contextlib.suppress(RPCError):
        # The job first started is judged: after it averts the failure a fault that goes on
        # (a leak in the code, not the process) makes a new prediction and a new run of the id.
        if row.job_run is None:
            row.job_run = (await client.get_workflow_handle(row.job).describe()).run_id
        view: JobStatusView = await client.get_workflow_handle(row.job, run_id=row.job_run).query(
            "status", result_type=JobStatusView
        )
        row.job_status = view.status
        if view.status == "completed":
            row.maintained_at = view.timeline[-1].at


def summary(rows: list[Row], args: argparse.Namespace, command: str) -> dict[str, Any]:
    leads = [r.public()["lead_minutes"] for r in rows if r.prevented]
    warnings = [w for r in rows if (w := r.public()["warning_minutes"]) is not None]
    return {
        "faults": len(rows),
        "prevented": sum(r.prevented for r in rows),
        "share_prevented": round(sum(r.prevented for r in rows) / len(rows), 3) if rows else None,
        "lead_minutes_median": statistics.median(leads) if leads else None,
        "lead_minutes_min": min(leads) if leads else None,
        "warning_minutes_median": statistics.median(warnings) if warnings else None,
        "incidents": sum(r.incident_at is not None for r in rows),
        "rows": [r.public() for r in rows],
        "config": {k: v for k, v in vars(args).items() if k != "out"},
        "command": command,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--faults", type=int, default=10, help="services, one slow fault each")
    parser.add_argument("--rate-mb-s", type=float, default=0.2, help="how fast each fault fills")
    parser.add_argument("--headroom-mb", type=float, default=240.0, help="limit above today's use")
    parser.add_argument("--step", type=float, default=15.0, help="forecast grid, seconds")
    parser.add_argument("--horizon", type=int, default=288, help="forecast steps")
    parser.add_argument("--history-hours", type=float, default=1.0)
    parser.add_argument("--every", type=float, default=60.0, help="seconds between passes")
    parser.add_argument("--warm-up", type=float, default=300.0, help="seconds of calm history")
    parser.add_argument("--timeout-minutes", type=float, default=50.0)
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "staging_prevention.json"
    )
    args = parser.parse_args()
    if args.faults < 2 or args.faults % 2:
        parser.error("--faults: an even number of at least 2 (replica groups of two)")
    command = shlex.join(["python", "benchmarks/staging_prevention.py", *sys.argv[1:]])
    settings = get_settings()
    stack = Stack(settings)
    with StopOnSignals() as cleanup:
        running = {p.name for p in stack.status() if p.state == "running"}
        if not running >= {"temporal", *WORKERS}:
            say("starting the stack (nofx up)")
            stack.up(progress=lambda m: say(f"  {m}"))
        database_url = stack.running_database_url()
        engine = make_engine(database_url)
        cleanup.callback(engine.dispose)
        fleet: Fleet = chaos_benchmark.new_fleet(
            stack.home, database_url, engine, args.faults, cleanup
        )
        groups = sorted({s.group for s in fleet.spec.services if s.group})
        load = LoadGenerator(
            [fleet.group_url(g, "/") for g in groups],
            concurrency=len(groups),
            rate=4.0 * len(groups),
        ).start()
        cleanup.callback(load.stop)
        say(f"fleet of {args.faults} under load; {args.warm_up:g}s of calm history first")
        time.sleep(args.warm_up)

        async def run() -> list[Row]:
            client = await connect(settings)
            schedule = client.get_schedule_handle(FORECASTING_SCHEDULE_ID)
            paused = False
            with contextlib.suppress(RPCError):
                await schedule.pause(note="staging benchmark: its own passes on a finer grid")
                paused = True
            try:
                rows = []
                for i, spec in enumerate(fleet.spec.services):
                    kind = "memory_leak" if i % 2 == 0 else "disk_fill"
                    metric = METRICS[kind]
                    now_value = latest(engine, spec.name, metric)
                    if now_value is None:
                        raise SystemExit(f"no {metric} sample of {spec.name}: is the monitor up?")
                    limit = now_value[1] + args.headroom_mb * MIB
                    set_limits(engine, spec.name, metric, limit)
                    params: dict[str, Any] = {"rate_mb_s": args.rate_mb_s}
                    if kind == "memory_leak":
                        params["limit_mb"] = int(args.headroom_mb * 1.5)
                    else:
                        params["quota_mb"] = int(args.headroom_mb * 1.5)
                    fleet.inject(kind, spec.name, **params)
                    injected = datetime.now(UTC)
                    fill_s = args.headroom_mb / args.rate_mb_s
                    rows.append(
                        Row(
                            spec.name,
                            kind,
                            metric,
                            limit,
                            now_value[1],
                            injected,
                            injected + timedelta(seconds=fill_s),
                        )
                    )
                minutes = args.headroom_mb / args.rate_mb_s / 60
                say(
                    f"{len(rows)} slow faults injected: {args.rate_mb_s:g} MB/s into"
                    f" {args.headroom_mb:g} MB of headroom (~{minutes:.0f} min to the limit)"
                )
                await watch(client, engine, rows, args)
                return rows
            finally:
                if paused:
                    with contextlib.suppress(RPCError):
                        await schedule.unpause(note="staging benchmark done")

        rows = asyncio.run(run())
        for spec in fleet.spec.services:
            with contextlib.suppress(Exception):
                fleet.clear(spec.name)
    report = summary(rows, args, command)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    for r in rows:
        p = r.public()
        say(
            f"{r.service:<18} {r.kind:<12} job {r.job_status or '-':<10}"
            f" prevented {r.prevented!s:<5}"
            f" warning {p['warning_minutes']} min, lead {p['lead_minutes']} min"
            + (f", incident at {r.incident_at:%H:%M:%S}" if r.incident_at else "")
        )
    print(
        f"prevented {report['prevented']}/{report['faults']} ({report['share_prevented']:.0%}),"
        f" lead time median {report['lead_minutes_median']} min (min {report['lead_minutes_min']}),"
        f" warning median {report['warning_minutes_median']} min; wrote {args.out}"
    )


if __name__ == "__main__":
    main()
    exit_process(0)
