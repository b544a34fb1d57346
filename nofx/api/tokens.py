"""API tokens: `nofx_<id>_<secret>`, each acting as one operator with their permissions.

The id is public (listings, the audit trail); the secret is kept only as its SHA-256 and is
compared in constant time. A revoked token, or one whose operator was removed, authenticates
nobody.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from datetime import UTC, datetime

from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.engine import Engine

from models.decisions import Operator
from nofx.audit import append_audit
from nofx.decisions.approval import holds
from nofx.operations.errors import NotFound

_TOKEN = re.compile(r"^nofx_([0-9a-f]{12})_([A-Za-z0-9_-]{32,64})$")
ADMIN = "platform:admin"  # held through itself, platform:* or *


class TokenInfo(BaseModel):
    """A token as listings show it: never its secret."""

    id: str
    operator: str
    label: str
    created_by: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class Caller(BaseModel):
    """Who is calling: the token's operator and what they may do."""

    name: str
    permissions: list[str]
    token_id: str

    def holds(self, permission: str) -> bool:
        return holds(self.permissions, permission)

    @property
    def admin(self) -> bool:
        return self.holds(ADMIN)


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def issue(engine: Engine, operator: str, *, label: str = "", actor: str) -> tuple[TokenInfo, str]:
    """A new token for `operator`; returns it once, with its listing.

    Raises:
        NotFound: no operator of that name.
    """
    token_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    with engine.begin() as conn:
        known = conn.execute(
            text("SELECT 1 FROM operators WHERE name = :n"), {"n": operator}
        ).first()
        if known is None:
            raise NotFound(f"operator: no operator {operator!r} (add one: nofx operators add)")
        row = (
            conn.execute(
                text(
                    "INSERT INTO api_tokens (id, operator, secret_sha256, label, created_by)"
                    " VALUES (:i, :o, :s, :l, :c) RETURNING *"
                ),
                {"i": token_id, "o": operator, "s": _digest(secret), "l": label, "c": actor},
            )
            .mappings()
            .one()
        )
        append_audit(
            conn,
            actor=actor,
            action="api_token.issued",
            entity_type="api_token",
            entity_id=token_id,
            details={"operator": operator, "label": label},
        )
    return TokenInfo.model_validate(dict(row)), f"nofx_{token_id}_{secret}"


def revoke(engine: Engine, token_id: str, *, actor: str) -> TokenInfo:
    """Revoke a token (a second revoke keeps the first time).

    Raises:
        NotFound: no token with that id.
    """
    with engine.begin() as conn:
        row = (
            conn.execute(
                text(
                    "UPDATE api_tokens SET revoked_at = coalesce(revoked_at, now())"
                    " WHERE id = :i RETURNING *"
                ),
                {"i": token_id},
            )
            .mappings()
            .first()
        )
        if row is None:
            raise NotFound(f"token: no token {token_id!r}")
        append_audit(
            conn,
            actor=actor,
            action="api_token.revoked",
            entity_type="api_token",
            entity_id=token_id,
            details={"operator": row["operator"]},
        )
    return TokenInfo.model_validate(dict(row))


def listing(engine: Engine, operator: str | None = None) -> list[TokenInfo]:
    with engine.connect() as conn:
        rows = (
            conn.execute(
                text(
                    "SELECT * FROM api_tokens WHERE (CAST(:o AS text) IS NULL OR operator = :o)"
                    " ORDER BY created_at"
                ),
                {"o": operator},
            )
            .mappings()
            .all()
        )
    return [TokenInfo.model_validate(dict(r)) for r in rows]


def authenticate(engine: Engine, token: str) -> Caller | None:
    """The caller a token stands for, or None (malformed, unknown, revoked, wrong secret)."""
    match = _TOKEN.match(token)
    if match is None:
        return None
    token_id, secret = match.groups()
    with engine.begin() as conn:
        row = conn.execute(
            text(
                "SELECT t.secret_sha256, o.name, o.permissions FROM api_tokens t"
                " JOIN operators o ON o.name = t.operator"
                " WHERE t.id = :i AND t.revoked_at IS NULL"
            ),
            {"i": token_id},
        ).first()
        if row is None or not hmac.compare_digest(row[0], _digest(secret)):
            return None
        conn.execute(
            text("UPDATE api_tokens SET last_used_at = :t WHERE id = :i"),
            {"t": datetime.now(UTC), "i": token_id},
        )
    return Caller(name=row[1], permissions=list(row[2] or []), token_id=token_id)


def as_operator(caller: Caller) -> Operator:
    return Operator(name=caller.name, permissions=caller.permissions)
