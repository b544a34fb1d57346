"""The context analyser and the planner: what the engine knows when it decides, and its options.

`gather` reads the inventory (tier, SLO targets, replica group, mode), the platform state (open
incidents, actions in flight, freezes, the kill switch, the guardrail limits), the history (past
outcomes of this pattern on services of the same tier, recent configuration changes, failed
incidents), Track C's predictions when present, and the diagnosis the incident carries.
`plan` turns the enabled playbooks of the problem into candidates; the capability rule prunes
those the target's providers cannot run, so every option is listed in the explanation.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine

from models.decisions import (
    BusinessObjectives,
    Candidate,
    DecisionContext,
    DecisionPolicy,
    DecisionRequest,
    HistoricalMetrics,
    OperationalConstraints,
    OutcomeCount,
    Prediction,
    SystemState,
    Tier,
)
from models.healing import FleetTarget, PlaybookStep
from nofx.decisions.risk import TIER_RISK
from nofx.healing.actions import HEALING_ACTOR, capabilities
from nofx.healing.guardrails import CONTROL, OPEN_STATES, read_controls

DOWN_PATTERNS = frozenset({"service_down", "service_hung"})


def read_policy(conn: Connection) -> DecisionPolicy:
    row = conn.execute(
        text("SELECT decision_policy FROM platform_controls WHERE name = :n"), {"n": CONTROL}
    ).one_or_none()
    return DecisionPolicy.model_validate((row[0] if row else None) or {})


def _service_row(conn: Connection, service: str) -> dict[str, Any] | None:
    row = (
        conn.execute(
            text(
                "SELECT name, tier, capacity, slo_targets, metadata, decision_mode FROM services"
                " WHERE name = :s"
            ),
            {"s": service},
        )
        .mappings()
        .one_or_none()
    )
    return dict(row) if row else None


def _group(conn: Connection, service: str, meta: dict[str, Any]) -> int:
    backend = meta.get("haproxy_backend")
    if not backend:
        return 1
    count = conn.execute(
        text("SELECT count(*) FROM services WHERE metadata->>'haproxy_backend' = :b"),
        {"b": backend},
    ).scalar_one()
    return max(1, int(count))


def outcomes_of(conn: Connection, problem: str, tier: str) -> list[OutcomeCount]:
    """Per playbook, past decisions of `problem` on services of `tier`: how often what ran fixed
    it or not, and how often people turned it down as the engine's pick — a rejection, or an
    override whose own action then fixed the subject."""
    rows = conn.execute(
        text(
            "WITH ran AS (SELECT d.chosen_action AS playbook,"
            "   count(*) FILTER (WHERE (d.actual_outcome->>'resolved')::boolean) AS resolved,"
            "   count(*) FILTER (WHERE NOT (d.actual_outcome->>'resolved')::boolean) AS failed,"
            "   0 AS rejected"
            "   FROM autonomous_decisions d JOIN services s ON s.name = d.subject"
            "   WHERE d.problem = :p AND s.tier = :t AND d.actual_outcome IS NOT NULL"
            "   GROUP BY d.chosen_action),"
            " judged AS (SELECT f.lessons_learned->>'engine_choice' AS playbook, 0, 0, count(*)"
            "   FROM learning_feedback f JOIN autonomous_decisions d ON d.id = f.decision_id"
            "   JOIN services s ON s.name = d.subject"
            "   WHERE d.problem = :p AND s.tier = :t"
            "   AND f.lessons_learned->>'engine_choice' IS NOT NULL"
            "   AND (f.feedback_type = 'rejection' OR (f.feedback_type = 'override'"
            "     AND f.lessons_learned->>'engine_choice' <> d.chosen_action"
            "     AND (d.actual_outcome->>'resolved')::boolean))"
            "   GROUP BY 1)"
            " SELECT playbook, sum(resolved) AS resolved, sum(failed) AS failed,"
            " sum(rejected) AS rejected FROM (SELECT * FROM ran UNION ALL SELECT * FROM judged) x"
            " GROUP BY playbook ORDER BY playbook"
        ),
        {"p": problem, "t": tier},
    ).mappings()
    return [
        OutcomeCount(
            playbook=r["playbook"],
            resolved=int(r["resolved"]),
            failed=int(r["failed"]),
            rejected=int(r["rejected"]),
        )
        for r in rows
    ]


def _config(conn: Connection, service: str, now: datetime) -> tuple[float | None, bool]:
    """Minutes since the active configuration was applied, and whether it can be rolled back
    (an earlier version exists and the active one is not itself a rollback)."""
    row = (
        conn.execute(
            text(
                "SELECT version, applied_by, reason, rolled_back_to, created_at"
                " FROM config_versions WHERE service = :s AND active"
            ),
            {"s": service},
        )
        .mappings()
        .one_or_none()
    )
    if row is None:
        return None, False
    minutes = (
        max(0.0, (now - row["created_at"]).total_seconds() / 60) if row["created_at"] else None
    )
    is_rollback = row["rolled_back_to"] is not None or (
        row["applied_by"] == HEALING_ACTOR and "roll back" in (row["reason"] or "")
    )
    return minutes, row["version"] > 1 and not is_rollback


def _error_budget(
    conn: Connection, service: str, slo: dict[str, Any], now: datetime
) -> float | None:
    """Share of the 30-day error budget left: incident time counts as unavailability."""
    availability = slo.get("availability")
    if not isinstance(availability, (int, float)) or not 0 < availability < 1:
        return None
    budget_s = (1 - availability) * 30 * 86400
    spent_ms = conn.execute(
        text(
            "SELECT coalesce(sum(coalesce(resolution_time_ms,"
            " extract(epoch FROM (coalesce(resolved_at, :now) - started_at)) * 1000)), 0)"
            " FROM healing_incidents WHERE root_cause->>'service' = :s AND started_at > :since"
        ),
        {"s": service, "now": now, "since": now - timedelta(days=30)},
    ).scalar_one()
    return max(0.0, min(1.0, 1 - float(spent_ms) / 1000 / budget_s))


def _predictions(conn: Connection, service: str, now: datetime) -> list[Prediction]:
    rows = conn.execute(
        text(
            "SELECT predicted_issue, probability, time_to_failure_hours"
            " FROM maintenance_predictions"
            " WHERE component_id = :s AND created_at > :since ORDER BY created_at DESC LIMIT 10"
        ),
        {"s": service, "since": now - timedelta(hours=24)},
    ).mappings()
    return [
        Prediction(
            kind=r["predicted_issue"],
            probability=float(r["probability"]) if r["probability"] is not None else None,
            time_to_failure_hours=r["time_to_failure_hours"],
        )
        for r in rows
    ]


def gather(
    engine: Engine, request: DecisionRequest, target: FleetTarget | None, policy: DecisionPolicy
) -> DecisionContext:
    """The DecisionContext of `request` as the platform sees it now."""
    now = datetime.now(UTC)
    diagnosis = request.diagnosis
    cause = diagnosis.root_causes[0].cause if diagnosis and diagnosis.root_causes else None
    with engine.connect() as conn:
        row = _service_row(conn, request.subject)
        meta = (row or {}).get("metadata") or {}
        tier = (row or {}).get("tier") or "tier-2"
        slo = (row or {}).get("slo_targets") or {}
        replicas = _group(conn, request.subject, meta)
        down = request.problem in DOWN_PATTERNS
        controls = read_controls(conn)
        freeze = conn.execute(
            text(
                "SELECT reason FROM change_freezes WHERE starts_at <= now() AND ends_at > now()"
                " AND scope IN ('*', :s) ORDER BY starts_at LIMIT 1"
            ),
            {"s": request.subject},
        ).scalar_one_or_none()
        minutes, rollbackable = _config(conn, request.subject, now)
        counts = (
            conn.execute(
                text(
                    "SELECT"
                    " (SELECT count(*) FROM healing_incidents WHERE status = ANY(:open)) AS open,"
                    " (SELECT count(*) FROM action_leases WHERE expires_at > now()) AS leases,"
                    " (SELECT count(*) FROM healing_incidents WHERE root_cause->>'service' = :s"
                    "   AND started_at > :day) AS day,"
                    " (SELECT count(*) FROM healing_incidents WHERE status = 'failed'"
                    "   AND resolved_at > :hour) AS failed,"
                    " (SELECT count(*) FROM learning_feedback f JOIN autonomous_decisions d"
                    "   ON d.id = f.decision_id WHERE f.feedback_type = 'rejection'"
                    "   AND d.subject = :s AND d.problem = :p AND f.created_at > :week)"
                    "   AS rejections,"
                    " (SELECT count(*) FROM autonomous_decisions WHERE subject = :s"
                    "   AND created_at > :day AND result->'exploration'->>'explored' = 'true')"
                    "   AS explorations"
                ),
                {
                    "open": list(OPEN_STATES),
                    "s": request.subject,
                    "p": request.problem,
                    "day": now - timedelta(days=1),
                    "hour": now - timedelta(hours=1),
                    "week": now - timedelta(days=7),
                },
            )
            .mappings()
            .one()
        )
        state = SystemState(
            service=request.subject,
            tier=cast(Tier, tier if tier in TIER_RISK else "tier-2"),
            pattern=request.problem,
            cause=cause,
            healthy=not down,
            signals=list(diagnosis.pattern.matched) if diagnosis else [],
            metrics={
                k: float(v)
                for k, v in request.evidence.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool)
            },
            replicas=replicas,
            serving_replicas=max(0, replicas - 1) if down else replicas,
            open_incidents=counts["open"],
            actions_in_flight=counts["leases"],
        )
        return DecisionContext(
            current_state=state,
            historical_data=HistoricalMetrics(
                incidents_24h=counts["day"],
                outcomes=outcomes_of(conn, request.problem, tier),
                minutes_since_config_change=minutes,
                config_change_rollbackable=rollbackable,
                failed_automated_actions_1h=counts["failed"],
                rejections_7d=counts["rejections"],
                explorations_24h=counts["explorations"],
            ),
            predicted_outcomes=_predictions(conn, request.subject, now),
            constraints=OperationalConstraints(
                capabilities=sorted(capabilities(target)) if target else [],
                known_service=row is not None and target is not None,
                change_freeze=freeze,
                paused=controls.reason if controls.paused else None,
                max_blast_radius=controls.policy.blast_radius_share,
                max_concurrent_actions=controls.policy.max_concurrent_actions,
                excluded=list(request.exclude),
            ),
            objectives=BusinessObjectives(
                weights=policy.weights,
                rto_seconds=float(slo.get("recovery_time_objective_s") or 300),
                slo_availability=slo.get("availability"),
                error_budget_remaining=_error_budget(conn, request.subject, slo, now),
            ),
            diagnosis=diagnosis,
            gathered_at=now,
        )


def plan(engine: Engine, problem: str) -> list[Candidate]:
    """The enabled playbooks of `problem` as candidates, in the seed's order."""
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT id, playbook_name, automation_level, required_permissions,"
                " recovery_steps, escalation_rank FROM recovery_playbooks"
                " WHERE incident_type = :t AND enabled"
                " ORDER BY escalation_rank, created_at, playbook_name"
            ),
            {"t": problem},
        ).mappings()
        return [
            Candidate(
                name=r["playbook_name"],
                playbook_id=str(r["id"]),
                steps=[PlaybookStep.model_validate(s) for s in r["recovery_steps"]],
                automation_level=r["automation_level"] or "manual",
                required_permissions=list(r["required_permissions"] or []),
                escalation_rank=r["escalation_rank"],
            )
            for r in rows
        ]


def service_mode(engine: Engine, service: str) -> str | None:
    with engine.connect() as conn:
        return conn.execute(
            text("SELECT decision_mode FROM services WHERE name = :s"), {"s": service}
        ).scalar_one_or_none()
