"""Guardrail activities: the check before every state-changing step, and the lease release."""

from __future__ import annotations

from sqlalchemy.engine import Engine
from temporalio import activity

from models.guardrails import GuardrailCheck, GuardrailVerdict, ReleaseLease
from nofx.healing.guardrails import check_guardrails, release_lease


class GuardrailActivities:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    @activity.defn
    def check_guardrails(self, check: GuardrailCheck) -> GuardrailVerdict:
        """allow (with a lease), wait or ask — recorded in `guardrail_verdicts` either way."""
        return check_guardrails(self._engine, check)

    @activity.defn
    def release_lease(self, inp: ReleaseLease) -> bool:
        return release_lease(self._engine, inp.idempotency_key)
