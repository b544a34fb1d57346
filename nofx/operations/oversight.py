"""What a person overseeing the platform reads: incidents with their timelines, recent
decisions, the Schedules that run on their own, autonomy metrics, and the audit trail as a
stream of events (the dashboard's live updates).

One implementation behind the CLI, the Python client, the HTTP API (`/api/incidents`,
`/api/decisions`, `/api/schedules`, `/api/metrics/autonomy`, `/api/events`) and the dashboard.
Timelines come from the audit trail, which every incident and decision writes at each step and
which outlives the workflows' histories.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Engine
from temporalio.client import (
    Client,
    ScheduleActionStartWorkflow,
    WorkflowExecutionStatus,
)
from temporalio.service import RPCError, RPCStatusCode

from models.healing import IncidentStatus
from models.operations import (
    AutonomyMetrics,
    CountByKey,
    DecisionSummary,
    IncidentDetail,
    ScheduleView,
    TimelineEvent,
)
from nofx.audit import ChainVerdict, verify_chain
from nofx.healing.operations import healing_metrics
from nofx.operations.errors import InvalidRequest, NotFound

_EVENT_COLUMNS = "id, occurred_at AS at, actor, action, reason, details"


def _limit(limit: int, most: int = 1000) -> None:
    if not 1 <= limit <= most:
        raise InvalidRequest([f"limit: must be between 1 and {most} (got {limit})"])


def _hours(hours: float) -> timedelta:
    if not 0 < hours <= 24 * 366:
        raise InvalidRequest([f"hours: must be above 0 and at most a year (got {hours})"])
    return timedelta(hours=hours)


class OversightOperations:
    """Reads across the tracks, against one Temporal client and the platform database."""

    def __init__(self, temporal: Client | None, engine: Engine) -> None:
        self.temporal = temporal
        self.engine = engine

    # ---- incidents ---------------------------------------------------------------------------

    async def incident(self, incident_id: str) -> IncidentDetail:
        """An incident with its timeline; live from its workflow while it runs."""
        row = await asyncio.to_thread(self._incident_row, incident_id)
        detail = IncidentDetail.model_validate(row)
        if detail.workflow_id and self.temporal is not None:
            live = await self._incident_status(detail.workflow_id, detail.id)
            if live is not None:
                detail = detail.model_copy(
                    update={
                        "running": True,
                        "decision_id": live.decision_id or detail.decision_id,
                        "awaiting_decision": live.awaiting_decision,
                        "rollback_plan": live.rollback_plan,
                        "actions": [a.model_dump(mode="json") for a in live.actions],
                    }
                )
        return detail

    def _incident_row(self, incident_id: str) -> dict[str, Any]:
        try:
            uuid.UUID(incident_id)
        except ValueError:
            raise NotFound(f"incident {incident_id!r}: not an incident id (a UUID)") from None
        with self.engine.connect() as conn:
            row = (
                conn.execute(
                    text(
                        "SELECT id::text AS id, root_cause->>'service' AS service, incident_type,"
                        " status, healing_strategy, started_at, resolved_at, resolution_time_ms,"
                        " detection_method, root_cause,"
                        " coalesce(array_to_json(healing_actions), '[]') AS actions"
                        " FROM healing_incidents WHERE id = CAST(:i AS uuid)"
                    ),
                    {"i": incident_id},
                )
                .mappings()
                .one_or_none()
            )
            if row is None:
                raise NotFound(f"incident {incident_id}: no such incident")
            events = self._events(conn, "healing_incident", incident_id)
            decision = conn.execute(
                text(
                    "SELECT id::text FROM autonomous_decisions"
                    " WHERE coalesce(result->>'incident_id', context_data->>'incident_id') = :i"
                    " ORDER BY created_at DESC LIMIT 1"
                ),
                {"i": incident_id},
            ).scalar_one_or_none()
        found = dict(row)
        found["timeline"] = events
        found["workflow_id"] = next(
            (e["workflow_id"] for e in events if e.get("workflow_id")), None
        )
        found["decision_id"] = decision
        return found

    @staticmethod
    def _events(conn: Any, entity_type: str, entity_id: str) -> list[dict[str, Any]]:
        rows = conn.execute(
            text(
                f"SELECT {_EVENT_COLUMNS}, workflow_id FROM audit_events"
                " WHERE entity_type = :t AND entity_id = :i ORDER BY id"
            ),
            {"t": entity_type, "i": entity_id},
        ).mappings()
        return [dict(r) for r in rows]

    async def _incident_status(self, workflow_id: str, incident_id: str) -> IncidentStatus | None:
        """The incident's live status when its workflow still runs this incident."""
        assert self.temporal is not None
        handle = self.temporal.get_workflow_handle(workflow_id)
        try:
            described = await handle.describe()
            if described.status != WorkflowExecutionStatus.RUNNING:
                return None
            status: IncidentStatus = await handle.query("status", result_type=IncidentStatus)
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                return None
            raise
        return status if status.incident_id == incident_id else None

    # ---- decisions ---------------------------------------------------------------------------

    async def decisions(
        self, *, limit: int = 50, status: str | None = None, subject: str | None = None
    ) -> list[DecisionSummary]:
        """Recent decisions, newest first."""
        _limit(limit)
        return await asyncio.to_thread(self._decisions, limit, status, subject)

    def _decisions(
        self, limit: int, status: str | None, subject: str | None
    ) -> list[DecisionSummary]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT id::text AS decision_id, workflow_id, subject, problem, status,"
                    " result->>'mode' AS mode, coalesce(result->>'chosen', chosen_action)"
                    " AS chosen, coalesce((result->>'confidence')::float,"
                    " confidence_score::float) AS confidence, result->'risk'->>'level' AS risk,"
                    " decided_by, result->>'incident_id' AS incident_id, created_at, updated_at"
                    " FROM autonomous_decisions"
                    " WHERE (CAST(:st AS text) IS NULL OR status = :st)"
                    " AND (CAST(:su AS text) IS NULL OR subject = :su)"
                    " ORDER BY created_at DESC LIMIT :n"
                ),
                {"st": status, "su": subject, "n": limit},
            ).mappings()
            return [DecisionSummary.model_validate(dict(r)) for r in rows]

    async def decision_timeline(self, decision_id: str) -> list[TimelineEvent]:
        def read() -> list[dict[str, Any]]:
            with self.engine.connect() as conn:
                return self._events(conn, "autonomous_decision", decision_id)

        return [TimelineEvent.model_validate(e) for e in await asyncio.to_thread(read)]

    # ---- schedules ---------------------------------------------------------------------------

    async def schedules(self) -> list[ScheduleView]:
        """Every Temporal Schedule of the namespace: what it starts, how often, when next."""
        if self.temporal is None:
            raise NotFound("schedules: no Temporal connection")
        found: list[ScheduleView] = []
        listing = await self.temporal.list_schedules()
        async for entry in listing:
            described = await self.temporal.get_schedule_handle(entry.id).describe()
            schedule = described.schedule
            action = schedule.action
            interval = schedule.spec.intervals[0] if schedule.spec.intervals else None
            found.append(
                ScheduleView(
                    schedule_id=entry.id,
                    workflow=action.workflow
                    if isinstance(action, ScheduleActionStartWorkflow)
                    else None,
                    task_queue=action.task_queue
                    if isinstance(action, ScheduleActionStartWorkflow)
                    else None,
                    every_seconds=interval.every.total_seconds() if interval else None,
                    offset_seconds=interval.offset.total_seconds()
                    if interval and interval.offset
                    else None,
                    paused=schedule.state.paused,
                    note=schedule.state.note or None,
                    next_runs=list(described.info.next_action_times[:3]),
                    recent_runs=[a.started_at for a in described.info.recent_actions[-3:]],
                )
            )
        return sorted(found, key=lambda s: s.schedule_id)

    # ---- metrics -----------------------------------------------------------------------------

    async def autonomy(self, hours: float = 24.0) -> AutonomyMetrics:
        """Auto-resolution, MTTD/MTTR, the human intervention rate and decisions by mode, risk
        and status, over the last `hours`."""
        since = _hours(hours)
        return await asyncio.to_thread(self._autonomy, since)

    def _autonomy(self, since: timedelta) -> AutonomyMetrics:
        healing = healing_metrics(self.engine, since)
        overall: dict[str, Any] = next(
            (r for r in healing["table"] if r["pattern"] == "overall"), {}
        )
        secs = {"s": since.total_seconds()}
        with self.engine.connect() as conn:
            incidents = (
                conn.execute(
                    text(
                        "SELECT count(*) AS n,"
                        " count(*) FILTER (WHERE status = 'escalated') AS escalated,"
                        " count(*) FILTER (WHERE status = 'failed') AS failed,"
                        " count(*) FILTER (WHERE status = 'resolved' AND NOT EXISTS ("
                        "  SELECT 1 FROM audit_events a WHERE a.entity_id = i.id::text"
                        "  AND a.action = 'incident.awaiting_approval')) AS auto"
                        " FROM healing_incidents i"
                        " WHERE i.started_at > now() - make_interval(secs => :s)"
                    ),
                    secs,
                )
                .mappings()
                .one()
            )
            recent = (
                "FROM autonomous_decisions WHERE created_at > now() - make_interval(secs => :s)"
            )
            decisions = (
                conn.execute(
                    text(
                        "SELECT count(*) AS n, count(*) FILTER (WHERE"
                        " jsonb_array_length(coalesce(result->'approval'->'verdicts', '[]')) > 0)"
                        " AS answered, count(*) FILTER (WHERE status = 'awaiting_approval')"
                        f" AS waiting {recent}"
                    ),
                    secs,
                )
                .mappings()
                .one()
            )

            def grouped(expr: str) -> list[CountByKey]:
                rows = conn.execute(
                    text(
                        f"SELECT coalesce({expr}, 'unknown') AS key, count(*) AS count {recent}"
                        " GROUP BY 1 ORDER BY 2 DESC, 1"
                    ),
                    secs,
                ).mappings()
                return [CountByKey.model_validate(dict(r)) for r in rows]

            by_mode = grouped("result->>'mode'")
            by_risk = grouped("result->'risk'->>'level'")
            by_status = grouped("status")
        n, made = int(incidents["n"]), int(decisions["n"])
        return AutonomyMetrics(
            since_hours=round(since.total_seconds() / 3600, 2),
            incidents=n,
            auto_resolved=int(incidents["auto"]),
            auto_resolution_rate=round(incidents["auto"] / n, 3) if n else None,
            escalated=int(incidents["escalated"]),
            failed=int(incidents["failed"]),
            mttd_p50_s=overall.get("mttd_p50_s"),
            mttd_p95_s=overall.get("mttd_p95_s"),
            mttr_p50_s=overall.get("mttr_p50_s"),
            mttr_p95_s=overall.get("mttr_p95_s"),
            decisions=made,
            decisions_by_person=int(decisions["answered"]),
            human_intervention_rate=round(decisions["answered"] / made, 3) if made else None,
            waiting=int(decisions["waiting"]),
            by_mode=by_mode,
            by_risk=by_risk,
            by_status=by_status,
        )

    # ---- the audit trail and the learned detector ---------------------------------------------

    async def verify_audit(self) -> ChainVerdict:
        """Recompute every hash of the audit chain: intact, or the first event that is not."""

        def run() -> ChainVerdict:
            with self.engine.connect() as conn:
                return verify_chain(conn)

        return await asyncio.to_thread(run)

    async def detector_models(self, limit: int = 20) -> list[dict[str, Any]]:
        """The learned detector's versions, newest first, with their held-out figures."""
        from nofx.diagnosis.training import list_models

        _limit(limit, 200)
        return await asyncio.to_thread(list_models, self.engine, limit)

    # ---- the event stream --------------------------------------------------------------------

    async def events_after(self, after: int, limit: int = 200) -> list[TimelineEvent]:
        """Audit events after id `after`, oldest first: what changed, for live views."""

        def read() -> list[dict[str, Any]]:
            with self.engine.connect() as conn:
                rows = conn.execute(
                    text(
                        f"SELECT {_EVENT_COLUMNS}, entity_type, entity_id FROM audit_events"
                        " WHERE id > :a ORDER BY id LIMIT :n"
                    ),
                    {"a": after, "n": limit},
                ).mappings()
                return [dict(r) for r in rows]

        out = []
        for row in await asyncio.to_thread(read):
            entity = {"entity_type": row.pop("entity_type"), "entity_id": row.pop("entity_id")}
            row["details"] = {**(row["details"] or {}), **entity}
            out.append(TimelineEvent.model_validate(row))
        return out

    async def last_event_id(self) -> int:
        def read() -> int:
            with self.engine.connect() as conn:
                return int(
                    conn.execute(text("SELECT coalesce(max(id), 0) FROM audit_events")).scalar_one()
                )

        return await asyncio.to_thread(read)
