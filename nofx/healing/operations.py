"""Healing operations: status, patterns, playbooks, simulate, metrics.

One implementation behind both the CLI (`nofx healing ...`) and the Python client
(`NofxClient.healing_*`), reading and writing the platform database. `simulate` touches nothing:
it reads the playbook, the target's capabilities, the guardrails (without taking a lease or
recording a verdict) and the playbook's history, and says what would happen.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError
from sqlalchemy import text
from sqlalchemy.engine import Engine

from models.actions import ACTION_CAPABILITY, ACTION_PARAMS, CHECKS
from models.common import Contract
from models.detection import Pattern
from models.guardrails import GuardrailCheck
from models.healing import FleetTarget, PlaybookStep
from nofx.healing.actions import ACTIONS, capabilities
from nofx.healing.guardrails import check_guardrails
from nofx.operations.errors import NotFound, RuleConflict

# A maintenance job decides among the playbooks of `maintenance:<issue>` (sql/025): oom,
# disk_full, pool_exhausted, or `<metric>_exhausted` (nofx.maintenance.predictions.issue_of).
MaintenanceProblem = Annotated[str, Field(pattern=r"^maintenance:[a-z0-9_]{1,80}$")]


class PlaybookSpec(Contract):
    """A recovery playbook as an operator writes it (`nofx healing playbooks create --file`)."""

    incident_type: Pattern | MaintenanceProblem = Field(
        description="a failure pattern, or `maintenance:<issue>` for a maintenance job's playbooks"
    )
    playbook_name: str = Field(min_length=1, max_length=100, pattern=r"^[a-z0-9][a-z0-9-]*$")
    recovery_steps: list[PlaybookStep] = Field(min_length=1)
    automation_level: Literal["manual", "semi-auto", "full-auto"] = "semi-auto"
    required_permissions: list[str] = Field(default_factory=list)
    escalation_rank: int = Field(default=1, ge=1, le=20)


# ---- status ---------------------------------------------------------------------------------


def incident_status(
    engine: Engine, *, service: str | None = None, limit: int = 20
) -> list[dict[str, Any]]:
    """Running incidents first, then the most recent ones."""
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT id, root_cause->>'service' AS service, incident_type, status,"
                " healing_strategy, started_at, resolved_at, resolution_time_ms"
                " FROM healing_incidents WHERE (CAST(:s AS text) IS NULL"
                "  OR root_cause->>'service' = :s)"
                " ORDER BY (status IN ('resolved', 'failed', 'escalated')), started_at DESC"
                " LIMIT :n"
            ),
            {"s": service, "n": limit},
        ).mappings()
        return [dict(r) for r in rows]


# ---- patterns -------------------------------------------------------------------------------


def refresh_pattern(engine: Engine, incident_type: str) -> dict[str, Any]:
    """Recompute a pattern's success rate, average resolution time and proven solutions from
    every finished incident of that type."""
    with engine.begin() as conn:
        row = (
            conn.execute(
                text(
                    "WITH done AS (SELECT status, healing_strategy, resolution_time_ms"
                    "  FROM healing_incidents WHERE incident_type = :t"
                    "  AND status IN ('resolved', 'failed'))"
                    " UPDATE healing_patterns p SET"
                    "  success_rate = (SELECT round(avg((status = 'resolved')::int), 2) FROM done),"
                    "  average_resolution_time_ms = (SELECT round(avg(resolution_time_ms))::int"
                    "   FROM done WHERE status = 'resolved'),"
                    "  proven_solutions = (SELECT coalesce(array_agg(jsonb_build_object("
                    "   'playbook', healing_strategy, 'resolved', n) ORDER BY n DESC), '{}')"
                    "   FROM (SELECT healing_strategy, count(*) AS n FROM done"
                    "    WHERE status = 'resolved' GROUP BY healing_strategy) s),"
                    "  last_updated = now()"
                    " WHERE p.problem_signature = :t"
                    " RETURNING problem_signature, success_rate, average_resolution_time_ms"
                ),
                {"t": incident_type},
            )
            .mappings()
            .one_or_none()
        )
    return dict(row) if row else {}


def patterns(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT p.problem_signature, p.success_rate, p.average_resolution_time_ms,"
                " p.proven_solutions, p.last_updated,"
                " (SELECT count(*) FROM healing_incidents i"
                "  WHERE i.incident_type = p.problem_signature) AS incidents"
                " FROM healing_patterns p ORDER BY p.problem_signature"
            )
        ).mappings()
        return [dict(r) for r in rows]


# ---- playbooks ------------------------------------------------------------------------------

_PLAYBOOK_COLUMNS = (
    "id, incident_type, playbook_name, recovery_steps, automation_level, required_permissions,"
    " escalation_rank, enabled, created_at, updated_at"
)


def list_playbooks(engine: Engine, incident_type: str | None = None) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                f"SELECT {_PLAYBOOK_COLUMNS} FROM recovery_playbooks"
                " WHERE CAST(:t AS text) IS NULL OR incident_type = :t"
                " ORDER BY incident_type, escalation_rank, playbook_name"
            ),
            {"t": incident_type},
        ).mappings()
        return [dict(r) for r in rows]


def get_playbook(engine: Engine, name: str) -> dict[str, Any]:
    with engine.connect() as conn:
        rows = (
            conn.execute(
                text(
                    f"SELECT {_PLAYBOOK_COLUMNS} FROM recovery_playbooks WHERE playbook_name = :n"
                ),
                {"n": name},
            )
            .mappings()
            .all()
        )
    if not rows:
        raise NotFound(f"playbook: no playbook named {name!r}")
    if len(rows) > 1:
        types = ", ".join(r["incident_type"] for r in rows)
        raise RuleConflict(
            f"{len(rows)} playbooks are named {name!r} ({types})", rule="unique_playbook_name"
        )
    return dict(rows[0])


def _steps_json(spec: PlaybookSpec) -> str:
    return json.dumps([s.model_dump(mode="json") for s in spec.recovery_steps])


def create_playbook(engine: Engine, spec: PlaybookSpec) -> dict[str, Any]:
    with engine.begin() as conn:
        # Names are unique across patterns: a playbook is shown, changed and chosen by name.
        exists = conn.execute(
            text("SELECT incident_type FROM recovery_playbooks WHERE playbook_name = :n"),
            {"n": spec.playbook_name},
        ).first()
        if exists:
            raise RuleConflict(
                f"playbook {spec.playbook_name!r} already exists for {exists[0]}",
                rule="unique_playbook_name",
            )
        conn.execute(
            text(
                "INSERT INTO recovery_playbooks (incident_type, playbook_name, recovery_steps,"
                " automation_level, required_permissions, escalation_rank) VALUES (:t, :n,"
                " CAST(:s AS jsonb), :a, :p, :r)"
            ),
            {
                "t": spec.incident_type,
                "n": spec.playbook_name,
                "s": _steps_json(spec),
                "a": spec.automation_level,
                "p": spec.required_permissions,
                "r": spec.escalation_rank,
            },
        )
    return get_playbook(engine, spec.playbook_name)


def update_playbook(engine: Engine, name: str, changes: dict[str, Any]) -> dict[str, Any]:
    """Apply `changes` to a playbook; the result is validated as a whole before it is stored."""
    current = get_playbook(engine, name)
    merged = {
        "incident_type": current["incident_type"],
        "playbook_name": current["playbook_name"],
        "recovery_steps": current["recovery_steps"],
        "automation_level": current["automation_level"] or "manual",
        "required_permissions": list(current["required_permissions"] or []),
        "escalation_rank": current["escalation_rank"],
        **changes,
    }
    spec = PlaybookSpec.model_validate(merged)  # ValidationError: refused field by field
    if spec.incident_type != current["incident_type"] or spec.playbook_name != name:
        raise RuleConflict(
            "incident_type and playbook_name cannot change; create a new one",
            rule="playbook_identity",
        )
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE recovery_playbooks SET recovery_steps = CAST(:s AS jsonb),"
                " automation_level = :a, required_permissions = :p, escalation_rank = :r,"
                " updated_at = now() WHERE id = :id"
            ),
            {
                "s": _steps_json(spec),
                "a": spec.automation_level,
                "p": spec.required_permissions,
                "r": spec.escalation_rank,
                "id": current["id"],
            },
        )
    return get_playbook(engine, name)


def set_playbook_enabled(engine: Engine, name: str, enabled: bool) -> dict[str, Any]:
    current = get_playbook(engine, name)
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE recovery_playbooks SET enabled = :e, updated_at = now() WHERE id = :id"),
            {"e": enabled, "id": current["id"]},
        )
    return get_playbook(engine, name)


# ---- simulate -------------------------------------------------------------------------------


def simulate(engine: Engine, playbook: str, service: str) -> dict[str, Any]:
    """What running `playbook` against `service` would do — nothing is touched."""
    book = get_playbook(engine, playbook)
    try:
        steps = [PlaybookStep.model_validate(s) for s in book["recovery_steps"]]
    except ValidationError as err:
        raise RuleConflict(
            f"{playbook}: stored steps do not validate: {err}", rule="valid_playbook"
        ) from None
    with engine.connect() as conn:
        row = (
            conn.execute(
                text("SELECT name, endpoint, provider, metadata FROM services WHERE name = :s"),
                {"s": service},
            )
            .mappings()
            .one_or_none()
        )
        history = conn.execute(
            text(
                "SELECT count(*) FILTER (WHERE status = 'resolved'),"
                " count(*) FILTER (WHERE status = 'failed'),"
                " percentile_cont(0.5) WITHIN GROUP (ORDER BY resolution_time_ms)"
                "  FILTER (WHERE status = 'resolved')"
                " FROM healing_incidents WHERE healing_strategy = :p AND incident_type = :t"
            ),
            {"p": playbook, "t": book["incident_type"]},
        ).one()
    if row is None:
        raise NotFound(f"service: {service!r} is not in the inventory (table services)")
    target = FleetTarget(
        service=row["name"],
        endpoint=row["endpoint"],
        provider=row["provider"],
        metadata=row["metadata"] or {},
    )
    offered = capabilities(target)
    planned = []
    for index, step in enumerate(steps):
        needed = ACTION_CAPABILITY[step.action]
        entry: dict[str, Any] = {
            "step": index,
            "action": step.action,
            "params": step.params,
            "capability": needed,
            "provider": offered.get(needed),
            "supported": needed in offered,
        }
        action = ACTIONS.get(step.action)
        if action is not None:
            does, undoes = action.plan(action_params(step))
            entry.update(does=does, compensation=undoes)
        elif step.action == "restart_service":
            entry.update(
                does="restart the process through supervisord (nothing if it restarted already)",
                compensation="start the process again if the restart left it stopped",
            )
        else:
            entry.update(does=f"check: {step.action}", compensation=None)
        if step.action not in CHECKS:
            verdict = check_guardrails(
                engine,
                GuardrailCheck(
                    idempotency_key=f"simulate/{playbook}/{index}",
                    workflow_id=f"simulate-{playbook}",
                    service=service,
                    action=step.action,
                ),
                dry_run=True,
            )
            entry["guardrail"] = {
                "verdict": verdict.verdict,
                "guardrail": verdict.guardrail,
                "reason": verdict.reason,
            }
        planned.append(entry)
    resolved, failed, median_ms = history
    unsupported = [p["action"] for p in planned if not p["supported"]]
    blocked = [p for p in planned if p.get("guardrail", {}).get("verdict") not in (None, "allow")]
    estimate = (resolved + 1) / (resolved + failed + 2)
    if unsupported:
        outcome = f"not offered: {service} lacks the capability for {', '.join(unsupported)}"
    elif blocked:
        first = blocked[0]["guardrail"]
        outcome = f"would {first['verdict']} at step {blocked[0]['step']}: {first['reason']}"
    else:
        outcome = (
            f"would run {len(steps)} step(s); estimated success {estimate:.2f} from"
            f" {resolved + failed} past incident(s)"
            + (f", median resolution {median_ms / 1000:.1f} s" if median_ms else "")
        )
    return {
        "playbook": playbook,
        "incident_type": book["incident_type"],
        "service": service,
        "automation_level": book["automation_level"],
        "enabled": book["enabled"],
        "steps": planned,
        "rollback_plan": [p["compensation"] for p in reversed(planned) if p.get("compensation")],
        "estimated_success": round(estimate, 3),
        "expected_outcome": outcome,
        "touched": "nothing",
    }


def action_params(step: PlaybookStep) -> Any:
    return ACTION_PARAMS[step.action].model_validate(step.params)


# ---- metrics --------------------------------------------------------------------------------


def healing_metrics(engine: Engine, since: timedelta = timedelta(hours=24)) -> dict[str, Any]:
    """Detection rate, auto-resolution rate, MTTD and MTTR (p50/p95), by pattern and overall.

    Detection is judged against `fault_injections` (the known faults): an injected fault counts
    as detected when an incident of its expected pattern opened on its service within 5 minutes.
    Auto-resolved means resolved with no person's approval in its audit trail.
    """
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "WITH faults AS ("
                "  SELECT f.expected_pattern AS pattern, f.injected_at,"
                "   (SELECT min(i.started_at) FROM healing_incidents i"
                "    WHERE i.root_cause->>'service' = f.service"
                "    AND i.incident_type = f.expected_pattern"
                "    AND i.started_at >= f.injected_at - interval '5 seconds'"
                "    AND i.started_at <= f.injected_at + interval '5 minutes') AS opened"
                "  FROM fault_injections f WHERE f.injected_at > now() - make_interval(secs => :s)"
                "  AND f.expected_pattern IS NOT NULL),"
                " timed AS (SELECT *, extract(epoch FROM opened - injected_at) AS ttd FROM faults),"
                " incidents AS ("
                "  SELECT i.incident_type AS pattern, i.status, i.resolution_time_ms,"
                "   EXISTS (SELECT 1 FROM audit_events a WHERE a.entity_id = i.id::text"
                "    AND a.action = 'incident.awaiting_approval') AS asked"
                "  FROM healing_incidents i WHERE i.started_at > now() - make_interval(secs => :s))"
                " SELECT coalesce(f.pattern, i.pattern) AS pattern, f.injected, f.detected,"
                "  f.mttd_p50, f.mttd_p95, i.incidents, i.auto_resolved, i.resolved, i.failed,"
                "  i.mttr_p50, i.mttr_p95"
                " FROM (SELECT coalesce(pattern, 'overall') AS pattern, count(*) AS injected,"
                "   count(opened) AS detected,"
                "   percentile_cont(0.5) WITHIN GROUP (ORDER BY ttd) AS mttd_p50,"
                "   percentile_cont(0.95) WITHIN GROUP (ORDER BY ttd) AS mttd_p95"
                "  FROM timed GROUP BY ROLLUP (pattern)) f"
                " FULL JOIN (SELECT coalesce(pattern, 'overall') AS pattern, count(*) AS incidents,"
                "   count(*) FILTER (WHERE status = 'resolved' AND NOT asked) AS auto_resolved,"
                "   count(*) FILTER (WHERE status = 'resolved') AS resolved,"
                "   count(*) FILTER (WHERE status = 'failed') AS failed,"
                "   percentile_cont(0.5) WITHIN GROUP (ORDER BY resolution_time_ms) / 1000.0"
                "    AS mttr_p50,"
                "   percentile_cont(0.95) WITHIN GROUP (ORDER BY resolution_time_ms) / 1000.0"
                "    AS mttr_p95"
                "  FROM incidents GROUP BY ROLLUP (pattern)) i ON i.pattern = f.pattern"
                " ORDER BY (coalesce(f.pattern, i.pattern) = 'overall'), 1"
            ),
            {"s": since.total_seconds()},
        ).mappings()
        table = []
        for r in rows:
            injected, incidents = r["injected"] or 0, r["incidents"] or 0
            table.append(
                {
                    "pattern": r["pattern"],
                    "faults_injected": injected,
                    "detected": r["detected"] or 0,
                    "detection_rate": _ratio(r["detected"], injected),
                    "incidents": incidents,
                    "resolved": r["resolved"] or 0,
                    "failed": r["failed"] or 0,
                    "auto_resolution_rate": _ratio(r["auto_resolved"], incidents),
                    "mttd_p50_s": _num(r["mttd_p50"]),
                    "mttd_p95_s": _num(r["mttd_p95"]),
                    "mttr_p50_s": _num(r["mttr_p50"]),
                    "mttr_p95_s": _num(r["mttr_p95"]),
                }
            )
    return {"since_hours": round(since.total_seconds() / 3600, 2), "table": table}


def _ratio(part: Any, whole: int) -> float | None:
    return round(float(part or 0) / whole, 3) if whole else None


def _num(value: Any) -> float | None:
    return None if value is None else round(float(value), 2)
