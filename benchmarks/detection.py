"""Detection measured on the live staging fleet: every fault type injected for real, N times.

    nofx up            # the platform under test: its own monitor and workers do the detecting
    python benchmarks/detection.py --rounds 4 --quiet-minutes 10 [--out FILE.json]

1. Fault-free run: a fresh fleet of one service per fault role (nofx.faults.ANOMALY_STAGE)
   under steady load for `--quiet-minutes`; every incident opened on it is a false incident.
2. `--rounds` rounds; each injects every anomaly fault at once (one per service), waits for the
   platform's incidents, clears them, then injects the probe faults (hang, crash, kill) the same
   way. Rounds after the first run on a new fleet (fresh services), because the detectors'
   memory of the previous round's extremes would otherwise hide a repeat within their window.

Per fault type it reports: detected, time to detect (injection -> incident detected_at, p50/p95),
pattern named correctly, root cause ranked first (for config pushes: the configuration). Ground
truth comes from `fault_injections`; the figures from `healing_incidents`. Writes JSON.

Stopped by SIGTERM or SIGINT (a `timeout`, Ctrl-C), it stops the load, clears the faults on its
fleet, takes the fleet out of the inventory and stops it, before it exits with status 128 + the
signal.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from _cleanup import retire_on_exit  # benchmarks/, beside this script
from sqlalchemy.engine import Engine

from nofx.db import make_engine
from nofx.faults import (
    ANOMALY_STAGE,
    PROBE_STAGE,
    clear_recorded,
    expected_pattern,
    incidents_opened,
    inject_recorded,
)
from nofx.inventory import register_fleet
from nofx.settings import get_settings
from nofx.shutdown import StopOnSignals
from nofx.stack import Stack
from nofx.temporal import exit_process
from pilot.fleet import Fleet, FleetSpec, ServiceSpec, free_port
from pilot.load import LoadGenerator

ROOT = Path(__file__).resolve().parent.parent
WARM_UP_SECONDS = 90
DETECT_TIMEOUT_SECONDS = 120
SETTLE_SECONDS = 20
LOAD_RPS = 40.0


def say(message: str) -> None:
    print(f"[{datetime.now().astimezone():%H:%M:%S}] {message}", file=sys.stderr, flush=True)


def new_fleet(
    home: Path, database_url: str, engine: Engine, cleanup: StopOnSignals
) -> tuple[Fleet, LoadGenerator]:
    """A fleet of one service per fault role under steady load, retired when `cleanup` exits."""
    tag = uuid.uuid4().hex[:5]
    fleet = Fleet(
        home / f"bench-{tag}",
        FleetSpec(
            services=[
                ServiceSpec(name=f"b{tag}-{role}", port=free_port()) for role in ANOMALY_STAGE
            ]
        ),
        database_url=database_url,
    )
    retire_on_exit(cleanup, fleet, engine)
    fleet.start(timeout=90)
    # registered once up: the monitor must not take a starting service for a dead one
    register_fleet(engine, fleet)
    load = LoadGenerator(
        [fleet.url(s.name, "/") for s in fleet.spec.services], concurrency=8, rate=LOAD_RPS
    )
    load.start()
    cleanup.callback(load.stop)
    return fleet, load


def role_service(fleet: Fleet, role: str) -> str:
    return next(s.name for s in fleet.spec.services if s.name.endswith(f"-{role}"))


def run_stage(
    fleet: Fleet, engine: Engine, stage: Mapping[str, tuple[str, dict[str, Any]]], round_no: int
) -> list[dict[str, Any]]:
    """Inject a stage's faults at once; record what the platform opened for each."""
    injected: dict[str, tuple[str, str, datetime, dict[str, Any]]] = {}
    for role, (kind, params) in stage.items():
        name = role_service(fleet, role)
        outcome = inject_recorded(
            fleet, engine, kind, name, source="benchmark", actor="benchmarks/detection", **params
        )
        at = datetime.fromtimestamp(float(outcome["injected_at"]), UTC)
        injected[name] = (kind, expected_pattern(kind, params), at, params)
    deadline = time.monotonic() + DETECT_TIMEOUT_SECONDS
    found: dict[str, dict[str, Any]] = {}
    while time.monotonic() < deadline and len(found) < len(injected):
        for name, (_, _, at, _) in injected.items():
            if name not in found and (rows := incidents_opened(engine, [name], at)):
                found[name] = rows[0]
        time.sleep(0.5)
    results = []
    for name, (kind, pattern, at, params) in injected.items():
        row = found.get(name)
        ranked = (row or {}).get("root_cause", {}).get("ranked") or []
        lead = ranked[0] if ranked else {}
        # A config push must be blamed on the configuration; every other fault on the service
        # itself (a config change that merely happened before it is the wrong lead).
        wanted_cause = "configuration" if kind == "bad_config" else "self"
        cause_ok = lead.get("service") == name and lead.get("cause") == wanted_cause
        results.append(
            {
                "round": round_no,
                "service": name,
                "fault": kind
                if kind != "bad_config" or params.get("error_rate")
                else "slow_config",
                "expected_pattern": pattern,
                "detected": row is not None,
                "time_to_detect_s": (
                    round((row["started_at"] - at).total_seconds(), 2) if row else None
                ),
                "named": row["incident_type"] if row else None,
                "named_correctly": bool(row) and row["incident_type"] == pattern,
                "root_cause_first": cause_ok,
                "root_cause_lead": lead.get("detail"),
                "root_cause_kind": lead.get("cause"),
            }
        )
        say(
            f"round {round_no} {results[-1]['fault']:<16} "
            + (
                f"detected in {results[-1]['time_to_detect_s']}s as {results[-1]['named']}"
                f" (lead: {lead.get('detail')})"
                if row
                else "NOT detected"
            )
        )
    time.sleep(SETTLE_SECONDS)  # let healing and escalations finish before clearing
    for name in injected:
        try:
            clear_recorded(fleet, engine, name)
        except Exception as err:  # noqa: BLE001 - a restarted service may be mid-start; go on
            say(f"clear {name}: {err}")
    time.sleep(SETTLE_SECONDS)
    return results


def quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)


def summarise(results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    table: dict[str, dict[str, Any]] = {}
    groups: dict[str, list[dict[str, Any]]] = {"overall": results}
    for r in results:
        groups.setdefault(r["fault"], []).append(r)
    for name, rows in groups.items():
        ttd = [r["time_to_detect_s"] for r in rows if r["time_to_detect_s"] is not None]
        table[name] = {
            "injected": len(rows),
            "detected": sum(r["detected"] for r in rows),
            "detection_rate": round(sum(r["detected"] for r in rows) / len(rows), 3),
            "ttd_p50_s": round(statistics.median(ttd), 2) if ttd else None,
            "ttd_p95_s": quantile(ttd, 0.95),
            "named_correctly": sum(r["named_correctly"] for r in rows),
            "root_cause_first": sum(r["root_cause_first"] for r in rows),
        }
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--quiet-minutes", type=float, default=10.0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/detection.json")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error(f"--rounds {args.rounds}: at least one round is needed")

    stack = Stack(get_settings())
    database_url = stack.running_database_url()
    begun = datetime.now(UTC)
    results: list[dict[str, Any]] = []
    with StopOnSignals() as cleanup:
        engine = make_engine(database_url)
        cleanup.callback(engine.dispose)
        for round_no in range(1, args.rounds + 1):
            # each round's fleet is retired when the round ends (or the run is stopped)
            with StopOnSignals() as round_cleanup:
                fleet, _ = new_fleet(stack.home, database_url, engine, round_cleanup)
                if round_no == 1:
                    say(f"fault-free run: {args.quiet_minutes:g} min of steady load")
                    quiet_since = datetime.now(UTC)
                    time.sleep(args.quiet_minutes * 60)
                    names = [s.name for s in fleet.spec.services]
                    false_incidents = incidents_opened(engine, names, quiet_since)
                    say(
                        f"fault-free run: {len(false_incidents)} incident(s) opened"
                        f" on {len(names)} services"
                    )
                else:
                    say(f"round {round_no}: fresh fleet, warming up {WARM_UP_SECONDS}s")
                    time.sleep(WARM_UP_SECONDS)
                results += run_stage(fleet, engine, ANOMALY_STAGE, round_no)
                results += run_stage(fleet, engine, PROBE_STAGE, round_no)

    table = summarise(results)
    print(
        f"{'fault':<18}{'n':>3}{'detected':>10}{'TTD p50':>9}{'TTD p95':>9}{'named':>7}{'cause':>7}"
    )
    for name, row in table.items():
        print(
            f"{name:<18}{row['injected']:>3}{row['detected']:>10}"
            f"{row['ttd_p50_s'] or '-':>9}{row['ttd_p95_s'] or '-':>9}"
            f"{row['named_correctly']:>7}{row['root_cause_first']:>7}"
        )
    print(
        f"false incidents in {args.quiet_minutes:g} min fault-free on {len(names)} services:"
        f" {len(false_incidents)}"
    )
    report = {
        "benchmark": "detection",
        "started_at": begun.isoformat(),
        "finished_at": datetime.now(UTC).isoformat(),
        "rounds": args.rounds,
        "probe_interval_seconds": stack.settings.probe_interval_seconds,
        "load_rps": LOAD_RPS,
        "fault_free": {
            "minutes": args.quiet_minutes,
            "services": len(names),
            "false_incidents": [
                {"incident_type": r["incident_type"], "service": r["root_cause"].get("service")}
                for r in false_incidents
            ],
        },
        "table": table,
        "runs": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
    exit_process(0)
