"""The model registry: `decision_models` rows and their artifacts in `model_artifacts`.

Every learned model of the platform (the anomaly detector, the decision engine's success model)
is a row of `decision_models` (type, version, training data summary, metrics, active) with its
serialised form in `model_artifacts`, checked against its sha256 when loaded. At most one model
per type is active (a unique partial index); `promote` makes another one active and records
which one it replaced, so `rollback` puts the previous champion back.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine

from models.decisions import ModelInfo
from nofx.audit import append_audit


class RegistryError(Exception):
    """A model that does not exist, has no artifact, or whose artifact was altered."""


def _deactivate(conn: Connection, model_type: str) -> str | None:
    replaced = conn.execute(
        text(
            "UPDATE decision_models SET active = false WHERE model_type = :t AND active"
            " RETURNING id"
        ),
        {"t": model_type},
    ).scalar_one_or_none()
    return None if replaced is None else str(replaced)


def store(
    engine: Engine,
    model_type: str,
    version: str,
    artifact: str,
    fmt: str,
    training: dict[str, Any],
    metrics: dict[str, Any],
    *,
    activate: bool,
    now: datetime | None = None,
    actor: str = "nofx:training",
) -> str:
    """Record a model and its artifact in one transaction; active at once when `activate`
    (audited as `model.promoted` by `actor`)."""
    now = now or datetime.now(UTC)
    with engine.begin() as conn:
        replaced = _deactivate(conn, model_type) if activate else None
        if activate:
            metrics = {**metrics, "replaced": replaced}
        model_id = conn.execute(
            text(
                "INSERT INTO decision_models (model_type, model_version, training_data,"
                " performance_metrics, active, deployed_at) VALUES (:t, :v,"
                " CAST(:training AS jsonb), CAST(:metrics AS jsonb), :active, :deployed)"
                " RETURNING id"
            ),
            {
                "t": model_type,
                "v": version,
                "training": json.dumps(training, default=str),
                "metrics": json.dumps(metrics, default=str),
                "active": activate,
                "deployed": now if activate else None,
            },
        ).scalar_one()
        conn.execute(
            text(
                "INSERT INTO model_artifacts (model_id, format, artifact, sha256)"
                " VALUES (:id, :format, :artifact, :sha)"
            ),
            {
                "id": model_id,
                "format": fmt,
                "artifact": artifact,
                "sha": hashlib.sha256(artifact.encode()).hexdigest(),
            },
        )
        if activate:
            _audit(conn, actor, "model.promoted", str(model_id), model_type, version, replaced)
    return str(model_id)


def _audit(
    conn: Connection,
    actor: str,
    action: str,
    model_id: str,
    model_type: str,
    version: str,
    replaced: str | None,
    reason: str | None = None,
) -> None:
    append_audit(
        conn,
        actor=actor,
        action=action,
        entity_type="decision_model",
        entity_id=model_id,
        reason=reason,
        details={"model_type": model_type, "version": version, "replaced": replaced},
    )


def active_id(engine: Engine, model_type: str) -> str | None:
    with engine.connect() as conn:
        found = conn.execute(
            text("SELECT id FROM decision_models WHERE model_type = :t AND active"),
            {"t": model_type},
        ).scalar_one_or_none()
    return None if found is None else str(found)


def get(engine: Engine, model_id: str) -> ModelInfo:
    with engine.connect() as conn:
        row = conn.execute(
            text(
                "SELECT id, model_type, model_version, active, created_at, deployed_at,"
                " training_data, performance_metrics FROM decision_models"
                " WHERE id = CAST(:id AS uuid)"
            ),
            {"id": model_id},
        ).one_or_none()
    if row is None:
        raise RegistryError(f"no model {model_id}")
    return _row(row)


def _row(row: Any) -> ModelInfo:
    return ModelInfo(
        model_id=str(row[0]),
        model_type=row[1],
        version=row[2],
        active=bool(row[3]),
        created_at=row[4],
        deployed_at=row[5],
        training=row[6] or {},
        metrics=row[7] or {},
    )


def load_artifact(engine: Engine, model_id: str) -> tuple[ModelInfo, str]:
    """A stored model and its artifact, checked against its recorded hash."""
    model = get(engine, model_id)
    with engine.connect() as conn:
        found = conn.execute(
            text("SELECT artifact, sha256 FROM model_artifacts WHERE model_id = CAST(:id AS uuid)"),
            {"id": model_id},
        ).one_or_none()
    if found is None:
        raise RegistryError(f"model {model.version} ({model_id}) has no stored artifact")
    artifact, sha = found
    if hashlib.sha256(artifact.encode()).hexdigest() != sha:
        raise RegistryError(f"model {model.version}: artifact does not match its recorded sha256")
    return model, artifact


def list_models(engine: Engine, model_type: str, limit: int = 20) -> list[ModelInfo]:
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT id, model_type, model_version, active, created_at, deployed_at,"
                " training_data, performance_metrics FROM decision_models WHERE model_type = :t"
                " ORDER BY created_at DESC, model_version DESC LIMIT :n"
            ),
            {"t": model_type, "n": limit},
        ).all()
    return [_row(r) for r in rows]


def promote(
    engine: Engine,
    model_id: str,
    now: datetime | None = None,
    *,
    record: bool = True,
    actor: str = "nofx",
    reason: str | None = None,
) -> ModelInfo:
    """Make `model_id` the active model of its type; with `record`, the one it replaces is
    recorded on it (what `rollback` returns to)."""
    model = get(engine, model_id)
    if model.active:
        return model
    now = now or datetime.now(UTC)
    with engine.begin() as conn:
        replaced = _deactivate(conn, model.model_type)
        conn.execute(
            text(
                "UPDATE decision_models SET active = true, deployed_at = :now,"
                " performance_metrics = CASE WHEN :record THEN COALESCE(performance_metrics,"
                " '{}'::jsonb) || jsonb_build_object('replaced', CAST(:replaced AS text))"
                " ELSE performance_metrics END WHERE id = CAST(:id AS uuid)"
            ),
            {"id": model_id, "now": now, "replaced": replaced, "record": record},
        )
        action = "model.promoted" if record else "model.rolled_back"
        _audit(conn, actor, action, model_id, model.model_type, model.version, replaced, reason)
    return get(engine, model_id)


def rollback(
    engine: Engine,
    model_type: str,
    now: datetime | None = None,
    *,
    actor: str = "nofx",
    reason: str | None = None,
) -> ModelInfo:
    """Put back the champion the active model replaced (its own record of what it replaced
    is kept, so rolling back again goes one further back).

    Raises:
        RegistryError: no active model, or it replaced none (it was the first).
    """
    current = active_id(engine, model_type)
    if current is None:
        raise RegistryError(f"no active {model_type} model to roll back")
    previous = get(engine, current).metrics.get("replaced")
    if not previous:
        raise RegistryError(
            f"the active {model_type} model replaced none: there is no earlier champion"
        )
    return promote(engine, str(previous), now, record=False, actor=actor, reason=reason)
