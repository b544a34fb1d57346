"""Contracts shared by every track: audit events and human-in-the-loop messages.

Every signal takes exactly one model so the Temporal Web UI's "send signal" box can deliver a
plain JSON object such as `{"approver": "alice", "reason": "looks right"}`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field


def _text_only(value: Any) -> Any:
    if isinstance(value, datetime | str):
        return value
    raise ValueError("a time is written as ISO 8601 text with its zone, e.g. 2026-12-06T09:00Z")


# A time as a request writes it: ISO 8601 text with its zone (never a bare number, which a
# lenient parser would take for seconds since 1970).
IsoTime = Annotated[AwareDatetime, BeforeValidator(_text_only)]


class Contract(BaseModel):
    """Base of every payload that crosses Temporal: unknown fields are refused, not dropped."""

    model_config = ConfigDict(extra="forbid", frozen=False)


class AuditEventInput(Contract):
    """One append to the audit chain; `idempotency_key` makes a retried append write once."""

    actor: str = Field(min_length=1)
    action: str = Field(min_length=1)
    entity_type: str = Field(min_length=1)
    entity_id: str = Field(min_length=1)
    workflow_id: str | None = None
    reason: str | None = None
    details: dict[str, Any] = Field(default_factory=dict)
    idempotency_key: str | None = None


class AuditEventRef(Contract):
    """Where an audit event landed in the chain."""

    id: int
    hash: str


class AbortRequest(Contract):
    """Stop an operation and roll back what it did."""

    requested_by: str = Field(min_length=1, description="who asks, e.g. alice@sre")
    reason: str = Field(min_length=1, description="why, kept in the audit trail")


class ApprovalRequest(Contract):
    """A person approves (or rejects) an action that waits for one."""

    approver: str = Field(min_length=1)
    reason: str = ""


class AuditVerdict(Contract):
    """Result of re-hashing the audit chain."""

    ok: bool
    events: int
    first_bad_id: int | None = None
    problem: str | None = None
