"""Chaos experiments: a real fault, the platform's response, and whether the steady state came back.

An experiment follows the usual chaos-engineering loop: check the steady state (the service
answers its health check and real requests, no incident is open on it, the healing guardrails
would let the platform act), inject a fault for real, watch the incident the platform opens,
verify the steady state is back within the recovery-time objective, remove the fault if it is
still there, and record what happened. A *rollback drill* aborts the incident after its first
state-changing action, so the saga's compensations run and are checked against the prior state.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal, Self

from pydantic import Field, model_validator

from models.common import Contract

ChaosOutcome = Literal[
    "healed",  # detected, healed automatically, steady state back within the RTO
    "healed_late",  # healed automatically, but the steady state came back after the RTO
    "escalated",  # detected; handed to a person (no automatic playbook, or a guardrail asked)
    "failed",  # detected; healing failed and rolled back
    "rolled_back",  # rollback drill: aborted after the first action, compensations ran
    "undetected",  # no incident within the detection timeout
    "not_steady",  # the steady state did not hold before injecting: nothing was injected
    "error",  # the experiment itself could not run (e.g. the fault was refused)
]


class ChaosFault(Contract):
    """One fault of a suite: a fault kind of the staging fleet and its parameters."""

    kind: str = Field(description="kill, crash, hang, bad_config, connection_leak, ...")
    params: dict[str, Any] = Field(default_factory=dict)
    rollback_drill: bool = Field(
        default=False, description="abort the incident after its first action (runs compensations)"
    )


class ChaosExperimentInput(Contract):
    experiment_id: str
    suite: str
    service: str
    fault: ChaosFault
    rto_seconds: float = Field(default=300, gt=0, description="recovery-time objective")
    detect_timeout_seconds: float = Field(default=180, gt=0)
    steady_timeout_seconds: float = Field(
        default=300, gt=0, description="how long to wait for the steady state before injecting"
    )


class SteadyState(Contract):
    """The steady-state hypothesis checked before injecting and after healing."""

    service: str
    steady: bool
    problems: list[str] = Field(default_factory=list)
    checked_at: datetime


class Injected(Contract):
    injection_id: str
    injected_at: datetime
    detail: dict[str, Any] = Field(default_factory=dict)


class WatchIncident(Contract):
    service: str
    since: datetime
    timeout_seconds: float = Field(gt=0)
    until: Literal["opened", "acted", "ended"] = Field(
        description="return once an incident is opened, has acted, or has ended"
    )
    incident_id: str | None = Field(default=None, description="follow this incident once known")


class IncidentSeen(Contract):
    """An incident of the watched service as the platform recorded it."""

    incident_id: str
    workflow_id: str
    incident_type: str
    status: str
    detected_at: datetime
    resolved_at: datetime | None = None
    actions: list[dict[str, Any]] = Field(default_factory=list)
    failure: str | None = None


class RollbackCheck(Contract):
    """One compensation that ran, and whether the state it restored equals the prior state."""

    action: str
    performed: bool
    restored: bool
    detail: str


class ChaosResult(Contract):
    experiment_id: str
    suite: str
    service: str
    fault: ChaosFault
    expected_pattern: str
    outcome: ChaosOutcome
    injected_at: datetime | None = None
    incident_id: str | None = None
    incident_workflow_id: str | None = None
    incident_type: str | None = None
    incident_status: str | None = None
    pattern_correct: bool | None = None
    detected: bool = False
    auto_resolved: bool = False
    mttd_seconds: float | None = Field(default=None, description="injection -> detected")
    mttr_seconds: float | None = Field(default=None, description="injection -> steady state back")
    within_rto: bool | None = None
    actions: list[str] = Field(default_factory=list)
    rollbacks: list[RollbackCheck] = Field(default_factory=list)
    removed_by_experiment: list[str] = Field(
        default_factory=list, description="what of the fault was still there at the end"
    )
    note: str = ""


class ChaosSuiteInput(Contract):
    suite: str
    services: list[str] = Field(min_length=1, description="faults are spread over these")
    faults: list[ChaosFault] = Field(min_length=1)
    rto_seconds: float = Field(default=300, gt=0)
    detect_timeout_seconds: float = Field(default=180, gt=0)
    parallel: int = Field(default=1, ge=1, description="experiments at once, on distinct services")

    @model_validator(mode="after")
    def _enough_services(self) -> Self:
        if self.parallel > len(self.services):
            raise ValueError(
                f"parallel {self.parallel} needs as many services; got {len(self.services)}"
            )
        return self


class ChaosSuiteProgress(Contract):
    suite: str
    total: int
    results: list[ChaosResult] = Field(default_factory=list)
    running: list[str] = Field(default_factory=list, description="experiments under way")
