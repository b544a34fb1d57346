"""Healing actions as activities: exactly once, with their prior state kept for the undo.

`perform_action` records the action's prior state in `action_log` *before* acting, then acts
(idempotently), then records the outcome. A retried attempt finds the row: a finished action is
not repeated (its recorded outcome is returned), an interrupted one is completed with the prior
state captured the first time. `undo_action` — the saga's compensation — reads that prior state,
so it restores what was there before the step even when the step's worker died halfway.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import httpx
from pydantic import ValidationError
from sqlalchemy.engine import Engine
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities._support import heartbeating, invalid_input
from activities.store import get_fleet_target
from models.actions import (
    ACTION_CAPABILITY,
    ACTION_PARAMS,
    ActionRequest,
    RequestCheck,
    ValidateRequestsParams,
)
from models.healing import ActionOutcome
from nofx.healing.action_log import log_action, logged_action
from nofx.healing.actions import ACTIONS, ActionContext, ActionError, capabilities
from nofx.healing.probes import request_round
from nofx.settings import Settings


class ActionActivities:
    def __init__(self, engine: Engine, settings: Settings) -> None:
        self._engine = engine
        self._settings = settings

    def _context(self, req: ActionRequest, key: str) -> ActionContext:
        target = get_fleet_target(self._engine, req.service)
        needed = ACTION_CAPABILITY[req.action]
        offered = capabilities(target)
        if needed not in offered:
            raise ApplicationError(
                f"{req.action} needs capability {needed}, which service {req.service!r} does not"
                f" offer (it offers: {', '.join(sorted(offered))})",
                type="UnsupportedAction",
                non_retryable=True,
            )
        return ActionContext(target, self._engine, self._settings.database_url, key)

    def _log(self, req: ActionRequest, status: str, detail: Any, *, undo: bool = False) -> None:
        suffix = "/undo" if undo else ""
        log_action(
            self._engine,
            f"{req.idempotency_key}{suffix}",
            req.workflow_id,
            f"{req.step}{suffix}",
            f"undo_{req.action}" if undo else req.action,
            req.service,
            status,
            detail,
        )

    def _params(self, req: ActionRequest) -> Any:
        try:
            return ACTION_PARAMS[req.action].model_validate(req.params)
        except ValidationError as err:
            raise invalid_input(f"{req.action} params: {err.errors()[0]['msg']}") from None

    def _outcome(
        self, req: ActionRequest, action: str, performed: bool, detail: dict[str, Any], at: datetime
    ) -> ActionOutcome:
        return ActionOutcome(
            action=action,
            service=req.service,
            performed=performed,
            detail=detail,
            started_at=at,
            finished_at=datetime.now(UTC),
        )

    @activity.defn
    def perform_action(self, req: ActionRequest) -> ActionOutcome:
        """Do one healing action once (module doc)."""
        started = datetime.now(UTC)
        action = ACTIONS.get(req.action)
        if action is None:
            raise invalid_input(f"{req.action} is not a state-changing healing action")
        params = self._params(req)
        ctx = self._context(req, req.idempotency_key)
        recorded = logged_action(self._engine, req.idempotency_key)
        if recorded is not None and recorded[0] in ("succeeded", "skipped"):
            return ActionOutcome.model_validate(recorded[1]["outcome"])
        try:
            prior = (
                recorded[1]["prior"]
                if recorded is not None and "prior" in recorded[1]
                else action.capture(ctx, params)
            )
            self._log(req, "started", {"prior": prior, "attempt": activity.info().attempt})
            with heartbeating(step=req.step):
                done = action.perform(ctx, params, prior)
        except ActionError as err:
            self._log(req, "failed", {"error": str(err)})
            raise ApplicationError(str(err), type="ActionFailed", non_retryable=True) from err
        outcome = self._outcome(req, req.action, done.performed, done.detail, started)
        self._log(
            req,
            "succeeded" if done.performed else "skipped",
            {"prior": prior, "outcome": outcome.model_dump(mode="json")},
        )
        activity.logger.info("%s %s: %s", req.action, req.service, done.detail)
        return outcome

    @activity.defn
    def undo_action(self, req: ActionRequest) -> ActionOutcome:
        """Restore the state from before the step keyed `req.idempotency_key` (compensation)."""
        started = datetime.now(UTC)
        action = ACTIONS[req.action]
        undo_key = f"{req.idempotency_key}/undo"
        done_before = logged_action(self._engine, undo_key)
        if done_before is not None and done_before[0] == "compensated":
            return ActionOutcome.model_validate(done_before[1]["outcome"])
        recorded = logged_action(self._engine, req.idempotency_key)
        if recorded is None or "prior" not in recorded[1]:
            # The step never got as far as capturing its prior state: it changed nothing.
            never = {"reason": "the step never ran", "prior_state_restored": True}
            never["prior_state_check"] = "nothing was changed"
            return self._outcome(req, f"undo_{req.action}", False, never, started)
        ctx = self._context(req, req.idempotency_key)
        with heartbeating(step=f"{req.step}/undo"):
            done = action.undo(ctx, recorded[1]["prior"])
            restored, check = action.restored(ctx, recorded[1]["prior"])
        detail = {**done.detail, "prior_state_restored": restored, "prior_state_check": check}
        outcome = self._outcome(req, f"undo_{req.action}", done.performed, detail, started)
        self._log(req, "compensated", {"outcome": outcome.model_dump(mode="json")}, undo=True)
        return outcome

    @activity.defn
    def validate_requests(self, req: ActionRequest) -> RequestCheck:
        """Send real requests until a round comes back good enough, or the rounds run out."""
        params: ValidateRequestsParams = self._params(req)
        target = get_fleet_target(self._engine, req.service)
        endpoint = target.endpoint
        if params.via_frontend:
            # After traffic moved off a replica, the service is what its load balancer serves.
            endpoint = str(target.metadata.get("haproxy_frontend") or "")
            if not endpoint:
                raise invalid_input(
                    f"validate_requests via_frontend: service {req.service!r} has no"
                    " metadata.haproxy_frontend in the inventory"
                )
        last = RequestCheck(
            service=req.service,
            passed=False,
            rounds=0,
            error_ratio=1.0,
            p95_ms=None,
            stale_reads=0,
            detail="not run",
        )
        with httpx.Client(timeout=params.request_timeout_seconds) as client:
            for round_number in range(1, params.attempts + 1):
                last = request_round(client, endpoint, req.service, params, round_number)
                activity.heartbeat({"round": round_number, "detail": last.detail})
                if last.passed:
                    break
                time.sleep(params.interval_seconds)
        return last
