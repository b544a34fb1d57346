"""Chaos experiment activities: the steady state, the fault, and the platform's recorded response.

They only look at what the platform itself recorded (`healing_incidents`, `fault_injections`,
`action_log`) and at the service from outside (its health check and real requests); they never
ask the healing workflow for help, so an experiment judges the platform rather than trusting it.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import text
from sqlalchemy.engine import Engine
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.store import get_fleet_target
from models.actions import CHECKS, ActionRequest, ValidateRequestsParams
from models.chaos import ChaosExperimentInput, IncidentSeen, Injected, SteadyState, WatchIncident
from models.guardrails import GuardrailCheck
from models.healing import TERMINAL_STATES, IncidentState
from nofx.faults import active_faults, clear_recorded, inject_recorded, staging_fleet
from nofx.healing.actions import ACTIONS
from nofx.healing.guardrails import check_guardrails
from nofx.healing.probes import check_health, request_round
from nofx.providers.haproxy import HAProxyError, HAProxyRuntime, UnknownServerError
from nofx.settings import Settings
from pilot.fleet import Fleet, FleetError

# Enough real requests to see errors and stale reads, few enough not to be load themselves.
_STEADY_REQUESTS = ValidateRequestsParams(
    requests=10, max_error_ratio=0.1, fresh_cache=True, request_timeout_seconds=2.0
)
_ENDED = {s.value for s in TERMINAL_STATES} | {IncidentState.AWAITING_APPROVAL.value}


def _acted(actions: list[dict[str, Any]]) -> bool:
    return any(a.get("performed") and a.get("action") not in CHECKS for a in actions)


def _held_out_of_rotation(meta: dict[str, Any]) -> list[str]:
    """Replicas of the target's group that take no new traffic (a mitigation not yet undone):
    a fault injected now would find one replica fewer to shift its load to."""
    socket, backend = meta.get("haproxy_socket"), meta.get("haproxy_backend")
    if not socket or not backend:
        return []
    try:
        servers = HAProxyRuntime(Path(socket), timeout=2.0).servers(str(backend))
    except (HAProxyError, UnknownServerError) as err:
        return [f"load balancer: {err}"]
    return [f"{s.server} takes no new traffic" for s in servers if not s.takes_new_traffic]


class ChaosActivities:
    def __init__(self, engine: Engine, settings: Settings) -> None:
        self._engine = engine
        self._settings = settings

    def _fleet(self, service: str) -> Fleet:
        target = get_fleet_target(self._engine, service)
        try:
            return staging_fleet(target, self._settings.database_url)
        except FleetError as err:
            raise ApplicationError(str(err), type="NotAFleetService", non_retryable=True) from err

    @activity.defn
    def steady_state(self, service: str, before_injecting: bool) -> SteadyState:
        """The steady-state hypothesis: health passes, real requests succeed with fresh data, no
        incident is open on the service. Before injecting, also: no fault present and nothing
        that would stop the platform from acting (paused, cooldown, hourly action limit) — a
        fault injected then would measure the guardrails, not the healing."""
        target = get_fleet_target(self._engine, service)
        problems: list[str] = []
        healthy, seen, _ = check_health(target.endpoint, 2.0)
        if not healthy:
            problems.append(f"health: {seen}")
        else:
            # Users of a replica group reach it through its load balancer: that is the service
            # whose steady state counts (a replica taken out of rotation may still be busy).
            endpoint = target.metadata.get("haproxy_frontend") or target.endpoint
            with httpx.Client(timeout=_STEADY_REQUESTS.request_timeout_seconds) as client:
                check = request_round(client, endpoint, service, _STEADY_REQUESTS, 1)
            if not check.passed:
                problems.append(f"requests: {check.detail}")
        if before_injecting:
            problems += _held_out_of_rotation(target.metadata)
        with self._engine.connect() as conn:
            open_incidents = conn.execute(
                text(
                    "SELECT count(*) FROM healing_incidents WHERE root_cause->>'service' = :s"
                    " AND status <> ALL(:ended) AND started_at > now() - interval '1 day'"
                ),
                {"s": service, "ended": sorted(_ENDED - {IncidentState.AWAITING_APPROVAL.value})},
            ).scalar_one()
            if open_incidents:
                problems.append(f"{open_incidents} incident(s) open")
        if before_injecting:
            problems += self._not_ready_to_act(service)
            try:
                present = active_faults(self._fleet(service), self._engine, service)
            except FleetError as err:
                problems.append(f"faults unknown: {err}")
            else:
                if present:
                    problems.append(f"faults present: {', '.join(sorted(present))}")
        return SteadyState(
            service=service, steady=not problems, problems=problems, checked_at=datetime.now(UTC)
        )

    def _not_ready_to_act(self, service: str) -> list[str]:
        """What would keep the platform from acting on `service` now: the guardrails' own
        verdict for an action there, decided as `healing simulate` does (nothing recorded)."""
        verdict = check_guardrails(
            self._engine,
            GuardrailCheck(
                idempotency_key=f"chaos-steady-state/{service}/0-restart_service",
                workflow_id="chaos-steady-state",
                service=service,
                action="restart_service",
            ),
            dry_run=True,
        )
        if verdict.verdict == "allow":
            return []
        return [f"guardrail {verdict.guardrail} would {verdict.verdict}: {verdict.reason}"]

    @activity.defn
    def inject_fault(self, inp: ChaosExperimentInput) -> Injected:
        """Inject the experiment's fault for real, on the record; once per experiment."""
        actor = f"chaos:{inp.experiment_id}"
        with self._engine.connect() as conn:
            done = conn.execute(
                text(
                    "SELECT id, injected_at FROM fault_injections WHERE injected_by = :a"
                    " ORDER BY injected_at LIMIT 1"
                ),
                {"a": actor},
            ).one_or_none()
        if done is not None:  # a retried attempt: the fault went in the first time
            return Injected(injection_id=str(done[0]), injected_at=done[1])
        try:
            outcome = inject_recorded(
                self._fleet(inp.service),
                self._engine,
                inp.fault.kind,
                inp.service,
                source="chaos",
                actor=actor,
                **inp.fault.params,
            )
        except FleetError as err:
            raise ApplicationError(str(err), type="FaultRefused", non_retryable=True) from err
        return Injected(
            injection_id=outcome["injection_id"],
            injected_at=datetime.fromtimestamp(float(outcome["injected_at"]), UTC),
            detail={k: v for k, v in outcome.items() if k not in ("injected_at", "injection_id")},
        )

    @activity.defn
    def watch_incident(self, inp: WatchIncident) -> IncidentSeen | None:
        """Wait for the service's incident to be opened / to act / to end; None on timeout."""
        deadline = time.monotonic() + inp.timeout_seconds
        while True:
            seen = self._incident(inp)
            if seen is not None and (
                inp.until == "opened"
                or (inp.until == "acted" and (_acted(seen.actions) or seen.status in _ENDED))
                or (inp.until == "ended" and seen.status in _ENDED)
            ):
                return seen
            if time.monotonic() > deadline:
                return seen if inp.until != "opened" else None
            activity.heartbeat(seen.status if seen else "waiting")
            time.sleep(1.0)

    def _incident(self, inp: WatchIncident) -> IncidentSeen | None:
        with self._engine.connect() as conn:
            row = (
                conn.execute(
                    text(
                        "SELECT id, incident_type, status, started_at, resolved_at,"
                        " root_cause, healing_actions FROM healing_incidents"
                        " WHERE root_cause->>'service' = :s AND started_at >= :since"
                        " AND (CAST(:id AS uuid) IS NULL OR id = CAST(:id AS uuid))"
                        " ORDER BY started_at LIMIT 1"
                    ),
                    # detection may date the onset a little before the injection took hold
                    {
                        "s": inp.service,
                        "since": inp.since - timedelta(seconds=5),
                        "id": inp.incident_id,
                    },
                )
                .mappings()
                .one_or_none()
            )
        if row is None:
            return None
        cause = row["root_cause"] or {}
        return IncidentSeen(
            incident_id=str(row["id"]),
            workflow_id=cause.get("workflow_id", ""),
            incident_type=row["incident_type"],
            status=row["status"],
            detected_at=row["started_at"],
            resolved_at=row["resolved_at"],
            actions=list(row["healing_actions"] or []),
            failure=cause.get("failure"),
        )

    @activity.defn
    def remove_fault(self, service: str) -> list[str]:
        """Remove whatever of the fault is still there (healing may have removed it all)."""
        try:
            return clear_recorded(self._fleet(service), self._engine, service)
        except FleetError as err:
            raise ApplicationError(f"could not remove the fault: {err}", type="FaultStuck") from err

    @activity.defn
    def incident_compensations(self, seen: IncidentSeen) -> list[ActionRequest]:
        """The steps a resolved incident took, newest first: what its saga would have undone
        had it been aborted (the chaos workflow runs the same undo activities on them)."""
        with self._engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT idempotency_key, step, action, target FROM action_log"
                    " WHERE workflow_id = :w AND idempotency_key LIKE :own AND status = 'succeeded'"
                    " AND (action = 'restart_service' OR action = ANY(:undoable))"
                    " ORDER BY started_at DESC"
                ),
                {
                    "w": seen.workflow_id,
                    "own": f"{seen.workflow_id}/{seen.incident_id}/%",
                    "undoable": sorted(ACTIONS),
                },
            ).all()
        return [
            ActionRequest(
                idempotency_key=key,
                workflow_id=seen.workflow_id,
                step=step,
                service=service,
                action=action,
                not_before=seen.detected_at,
            )
            for key, step, action, service in rows
        ]
