"""Track B's operations: healing status, patterns, playbooks (list, show, create, update,
enable, disable), simulate and metrics, as typed models with typed errors.

One implementation behind the CLI (`nofx healing ...`), the Python client (`NofxClient.healing_*`)
and the HTTP API (`/api/healing/*`); the SQL lives in `nofx.healing.operations`. Writes are
validated as a whole before anything is stored: a refused playbook leaves the table as it was.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

from pydantic import ValidationError
from sqlalchemy.engine import Engine

from models.operations import (
    HealingMetrics,
    HealingSimulation,
    IncidentSummary,
    PatternSummary,
    PlaybookChanges,
    PlaybookView,
)
from nofx.healing import operations as sql
from nofx.healing.operations import PlaybookSpec
from nofx.operations.errors import InvalidRequest
from nofx.payloads import field_errors

T = TypeVar("T")


def _playbook(row: dict[str, Any]) -> PlaybookView:
    return PlaybookView.model_validate(
        {
            **row,
            "id": str(row["id"]),
            "required_permissions": list(row.get("required_permissions") or []),
        }
    )


class HealingOperations:
    """The healing track's operations against the platform database."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def _run(self, call: Callable[..., T], *args: Any) -> T:
        try:
            return await asyncio.to_thread(call, self.engine, *args)
        except ValidationError as err:
            raise InvalidRequest(field_errors(err)) from None

    async def status(self, service: str | None = None, limit: int = 20) -> list[IncidentSummary]:
        """Running incidents first, then the most recent ones."""
        if not 1 <= limit <= 1000:
            raise InvalidRequest([f"limit: must be between 1 and 1000 (got {limit})"])
        rows = await asyncio.to_thread(
            lambda: sql.incident_status(self.engine, service=service, limit=limit)
        )
        return [IncidentSummary.model_validate({**r, "id": str(r["id"])}) for r in rows]

    async def patterns(self) -> list[PatternSummary]:
        rows = await self._run(sql.patterns)
        return [
            PatternSummary.model_validate({**r, "proven_solutions": r["proven_solutions"] or []})
            for r in rows
        ]

    async def playbooks(self, incident_type: str | None = None) -> list[PlaybookView]:
        return [_playbook(r) for r in await self._run(sql.list_playbooks, incident_type)]

    async def playbook(self, name: str) -> PlaybookView:
        return _playbook(await self._run(sql.get_playbook, name))

    async def create_playbook(self, spec: PlaybookSpec) -> PlaybookView:
        return _playbook(await self._run(sql.create_playbook, spec))

    async def update_playbook(
        self, name: str, changes: PlaybookChanges | dict[str, Any]
    ) -> PlaybookView:
        """Change some fields of a playbook; the result is validated whole before it is kept."""
        if isinstance(changes, PlaybookChanges):
            changes = changes.model_dump(mode="json", exclude_none=True)
        if not changes:
            raise InvalidRequest(["(body): name at least one field to change"])
        return _playbook(await self._run(sql.update_playbook, name, changes))

    async def set_enabled(self, name: str, enabled: bool) -> PlaybookView:
        return _playbook(await self._run(sql.set_playbook_enabled, name, enabled))

    async def simulate(self, playbook: str, service: str) -> HealingSimulation:
        """What running `playbook` on `service` would do; nothing is touched."""
        return HealingSimulation.model_validate(await self._run(sql.simulate, playbook, service))

    async def metrics(self, since: timedelta = timedelta(hours=24)) -> HealingMetrics:
        if since <= timedelta(0):
            raise InvalidRequest([f"hours: must be positive (got {since.total_seconds() / 3600})"])
        return HealingMetrics.model_validate(await self._run(sql.healing_metrics, since))
