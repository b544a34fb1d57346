"""Opening an incident for a confirmed failure, or holding it back with the reason: one running
incident per service and failure (later detections join it), none while another heals the
service or a maintenance job works on it, none for the tail of an episode just healed, none
within the cooldown after an attempt that failed, none for a slow burn that predictive
maintenance takes care of. The monitor's activity (`activities.incidents`) and the alert intake
(`nofx.operations.alerts`) open incidents through it."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from sqlalchemy import text
from sqlalchemy.engine import Engine
from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.enums.v1 import EventType
from temporalio.api.workflowservice.v1 import GetWorkflowExecutionHistoryReverseRequest
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from models.healing import IncidentInput, IncidentState, OpenIncidentInput, OpenIncidentResult
from nofx.client import incident_workflow_id, start_incident
from nofx.logging import get_logger
from nofx.maintenance import slow_burn
from nofx.telemetry.sources import MetricSource
from nofx.temporal import STATUS

log = get_logger(__name__)

UNHEALED = {IncidentState.FAILED.value, IncidentState.ESCALATED.value}
# Seen by the probes as they are now (no window lags behind a fix): never held back to settle.
PROBED_PATTERNS = frozenset({"service_down", "service_hung"})
# A run whose workflow task has failed this many attempts less one in a row cannot progress by
# itself (Temporal retries a failed task forever, about every 10 s). One failure is not enough:
# a task failed once by the deadlock detector on a busy machine succeeds on its next attempt.
STUCK_AFTER_ATTEMPTS = 3
# A maintenance job in these states is acting on its service (waiting for a person is not).
JOB_WORKING = ("running", "verifying")
JOB_MARGIN_MINUTES = 10  # past its planned duration by this, a running job holds nothing back
_TASK_OUTCOMES = {
    EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED,
    EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED,
    EventType.EVENT_TYPE_WORKFLOW_TASK_TIMED_OUT,
}


class IncidentIntake:
    def __init__(
        self, client: Client, engine: Engine | None = None, source: MetricSource | None = None
    ) -> None:
        """`engine`: the platform database, for the action leases (see `_busy_with_another`);
        without it only Temporal's visibility is asked. `source`: the telemetry, to tell a slow
        burn that predictive maintenance takes care of (`nofx.maintenance.slow_burn`) from an
        incident; without it (or the engine) every resource pattern is an incident."""
        self._client = client
        self._engine = engine
        self._source = source

    def _slow_burn(self, incident: IncidentInput) -> str | None:
        if self._engine is None or self._source is None:
            return None
        signals = incident.evidence.get("signals") or []
        burn = slow_burn.assess(
            self._engine,
            self._source,
            incident.service,
            incident.incident_type,
            [str(s) for s in signals],
            datetime.now(UTC),
        )
        return None if burn is None else burn.reason()

    def _acting_on(self, service: str, workflow_id: str) -> str | None:
        """The workflow holding an unexpired action lease on `service`, other than
        `workflow_id` — read from the database, which, unlike Temporal's visibility, never
        lags: a restart in flight is seen the moment its lease is taken."""
        if self._engine is None:
            return None
        with self._engine.connect() as conn:
            found = conn.execute(
                text(
                    "SELECT workflow_id, action FROM action_leases WHERE service = :s"
                    " AND expires_at > now() AND workflow_id <> :w ORDER BY acquired_at LIMIT 1"
                ),
                {"s": service, "w": workflow_id},
            ).first()
            if found is not None:
                return f"{found[0]} is acting on {service} ({found[1]})"
            # A maintenance job between its steps (drained, restarted, cleaned) holds no lease,
            # but what the probes see is still its doing — for as long as it is planned to take
            # (plus a margin): one that overruns leaves healing to be the safety net again.
            job = conn.execute(
                text(
                    "SELECT workflow_id, status FROM maintenance_schedules WHERE component_id = :s"
                    " AND status = ANY(:working) AND updated_at > now() - make_interval(mins =>"
                    " coalesce(estimated_duration_minutes, 0) + :margin)"
                    " ORDER BY updated_at DESC LIMIT 1"
                ),
                {"s": service, "working": list(JOB_WORKING), "margin": JOB_MARGIN_MINUTES},
            ).first()
        return None if job is None else f"maintenance job {job[0]} is {job[1]} on {service}"

    def _tail_of_maintenance(self, service: str, onset: datetime | None) -> str | None:
        """An anomaly that began before the service's last maintenance job ended belongs to
        that job (a drain, a restart, a cleanup), not to a new failure."""
        if onset is None or self._engine is None:
            return None
        with self._engine.connect() as conn:
            job = conn.execute(
                text(
                    "SELECT workflow_id, completed_at FROM maintenance_schedules"
                    " WHERE component_id = :s AND completed_at > :onset"
                    " AND status = ANY(:acted) ORDER BY completed_at DESC LIMIT 1"
                ),
                {"s": service, "onset": onset, "acted": ["completed", "rolled_back"]},
            ).first()
        if job is None:
            return None
        return (
            f"the anomaly began at {onset:%H:%M:%S}, before maintenance job {job[0]} ended at"
            f" {job[1]:%H:%M:%S}: the job's doing"
        )

    async def _recently_unhealed(
        self, workflow_id: str, inp: OpenIncidentInput, onset: datetime | None
    ) -> str | None:
        """Why not to reopen now: the last run for this failure ended unhealed too recently, or
        it was healed after the deviation now seen had already begun."""
        try:
            described = await self._client.get_workflow_handle(workflow_id).describe()
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                return None
            raise
        if described.status == WorkflowExecutionStatus.RUNNING or described.close_time is None:
            return None
        state = described.typed_search_attributes.get(STATUS)
        until = described.close_time + timedelta(seconds=inp.reopen_cooldown_seconds)
        if state in UNHEALED and until > datetime.now(UTC):
            return (
                f"previous incident ended {state} at {described.close_time:%H:%M:%S};"
                f" cooldown until {until:%H:%M:%S}"
            )
        # Rates and windows lag: right after a fix the detectors still see the episode that was
        # just healed. Only a deviation that began after it is a new incident.
        healed = state == IncidentState.RESOLVED.value
        if healed and onset is not None and onset <= described.close_time:
            return (
                f"the anomaly began at {onset:%H:%M:%S}, before the previous incident was"
                f" resolved at {described.close_time:%H:%M:%S}: the tail of the healed episode"
            )
        settled = described.close_time + timedelta(seconds=inp.settle_seconds)
        probed = inp.incident.incident_type in PROBED_PATTERNS
        if healed and onset is None and not probed and settled > datetime.now(UTC):
            # A state signal (stale reads, pool gauges) has no onset to compare; its windows
            # still hold the healed episode for a while.
            return (
                f"resolved at {described.close_time:%H:%M:%S}; its signals settle until"
                f" {settled:%H:%M:%S}"
            )
        return None

    async def _tail_of_last_heal(self, service: str, onset: datetime | None) -> str | None:
        """An anomaly that began before the service's last incident — of any pattern — was
        resolved belongs to that episode: its lagging rates can take another pattern's shape
        (a pool exhaustion's errors look like an error spike once the pool is resized)."""
        if onset is None:
            return None
        query = (
            f"WorkflowType = 'HealingIncidentWorkflow' AND {STATUS.name} = 'resolved'"
            f" AND NofxService = '{service}' AND CloseTime > '{onset.isoformat()}'"
        )
        async for healed in self._client.list_workflows(query, limit=1):
            return (
                f"the anomaly began at {onset:%H:%M:%S}, before {healed.id} was resolved"
                f" at {healed.close_time:%H:%M:%S}: the tail of the healed episode"
            )
        return None

    async def _busy_with_another(
        self, service: str, workflow_id: str, replaced: list[str]
    ) -> str | None:
        """One incident per service at a time: while one heals it (a restart takes it down for a
        moment, a hang is ended by a kill), what the probes see is that incident's doing. An
        action lease on the service (`_acting_on`, from the database) says so at once; a running
        incident for it (Temporal's visibility, which can lag under load) says so too. One
        that cannot progress heals nothing: it is ended (see `_end_if_stuck`), not waited on."""
        acting = await asyncio.to_thread(self._acting_on, service, workflow_id)
        if acting is not None:
            return acting
        query = (
            f"WorkflowType = 'HealingIncidentWorkflow' AND ExecutionStatus = 'Running'"
            f" AND NofxService = '{service}'"
        )
        async for running in self._client.list_workflows(query, limit=5):
            if running.id != workflow_id and not await self._end_if_stuck(running.id, replaced):
                return f"incident {running.id} is healing {service}"
        return None

    async def _stuck_reason(self, workflow_id: str) -> tuple[str, str] | None:
        """The run id and why, when the running workflow `workflow_id` cannot make progress:
        its workflow task has failed `STUCK_AFTER_ATTEMPTS - 1` attempts in a row (the last
        task outcome in its history is a failure, not a timeout: a timed-out task is a worker
        that died, which a restarted worker resumes)."""
        try:
            described = await self._client.get_workflow_handle(workflow_id).describe()
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                return None
            raise
        raw = described.raw_description
        if described.status != WorkflowExecutionStatus.RUNNING or not raw.HasField(
            "pending_workflow_task"
        ):
            return None
        attempt = raw.pending_workflow_task.attempt
        if attempt < STUCK_AFTER_ATTEMPTS:
            return None
        history = await self._client.workflow_service.get_workflow_execution_history_reverse(
            GetWorkflowExecutionHistoryReverseRequest(
                namespace=self._client.namespace,
                execution=WorkflowExecution(workflow_id=workflow_id, run_id=described.run_id),
                maximum_page_size=50,
            )
        )
        last = next((e for e in history.history.events if e.event_type in _TASK_OUTCOMES), None)
        if last is None or last.event_type != EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED:
            return None
        failure = last.workflow_task_failed_event_attributes.failure
        detail = failure.message + (f": {failure.cause.message}" if failure.cause.message else "")
        return described.run_id, (
            f"its workflow task failed {attempt - 1} times in a row"
            f" ({detail.splitlines()[0][:300] if detail else 'no message'})"
        )

    async def _end_if_stuck(self, workflow_id: str, replaced: list[str]) -> bool:
        """Terminate the running `workflow_id` when it cannot progress, so a new run can heal;
        the reason is kept in its history (the terminate reason) and in the log."""
        stuck = await self._stuck_reason(workflow_id)
        if stuck is None:
            return False
        run_id, why = stuck
        reason = f"nofx-monitor: replaced by a new run, this one cannot progress: {why}"
        try:
            await self._client.get_workflow_handle(workflow_id, run_id=run_id).terminate(
                reason=reason
            )
        except RPCError as err:
            if err.status != RPCStatusCode.NOT_FOUND:  # it ended meanwhile: nothing to end
                raise
        log.warning(
            "stuck incident run terminated", workflow_id=workflow_id, run_id=run_id, reason=why
        )
        replaced.append(f"{workflow_id}/{run_id}")
        return True

    async def open(self, inp: OpenIncidentInput) -> OpenIncidentResult:
        """Start `HealingIncidentWorkflow`, join the one already running for this failure, or
        hold back while a recent attempt that failed or escalated is cooling down. A running one
        that cannot progress is never joined: it is terminated and a fresh run started."""
        incident = inp.incident
        workflow_id = incident_workflow_id(incident.service, incident.incident_type)
        onsets = [
            datetime.fromisoformat(a["onset"])
            for a in incident.evidence.get("anomalies", [])
            if isinstance(a, dict) and a.get("onset")
        ]
        onset = min(onsets, default=None)
        replaced: list[str] = []
        await self._end_if_stuck(workflow_id, replaced)  # never joined: it would heal nothing
        reason = (
            await self._busy_with_another(incident.service, workflow_id, replaced)
            or self._slow_burn(incident)
            or await self._recently_unhealed(workflow_id, inp, onset)
            or await self._tail_of_last_heal(incident.service, onset)
            or await asyncio.to_thread(self._tail_of_maintenance, incident.service, onset)
        )
        if reason is not None:
            log.info("incident held back", workflow_id=workflow_id, reason=reason)
            return OpenIncidentResult(
                workflow_id=workflow_id,
                run_id=None,
                joined_existing=False,
                suppressed_reason=reason,
                replaced_stuck_runs=replaced,
            )
        handle, started = await start_incident(self._client, incident)
        return OpenIncidentResult(
            workflow_id=handle.id,
            run_id=handle.result_run_id,
            joined_existing=not started,
            replaced_stuck_runs=replaced,
        )
