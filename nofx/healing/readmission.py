"""Re-admission: put a replica back into its load balancer once it is well again.

A traffic mitigation (`shift_weight`, `drain_traffic`) resolves an incident by taking a replica
out of rotation, and nothing in the incident puts it back: left alone, the next overload on a
sibling would be refused ("last serving server") and the fleet would have lost a replica for
good. A pass here finds the mitigations still in force — a step that succeeded, was never
compensated by its saga and never re-admitted — and for each one decides from outside:

* its own playbook did not put it back already (a later `admit_traffic` step of the same
  workflow on the same target, as drain-and-restart ends);
* it is old enough (`min_age_seconds`): a replica put back the moment it looks well flaps;
* no incident is open on its service: healing may still be working on it;
* its own endpoint answers `/health` and real GET / requests come back fast (p95) and without
  error, `checks` rounds in a row — probed directly, since no traffic reaches it through the
  load balancer.

Then the action's own `undo` restores the prior state captured in `action_log`, `restored`
verifies it, and an `action_log` row keyed ``<key>/readmit`` (status ``compensated``, like a
saga's undo) is written with an audit event in one transaction. The mitigation's row is locked
meanwhile and everything is re-read under the lock, so a retried or concurrent pass re-admits a
mitigation once; the undo itself is idempotent, so an attempt that died between the undo and the
commit is completed by the next one.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
from sqlalchemy import Connection, text
from sqlalchemy.engine import Engine

from models.actions import ValidateRequestsParams
from models.healing import TERMINAL_STATES, ActionOutcome, FleetTarget
from models.readmission import ReadmissionVerdict, TrafficReadmissionInput, TrafficReadmissionReport
from nofx.audit import append_audit
from nofx.healing.action_log import log_action
from nofx.healing.actions import ACTIONS, ActionContext, ActionError
from nofx.healing.probes import check_health, request_round
from nofx.inventory import list_targets
from nofx.logging import get_logger
from nofx.providers.haproxy import HAProxyError, UnknownServerError

log = get_logger(__name__)

READMISSION_ACTOR = "nofx-readmission"
TRAFFIC_ACTIONS = ("shift_weight", "drain_traffic")
READMIT_SUFFIX = "/readmit"

_IN_FORCE = text(
    "SELECT a.idempotency_key, a.workflow_id, a.step, a.action, a.target, a.detail,"
    " extract(epoch FROM now() - coalesce(a.finished_at, a.started_at)) AS age_s"
    " FROM action_log a"
    " WHERE a.action = ANY(:actions) AND a.status = 'succeeded'"
    " AND (CAST(:key AS text) IS NULL OR a.idempotency_key = :key)"
    " AND NOT EXISTS (SELECT 1 FROM action_log u WHERE"
    "  (u.idempotency_key = a.idempotency_key || '/undo' AND u.status = 'compensated')"
    "  OR u.idempotency_key = a.idempotency_key || :readmit)"
    " AND NOT EXISTS (SELECT 1 FROM action_log r WHERE r.workflow_id = a.workflow_id"
    "  AND r.target = a.target AND r.action = 'admit_traffic' AND r.status = 'succeeded'"
    "  AND r.started_at >= a.started_at)"
    " ORDER BY a.finished_at, a.idempotency_key"
)
_OPEN_INCIDENTS = text(
    "SELECT count(*) FROM healing_incidents"
    " WHERE root_cause->>'service' = :s AND NOT (status = ANY(:closed))"
)


@dataclass(frozen=True)
class Mitigation:
    """A traffic step still in force, with the prior state its undo puts back."""

    key: str
    workflow_id: str
    step: str
    action: str
    service: str
    prior: Mapping[str, Any]
    age_seconds: float

    @property
    def server(self) -> str | None:
        if "backend" not in self.prior:
            return None
        return f"{self.prior['backend']}/{self.prior['server']}"

    def verdict(self, reason: str, *, readmitted: bool = False) -> ReadmissionVerdict:
        return ReadmissionVerdict(
            idempotency_key=self.key,
            service=self.service,
            action=self.action,
            server=self.server,
            readmitted=readmitted,
            reason=reason,
        )


def mitigations_in_force(conn: Connection, key: str | None = None) -> list[Mitigation]:
    """Traffic steps that succeeded and were neither compensated nor re-admitted (oldest first)."""
    rows = conn.execute(
        _IN_FORCE, {"actions": list(TRAFFIC_ACTIONS), "key": key, "readmit": READMIT_SUFFIX}
    ).mappings()
    return [
        Mitigation(
            key=r["idempotency_key"],
            workflow_id=r["workflow_id"],
            step=r["step"],
            action=r["action"],
            service=r["target"],
            prior=dict(r["detail"]).get("prior") or {},
            age_seconds=float(r["age_s"]),
        )
        for r in rows
    ]


def open_incidents(conn: Connection, service: str) -> int:
    """Incidents on `service` not yet resolved, failed or escalated."""
    closed = [state.value for state in TERMINAL_STATES]
    return int(conn.execute(_OPEN_INCIDENTS, {"s": service, "closed": closed}).scalar_one())


def unwell(target: FleetTarget, policy: TrafficReadmissionInput) -> tuple[bool, str]:
    """Probe the replica on its own endpoint `policy.checks` times: (unwell, what was seen)."""
    params = ValidateRequestsParams(
        requests=policy.requests,
        max_error_ratio=0,
        max_p95_ms=policy.max_p95_ms,
        request_timeout_seconds=policy.request_timeout_seconds,
    )
    seen = "not probed"
    with httpx.Client(timeout=policy.request_timeout_seconds, trust_env=False) as client:
        for number in range(1, policy.checks + 1):
            if number > 1:
                time.sleep(policy.check_interval_seconds)
            healthy, health, _ = check_health(target.endpoint, policy.request_timeout_seconds)
            if not healthy:
                return True, f"check {number}/{policy.checks}: /health {health}"
            check = request_round(client, target.endpoint, target.service, params, number)
            if not check.passed:
                return True, f"check {number}/{policy.checks}: {check.detail}"
            seen = check.detail
    return False, f"{policy.checks} checks in a row passed (last: {seen})"


def readmit_traffic(
    engine: Engine,
    policy: TrafficReadmissionInput,
    *,
    database_url: str | None = None,
    readmitted_by: str | None = None,
) -> TrafficReadmissionReport:
    """One pass over the mitigations in force (module doc); `readmitted_by` is the workflow id."""
    report = TrafficReadmissionReport()
    with engine.connect() as conn:
        mitigations = mitigations_in_force(conn)
    inventory = {target.service: target for target in list_targets(engine)}
    for mitigation in mitigations:
        target = inventory.get(mitigation.service)
        verdict = _consider(engine, mitigation, target, policy, database_url, readmitted_by)
        (report.readmitted if verdict.readmitted else report.held).append(verdict)
        log.info(
            "traffic readmission",
            service=verdict.service,
            server=verdict.server,
            readmitted=verdict.readmitted,
            reason=verdict.reason,
        )
    return report


def _consider(
    engine: Engine,
    mitigation: Mitigation,
    target: FleetTarget | None,
    policy: TrafficReadmissionInput,
    database_url: str | None,
    readmitted_by: str | None,
) -> ReadmissionVerdict:
    if target is None:
        return mitigation.verdict(f"{mitigation.service} is not in the inventory: nothing to probe")
    if mitigation.action not in ACTIONS or "backend" not in mitigation.prior:
        return mitigation.verdict("no prior HAProxy state was recorded for this step")
    if mitigation.age_seconds < policy.min_age_seconds:
        return mitigation.verdict(
            f"mitigated {mitigation.age_seconds:.0f}s ago; re-admitted after"
            f" {policy.min_age_seconds:g}s at the earliest",
        )
    with engine.connect() as conn:
        if count := open_incidents(conn, mitigation.service):
            return mitigation.verdict(f"{count} incident(s) open on {mitigation.service}")
    still_unwell, seen = unwell(target, policy)
    if still_unwell:
        return mitigation.verdict(f"still unwell on {target.endpoint}: {seen}")
    return _restore(engine, mitigation, target, seen, database_url, readmitted_by)


def _restore(
    engine: Engine,
    mitigation: Mitigation,
    target: FleetTarget,
    seen: str,
    database_url: str | None,
    readmitted_by: str | None,
) -> ReadmissionVerdict:
    """Undo, verify and record under the mitigation's row lock (module doc)."""
    started = datetime.now(UTC)
    action = ACTIONS[mitigation.action]
    ctx = ActionContext(target, engine, database_url, mitigation.key)
    key = f"{mitigation.key}{READMIT_SUFFIX}"
    with engine.begin() as conn:
        conn.execute(
            text("SELECT 1 FROM action_log WHERE idempotency_key = :k FOR UPDATE"),
            {"k": mitigation.key},
        )
        if not mitigations_in_force(conn, mitigation.key):
            return mitigation.verdict("no longer in force: undone or re-admitted meanwhile")
        if count := open_incidents(conn, mitigation.service):
            return mitigation.verdict(f"{count} incident(s) opened on it meanwhile")
        try:
            done = action.undo(ctx, mitigation.prior)
            restored, check = action.restored(ctx, mitigation.prior)
        except (ActionError, HAProxyError, UnknownServerError) as err:
            return mitigation.verdict(f"could not restore the prior state: {err}")
        if not restored:
            return mitigation.verdict(f"the prior state did not hold: {check}")
        outcome = ActionOutcome(
            action=f"readmit_{mitigation.action}",
            service=mitigation.service,
            performed=done.performed,
            detail={**done.detail, "prior_state_restored": True, "prior_state_check": check},
            started_at=started,
            finished_at=datetime.now(UTC),
        )
        detail = {
            "prior": dict(mitigation.prior),
            "outcome": outcome.model_dump(mode="json"),
            "checks": seen,
            "readmitted_by": readmitted_by,
        }
        log_action(
            conn,
            key,
            mitigation.workflow_id,
            f"{mitigation.step}{READMIT_SUFFIX}",
            outcome.action,
            mitigation.service,
            "compensated",
            detail,
        )
        append_audit(
            conn,
            actor=READMISSION_ACTOR,
            action="traffic.readmitted",
            entity_type="service",
            entity_id=mitigation.service,
            workflow_id=readmitted_by,
            reason=f"{mitigation.server} well again: {seen}; {check}",
            details={
                "mitigation": mitigation.key,
                "incident_workflow_id": mitigation.workflow_id,
                **detail,
            },
            idempotency_key=key,
        )
    return mitigation.verdict(f"{check} ({seen})", readmitted=True)
