"""A/B tests of decision strategies: which way of deciding fixes more, measured on real outcomes.

An experiment has two or more arms, each a strategy: the success model it scores with (`champion`
— the learned model in force — or `prior`, the Beta prior alone) and optionally its own criteria
weights. While it runs, every decision about a subject is decided by the arm its subject hashes
to (sha256 of `experiment:subject`, so a service stays in its arm for the whole test and the
assignment needs no state), and the decision records the experiment and arm
(`DecisionResult.experiment`). One experiment runs at a time.

The report counts, per arm, the decisions with an outcome and how many it fixed; with two arms it
runs a two-sided two-proportion z-test (pooled standard error). The stop rule: once every arm has
`min_per_arm` outcomes, stop when p < `alpha` (a winner) or when any arm reaches `max_per_arm`
(no difference worth waiting for); `report` says which applies, `stop` ends the experiment with
the reason.
"""

from __future__ import annotations

import hashlib
import json
import math
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine

from models.decisions import (
    ArmReport,
    ExperimentAssignment,
    ExperimentReport,
    ExperimentSpec,
)
from nofx.audit import append_audit


class ExperimentError(ValueError):
    """No such experiment, one already running, or one that has already stopped."""


def assign(spec: ExperimentSpec, subject: str) -> ExperimentAssignment:
    """The arm of `subject`: stable for the experiment, spread evenly over subjects."""
    digest = hashlib.sha256(f"{spec.name}:{subject}".encode()).digest()
    arm = spec.arms[int.from_bytes(digest[:8], "big") % len(spec.arms)]
    return ExperimentAssignment(experiment=spec.name, arm=arm.name, model=arm.model)


def two_proportion_z(wins_a: int, n_a: int, wins_b: int, n_b: int) -> tuple[float, float] | None:
    """(z, two-sided p) of the difference of two success rates, pooled; None without data."""
    if n_a == 0 or n_b == 0:
        return None
    pooled = (wins_a + wins_b) / (n_a + n_b)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    if se == 0:
        return 0.0, 1.0
    z = (wins_a / n_a - wins_b / n_b) / se
    p = math.erfc(abs(z) / math.sqrt(2))
    return z, p


def running(conn: Connection) -> ExperimentSpec | None:
    row = conn.execute(
        text(
            "SELECT spec FROM decision_experiments WHERE status = 'running'"
            " ORDER BY started_at LIMIT 1"
        )
    ).scalar_one_or_none()
    return None if row is None else ExperimentSpec.model_validate(row)


def start(engine: Engine, spec: ExperimentSpec, *, actor: str) -> ExperimentSpec:
    with engine.begin() as conn:
        current = running(conn)
        if current is not None:
            raise ExperimentError(f"experiment {current.name!r} is running: stop it first")
        taken = conn.execute(
            text("SELECT 1 FROM decision_experiments WHERE name = :n"), {"n": spec.name}
        ).first()
        if taken:
            raise ExperimentError(f"an experiment named {spec.name!r} exists: choose another")
        conn.execute(
            text(
                "INSERT INTO decision_experiments (name, spec, status, created_by)"
                " VALUES (:n, CAST(:s AS jsonb), 'running', :a)"
            ),
            {"n": spec.name, "s": spec.model_dump_json(), "a": actor},
        )
        append_audit(
            conn,
            actor=actor,
            action="experiment.started",
            entity_type="decision_experiment",
            entity_id=spec.name,
            details=json.loads(spec.model_dump_json()),
        )
    return spec


def _row(conn: Connection, name: str) -> dict[str, Any]:
    row = (
        conn.execute(
            text(
                "SELECT name, spec, status, started_at, stopped_at, stop_reason"
                " FROM decision_experiments WHERE name = :n"
            ),
            {"n": name},
        )
        .mappings()
        .one_or_none()
    )
    if row is None:
        raise ExperimentError(f"no experiment named {name!r}")
    return dict(row)


def report(engine: Engine, name: str) -> ExperimentReport:
    with engine.connect() as conn:
        row = _row(conn, name)
        spec = ExperimentSpec.model_validate(row["spec"])
        counts = {
            r["arm"]: r
            for r in conn.execute(
                text(
                    "SELECT result->'experiment'->>'arm' AS arm, count(*) AS decisions,"
                    " count(actual_outcome) AS outcomes,"
                    " count(*) FILTER (WHERE (actual_outcome->>'resolved')::boolean) AS fixed"
                    " FROM autonomous_decisions WHERE result->'experiment'->>'experiment' = :n"
                    " GROUP BY 1"
                ),
                {"n": name},
            ).mappings()
        }
    arms = []
    for arm in spec.arms:
        c = counts.get(arm.name) or {"decisions": 0, "outcomes": 0, "fixed": 0}
        n, wins = int(c["outcomes"]), int(c["fixed"])
        arms.append(
            ArmReport(
                arm=arm.name,
                model=arm.model,
                decisions=int(c["decisions"]),
                outcomes=n,
                fixed=wins,
                success_rate=round(wins / n, 4) if n else None,
            )
        )
    test = None
    if len(arms) == 2:
        test = two_proportion_z(arms[0].fixed, arms[0].outcomes, arms[1].fixed, arms[1].outcomes)
    enough = all(a.outcomes >= spec.min_per_arm for a in arms)
    verdict, should_stop = "collecting: some arm has fewer than min_per_arm outcomes", False
    if enough and test is not None and test[1] < spec.alpha:
        best = max(arms, key=lambda a: a.success_rate or 0.0)
        verdict, should_stop = f"{best.arm} wins (p {test[1]:.4f} < {spec.alpha})", True
    elif any(a.outcomes >= spec.max_per_arm for a in arms):
        verdict, should_stop = f"no significant difference by {spec.max_per_arm} per arm", True
    elif enough:
        verdict = "running: no significant difference yet"
    return ExperimentReport(
        name=name,
        status=row["status"],
        started_at=row["started_at"],
        stopped_at=row["stopped_at"],
        stop_reason=row["stop_reason"],
        spec=spec,
        arms=arms,
        z=None if test is None else round(test[0], 4),
        p_value=None if test is None else round(test[1], 6),
        verdict=verdict,
        should_stop=should_stop,
    )


def stop(engine: Engine, name: str, *, actor: str, reason: str) -> ExperimentReport:
    with engine.begin() as conn:
        row = _row(conn, name)
        if row["status"] != "running":
            raise ExperimentError(f"experiment {name!r} already stopped ({row['stop_reason']})")
        conn.execute(
            text(
                "UPDATE decision_experiments SET status = 'stopped', stopped_at = :now,"
                " stop_reason = :r WHERE name = :n"
            ),
            {"n": name, "r": reason, "now": datetime.now(UTC)},
        )
        append_audit(
            conn,
            actor=actor,
            action="experiment.stopped",
            entity_type="decision_experiment",
            entity_id=name,
            reason=reason,
        )
    return report(engine, name)
