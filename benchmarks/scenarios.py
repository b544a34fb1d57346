"""Decision scenarios for benchmarks/decisions.py, from measured ground truth and real metrics.

    # once, from a platform database that ran real faults (a game day, the chaos suite):
    python benchmarks/scenarios.py evidence --database-url URL \\
        --out benchmarks/data/fleet_evidence.jsonl
    # then any number of files, one configuration for all:
    python benchmarks/scenarios.py generate --lines 3000 --seed 1 --out train.jsonl \\
        [--matrix benchmarks/results/action_matrix.json] \\
        [--evidence benchmarks/data/fleet_evidence.jsonl]

`evidence` reads every recorded fault injection (`fault_injections`) and, through the platform's
own telemetry code (`nofx.diagnosis.evidence.derive_series` on `metric_samples`), the faulted
service's watched series: the median of each over the two minutes before the injection and over
the fault (until it was cleared, at most five minutes); one JSON line per injection with the
fault kind, the pattern it was expected to show and those numbers. Series that are empty, NaN or
infinite are left out and counted.

`generate` writes JSON Lines in the format benchmarks/decisions.py reads (see there). Each line:

- a fault scenario of the action matrix, drawn uniformly (ambiguous patterns included: a latency
  regression from a config push, an overload or a leak), and one of the patterns it was
  diagnosed as in the matrix;
- its evidence: a real injection of that fault kind, each number jittered by ±10 %, as
  `current_state.metrics` (during and before the fault, `*_before`), with `minutes_since_config_
  change` small after a configuration fault and large otherwise; the root-cause kind is given
  only half the time (diagnosis is not always sure);
- its candidates: the matrix's playbooks of that pattern, each with its steps' reversibility,
  blast radius (a capacity step on a replica of the line's replica count) and cost;
- its candidates in a random order (the matrix's order is the playbooks' escalation rank);
- constraints: a blast-radius limit of 0.34, 0.5 or 1.0 and `require_reversible` 20 % of the time;
  the objective: success, with the matrix's RTO;
- the answers, which the engine never sees: `success_probability` per candidate, the matrix
  cell's successes and runs smoothed as (s + 0.5) / (n + 1), clipped to [0.02, 0.98], and
  `recovery_seconds`, the cell's mean recovery (or its RTO when it never recovered).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
from collections.abc import Iterable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


from nofx.decisions.risk import CAPACITY_ACTIONS, IRREVERSIBLE_ACTIONS  # noqa: E402
from nofx.decisions.scoring import STEP_COST  # noqa: E402

DEFAULT_MATRIX = ROOT / "benchmarks" / "results" / "action_matrix.json"
DEFAULT_EVIDENCE = ROOT / "benchmarks" / "data" / "fleet_evidence.jsonl"
BEFORE = timedelta(minutes=2)
LONGEST_FAULT = timedelta(minutes=5)
SERVICES = (("checkout", 1), ("orders", 1), ("search", 2), ("catalog", 2), ("reports", 3))
CONFIG_FAULTS = frozenset({"bad_config"})


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---- evidence: real metrics around real faults ----------------------------------------------


def _median(values: Iterable[float]) -> float | None:
    kept = [v for v in values if math.isfinite(v)]
    return statistics.median(kept) if kept else None


def export_evidence(database_url: str, out: Path) -> dict[str, Any]:
    from sqlalchemy import text

    from nofx.db import make_engine
    from nofx.diagnosis.evidence import derive_series
    from nofx.telemetry.sources import ScrapeSource

    engine = make_engine(database_url)
    source = ScrapeSource(engine)
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT service, kind, params, expected_pattern, injected_at, cleared_at"
                " FROM fault_injections ORDER BY injected_at"
            )
        ).all()
    written = skipped = dropped = 0
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w") as f:
        for service, kind, params, pattern, at, cleared in rows:
            end = min(cleared or at + LONGEST_FAULT, at + LONGEST_FAULT)
            before = derive_series(source, service, at - BEFORE, at)
            during = derive_series(source, service, at, end)
            metrics: dict[str, float] = {}
            for name, series in during.items():
                value = _median(series.tolist())
                if value is None:
                    dropped += 1
                    continue
                metrics[name] = round(value, 6)
                base = _median(before.get(name, []).tolist()) if name in before else None
                if base is not None:
                    metrics[f"{name}_before"] = round(base, 6)
            if not metrics:
                skipped += 1
                continue
            fault = kind if kind != "bad_config" else f"bad_config_{_config_kind(params)}"
            record = {"fault": fault, "kind": kind, "pattern": pattern, "metrics": metrics}
            f.write(json.dumps(record) + "\n")
            written += 1
    engine.dispose()
    summary = {"injections": len(rows), "written": written, "no_series": skipped}
    summary["non_finite_series_dropped"] = dropped
    say(f"evidence: {summary} -> {out}")
    return summary


def _config_kind(params: Mapping[str, Any] | None) -> str:
    """The matrix names a bad push by what it breaks: errors or latency."""
    text_ = json.dumps(params or {})
    return "latency" if "delay" in text_ or "latency" in text_ else "errors"


# ---- generation ------------------------------------------------------------------------------


def _traits(steps: list[dict[str, Any]], replicas: int) -> dict[str, Any]:
    actions = [s["action"] for s in steps]
    capacity = any(a in CAPACITY_ACTIONS for a in actions)
    return {
        "reversible": not any(a in IRREVERSIBLE_ACTIONS for a in actions),
        "blast_radius": round(1.0 / replicas, 2) if capacity else 0.0,
        "cost": round(sum(STEP_COST.get(a, 0.1) for a in actions) * 5, 2),
    }


def load_matrix(path: Path) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """fault -> pattern -> cells."""
    data = json.loads(path.read_text())
    out: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for cell in data["cells"]:
        if not cell.get("runs"):
            continue
        out.setdefault(cell["fault"], {}).setdefault(cell["pattern"], []).append(cell)
    return out


def load_evidence(path: Path) -> dict[str, list[dict[str, float]]]:
    out: dict[str, list[dict[str, float]]] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            out.setdefault(record["fault"], []).append(record["metrics"])
    return out


def playbook_steps(names: Iterable[str]) -> dict[str, list[dict[str, Any]]]:
    """The shipped playbooks' steps, from the migrations' seed data (no database needed)."""
    import tempfile

    import pgserver
    from sqlalchemy import text

    from nofx.db import make_engine, migrate

    with tempfile.TemporaryDirectory() as home:
        server = pgserver.get_server(home, cleanup_mode="stop")
        engine = make_engine(server.get_uri())
        try:
            migrate(server.get_uri())
            with engine.connect() as conn:
                rows = conn.execute(
                    text("SELECT playbook_name, recovery_steps FROM recovery_playbooks")
                ).all()
        finally:
            engine.dispose()
            server.cleanup()
    wanted = set(names)
    return {name: steps for name, steps in rows if name in wanted}


def generate(
    count: int,
    seed: int,
    matrix: dict[str, dict[str, list[dict[str, Any]]]],
    evidence: dict[str, list[dict[str, float]]],
    steps: Mapping[str, list[dict[str, Any]]],
    rto: float,
) -> Iterable[dict[str, Any]]:
    rng = random.Random(seed)  # noqa: S311 - reproducible scenario files
    faults = sorted(matrix)
    for index in range(count):
        fault = rng.choice(faults)
        pattern = rng.choice(sorted(matrix[fault]))
        cells = matrix[fault][pattern]
        service, tier = rng.choice(SERVICES)
        replicas = rng.choice((2, 3, 4))
        seen = evidence.get(fault) or evidence.get(fault.split("_")[0]) or [{}]
        metrics = {k: round(v * rng.uniform(0.9, 1.1), 6) for k, v in rng.choice(seen).items()}
        configured = fault.startswith("bad_config")
        cause = None
        if rng.random() < 0.5:
            cause = cells[0]["cause"]
        incident: dict[str, Any] = {"service": service, "pattern": pattern}
        if cause:
            incident["cause"] = cause
        candidates, probability, recovery = [], {}, {}
        # in a random order: the matrix lists a pattern's playbooks by escalation rank, which
        # would give the answer away
        for cell in rng.sample(cells, len(cells)):
            name = cell["playbook"]
            candidates.append({"action": name, **_traits(steps.get(name, []), replicas)})
            wins, runs = cell["successes"], cell["runs"]
            probability[name] = round(min(0.98, max(0.02, (wins + 0.5) / (runs + 1))), 3)
            times = cell.get("recovery_seconds") or []
            recovery[name] = round(sum(times) / len(times), 2) if times else rto
        yield {
            "id": f"s-{seed}-{index:05d}",
            "decision_type": "healing",
            "incident": incident,
            "context": {
                "current_state": {"metrics": metrics, "replicas": replicas},
                "historical_data": {
                    "incidents_7d": rng.randint(0, 6),
                    "minutes_since_config_change": round(
                        rng.uniform(1, 20) if configured else rng.uniform(60, 2000), 1
                    ),
                },
                "predicted_outcomes": [],
                "constraints": {
                    "change_freeze": False,
                    "max_blast_radius": rng.choice((0.34, 0.5, 1.0)),
                    "require_reversible": rng.random() < 0.2,
                },
                "objectives": {"weights": {"success": 1.0}, "rto_seconds": rto},
                "service": {"name": service, "tier": tier},
            },
            "candidates": candidates,
            "success_probability": probability,
            "recovery_seconds": recovery,
            "fault": fault,  # not an answer the engine needs; unknown keys are ignored
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    ev = sub.add_parser("evidence", help="export real metrics around recorded faults")
    ev.add_argument("--database-url", required=True)
    ev.add_argument("--out", type=Path, default=DEFAULT_EVIDENCE)
    gen = sub.add_parser("generate", help="write a scenario file")
    gen.add_argument("--lines", type=int, required=True)
    gen.add_argument("--seed", type=int, default=1)
    gen.add_argument("--out", type=Path, required=True)
    gen.add_argument("--matrix", type=Path, default=DEFAULT_MATRIX)
    gen.add_argument("--evidence", type=Path, default=DEFAULT_EVIDENCE)
    args = parser.parse_args()
    if args.command == "evidence":
        export_evidence(args.database_url, args.out)
        return
    if args.lines < 1:
        parser.error("--lines must be at least 1")
    for path in (args.matrix, args.evidence):
        if not path.exists():
            parser.error(f"{path} does not exist")
    matrix = load_matrix(args.matrix)
    rto = float(json.loads(args.matrix.read_text()).get("rto_seconds") or 90)
    evidence = load_evidence(args.evidence)
    names = {c["playbook"] for by in matrix.values() for cells in by.values() for c in cells}
    steps = playbook_steps(names)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w") as f:
        for line in generate(args.lines, args.seed, matrix, evidence, steps, rto):
            f.write(json.dumps(line) + "\n")
    say(f"wrote {args.lines} scenarios to {args.out} (seed {args.seed})")


if __name__ == "__main__":
    main()
