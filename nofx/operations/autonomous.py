"""Track A's operations: decide, simulate, explain, pending, approve, reject, override, and the
learning ones: train, models, promote, rollback.

One implementation behind the CLI (`nofx autonomous ...`) and the Python client
(`NofxClient.decide`, ...). A decision is named by its id (the `autonomous_decisions` row) or by
the id of the workflow that made it; both are printed wherever a decision is shown.

- `decide` starts a `DecisionWorkflow` for a service's problem and returns once the engine has
  decided (it may then wait for a person: approve it with `approve`). A decision asked this way
  is recorded and explained like an incident's; acting on it is an incident's part.
- `simulate` scores and explains against the platform's state now, in process, with the same
  code as the workflow's activities: nothing is recorded, nothing runs.
- `approve`, `reject`, `override` go through the decision's Updates, so a refused answer
  (not an operator, a missing permission, a second answer by the same person, a decision that no
  longer waits) is refused before it reaches the workflow's history, with a typed error.
- `train` runs a `TrainingWorkflow` and waits for its report, passing on the training's
  progress; `models` lists the success models, `promote` makes one the champion and `rollback`
  puts back the champion the active one replaced — workers use it from their next decision.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError
from sqlalchemy import text
from sqlalchemy.engine import Engine
from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowHandle,
    WorkflowUpdateFailedError,
)
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from models.decisions import (
    Approve,
    Cause,
    DecideRequest,
    DecisionRecord,
    DecisionRequest,
    DecisionResult,
    ExperimentReport,
    ExperimentSpec,
    ModelInfo,
    OperatorsChanged,
    Override,
    Reject,
    SimulateRequest,
    Simulation,
    SuccessModelReport,
    TrainRequest,
    VerdictAck,
)
from models.detection import Diagnosis, PatternMatch, RootCauseCandidate
from nofx import model_registry as registry
from nofx.decisions import experiments, store
from nofx.decisions.engine import DecisionEngine, NoCandidate
from nofx.decisions.learned import MODEL_TYPE as SUCCESS_MODEL
from nofx.operations.errors import InvalidRequest, NotFound, NotPermitted, RuleConflict
from nofx.payloads import field_errors
from nofx.settings import TASK_QUEUE_DECISIONS

WAITING = ("deciding", "awaiting_approval")
_POLL_SECONDS = 0.5
# How long an answer from someone made an operator during the wait waits for the decision to
# read the operators again.
_RELOAD_SECONDS = 30.0
# What each kind of refusal (nofx.decisions.approval.Refusal) is to a caller.
_NOT_PERMITTED = frozenset({"not_operator", "not_permitted"})
_RULES = {
    "not_waiting": "not_waiting",
    "cannot_run": "capability",
    "already_answered": "distinct_approvers",
}


def invalid(err: ValidationError) -> InvalidRequest:
    return InvalidRequest(field_errors(err))


def given_diagnosis(service: str, pattern: str, cause: Cause | None) -> Diagnosis | None:
    """The diagnosis a person states on the command line (`--cause`); None without a cause."""
    if cause is None:
        return None
    return Diagnosis.model_validate(
        {
            "service": service,
            "pattern": PatternMatch.model_validate(
                {"pattern": pattern, "confidence": 1.0, "matched": []}
            ),
            "root_causes": [
                RootCauseCandidate(
                    service=service, cause=cause, score=1.0, detail="stated by the requester"
                )
            ],
        }
    )


def decision_workflow_id(service: str, problem: str, at: datetime) -> str:
    return f"decision-{service}-{problem}-{at:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"


class AutonomousOperations:
    """The decision engine's operations against one Temporal client and platform database."""

    def __init__(
        self, temporal: Client, engine: Engine, *, task_queue: str = TASK_QUEUE_DECISIONS
    ) -> None:
        self.temporal = temporal
        self.engine = engine
        self.task_queue = task_queue

    # ---- learning ---------------------------------------------------------------------------

    async def train(
        self,
        req: TrainRequest,
        on_progress: Callable[[str], None] | None = None,
        poll_seconds: float = 1.0,
    ) -> SuccessModelReport:
        """Train the success model now (TrainingWorkflow) and wait for its report; `on_progress`
        sees each step the training reports (its heartbeats).

        Raises:
            RuleConflict: too few decisions to learn from (rule `enough_history`).
        """
        handle = await self.temporal.start_workflow(
            "TrainingWorkflow",
            req,
            id=f"decisions-training-{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}",
            task_queue=self.task_queue,
            result_type=SuccessModelReport,
        )
        finished = asyncio.ensure_future(handle.result())
        said: str | None = None
        while True:
            done, _ = await asyncio.wait({finished}, timeout=poll_seconds)
            if done:
                break
            if on_progress is not None:
                step = await self._heartbeat(handle)
                if step and step != said:
                    on_progress(step)
                    said = step
        try:
            report: SuccessModelReport = finished.result()
        except WorkflowFailureError as err:
            cause = getattr(err.cause, "cause", None)  # the activity's error under the run's
            if isinstance(cause, ApplicationError) and cause.type == "NotEnoughHistory":
                raise RuleConflict(
                    f"not enough history to train: {cause.message}", rule="enough_history"
                ) from None
            raise
        return report

    async def _heartbeat(self, handle: WorkflowHandle[Any, Any]) -> str | None:
        described = await handle.describe()
        for pending in described.raw_description.pending_activities:
            if pending.heartbeat_details.payloads:
                details = await self.temporal.data_converter.decode(
                    pending.heartbeat_details.payloads, [str]
                )
                return str(details[0]) if details else None
        return None

    async def models(self, limit: int = 20) -> list[ModelInfo]:
        """The success models, newest first; at most one is active (the champion)."""
        rows = await asyncio.to_thread(registry.list_models, self.engine, SUCCESS_MODEL, limit)
        return rows

    async def promote(self, model_id: str, *, actor: str, reason: str = "") -> ModelInfo:
        """Make a stored success model the champion (audited); it replaces the active one."""
        row = await asyncio.to_thread(self._success_model, model_id)
        promoted = await asyncio.to_thread(
            registry.promote, self.engine, row.model_id, actor=actor, reason=reason or None
        )
        return promoted

    async def rollback(self, *, actor: str, reason: str = "") -> ModelInfo:
        """Put back the champion the active success model replaced (audited).

        Raises:
            RuleConflict: no active model, or it was the first champion (rule `previous_champion`).
        """
        try:
            back = await asyncio.to_thread(
                registry.rollback, self.engine, SUCCESS_MODEL, actor=actor, reason=reason or None
            )
        except registry.RegistryError as err:
            raise RuleConflict(str(err), rule="previous_champion") from None
        return back

    async def experiment_start(self, spec: ExperimentSpec, *, actor: str) -> ExperimentSpec:
        """Start an A/B test of decision strategies (one runs at a time)."""
        try:
            return await asyncio.to_thread(experiments.start, self.engine, spec, actor=actor)
        except experiments.ExperimentError as err:
            raise RuleConflict(str(err), rule="one_experiment") from None

    async def experiment_report(self, name: str) -> ExperimentReport:
        """Per arm: decisions, outcomes, success rate; the test statistic and the stop rule."""
        try:
            return await asyncio.to_thread(experiments.report, self.engine, name)
        except experiments.ExperimentError as err:
            raise NotFound(str(err)) from None

    async def experiment_stop(self, name: str, *, actor: str, reason: str) -> ExperimentReport:
        try:
            return await asyncio.to_thread(
                experiments.stop, self.engine, name, actor=actor, reason=reason
            )
        except experiments.ExperimentError as err:
            if "no experiment" in str(err):
                raise NotFound(str(err)) from None
            raise RuleConflict(str(err), rule="running") from None

    def _success_model(self, model_id: str) -> ModelInfo:
        try:
            uuid.UUID(model_id)
            row = registry.get(self.engine, model_id)
        except (ValueError, registry.RegistryError):
            raise NotFound(
                f"no success model {model_id!r} (see `nofx autonomous models list`)"
            ) from None
        if row.model_type != SUCCESS_MODEL:
            raise NotFound(f"model {model_id} is a {row.model_type} model, not a success model")
        return row

    # ---- decide and simulate ----------------------------------------------------------------

    async def decide(self, req: DecideRequest) -> DecisionRecord:
        await asyncio.to_thread(self._known_service, req.service)
        request = DecisionRequest(
            decision_type=req.decision_type,
            subject=req.service,
            problem=req.incident_type,
            requested_by=req.requested_by,
            require_approval=req.require_approval,
            evidence=req.evidence,
            diagnosis=given_diagnosis(req.service, req.incident_type, req.cause),
        )
        handle = await self.temporal.start_workflow(
            "DecisionWorkflow",
            request,
            id=decision_workflow_id(req.service, req.incident_type, datetime.now(UTC)),
            task_queue=self.task_queue,
            result_type=DecisionResult,
        )
        return await self._made(handle, req.wait_seconds)

    async def _made(
        self, handle: WorkflowHandle[Any, DecisionResult], wait_seconds: float
    ) -> DecisionRecord:
        """The decision once the engine has made it: its result, or its state while it waits."""
        finished = asyncio.ensure_future(handle.result())
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_seconds
        try:
            while True:
                done, _ = await asyncio.wait({finished}, timeout=_POLL_SECONDS)
                if done:
                    result = finished.result()
                    return await self._record(result, running=False)
                now: DecisionResult = await handle.query("status", result_type=DecisionResult)
                if now.status != "deciding" or loop.time() > deadline:
                    # Made, and recorded: the row is written just after the state changes.
                    row = await asyncio.to_thread(self._row, now.decision_id)
                    if (row and row["status"] == now.status) or loop.time() > deadline:
                        return await self._record(now, running=True, row=row)
        except WorkflowFailureError as err:
            cause = err.cause
            if isinstance(cause, ApplicationError) and cause.type in ("NoPlaybook", "NoCandidate"):
                raise RuleConflict(cause.message, rule="no_candidate") from None
            raise
        finally:
            finished.cancel()

    async def simulate(self, req: SimulateRequest) -> Simulation:
        return await asyncio.to_thread(self._simulate, req)

    def _simulate(self, req: SimulateRequest) -> Simulation:
        self._known_service(req.service)
        engine = DecisionEngine(self.engine)
        candidates = engine.candidates(req.incident_type)
        if req.candidates is not None:
            names = {c.name for c in candidates}
            unknown = [n for n in req.candidates if n not in names]
            if unknown:
                raise InvalidRequest(
                    [
                        f"candidates: {n!r} is not an enabled playbook of {req.incident_type}"
                        f" ({', '.join(sorted(names)) or 'none'})"
                        for n in unknown
                    ]
                )
            candidates = [c for c in candidates if c.name in req.candidates]
        request = DecisionRequest(
            subject=req.service,
            problem=req.incident_type,
            requested_by="simulate",
            evidence=req.evidence,
            candidates=candidates,
            diagnosis=given_diagnosis(req.service, req.incident_type, req.cause),
        )
        try:
            context, evaluation = engine.simulate(request)
        except NoCandidate as err:
            raise RuleConflict(str(err), rule="no_candidate") from None
        chosen = evaluation.scoring.chosen
        return Simulation(
            service=req.service,
            incident_type=req.incident_type,
            mode=evaluation.mode,
            mode_why=evaluation.mode_why,
            chosen=chosen,
            confidence=evaluation.scoring.confidence,
            would_act=chosen is not None
            and evaluation.mode != "observe"
            and not evaluation.approval.required,
            approval=evaluation.approval,
            ranked=evaluation.scoring.ranked,
            explanation=evaluation.explanation,
            context=context,
        )

    # ---- explain and pending -------------------------------------------------------------

    async def explain(self, ref: str) -> DecisionRecord:
        """The decision `ref` (its id or its workflow's id): live while it runs, else as stored."""
        row = await asyncio.to_thread(self._row, ref)
        workflow_id = row["workflow_id"] if row else ref
        running = await self._running(workflow_id)
        if not running and row is not None:
            # The row was read before the workflow was seen closed: it may predate the
            # workflow's last write (a rejection that ended it meanwhile). Read it again.
            row = await asyncio.to_thread(self._row, ref)
        if running or row is None or row["result"] is None:
            try:
                handle = self.temporal.get_workflow_handle(workflow_id)
                live: DecisionResult = await handle.query("explain", result_type=DecisionResult)
            except RPCError as err:
                if err.status != RPCStatusCode.NOT_FOUND and row is not None:
                    raise
                if row is None:
                    raise NotFound(
                        f"decision {ref!r}: no decision has this id or workflow id"
                    ) from None
                raise NotFound(
                    f"decision {ref!r}: its workflow is gone and the row predates stored results"
                ) from None
            return await self._record(live, running=running, row=row)
        return self._from_row(row, running=running)

    async def pending(self) -> list[DecisionRecord]:
        """Decisions waiting for a person, oldest first (only those whose workflow still runs)."""
        rows = await asyncio.to_thread(self._waiting_rows)
        found = [await self.explain(str(row["id"])) for row in rows]
        return [r for r in found if r.running and r.status == "awaiting_approval"]

    # ---- answers -------------------------------------------------------------------------

    async def approve(self, ref: str, answer: Approve) -> VerdictAck:
        return await self._answer(ref, "approve_decision", "approve", answer)

    async def reject(self, ref: str, answer: Reject) -> VerdictAck:
        return await self._answer(ref, "reject_decision", "reject", answer)

    async def override(self, ref: str, answer: Override) -> VerdictAck:
        return await self._answer(ref, "override_decision", "override", answer)

    async def _answer(self, ref: str, update: str, kind: str, answer: Any) -> VerdictAck:
        row = await asyncio.to_thread(self._row, ref)
        if row is None:
            raise NotFound(f"decision {ref!r}: no decision has this id or workflow id")
        if row["status"] not in WAITING:
            raise RuleConflict(
                f"decision {row['id']} is {row['status']}: nothing to {kind}", rule="not_waiting"
            )
        handle = self.temporal.get_workflow_handle(row["workflow_id"])
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _RELOAD_SECONDS
        told = False
        try:
            while True:
                try:
                    ack: VerdictAck = await handle.execute_update(
                        update, answer, result_type=VerdictAck
                    )
                    return ack
                except WorkflowUpdateFailedError as err:
                    cause = err.cause
                    newcomer = (
                        isinstance(cause, ApplicationError)
                        and cause.type == "not_operator"
                        and loop.time() < deadline
                        and await asyncio.to_thread(self._is_operator, answer.approver)
                    )
                    if not newcomer:
                        raise _refused(cause, kind) from None
                # Made an operator after the decision read the table: it reads it again.
                if not told:
                    await handle.signal("operators_changed", OperatorsChanged(by=answer.approver))
                    told = True
                await asyncio.sleep(_POLL_SECONDS)
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                raise RuleConflict(
                    f"decision {row['id']}: its workflow has ended; nothing to {kind}",
                    rule="not_waiting",
                ) from None
            raise

    # ---- the database and the workflow ---------------------------------------------------

    def _known_service(self, service: str) -> None:
        with self.engine.connect() as conn:
            names = list(conn.execute(text("SELECT name FROM services ORDER BY name")).scalars())
        if service not in names:
            raise NotFound(
                f"service: {service!r} is not in the inventory ({', '.join(names) or 'empty'})"
            )

    def _is_operator(self, name: str) -> bool:
        return name in store.operator_permissions(self.engine)

    def _row(self, ref: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = (
                conn.execute(
                    text(
                        "SELECT id, workflow_id, status, result, actual_outcome, created_at,"
                        " updated_at FROM autonomous_decisions"
                        " WHERE CAST(id AS text) = :r OR workflow_id = :r"
                        " ORDER BY created_at DESC LIMIT 1"
                    ),
                    {"r": ref},
                )
                .mappings()
                .one_or_none()
            )
        return dict(row) if row else None

    def _waiting_rows(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT id, workflow_id FROM autonomous_decisions"
                    " WHERE status = 'awaiting_approval' AND workflow_id IS NOT NULL"
                    " ORDER BY created_at"
                )
            ).mappings()
            return [dict(r) for r in rows]

    async def _running(self, workflow_id: str | None) -> bool:
        if not workflow_id:
            return False
        try:
            described = await self.temporal.get_workflow_handle(workflow_id).describe()
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                return False
            raise
        return described.status == WorkflowExecutionStatus.RUNNING

    async def _record(
        self, result: DecisionResult, *, running: bool, row: dict[str, Any] | None = None
    ) -> DecisionRecord:
        if row is None:
            row = (
                await asyncio.to_thread(self._row, result.decision_id)
                if result.decision_id
                else None
            )
        return DecisionRecord(
            **result.model_dump(),
            running=running,
            created_at=row["created_at"] if row else None,
            updated_at=row["updated_at"] if row else None,
            actual_outcome=row["actual_outcome"] if row else None,
        )

    def _from_row(self, row: dict[str, Any], *, running: bool) -> DecisionRecord:
        return DecisionRecord.model_validate(
            {
                **row["result"],
                "running": running,
                "created_at": row["created_at"],
                "updated_at": row["updated_at"],
                "actual_outcome": row["actual_outcome"],
            }
        )


def _refused(cause: BaseException | None, kind: str) -> Exception:
    """The typed error of an answer the decision refused (its validator or its judgement)."""
    if not isinstance(cause, ApplicationError):
        return RuleConflict(f"{kind} refused: {cause}", rule="refused")
    if cause.type in _NOT_PERMITTED:
        return NotPermitted(cause.message)
    if cause.type == "not_a_candidate":
        return InvalidRequest([cause.message])
    return RuleConflict(cause.message, rule=_RULES.get(cause.type or "", "refused"))
