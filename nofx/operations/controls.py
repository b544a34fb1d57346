"""The platform's controls: the kill switch, the guardrail policy, change freezes and the
decision modes, as typed operations with typed errors.

One implementation behind the CLI (`nofx pause|resume`, `nofx guardrails ...`,
`nofx autonomous mode ...`), the HTTP API (`/api/controls/*`, admin only) and the dashboard.
A change is validated whole before it is stored: a refused one leaves the controls as they were.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import ValidationError
from sqlalchemy import text
from sqlalchemy.engine import Engine

from models.operations import (
    ControlsView,
    FreezeRequest,
    FreezeView,
    GuardrailRefusal,
    KillSwitch,
    ModeChange,
)
from nofx.decisions import store as decision_store
from nofx.healing.guardrails import (
    active_freezes,
    add_freeze,
    read_controls,
    recent_verdicts,
    set_paused,
    set_policy,
)
from nofx.operations.errors import InvalidRequest, NotFound, RuleConflict
from nofx.payloads import field_errors


class ControlsOperations:
    """The kill switch, guardrails, freezes and modes against the platform database."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def show(self) -> ControlsView:
        return await asyncio.to_thread(self._show)

    def _show(self) -> ControlsView:
        with self.engine.connect() as conn:
            controls = read_controls(conn)
        refused = [v for v in recent_verdicts(self.engine) if v["verdict"] != "allow"][-20:]
        decisions = decision_store.get_policy(self.engine)
        return ControlsView(
            paused=controls.paused,
            reason=controls.reason,
            changed_by=controls.changed_by,
            changed_at=controls.changed_at,
            policy=controls.policy.model_dump(mode="json"),
            mode=decisions.mode,
            ask_at_risk=decisions.ask_at_risk,
            min_confidence=decisions.min_confidence,
            service_modes=decision_store.service_modes(self.engine),
            freezes=[
                FreezeView.model_validate({**f, "id": str(f["id"])})
                for f in active_freezes(self.engine)
            ],
            refusals=[GuardrailRefusal.model_validate(v) for v in refused],
        )

    async def kill_switch(self, change: KillSwitch, *, actor: str) -> ControlsView:
        """Pause every automated action (held incidents wait), or resume."""
        await asyncio.to_thread(
            set_paused, self.engine, change.paused, actor=actor, reason=change.reason
        )
        return await self.show()

    async def set_policy(self, changes: dict[str, Any]) -> ControlsView:
        """Change guardrail limits; the whole policy is validated before it is stored."""
        if not changes:
            raise InvalidRequest(["name at least one limit to change"])
        try:
            await asyncio.to_thread(set_policy, self.engine, changes)
        except ValidationError as err:
            raise InvalidRequest(field_errors(err)) from None
        return await self.show()

    async def add_freeze(self, req: FreezeRequest, *, actor: str) -> FreezeView:
        begins = (req.starts_at or datetime.now(UTC)).astimezone(UTC)
        ends = begins + timedelta(hours=req.hours)
        if ends <= datetime.now(UTC):
            raise RuleConflict(
                f"a freeze from {begins:%Y-%m-%d %H:%M}Z for {req.hours:g} h is over already",
                rule="freeze_ahead",
            )
        if req.scope != "*":
            await asyncio.to_thread(self._known_service, req.scope, "scope")
        freeze_id = await asyncio.to_thread(
            add_freeze,
            self.engine,
            begins,
            ends,
            scope=req.scope,
            reason=req.reason,
            actor=actor,
        )
        return FreezeView(
            id=freeze_id,
            scope=req.scope,
            starts_at=begins,
            ends_at=ends,
            reason=req.reason,
            created_by=actor,
        )

    async def set_mode(self, change: ModeChange) -> ControlsView:
        if change.service is not None:
            await asyncio.to_thread(self._known_service, change.service, "service")
        await asyncio.to_thread(
            decision_store.set_mode, self.engine, change.mode, service=change.service
        )
        return await self.show()

    def _known_service(self, service: str, field: str) -> None:
        with self.engine.connect() as conn:
            known = conn.execute(
                text("SELECT 1 FROM services WHERE name = :s"), {"s": service}
            ).first()
        if known is None:
            raise NotFound(f"{field}: {service!r} is not in the inventory")
