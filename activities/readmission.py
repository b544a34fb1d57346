"""Re-admission of mitigated replicas as an activity (the logic: nofx.healing.readmission).

Safe to retry: each mitigation is re-admitted under its own row lock and recorded once, and the
undo is idempotent, so an attempt cut short is finished by the next one.
"""

from __future__ import annotations

from sqlalchemy.engine import Engine
from temporalio import activity

from activities._support import heartbeating
from models.readmission import TrafficReadmissionInput, TrafficReadmissionReport
from nofx.healing.readmission import readmit_traffic
from nofx.settings import Settings


class ReadmissionActivities:
    def __init__(self, engine: Engine, settings: Settings) -> None:
        self._engine = engine
        self._settings = settings

    @activity.defn
    def readmit_traffic(self, inp: TrafficReadmissionInput) -> TrafficReadmissionReport:
        """Put back the replicas that are well again; say why the others are held."""
        with heartbeating(step="readmit_traffic"):
            return readmit_traffic(
                self._engine,
                inp,
                database_url=self._settings.database_url,
                readmitted_by=activity.info().workflow_id,
            )
