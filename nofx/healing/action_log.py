"""The `action_log` table: one row per action a workflow step ran, keyed by its idempotency key.

What ran, on what, with which outcome and detail (the state captured for its undo), so an action
retried after a worker crash neither repeats nor loses its record, and re-admission and sagas
find what is still in force.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

from sqlalchemy import Connection, text
from sqlalchemy.engine import Engine


def _json(value: Any) -> str:
    return json.dumps(value, default=str, sort_keys=True)


def log_action(
    db: Engine | Connection,
    key: str,
    workflow_id: str,
    step: str,
    action: str,
    target: str,
    status: str,
    detail: Any,
) -> None:
    """Record (or move on) an action's row in `action_log`, keyed by its idempotency key; given
    a connection, inside its transaction."""
    scope = db.begin() if isinstance(db, Engine) else contextlib.nullcontext(db)
    with scope as conn:
        conn.execute(
            text(
                "INSERT INTO action_log (idempotency_key, workflow_id, step, action, target,"
                " status, detail, finished_at) VALUES (:key, :wf, :step, :action, :target,"
                " :status, CAST(:detail AS jsonb), CASE WHEN :status = 'started' THEN NULL"
                " ELSE now() END) ON CONFLICT (idempotency_key) DO UPDATE SET"
                " status = EXCLUDED.status, detail = EXCLUDED.detail,"
                " finished_at = EXCLUDED.finished_at"
            ),
            {
                "key": key,
                "wf": workflow_id,
                "step": step,
                "action": action,
                "target": target,
                "status": status,
                "detail": _json(detail),
            },
        )


def logged_action(engine: Engine, key: str) -> tuple[str, dict[str, Any]] | None:
    """(status, detail) of the action recorded under `key`, or None if it never started."""
    with engine.connect() as conn:
        row = conn.execute(
            text("SELECT status, detail FROM action_log WHERE idempotency_key = :k"), {"k": key}
        ).one_or_none()
    return None if row is None else (row[0], dict(row[1]))
