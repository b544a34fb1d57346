"""Guardrails every healing action passes: the policy, the check and its verdict."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from models.common import Contract

Verdict = Literal["allow", "wait", "ask"]
Guardrail = Literal[
    "kill_switch",
    "change_freeze",
    "circuit_breaker",
    "fleet_unhealthy",
    "cooldown",
    "rate_limit",
    "blast_radius",
    "concurrency",
]


class GuardrailPolicy(Contract):
    """The limits, stored in `platform_controls.policy` (empty: these defaults)."""

    cooldown_seconds: float = Field(
        default=120, ge=0, description="between automated actions on a service by two incidents"
    )
    max_actions_per_hour: int = Field(default=6, ge=1, description="automated actions a service")
    max_concurrent_actions: int = Field(default=3, ge=1, description="in flight, whole fleet")
    blast_radius_share: float = Field(
        default=0.5, gt=0, le=1, description="of a service group's replicas acted on at once"
    )
    unhealthy_share_stop: float = Field(
        default=0.5, gt=0, le=1, description="above this share of the fleet unhealthy: ask"
    )
    unhealthy_min_fleet: int = Field(
        default=3, ge=1, description="the unhealthy-share stop applies from this fleet size"
    )
    breaker_failures: int = Field(default=3, ge=1, description="failed incidents that open it")
    breaker_window_seconds: float = Field(default=900, gt=0)
    lease_seconds: float = Field(default=600, gt=0, description="a lease whose worker died ends")
    recheck_seconds: float = Field(default=10, gt=0, le=600, description="wait between checks")
    max_wait_seconds: float = Field(
        default=1800, gt=0, description="a step that waited this long for a slot escalates"
    )


class GuardrailCheck(Contract):
    """May this action run now? Asked before every state-changing step."""

    idempotency_key: str = Field(description="the step's key; its lease is kept under it")
    workflow_id: str
    service: str
    action: str
    approved_by: str | None = Field(
        default=None, description="a person approved this step: 'ask' guardrails let it pass"
    )


class GuardrailVerdict(Contract):
    """The answer; `allow` comes with a lease the step releases when it ends."""

    verdict: Verdict
    guardrail: Guardrail | None = None
    reason: str
    retry_after_seconds: float = 0
    max_wait_seconds: float = 0
    checked_at: datetime


class ReleaseLease(Contract):
    idempotency_key: str
