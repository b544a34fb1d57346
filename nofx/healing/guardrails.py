"""Guardrails: may this healing action run now? Every check is recorded with its verdict.

Three answers:

* ``allow`` — and a lease is taken under the step's idempotency key, in the same transaction
  that counted the leases, so the global concurrency limit and the blast radius hold even when
  many incidents ask at once. The step releases it when it ends; a lease whose worker died
  expires after ``lease_seconds``.
* ``wait`` — a temporary block: the kill switch (``nofx pause``), a change freeze, no free slot
  (concurrency, blast radius). The incident re-checks every ``recheck_seconds``.
* ``ask`` — automation must stop and a person decide: the circuit breaker (recent automated
  healing keeps failing), too much of the fleet unhealthy at once, the per-service cooldown or
  rate limit. An approval (``approve`` signal) lets that one step pass; it never overrides the
  kill switch or a freeze, which a person lifts explicitly.

Checks run in that order; the first that does not allow decides. The data is the platform's own:
`action_log` (what ran where), `healing_incidents` (outcomes, what is open), `services` (the
fleet and its groups), `platform_controls`, `change_freezes`, `action_leases`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine

from models.guardrails import Guardrail, GuardrailCheck, GuardrailPolicy, GuardrailVerdict, Verdict

CONTROL = "automation"
_LEASE_LOCK = 0x6E6F6678  # advisory lock serialising lease decisions ("nofx")
OPEN_STATES = (
    "detected",
    "diagnosing",
    "awaiting_approval",
    "healing",
    "validating",
    "rolling_back",
)


@dataclass(frozen=True)
class Controls:
    paused: bool
    reason: str | None
    changed_by: str | None
    changed_at: datetime
    policy: GuardrailPolicy


def read_controls(conn: Connection) -> Controls:
    row = conn.execute(
        text(
            "SELECT paused, reason, changed_by, changed_at, policy FROM platform_controls"
            " WHERE name = :n"
        ),
        {"n": CONTROL},
    ).one_or_none()
    if row is None:
        return Controls(False, None, None, datetime.now(UTC), GuardrailPolicy())
    return Controls(row[0], row[1], row[2], row[3], GuardrailPolicy.model_validate(row[4] or {}))


def set_paused(engine: Engine, paused: bool, *, actor: str, reason: str) -> Controls:
    """The kill switch: every automated action is held while paused."""
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO platform_controls (name, paused, reason, changed_by, changed_at)"
                " VALUES (:n, :p, :r, :a, now()) ON CONFLICT (name) DO UPDATE SET"
                " paused = EXCLUDED.paused, reason = EXCLUDED.reason,"
                " changed_by = EXCLUDED.changed_by, changed_at = EXCLUDED.changed_at"
            ),
            {"n": CONTROL, "p": paused, "r": reason, "a": actor},
        )
        return read_controls(conn)


def set_policy(engine: Engine, changes: dict[str, Any]) -> GuardrailPolicy:
    """Change some limits; the whole policy is validated before it is stored."""
    with engine.begin() as conn:
        current = read_controls(conn).policy
        policy = GuardrailPolicy.model_validate({**current.model_dump(), **changes})
        conn.execute(
            text(
                "INSERT INTO platform_controls (name, policy) VALUES (:n, CAST(:p AS jsonb))"
                " ON CONFLICT (name) DO UPDATE SET policy = EXCLUDED.policy"
            ),
            {"n": CONTROL, "p": policy.model_dump_json()},
        )
    return policy


def add_freeze(
    engine: Engine, starts_at: datetime, ends_at: datetime, *, scope: str, reason: str, actor: str
) -> str:
    if ends_at <= starts_at:
        raise ValueError(f"the freeze ends ({ends_at}) before it starts ({starts_at})")
    with engine.begin() as conn:
        return str(
            conn.execute(
                text(
                    "INSERT INTO change_freezes (scope, starts_at, ends_at, reason, created_by)"
                    " VALUES (:s, :a, :b, :r, :c) RETURNING id"
                ),
                {"s": scope, "a": starts_at, "b": ends_at, "r": reason, "c": actor},
            ).scalar_one()
        )


def active_freezes(engine: Engine) -> list[dict[str, Any]]:
    """Freezes in force now or later, soonest first."""
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT id, scope, starts_at, ends_at, reason, created_by FROM change_freezes"
                " WHERE ends_at > now() ORDER BY starts_at"
            )
        ).mappings()
        return [dict(r) for r in rows]


def release_lease(engine: Engine, key: str) -> bool:
    with engine.begin() as conn:
        return bool(
            conn.execute(
                text("DELETE FROM action_leases WHERE idempotency_key = :k"), {"k": key}
            ).rowcount
        )


@dataclass(frozen=True)
class _Decision:
    verdict: Verdict
    guardrail: Guardrail | None
    reason: str
    details: dict[str, Any]


def _allow(reason: str, **details: Any) -> _Decision:
    return _Decision("allow", None, reason, details)


def _incident_prefix(check: GuardrailCheck) -> str:
    """Keys of one incident's steps share `{workflow id}/{incident id}/`; LIKE-escaped."""
    prefix = check.idempotency_key.rsplit("/", 1)[0] + "/"
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _first_block(conn: Connection, check: GuardrailCheck, controls: Controls) -> _Decision | None:
    """The wait/ask guardrails that do not depend on leases, in order."""
    policy = controls.policy
    if controls.paused:
        return _Decision(
            "wait",
            "kill_switch",
            f"automation paused by {controls.changed_by}: {controls.reason}",
            {},
        )
    freeze = conn.execute(
        text(
            "SELECT id, scope, reason, ends_at FROM change_freezes WHERE starts_at <= now()"
            " AND ends_at > now() AND scope IN ('*', :s) ORDER BY ends_at DESC LIMIT 1"
        ),
        {"s": check.service},
    ).one_or_none()
    if freeze is not None:
        return _Decision(
            "wait",
            "change_freeze",
            f"change freeze ({freeze[1]}) until {freeze[3]:%Y-%m-%d %H:%M %Z}: {freeze[2]}",
            {"freeze_id": str(freeze[0])},
        )
    asks: list[_Decision] = []
    failed = conn.execute(
        text(
            "SELECT count(*) FROM healing_incidents WHERE status = 'failed'"
            " AND coalesce(resolved_at, started_at) > now() - make_interval(secs => :w)"
            # a person's abort is a decision, not automation failing
            " AND coalesce(root_cause->>'failure', '') NOT LIKE 'aborted by %'"
        ),
        {"w": policy.breaker_window_seconds},
    ).scalar_one()
    if failed >= policy.breaker_failures:
        asks.append(
            _Decision(
                "ask",
                "circuit_breaker",
                f"{failed} automated healings failed in the last"
                f" {policy.breaker_window_seconds:g}s (breaker opens at {policy.breaker_failures})",
                {"failed": failed},
            )
        )
    fleet, unhealthy = conn.execute(
        text(
            "SELECT (SELECT count(*) FROM services),"
            " (SELECT count(DISTINCT root_cause->>'service') FROM healing_incidents"
            "  WHERE status = ANY(:open) AND started_at > now() - interval '1 hour'"
            "  AND root_cause->>'service' IN (SELECT name FROM services))"
        ),
        {"open": list(OPEN_STATES)},
    ).one()
    if fleet >= policy.unhealthy_min_fleet and unhealthy / fleet > policy.unhealthy_share_stop:
        asks.append(
            _Decision(
                "ask",
                "fleet_unhealthy",
                f"{unhealthy} of {fleet} services are unhealthy (more than"
                f" {policy.unhealthy_share_stop:.0%}): automated remediation stops",
                {"unhealthy": unhealthy, "fleet": fleet},
            )
        )
    recent = conn.execute(
        text(
            "SELECT max(started_at), count(*) FILTER (WHERE started_at > now() - interval '1 hour')"
            " FROM action_log WHERE target = :s AND idempotency_key NOT LIKE :own"
            " AND status IN ('started', 'succeeded') AND action NOT LIKE 'undo\\_%'"
            " AND action NOT LIKE 'restore\\_%'"
        ),
        {"s": check.service, "own": _incident_prefix(check) + "%"},
    ).one()
    last, per_hour = recent
    if last is not None:
        since = (datetime.now(UTC) - last).total_seconds()
        if since < policy.cooldown_seconds:
            asks.append(
                _Decision(
                    "ask",
                    "cooldown",
                    f"{check.service} was acted on {since:.0f}s ago by another incident (cooldown"
                    f" {policy.cooldown_seconds:g}s)",
                    {"seconds_since_last": round(since, 1)},
                )
            )
    own = conn.execute(
        text(
            "SELECT count(*) FROM action_log WHERE target = :s AND idempotency_key LIKE :own"
            " AND started_at > now() - interval '1 hour' AND action NOT LIKE 'undo\\_%'"
            " AND action NOT LIKE 'restore\\_%' AND idempotency_key <> :k"
        ),
        {"s": check.service, "own": _incident_prefix(check) + "%", "k": check.idempotency_key},
    ).scalar_one()
    if per_hour + own >= policy.max_actions_per_hour:
        asks.append(
            _Decision(
                "ask",
                "rate_limit",
                f"{check.service} had {per_hour + own} automated actions in the last hour"
                f" (limit {policy.max_actions_per_hour})",
                {"actions_last_hour": per_hour + own},
            )
        )
    if asks and check.approved_by is None:
        return asks[0]
    if asks:
        return _allow(
            f"approved by {check.approved_by} over: " + "; ".join(a.reason for a in asks),
            overridden=[a.guardrail for a in asks],
        )
    return None


def _lease(
    conn: Connection, check: GuardrailCheck, policy: GuardrailPolicy, *, dry_run: bool = False
) -> _Decision:
    """Take a lease if concurrency and blast radius allow (serialised by an advisory lock)."""
    if not dry_run:
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LEASE_LOCK})
        conn.execute(text("DELETE FROM action_leases WHERE expires_at <= now()"))
    held = conn.execute(
        text("SELECT 1 FROM action_leases WHERE idempotency_key = :k"),
        {"k": check.idempotency_key},
    ).one_or_none()
    if held is not None:
        return _allow("lease already held by this step")
    group = (
        conn.execute(
            text("SELECT coalesce(metadata->>'group', name) FROM services WHERE name = :s"),
            {"s": check.service},
        ).scalar_one_or_none()
        or check.service
    )
    replicas = (
        conn.execute(
            text("SELECT count(*) FROM services WHERE coalesce(metadata->>'group', name) = :g"),
            {"g": group},
        ).scalar_one()
        or 1
    )
    in_group = conn.execute(
        text("SELECT count(*) FROM action_leases WHERE service_group = :g"), {"g": group}
    ).scalar_one()
    allowed_in_group = max(1, int(replicas * policy.blast_radius_share))
    if in_group >= allowed_in_group:
        return _Decision(
            "wait",
            "blast_radius",
            f"{in_group} of {replicas} replica(s) of {group} are being acted on"
            f" (at most {allowed_in_group} at once)",
            {"group": group, "in_flight": in_group, "replicas": replicas},
        )
    total = conn.execute(text("SELECT count(*) FROM action_leases")).scalar_one()
    if total >= policy.max_concurrent_actions:
        return _Decision(
            "wait",
            "concurrency",
            f"{total} actions in flight (global limit {policy.max_concurrent_actions})",
            {"in_flight": total},
        )
    if dry_run:
        return _allow(
            f"within limits now ({total}/{policy.max_concurrent_actions} in flight,"
            f" {in_group}/{allowed_in_group} of {group})",
            group=group,
        )
    conn.execute(
        text(
            "INSERT INTO action_leases (idempotency_key, service, service_group, workflow_id,"
            " action, expires_at) VALUES (:k, :s, :g, :wf, :a,"
            " now() + make_interval(secs => :ttl))"
        ),
        {
            "k": check.idempotency_key,
            "s": check.service,
            "g": group,
            "wf": check.workflow_id,
            "a": check.action,
            "ttl": policy.lease_seconds,
        },
    )
    return _allow(
        f"within limits ({total + 1}/{policy.max_concurrent_actions} in flight,"
        f" {in_group + 1}/{allowed_in_group} of {group})",
        group=group,
    )


def check_guardrails(
    engine: Engine, check: GuardrailCheck, *, dry_run: bool = False
) -> GuardrailVerdict:
    """Decide, record the verdict, and (on allow) hold the step's lease.

    `dry_run` (for `healing simulate`) decides the same way but takes no lease and records
    nothing.
    """
    with engine.begin() as conn:
        controls = read_controls(conn)
        decision = _first_block(conn, check, controls)
        if decision is None or decision.verdict == "allow":
            leased = _lease(conn, check, controls.policy, dry_run=dry_run)
            if decision is not None and leased.verdict == "allow":
                leased = decision  # keep the approval's account of what it overrode
            decision = leased
        if not dry_run:
            conn.execute(
                text(
                    "INSERT INTO guardrail_verdicts (workflow_id, service, action, verdict,"
                    " guardrail, reason, details) VALUES (:wf, :s, :a, :v, :g, :r,"
                    " CAST(:d AS jsonb))"
                ),
                {
                    "wf": check.workflow_id,
                    "s": check.service,
                    "a": check.action,
                    "v": decision.verdict,
                    "g": decision.guardrail,
                    "r": decision.reason,
                    "d": json.dumps(
                        {**decision.details, "approved_by": check.approved_by}, default=str
                    ),
                },
            )
    policy = controls.policy
    return GuardrailVerdict(
        verdict=decision.verdict,
        guardrail=decision.guardrail,
        reason=decision.reason,
        retry_after_seconds=policy.recheck_seconds if decision.verdict == "wait" else 0,
        max_wait_seconds=policy.max_wait_seconds,
        checked_at=datetime.now(UTC),
    )


def recent_verdicts(
    engine: Engine, services: Sequence[str] | None = None, since: timedelta = timedelta(hours=1)
) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT decided_at, workflow_id, service, action, verdict, guardrail, reason"
                " FROM guardrail_verdicts WHERE decided_at > now() - make_interval(secs => :s)"
                " AND (CAST(:names AS text[]) IS NULL OR service = ANY(:names))"
                " ORDER BY decided_at"
            ),
            {"s": since.total_seconds(), "names": list(services) if services else None},
        ).mappings()
        return [dict(r) for r in rows]
