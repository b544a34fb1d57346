"""Activities that read and write the platform's PostgreSQL: incidents, playbooks, decisions,
the fleet inventory and the audit chain.

Every write is idempotent on a key the workflow chose (incident id, decision id, audit
idempotency key), so a retry after a crash writes once.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Engine
from temporalio import activity

from activities._support import invalid_input, not_found
from models.actions import ServiceCapabilities
from models.common import AuditEventInput, AuditEventRef, AuditVerdict
from models.healing import (
    FleetTarget,
    PlaybookCandidate,
    PlaybookCandidates,
    RecordDecisionInput,
    RecordIncidentInput,
    UpdateIncidentInput,
)
from nofx.audit import append_audit, verify_chain
from nofx.healing.actions import capabilities
from nofx.healing.operations import refresh_pattern
from nofx.inventory import find_target, list_targets


def _json(value: Any) -> str:
    return json.dumps(value, default=str, sort_keys=True)


list_fleet_targets = list_targets


def get_fleet_target(engine: Engine, service: str) -> FleetTarget:
    """The inventory entry of one service, or a non-retryable NotFound naming it."""
    target = find_target(engine, service)
    if target is not None:
        return target
    raise not_found(f"service {service!r} is not in the inventory (table services)")


class StoreActivities:
    """Database activities; one engine per worker process, one connection per attempt."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    @activity.defn
    def append_audit_event(self, event: AuditEventInput) -> AuditEventRef:
        """Append to the hash-chained audit log (once per idempotency key)."""
        with self._engine.begin() as conn:
            record = append_audit(conn, **event.model_dump())
        return AuditEventRef(id=record.id, hash=record.hash)

    @activity.defn
    def record_incident(self, inp: RecordIncidentInput) -> None:
        """Insert the incident row; a retry finds it there and changes nothing."""
        with self._engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO healing_incidents (id, incident_type, detection_method,"
                    " root_cause, healing_strategy, healing_actions, status, started_at)"
                    " VALUES (:id, :type, :method, CAST(:root_cause AS jsonb), :strategy,"
                    " ARRAY[]::jsonb[], :status, :started_at) ON CONFLICT (id) DO NOTHING"
                ),
                {
                    "id": inp.incident_id,
                    "type": inp.incident_type,
                    "method": inp.detection_method,
                    "root_cause": _json(
                        {
                            "service": inp.service,
                            "workflow_id": inp.workflow_id,
                            "evidence": inp.evidence,
                            # ranked candidates first, so `root_cause->'ranked'->0` is the lead
                            "ranked": (inp.diagnosis or {}).get("root_causes", []),
                            "pattern": (inp.diagnosis or {}).get("pattern"),
                        }
                    ),
                    "strategy": inp.healing_strategy,
                    "status": inp.status,
                    "started_at": inp.started_at,
                },
            )

    @activity.defn
    def update_incident(self, inp: UpdateIncidentInput) -> None:
        """Apply a transition; setting the same values twice is harmless."""
        sets = ["status = :status"]
        params: dict[str, Any] = {"id": inp.incident_id, "status": inp.status}
        if inp.healing_strategy is not None:
            sets.append("healing_strategy = :strategy")
            params["strategy"] = inp.healing_strategy
        if inp.healing_actions is not None:
            # JSONB[] column: expand a JSON array into a Postgres array of jsonb.
            sets.append(
                "healing_actions = ARRAY(SELECT jsonb_array_elements(CAST(:actions AS jsonb)))"
            )
            params["actions"] = _json(inp.healing_actions)
        if inp.resolved_at is not None:
            sets.append("resolved_at = :resolved_at")
            params["resolved_at"] = inp.resolved_at
        if inp.resolution_time_ms is not None:
            sets.append("resolution_time_ms = :ms")
            params["ms"] = inp.resolution_time_ms
        if inp.root_cause is not None:
            sets.append("root_cause = COALESCE(root_cause, '{}'::jsonb) || CAST(:rc AS jsonb)")
            params["rc"] = _json(inp.root_cause)
        with self._engine.begin() as conn:
            updated = conn.execute(
                text(f"UPDATE healing_incidents SET {', '.join(sets)} WHERE id = :id"), params
            ).rowcount
        if updated == 0:
            raise not_found(f"incident {inp.incident_id} does not exist")

    @activity.defn
    def refresh_pattern(self, incident_type: str) -> None:
        """Keep the pattern's success rate and average resolution time current."""
        refresh_pattern(self._engine, incident_type)

    @activity.defn
    def service_capabilities(self, service: str) -> ServiceCapabilities:
        """What the service's providers can do (empty, with the reason, when it is unknown)."""
        for target in list_fleet_targets(self._engine):
            if target.service == service:
                return ServiceCapabilities(
                    service=service, known=True, capabilities=capabilities(target)
                )
        return ServiceCapabilities(service=service, known=False, capabilities={})

    @activity.defn
    def load_playbooks(self, incident_type: str) -> PlaybookCandidates:
        """Playbooks that handle an incident type, oldest first (the seed's order of preference)."""
        if not incident_type:
            raise invalid_input("incident_type is empty")
        with self._engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT id, playbook_name, automation_level, required_permissions,"
                    " recovery_steps, escalation_rank,"
                    " (SELECT count(*) FROM healing_incidents i"
                    "   WHERE i.incident_type = p.incident_type"
                    "   AND i.healing_strategy = p.playbook_name AND i.status = 'resolved')"
                    "   AS resolved,"
                    " (SELECT count(*) FROM healing_incidents i"
                    "   WHERE i.incident_type = p.incident_type"
                    "   AND i.healing_strategy = p.playbook_name AND i.status = 'failed')"
                    "   AS failed"
                    " FROM recovery_playbooks p WHERE incident_type = :t AND enabled"
                    " ORDER BY escalation_rank, created_at, playbook_name"
                ),
                {"t": incident_type},
            ).mappings()
            candidates = [
                PlaybookCandidate(
                    playbook_id=str(r["id"]),
                    playbook_name=r["playbook_name"],
                    escalation_rank=r["escalation_rank"],
                    automation_level=r["automation_level"] or "manual",
                    required_permissions=list(r["required_permissions"] or []),
                    recovery_steps=list(r["recovery_steps"]),
                    resolved_count=r["resolved"],
                    failed_count=r["failed"],
                )
                for r in rows
            ]
        return PlaybookCandidates(incident_type=incident_type, candidates=candidates)

    @activity.defn
    def record_decision(self, inp: RecordDecisionInput) -> None:
        """Write the decision with what it weighed; the decision id makes it write-once."""
        with self._engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO autonomous_decisions (id, decision_type, context_data,"
                    " chosen_action, alternatives_considered, confidence_score, risk_assessment,"
                    " expected_outcome) VALUES (:id, :type, CAST(:ctx AS jsonb), :action,"
                    " CAST(:alts AS jsonb), :conf, CAST(:risk AS jsonb), CAST(:expected AS jsonb))"
                    " ON CONFLICT (id) DO NOTHING"
                ),
                {
                    "id": inp.decision_id,
                    "type": inp.decision_type,
                    "ctx": _json(inp.context_data),
                    "action": inp.chosen_action,
                    "alts": _json(inp.alternatives_considered),
                    "conf": round(inp.confidence_score, 2),
                    "risk": _json(inp.risk_assessment),
                    "expected": _json(inp.expected_outcome),
                },
            )


class AuditActivities:
    """The audit chain's own maintenance: verifying it end to end."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    @activity.defn
    def verify_audit_chain(self) -> AuditVerdict:
        """Recompute every hash of the chain; report the first row that does not match."""
        with self._engine.connect() as conn:
            verdict = verify_chain(conn)
        return AuditVerdict(
            ok=verdict.ok,
            events=verdict.events,
            first_bad_id=verdict.first_bad_id,
            problem=verdict.problem,
        )
