"""Activities that talk to Temporal itself: opening an incident for a confirmed failure."""

from __future__ import annotations

from temporalio import activity

from models.healing import OpenIncidentInput, OpenIncidentResult
from nofx.healing.intake import STUCK_AFTER_ATTEMPTS, IncidentIntake

__all__ = ["STUCK_AFTER_ATTEMPTS", "IncidentActivities"]


class IncidentActivities(IncidentIntake):
    @activity.defn
    async def open_incident(self, inp: OpenIncidentInput) -> OpenIncidentResult:
        """Start `HealingIncidentWorkflow`, join the one already running for this failure, or
        hold back while a recent attempt that failed or escalated is cooling down (see
        `nofx.healing.intake`)."""
        return await self.open(inp)
