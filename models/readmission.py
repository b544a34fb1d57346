"""Re-admission of replicas that a traffic mitigation took out of rotation: its policy and report.

A `shift_weight` or `drain_traffic` step keeps a replica out of its load balancer until something
puts it back; `TrafficReadmissionWorkflow` is that something, on the maintenance track.
"""

from __future__ import annotations

from pydantic import Field

from models.common import Contract


class TrafficReadmissionInput(Contract):
    """When a mitigated replica counts as well again, seen from outside on its own endpoint."""

    min_age_seconds: float = Field(
        default=60, ge=0, description="a mitigation younger than this is left in force"
    )
    max_p95_ms: float = Field(default=75, gt=0, description="p95 of each round's GET / under this")
    checks: int = Field(default=3, ge=1, le=20, description="rounds that must pass in a row")
    check_interval_seconds: float = Field(default=1.0, ge=0, le=60)
    requests: int = Field(default=10, ge=1, le=200, description="real GET / per round")
    request_timeout_seconds: float = Field(default=2.0, gt=0, le=30)


class ReadmissionVerdict(Contract):
    """What became of one mitigation still in force: put back, or held and why."""

    idempotency_key: str = Field(description="the mitigation's step in action_log")
    service: str
    action: str
    server: str | None = Field(default=None, description="backend/server in HAProxy")
    readmitted: bool
    reason: str


class TrafficReadmissionReport(Contract):
    """One pass over the traffic mitigations still in force."""

    readmitted: list[ReadmissionVerdict] = Field(default_factory=list)
    held: list[ReadmissionVerdict] = Field(default_factory=list)
