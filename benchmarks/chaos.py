"""The chaos suite measured on the live staging fleet: real faults, healed (or not) by the platform.

    nofx up            # the platform under test: its monitor, workers and guardrails as shipped
    python benchmarks/chaos.py --suite full --services 10 --parallel 2 [--out FILE.json]

A fresh fleet of `--services` pilot services (replica groups of two behind the fleet's
HAProxy, so an overloaded replica can be relieved by rerouting) joins the running stack's
inventory, gets steady load (as production traffic would be) and `--warm-up` seconds for the
detectors to learn it; then the suite runs as one `ChaosSuiteWorkflow` (`nofx chaos run` is
the same thing on the stack's own fleet). Every experiment checks the steady state, injects a
fault for real, lets the platform detect and heal it on its own, verifies the steady state
within the RTO and removes what is left of the fault. The `full` suite is every fault type three
times (30 faults) plus one rollback drill per strategy, where the incident is aborted after its
first action so its compensations run and each is checked against the state from before.

Prints each experiment as it ends and the table of nofx.chaos (per fault type and overall:
detection rate, auto-resolution rate, MTTD and MTTR p50/p95, rollbacks restored / run); writes
the figures and every result as JSON. The guardrail policy is the stack's own, unchanged.

Stopped by SIGTERM or SIGINT (a `timeout`, Ctrl-C), it cancels the suite and then stops its
load, clears the faults left on its fleet, takes the fleet out of the inventory and stops it,
before it exits with status 128 + the signal.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from _cleanup import retire_on_exit  # benchmarks/, beside this script
from sqlalchemy.engine import Engine

from models.chaos import ChaosResult, ChaosSuiteInput
from nofx import chaos
from nofx.client import NofxClient
from nofx.db import make_engine
from nofx.healing.guardrails import read_controls
from nofx.inventory import register_fleet
from nofx.settings import get_settings
from nofx.shutdown import StopOnSignals
from nofx.stack import Stack
from nofx.temporal import exit_process
from pilot.fleet import Fleet, FleetSpec, GroupSpec, ServiceSpec, free_port
from pilot.load import LoadGenerator

ROOT = Path(__file__).resolve().parent.parent
LOAD_RPS = 40.0


def say(message: str) -> None:
    print(f"[{datetime.now().astimezone():%H:%M:%S}] {message}", file=sys.stderr, flush=True)


def new_fleet(
    home: Path, database_url: str, engine: Engine, size: int, cleanup: StopOnSignals
) -> Fleet:
    """`size` services in replica groups of two, each group behind the fleet's HAProxy,
    retired when `cleanup` exits."""
    tag = f"c{int(time.time()) % 100000:05d}"
    groups = [GroupSpec(name=f"{tag}-g{i}", port=free_port()) for i in range((size + 1) // 2)]
    fleet = Fleet(
        home / f"chaos-{tag}",
        FleetSpec(
            services=[
                ServiceSpec(
                    name=f"{tag}-g{i // 2}-r{i % 2}", port=free_port(), group=groups[i // 2].name
                )
                for i in range(size)
            ],
            groups=groups,
        ),
        database_url=database_url,
    )
    retire_on_exit(cleanup, fleet, engine)
    fleet.start(timeout=90)
    register_fleet(engine, fleet)  # once up: the monitor must not take a starting one for dead
    return fleet


async def cancel_suites(since: datetime) -> None:
    """Cancel the chaos suites started since `since` that still run (this run's, on a stop)."""
    query = (
        "WorkflowType = 'ChaosSuiteWorkflow' AND ExecutionStatus = 'Running'"
        f" AND StartTime >= '{since.isoformat()}'"
    )
    async with NofxClient.connect(get_settings()) as nofx:
        async for running in nofx.temporal.list_workflows(query):
            say(f"cancelling {running.id}")
            await nofx.temporal.get_workflow_handle(running.id).cancel()


async def run_suite(request: ChaosSuiteInput) -> list[ChaosResult]:
    def show(result: ChaosResult) -> None:
        say(chaos.result_line(result))

    async with NofxClient.connect(get_settings()) as nofx:
        progress = await nofx.run_chaos_suite(request, on_result=show, poll_seconds=5.0)
    return progress.results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="full", choices=sorted(chaos.SUITES))
    parser.add_argument("--services", type=int, default=10, help="size of the fresh fleet")
    parser.add_argument("--parallel", type=int, default=2, help="experiments at once")
    parser.add_argument("--rto", type=float, default=300.0, help="recovery-time objective, s")
    parser.add_argument("--warm-up", type=float, default=90.0, help="seconds of load first")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/chaos.json")
    args = parser.parse_args()

    stack = Stack(get_settings())
    database_url = stack.running_database_url()
    faults = chaos.suite_faults(args.suite)
    begun = datetime.now(UTC)
    with StopOnSignals() as cleanup:
        engine = make_engine(database_url)
        cleanup.callback(engine.dispose)
        with engine.connect() as conn:
            policy = read_controls(conn).policy
        fleet = new_fleet(stack.home, database_url, engine, args.services, cleanup)
        names = [s.name for s in fleet.spec.services]
        load = LoadGenerator([fleet.url(n, "/") for n in names], concurrency=8, rate=LOAD_RPS)
        load.start()
        cleanup.callback(load.stop)
        say(f"fleet {', '.join(names)} under load; warming up {args.warm_up:g}s")
        time.sleep(args.warm_up)
        say(f"suite {args.suite}: {len(faults)} experiments, {args.parallel} at a time")
        suite = ChaosSuiteInput(
            suite=args.suite,
            services=names,
            faults=faults,
            rto_seconds=args.rto,
            parallel=args.parallel,
        )
        try:
            results = asyncio.run(run_suite(suite))
        except BaseException:
            # the suite would go on injecting faults into a fleet that is about to go
            asyncio.run(cancel_suites(begun))
            raise

    summary = chaos.summarise(results)
    print(chaos.table(summary))
    report = {
        "benchmark": "chaos",
        "suite": args.suite,
        "started_at": begun.isoformat(),
        "finished_at": datetime.now(UTC).isoformat(),
        "services": len(names),
        "parallel": args.parallel,
        "rto_seconds": args.rto,
        "load_rps": LOAD_RPS,
        "guardrail_policy": policy.model_dump(),
        "summary": summary,
        "results": [r.model_dump(mode="json") for r in results],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
    exit_process(0)
