"""The audit trail: an append-only, hash-chained log of every state change the platform makes.

Each ``audit_events`` row carries ``prev_hash`` (the previous row's ``hash``) and its own
``hash``, so removing, reordering or editing any event breaks the chain at that point and
``verify_chain`` (``nofx audit verify``) names the first bad event. The table's trigger already
refuses UPDATE, DELETE and TRUNCATE; the chain is what catches a change made around it
(a superuser disabling the trigger, a restored backup, a hand-edited dump).

Transactions: ``append_audit`` works on a SQLAlchemy ``Connection`` or ORM ``Session``
(``sqlmodel.Session`` included) and writes in *the caller's* transaction without committing.
The audit row therefore commits or rolls back together with the state change it describes —
an activity does ``with Session(engine) as session: ...change...; append_audit(session, ...);
session.commit()`` once per attempt. Writers are serialised by a transaction-scoped advisory
lock held until that commit, so keep the transaction short after appending.

The hash of an event is ``sha256`` of the canonical JSON (keys sorted, no whitespace, ASCII
only, no NaN) of the object with the keys ``prev_hash``, ``occurred_at`` (ISO 8601 in UTC with
microseconds, e.g. ``2025-01-31T12:00:00.000000+00:00``), ``actor``, ``action``,
``entity_type``, ``entity_id``, ``workflow_id``, ``reason`` and ``details``, as hex. The first
event's ``prev_hash`` is 64 zeros. ``details`` is hashed as PostgreSQL stores it (read back
from ``jsonb``), so the hash survives JSONB's own normalisation of numbers and key order.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import uuid
from collections.abc import Mapping
from datetime import UTC, date, datetime
from decimal import Decimal
from enum import Enum
from pathlib import PurePath
from typing import Any

from pydantic import BaseModel, ConfigDict
from sqlalchemy import Connection, Engine, RowMapping, text
from sqlalchemy.orm import Session

GENESIS_HASH = "0" * 64
"""``prev_hash`` of the first event of a chain."""

# Transaction-scoped advisory lock that makes all writers of audit_events one queue, so that
# each new event links to the one committed just before it (and the chain never forks).
AUDIT_LOCK_KEY = 0x6E6F_6678_6175_64  # "nofxaud"

_VERIFY_BATCH = 1000

_COLUMNS = (
    "id, occurred_at, actor, action, entity_type, entity_id, workflow_id, reason, details,"
    " idempotency_key, prev_hash, hash"
)


class AuditRecord(BaseModel):
    """One event of the audit trail, as stored.

    Attributes:
        created: True when this call wrote the event; False when an event with the same
            idempotency key already existed and was returned instead (a retried activity).
    """

    model_config = ConfigDict(frozen=True)

    id: int
    occurred_at: datetime
    actor: str
    action: str
    entity_type: str
    entity_id: str
    workflow_id: str | None
    reason: str | None
    details: dict[str, Any]
    idempotency_key: str | None
    prev_hash: str
    hash: str
    created: bool = True


class ChainVerdict(BaseModel):
    """The result of checking the whole chain.

    Attributes:
        ok: every event links to its predecessor and its hash matches its content.
        events: how many events the chain holds.
        first_bad_id: id of the first event that fails a check, None when ok.
        problem: what is wrong with that event, None when ok.
    """

    model_config = ConfigDict(frozen=True)

    ok: bool
    events: int
    first_bad_id: int | None = None
    problem: str | None = None


def _json_default(value: Any) -> Any:
    """Turn the non-JSON values activities naturally hold into their JSON spelling."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, uuid.UUID | Decimal | PurePath):
        return str(value)
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, set | frozenset):
        return sorted(value, key=str)
    raise TypeError(f"audit details value of type {type(value).__name__} is not JSON-serialisable")


def canonical_json(value: Any) -> str:
    """The one JSON spelling of ``value`` that hashes are computed over.

    Raises:
        TypeError: a value has no JSON spelling.
        ValueError: a float is NaN or infinite (JSONB cannot store them).
    """
    return json.dumps(
        value,
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=True,
        allow_nan=False,
        default=_json_default,
    )


def _iso_utc(moment: datetime) -> str:
    if moment.tzinfo is None:
        raise ValueError("audit timestamps must be timezone-aware")
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def compute_hash(
    *,
    prev_hash: str,
    occurred_at: datetime,
    actor: str,
    action: str,
    entity_type: str,
    entity_id: str,
    workflow_id: str | None,
    reason: str | None,
    details: Mapping[str, Any],
) -> str:
    """Hash one event's content together with its predecessor's hash (see the module doc)."""
    payload = {
        "prev_hash": prev_hash,
        "occurred_at": _iso_utc(occurred_at),
        "actor": actor,
        "action": action,
        "entity_type": entity_type,
        "entity_id": entity_id,
        "workflow_id": workflow_id,
        "reason": reason,
        "details": dict(details),
    }
    return hashlib.sha256(canonical_json(payload).encode("ascii")).hexdigest()


def _as_connection(conn_or_session: Connection | Session) -> Connection:
    if isinstance(conn_or_session, Session):
        # The connection of the session's current transaction (begun here if none is), so the
        # event commits with whatever else the session wrote.
        return conn_or_session.connection()
    return conn_or_session


def _record(row: RowMapping, *, created: bool) -> AuditRecord:
    return AuditRecord(**dict(row), created=created)


def append_audit(
    conn_or_session: Connection | Session,
    *,
    actor: str,
    action: str,
    entity_type: str,
    entity_id: str,
    workflow_id: str | None = None,
    reason: str | None = None,
    details: Mapping[str, Any] | None = None,
    idempotency_key: str | None = None,
) -> AuditRecord:
    """Append one event to the audit trail in the caller's transaction (not committed here).

    Args:
        conn_or_session: a SQLAlchemy ``Connection`` or ORM/SQLModel ``Session`` in a
            transaction (not AUTOCOMMIT: the chain lock must last until the commit).
        actor: who acted: a person (``alice``), or the platform part (``workflow:healing``).
        action: what happened, as a verb phrase (``incident.opened``, ``action.approved``).
        entity_type: the kind of thing changed (``healing_incident``, ``decision``).
        entity_id: which one.
        workflow_id: the Temporal workflow that made the change, when one did.
        reason: why, in the actor's words.
        details: anything else worth keeping; must be JSON-serialisable (UUIDs, datetimes,
            Decimals, enums and pydantic models are converted).
        idempotency_key: when given, an event with this key is written at most once; a retried
            activity attempt gets the existing event back (``created=False``).

    Returns:
        The stored event.

    Raises:
        ValueError: a required field is empty, ``details`` holds NaN/infinity, or the connection
            is in AUTOCOMMIT mode.
        TypeError: ``details`` holds a value with no JSON spelling.
    """
    for name, value in (
        ("actor", actor),
        ("action", action),
        ("entity_type", entity_type),
        ("entity_id", entity_id),
    ):
        if not value or not value.strip():
            raise ValueError(f"audit event needs a non-empty {name}")
    details_json = canonical_json(dict(details or {}))

    conn = _as_connection(conn_or_session)
    if getattr(conn.connection.driver_connection, "autocommit", False):
        # The chain lock would be released after each statement and two writers could fork it.
        raise ValueError("append_audit needs a transaction; the connection is in AUTOCOMMIT mode")

    conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": AUDIT_LOCK_KEY})

    if idempotency_key is not None:
        existing = (
            conn.execute(
                text(f"SELECT {_COLUMNS} FROM audit_events WHERE idempotency_key = :key"),
                {"key": idempotency_key},
            )
            .mappings()
            .first()
        )
        if existing is not None:
            return _record(existing, created=False)

    prev_hash = conn.execute(
        text("SELECT hash FROM audit_events ORDER BY id DESC LIMIT 1")
    ).scalar_one_or_none()
    # Taken after the lock, so occurred_at never decreases along the chain; details come back
    # exactly as jsonb will return them to verify_chain later.
    occurred_at, stored_details = conn.execute(
        text("SELECT clock_timestamp(), CAST(:details AS JSONB)"), {"details": details_json}
    ).one()
    prev = prev_hash or GENESIS_HASH
    digest = compute_hash(
        prev_hash=prev,
        occurred_at=occurred_at,
        actor=actor,
        action=action,
        entity_type=entity_type,
        entity_id=entity_id,
        workflow_id=workflow_id,
        reason=reason,
        details=stored_details,
    )
    row = (
        conn.execute(
            text(
                "INSERT INTO audit_events (occurred_at, actor, action, entity_type, entity_id,"
                " workflow_id, reason, details, idempotency_key, prev_hash, hash)"
                " VALUES (:occurred_at, :actor, :action, :entity_type, :entity_id, :workflow_id,"
                " :reason, CAST(:details AS JSONB), :idempotency_key, :prev_hash, :hash)"
                f" RETURNING {_COLUMNS}"
            ),
            {
                "occurred_at": occurred_at,
                "actor": actor,
                "action": action,
                "entity_type": entity_type,
                "entity_id": entity_id,
                "workflow_id": workflow_id,
                "reason": reason,
                "details": details_json,
                "idempotency_key": idempotency_key,
                "prev_hash": prev,
                "hash": digest,
            },
        )
        .mappings()
        .one()
    )
    return _record(row, created=True)


def _verify_rows(conn: Connection) -> ChainVerdict:
    expected_prev = GENESIS_HASH
    previous_id: int | None = None
    events = 0
    first_bad_id: int | None = None
    problem: str | None = None
    after = 0
    while True:
        rows = (
            conn.execute(
                text(
                    f"SELECT {_COLUMNS} FROM audit_events WHERE id > :after"
                    " ORDER BY id LIMIT :limit"
                ),
                {"after": after, "limit": _VERIFY_BATCH},
            )
            .mappings()
            .all()
        )
        if not rows:
            break
        for row in rows:
            events += 1
            after = row["id"]
            if first_bad_id is None:
                if row["prev_hash"] != expected_prev:
                    first_bad_id = row["id"]
                    problem = (
                        "prev_hash is not the genesis hash"
                        if previous_id is None
                        else f"prev_hash does not match the hash of event {previous_id}"
                        " (an event was removed, inserted or re-hashed)"
                    )
                else:
                    actual = compute_hash(
                        prev_hash=row["prev_hash"],
                        occurred_at=row["occurred_at"],
                        actor=row["actor"],
                        action=row["action"],
                        entity_type=row["entity_type"],
                        entity_id=row["entity_id"],
                        workflow_id=row["workflow_id"],
                        reason=row["reason"],
                        details=row["details"],
                    )
                    if actual != row["hash"]:
                        first_bad_id = row["id"]
                        problem = "hash does not match the event's content (the event was edited)"
            expected_prev = row["hash"]
            previous_id = row["id"]
    return ChainVerdict(
        ok=first_bad_id is None, events=events, first_bad_id=first_bad_id, problem=problem
    )


def verify_chain(engine_or_conn: Engine | Connection | Session) -> ChainVerdict:
    """Recompute every event's hash and link, oldest first, and report the first broken one.

    Given an engine, the check reads one consistent snapshot (REPEATABLE READ, read only), so
    events appended meanwhile neither break nor extend the verdict. Given a connection or
    session, it reads in that transaction.

    Args:
        engine_or_conn: where to read ``audit_events`` from.

    Returns:
        Whether the chain is intact, how many events it holds, and the first bad one if any.
    """
    if isinstance(engine_or_conn, Engine):
        with (
            engine_or_conn.connect().execution_options(isolation_level="REPEATABLE READ") as conn,
            conn.begin(),
        ):
            conn.execute(text("SET TRANSACTION READ ONLY"))
            return _verify_rows(conn)
    return _verify_rows(_as_connection(engine_or_conn))
