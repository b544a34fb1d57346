"""Alerts in: Alertmanager's webhook opens or joins incidents.

Each alert names its service with the label `service` (a service of the inventory; a rule whose
series name it otherwise sets it, e.g. `service: '{{ $labels.job }}'`) and its failure with
`nofx_pattern` (a known pattern: `service_down`, `latency_regression`, ...).

A firing alert goes through the same intake as the monitor's detections (`nofx.healing.intake`):
it opens the incident of its service and pattern, joins the one running, or is held back with
the reason (another incident is healing the service, a cooldown, a maintenance job at work). A
resolved alert is evidence, kept with the incident it belongs to; it resolves nothing — healing
verifies its own work.

The payload is checked whole before anything happens: a refused call (422 field by field, or 404
for a service outside the inventory) opens nothing and records nothing. Every accepted alert is
recorded in `alert_events`.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Engine
from temporalio.client import Client

from models.healing import IncidentInput, OpenIncidentInput
from models.operations import AlertmanagerWebhook, AlertOutcome, AlertsReceived
from nofx.client import incident_workflow_id
from nofx.healing.intake import IncidentIntake
from nofx.operations.errors import NotFound


class AlertOperations:
    """The alert intake against one Temporal client and the platform database."""

    def __init__(self, temporal: Client, engine: Engine) -> None:
        self.temporal = temporal
        self.engine = engine

    def _check(self, payload: AlertmanagerWebhook) -> list[tuple[str, str]]:
        """Each alert's (service, pattern), or every unknown service of the payload at once."""
        with self.engine.connect() as conn:
            known = set(conn.execute(text("SELECT name FROM services")).scalars())
        problems = [
            f"alerts.{i}.labels.service: {alert.labels.service!r} is not in the inventory"
            for i, alert in enumerate(payload.alerts)
            if alert.labels.service not in known
        ]
        if problems:
            raise NotFound("; ".join(problems))
        return [(a.labels.service, a.labels.nofx_pattern) for a in payload.alerts]

    async def alertmanager(
        self, payload: AlertmanagerWebhook, *, received_by: str
    ) -> AlertsReceived:
        """Open, join or hold back the incident of each firing alert; keep resolved ones as
        evidence. All alerts are checked before any is acted on."""
        subjects = await asyncio.to_thread(self._check, payload)
        intake = IncidentIntake(self.temporal, self.engine)
        outcomes = []
        for alert, (service, pattern) in zip(payload.alerts, subjects, strict=True):
            evidence = {
                "alertmanager": {
                    "fingerprint": alert.fingerprint,
                    "alertname": (alert.labels.model_extra or {}).get("alertname"),
                    "labels": alert.labels.model_dump(),
                    "annotations": alert.annotations,
                    "generator_url": alert.generatorURL,
                    "starts_at": alert.startsAt.isoformat(),
                }
            }
            if alert.status == "resolved":
                outcome = AlertOutcome(
                    fingerprint=alert.fingerprint,
                    status="resolved",
                    service=service,
                    pattern=pattern,
                    outcome="evidence",
                    workflow_id=incident_workflow_id(service, pattern),
                    reason="a resolved alert is evidence; healing verifies its own work",
                )
            else:
                opened = await intake.open(
                    OpenIncidentInput(
                        incident=IncidentInput(
                            service=service,
                            incident_type=alert.labels.nofx_pattern,
                            detection_method="alertmanager",
                            detected_at=alert.startsAt,
                            evidence=evidence,
                            requested_by="alertmanager",
                        )
                    )
                )
                held = opened.suppressed_reason is not None
                outcome = AlertOutcome(
                    fingerprint=alert.fingerprint,
                    status="firing",
                    service=service,
                    pattern=pattern,
                    outcome="held" if held else "joined" if opened.joined_existing else "opened",
                    workflow_id=opened.workflow_id,
                    reason=opened.suppressed_reason,
                )
            await asyncio.to_thread(self._record, payload, alert, outcome, received_by)
            outcomes.append(outcome)
        return AlertsReceived(alerts=outcomes)

    def _record(
        self, payload: AlertmanagerWebhook, alert: Any, outcome: AlertOutcome, received_by: str
    ) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO alert_events (fingerprint, status, service, pattern, alertname,"
                    " starts_at, ends_at, labels, annotations, generator_url, receiver, group_key,"
                    " outcome, workflow_id, reason, received_by) VALUES (:f, :st, :s, :p, :a,"
                    " :sa, :ea, CAST(:l AS jsonb), CAST(:an AS jsonb), :g, :r, :gk, :o, :w, :why,"
                    " :by)"
                ),
                {
                    "f": alert.fingerprint,
                    "st": alert.status,
                    "s": outcome.service,
                    "p": outcome.pattern,
                    "a": (alert.labels.model_extra or {}).get("alertname"),
                    "sa": alert.startsAt,
                    # Alertmanager's "no end yet" is the zero time
                    "ea": alert.endsAt if alert.endsAt and alert.endsAt.year > 1 else None,
                    "l": json.dumps(alert.labels.model_dump()),
                    "an": json.dumps(alert.annotations),
                    "g": alert.generatorURL or None,
                    "r": payload.receiver or None,
                    "gk": payload.groupKey or None,
                    "o": outcome.outcome,
                    "w": outcome.workflow_id,
                    "why": outcome.reason,
                    "by": received_by,
                },
            )
