"""Staging: index and pool tuning applied as decisions — the query's mean time and the service's
p95 before and after the applied recommendation, and after its rollback.

    python benchmarks/tuning.py [--database-url URL] [--warmup 300] [--settle 30]
        [--requests 200] [--concurrency 1] [--rate 20] [--gap 150]
        [--out benchmarks/results/tuning.json]

One pilot service on the staging fleet under steady load (`--rate` requests/s, half to `/`, half
to `/orders?customer=N`, whose query filters a 300,000-row table on a column with no index), on
a PostgreSQL with pg_stat_statements loaded (`--database-url`, else a private PostgreSQL 15 from
Debian's binaries). After `--warmup` seconds of load (telemetry scraped every 5 s) the
platform's own recommendation pass (`nofx.optimization.recommendations.refresh`) runs; the index
and the pool recommendation it opens are each applied through `OptimizationWorkflow` (a
decision of type `optimization`, the steps through the remediation runner; in-process workers
on a Temporal dev server): measured with `--requests` real requests (`--concurrency` at once,
on top of the background load) before the change and `--settle` seconds after; `--gap` seconds
apart, as the guardrails' cooldown asks a person for a second change to a service within 120 s.
A change that regressed was rolled back by the saga; one that was kept is undone here by its own
action's undo (as the saga would); either way the service is measured a third time. One
configuration for both.

JSON: `{"index": {...}, "pool": {...}, "config", "command"}`, each with the recommendation,
the workflow's status and verdict, and `query_mean_ms`, `p95_ms`, `error_ratio` at `before`,
`after` and `after_rollback`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import shutil
import signal
import sys
import tempfile
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from _data import write_report  # benchmarks/, beside this script
from chaos import say  # benchmarks/, beside this script
from sqlalchemy import text
from sqlalchemy.engine import Engine
from temporalio.client import Client, WorkflowFailureError
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from models.optimization import ApplyInput, ApplyStatusView, MeasureInput
from nofx.client import start_optimization
from nofx.db import make_engine, migrate
from nofx.healing.actions import ACTIONS, ActionContext
from nofx.inventory import find_target, register_fleet
from nofx.optimization import apply
from nofx.optimization.recommendations import open_recommendations, refresh
from nofx.settings import TASK_QUEUE_DECISIONS, TASK_QUEUE_MAINTENANCE, Settings
from nofx.telemetry.scrape import inventory_targets, scrape_targets
from nofx.telemetry.sources import ScrapeSource
from nofx.temporal import ALL_SEARCH_ATTRIBUTES
from pilot.fleet import Fleet, FleetSpec, ServiceSpec, free_port
from pilot.load import LoadGenerator
from pilot.postgres import PostgresUnavailableError, PrivatePostgres
from workers import decisions, maintenance
from workers.common import Dependencies, build_worker

ROOT = Path(__file__).resolve().parent.parent
SERVICE = "shop"
QUERY_SECONDS = "pilot_orders_query_seconds"
PROBE = "/orders?customer=42"
SCRAPE_EVERY_S = 5.0


def _inventory(engine: Engine) -> None:
    """The tuning the service asks for: indexes for its orders table, its pool."""
    extra = {
        "limits": {"pilot_db_pool_in_use": 5},
        "optimization": {
            "index": {
                "tables": ["pilot_orders"],
                "min_calls": 20,
                "probe_path": PROBE,
                "query_seconds": QUERY_SECONDS,
            },
            "pool": {
                "in_use": "pilot_db_pool_in_use",
                "requests": "pilot_requests_total",
                "max_wait_ms": 50,
                "quantile": 0.95,
                "hold_seconds": "pilot_db_pool_hold_seconds",
            },
        },
    }
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE services SET metadata = metadata || CAST(:m AS jsonb) WHERE name = :n"),
            {"n": SERVICE, "m": json.dumps(extra)},
        )


class Scraper:
    """Scrape the inventory every few seconds in a thread, as the stack's monitor would."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="scraper", daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(SCRAPE_EVERY_S):
            _scrape(self.engine)

    def __enter__(self) -> Scraper:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join(timeout=30)


def _scrape(engine: Engine) -> None:
    scrape_targets(engine, inventory_targets(engine))


def _undo(engine: Engine, database_url: str, workflow_id: str) -> list[dict[str, Any]]:
    """Undo what the workflow's steps did (its action_log), newest first, as the saga would;
    what each undo said and whether the prior state is back."""
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT idempotency_key, action, target, detail FROM action_log"
                " WHERE workflow_id = :w AND status IN ('succeeded', 'skipped')"
                " ORDER BY started_at DESC"
            ),
            {"w": workflow_id},
        ).all()
    done = []
    for key, action, target, detail in rows:
        found = find_target(engine, target)
        assert found is not None
        ctx = ActionContext(found, engine, database_url, key)
        undone = ACTIONS[action].undo(ctx, detail["prior"])
        restored, check = ACTIONS[action].restored(ctx, detail["prior"])
        done.append({"action": action, "undo": undone.detail, "restored": restored, "check": check})
    return done


def _figures(measured: dict[str, Any]) -> dict[str, Any]:
    return {
        what: {k: m.get(k) if k != "query_mean_ms" else m["objective"].get(k) for k in FIELDS}
        for what, m in measured.items()
    }


FIELDS = ("query_mean_ms", "p95_ms", "error_ratio")


async def _apply(
    client: Client, engine: Engine, database_url: str, kind: str, args: argparse.Namespace
) -> dict[str, Any]:
    found = [r for r in open_recommendations(engine, SERVICE) if r["optimization_type"] == kind]
    if not found:
        return {"status": "no recommendation", "detail": f"the pass opened no {kind} one"}
    rec = found[0]
    say(
        f"{kind}: applying {rec['id']}: {rec['current_state']} -> {rec['recommended_state']}"
        f" (expected {rec['expected_improvement']})"
    )
    inp = ApplyInput(
        recommendation_id=rec["id"],
        requested_by="benchmark",
        settle_seconds=args.settle,
        requests=args.requests,
        concurrency=args.concurrency,
    )
    handle, _ = await start_optimization(client, inp, SERVICE)
    try:
        view: ApplyStatusView = await handle.result()
    except WorkflowFailureError as err:
        view = await handle.query("status", result_type=ApplyStatusView)
        say(f"{kind}: failed: {err.cause}")
    say(f"{kind}: {view.status}: {view.verdict.realised.get('verdict') if view.verdict else ''}")
    measured: dict[str, Any] = {}
    if view.before is not None:
        measured["before"] = view.before.model_dump(mode="json")
    if view.after is not None:
        measured["after"] = view.after.model_dump(mode="json")
    undone: list[dict[str, Any]] = []
    if view.status == "applied":  # undone here as the saga would; a regression it undid itself
        undone = await asyncio.to_thread(_undo, engine, database_url, handle.id)
    if view.status in ("applied", "rolled_back"):
        claimed = await asyncio.to_thread(apply.measurable, engine, str(rec["id"]))
        again = await asyncio.to_thread(
            apply.measure,
            ScrapeSource(engine),
            MeasureInput(
                claimed=claimed,
                label="after",
                requests=args.requests,
                concurrency=args.concurrency,
            ),
            lambda: _scrape(engine),
        )
        measured["after_rollback"] = again.model_dump(mode="json")
    figures = _figures(measured)
    for what, values in figures.items():
        say(f"{kind}: {what}: {values}")
    return {
        "recommendation": {
            "id": str(rec["id"]),
            "target": rec["target"],
            "current_state": rec["current_state"],
            "recommended_state": rec["recommended_state"],
            "expected_improvement": rec["expected_improvement"],
        },
        "status": view.status,
        "decision_id": view.decision_id,
        "verdict": view.verdict.realised.get("verdict") if view.verdict else None,
        "rollback": undone,
        **{k: {what: f[k] for what, f in figures.items()} for k in FIELDS},
    }


async def run(args: argparse.Namespace, database_url: str) -> dict[str, Any]:
    migrate(database_url)
    engine = make_engine(database_url)
    home = Path(tempfile.mkdtemp(prefix="nofx-tuning-"))
    fleet = Fleet(
        home,
        FleetSpec(services=[ServiceSpec(name=SERVICE, port=free_port())]),
        database_url=database_url,
    )
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=shutil.which("temporal"),
        data_converter=pydantic_data_converter,
        search_attributes=ALL_SEARCH_ATTRIBUTES,
        dev_server_log_level="error",
    )
    try:
        fleet.start()
        register_fleet(engine, fleet)
        _inventory(engine)
        deps = Dependencies(engine, env.client, Settings(database_url=database_url))
        urls = [fleet.url(SERVICE, "/"), fleet.url(SERVICE, PROBE)]
        with (
            LoadGenerator(urls, concurrency=4, rate=args.rate, timeout=10) as load,
            Scraper(engine),
        ):
            async with (
                build_worker(deps, TASK_QUEUE_DECISIONS, decisions.WORKFLOWS, decisions.activities),
                build_worker(
                    deps, TASK_QUEUE_MAINTENANCE, maintenance.WORKFLOWS, maintenance.activities
                ),
            ):
                say(f"warming up {args.warmup:g} s under {args.rate:g} requests/s")
                await asyncio.sleep(args.warmup)
                written = await asyncio.to_thread(
                    refresh, engine, ScrapeSource(engine), services=[SERVICE], days=1
                )
                for w in written:
                    say(f"pass: {w.optimization_type} {w.target}: {w.change} ({w.reason})")
                index = await _apply(env.client, engine, database_url, "index", args)
                # The service was just changed: the cooldown guardrail would ask a person.
                say(f"waiting out the guardrails' cooldown ({args.gap:g} s)")
                await asyncio.sleep(args.gap)
                pool = await _apply(env.client, engine, database_url, "pool", args)
            stats = load.stats()
        say(f"load: {stats.as_dict()}")
    finally:
        fleet.stop()
        await env.shutdown()
        engine.dispose()
        shutil.rmtree(home, ignore_errors=True)
    return {
        "index": index,
        "pool": pool,
        "config": {
            "warmup_s": args.warmup,
            "settle_s": args.settle,
            "requests": args.requests,
            "concurrency": args.concurrency,
            "rate": args.rate,
            "gap_s": args.gap,
            "database": "given" if args.database_url else "private PostgreSQL 15",
            "at": datetime.now(UTC).isoformat(),
        },
        "command": shlex.join(["python", *sys.argv]),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", help="a PostgreSQL with pg_stat_statements loaded")
    parser.add_argument("--warmup", type=float, default=300.0, help="seconds of load first")
    parser.add_argument("--settle", type=float, default=30.0, help="seconds before measuring")
    parser.add_argument("--requests", type=int, default=200, help="requests per measurement")
    parser.add_argument("--rate", type=float, default=20.0, help="background requests/s")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=1,
        help="measuring requests at once, on top of the background load (1: they add little)",
    )
    parser.add_argument(
        "--gap", type=float, default=150.0, help="seconds between the two (the cooldown)"
    )
    parser.add_argument("--out", type=Path, help="write the JSON report here")
    args = parser.parse_args(argv)
    # SIGTERM ends the run like Ctrl-C: the fleet, the dev server and PostgreSQL are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.database_url:
        report = asyncio.run(run(args, args.database_url))
    else:
        try:
            with PrivatePostgres() as url:
                report = asyncio.run(run(args, url))
        except PostgresUnavailableError as err:
            raise SystemExit(f"no PostgreSQL with pg_stat_statements: {err}") from None
    print(json.dumps({k: report[k] for k in ("index", "pool")}, indent=2, default=str))
    write_report(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
