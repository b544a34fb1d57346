"""What the decision engine keeps in PostgreSQL: decisions, feedback, operators, the policy.

Every write is idempotent: a decision row is keyed by its id (upserted as it moves on), a
feedback row by a UUID derived from its idempotency key, so a retried activity writes once.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Engine

from models.decisions import (
    DecisionContext,
    DecisionOutcome,
    DecisionPolicy,
    DecisionResult,
    FeedbackType,
    Mode,
    Operator,
)
from nofx.decisions.context import read_policy
from nofx.healing.guardrails import CONTROL

_FEEDBACK_NS = uuid.UUID("6e6f6678-6465-6369-7369-6f6e73000001")


class DecisionStoreError(ValueError):
    """A request the store refuses (unknown operator, bad mode…); the message says which field."""


def _json(value: Any) -> str:
    return json.dumps(value, default=str)


def save_decision(engine: Engine, result: DecisionResult, context: DecisionContext | None) -> None:
    """Insert the decision on first sight, then keep its status, choice and approval current."""
    risk = result.risk.model_dump(mode="json") if result.risk else {}
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO autonomous_decisions (id, decision_type, context_data,"
                " chosen_action, alternatives_considered, confidence_score, risk_assessment,"
                " expected_outcome, workflow_id, subject, problem, status, decided_by,"
                " explanation, approval, result, updated_at) VALUES (:id, :type,"
                " CAST(:ctx AS jsonb), :action, CAST(:alts AS jsonb), :conf,"
                " CAST(:risk AS jsonb), CAST(:expected AS jsonb), :wf, :subject, :problem,"
                " :status, :by, CAST(:explanation AS jsonb), CAST(:approval AS jsonb),"
                " CAST(:result AS jsonb), now())"
                " ON CONFLICT (id) DO UPDATE SET chosen_action = EXCLUDED.chosen_action,"
                " status = EXCLUDED.status, decided_by = EXCLUDED.decided_by,"
                " approval = EXCLUDED.approval, risk_assessment = EXCLUDED.risk_assessment,"
                " expected_outcome = EXCLUDED.expected_outcome, result = EXCLUDED.result,"
                " updated_at = now()"
            ),
            {
                "id": result.decision_id,
                "type": result.decision_type,
                "ctx": _json(
                    {
                        "incident_id": result.incident_id,
                        **(context.model_dump(mode="json") if context else {}),
                    }
                ),
                "action": result.chosen or "none",
                "alts": _json([a.model_dump(mode="json") for a in result.alternatives]),
                "conf": round(result.confidence, 2),
                "risk": _json(risk),
                "expected": _json(result.expected_outcome),
                "wf": result.workflow_id,
                "subject": result.subject,
                "problem": result.problem,
                "status": result.status,
                "by": result.decided_by,
                "explanation": _json(result.explanation.model_dump(mode="json")),
                "approval": _json(result.approval.model_dump(mode="json")),
                "result": _json(result.model_dump(mode="json")),
            },
        )


def add_feedback(
    engine: Engine,
    *,
    decision_id: str,
    feedback_type: FeedbackType,
    idempotency_key: str,
    outcome_quality: float | None = None,
    lessons: dict[str, Any] | None = None,
    adjustments: dict[str, Any] | None = None,
) -> str:
    """One `learning_feedback` row; the same key writes it once."""
    row_id = str(uuid.uuid5(_FEEDBACK_NS, idempotency_key))
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO learning_feedback (id, decision_id, outcome_quality, feedback_type,"
                " lessons_learned, model_adjustments) VALUES (:id, :d, :q, :t,"
                " CAST(:l AS jsonb), CAST(:m AS jsonb)) ON CONFLICT (id) DO NOTHING"
            ),
            {
                "id": row_id,
                "d": decision_id,
                "q": None if outcome_quality is None else round(outcome_quality, 2),
                "t": feedback_type,
                "l": _json(lessons or {}),
                "m": _json(adjustments or {}),
            },
        )
    return row_id


def record_outcome(engine: Engine, outcome: DecisionOutcome) -> None:
    """`actual_outcome` on the decision and an `outcome` feedback row with its quality:
    1.0 resolved within the objective, less the slower it was, 0 when not resolved."""
    quality = 0.0
    if outcome.resolved:
        quality = (
            1.0
            if outcome.recovery_seconds is None
            else max(0.5, 1.0 - outcome.recovery_seconds / 600)
        )
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE autonomous_decisions SET actual_outcome = CAST(:o AS jsonb),"
                " updated_at = now() WHERE id = :id"
            ),
            {"o": _json(outcome.model_dump(mode="json")), "id": outcome.decision_id},
        )
    add_feedback(
        engine,
        decision_id=outcome.decision_id,
        feedback_type="outcome",
        idempotency_key=f"{outcome.decision_id}/outcome",
        outcome_quality=quality,
        lessons=outcome.model_dump(mode="json"),
    )


# ---- operators --------------------------------------------------------------------------


def operator_permissions(engine: Engine) -> dict[str, list[str]]:
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT name, permissions FROM operators")).all()
    return {r[0]: list(r[1] or []) for r in rows}


def list_operators(engine: Engine) -> list[Operator]:
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT name, permissions, display_name FROM operators ORDER BY name")
        ).all()
    return [Operator(name=r[0], permissions=list(r[1] or []), display_name=r[2]) for r in rows]


def add_operator(engine: Engine, operator: Operator, *, actor: str) -> Operator:
    """Add an operator, or replace the permissions of an existing one."""
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO operators (name, display_name, permissions, created_by)"
                " VALUES (:n, :d, :p, :c) ON CONFLICT (name) DO UPDATE SET"
                " permissions = EXCLUDED.permissions,"
                " display_name = coalesce(EXCLUDED.display_name, operators.display_name)"
            ),
            {
                "n": operator.name,
                "d": operator.display_name,
                "p": operator.permissions,
                "c": actor,
            },
        )
    return operator


def remove_operator(engine: Engine, name: str) -> None:
    with engine.begin() as conn:
        gone = conn.execute(text("DELETE FROM operators WHERE name = :n"), {"n": name}).rowcount
    if not gone:
        raise DecisionStoreError(f"name: no operator {name!r}")


# ---- the policy and modes ---------------------------------------------------------------


def get_policy(engine: Engine) -> DecisionPolicy:
    with engine.connect() as conn:
        return read_policy(conn)


def set_mode(engine: Engine, mode: Mode | None, *, service: str | None = None) -> None:
    """The global mode, or one service's (mode None clears a service's own mode)."""
    if mode is None and service is None:
        raise DecisionStoreError("mode: the global mode cannot be cleared")
    with engine.begin() as conn:
        if service is None:
            policy = read_policy(conn).model_copy(update={"mode": mode})
            conn.execute(
                text(
                    "UPDATE platform_controls SET decision_policy = CAST(:p AS jsonb),"
                    " changed_at = now() WHERE name = :n"
                ),
                {"p": policy.model_dump_json(), "n": CONTROL},
            )
            return
        found = conn.execute(
            text("UPDATE services SET decision_mode = :m WHERE name = :s"),
            {"m": mode, "s": service},
        ).rowcount
    if not found:
        raise DecisionStoreError(f"service: {service!r} is not in the inventory")


def service_modes(engine: Engine) -> dict[str, str]:
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT name, decision_mode FROM services WHERE decision_mode IS NOT NULL")
        ).all()
    return {r[0]: r[1] for r in rows}
