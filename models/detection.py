"""Contracts of detection and diagnosis: anomalies with their evidence, the signals derived from
them, the problem pattern they match and the ranked root-cause candidates."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal, get_args

from pydantic import Field

from models.common import Contract

# The problem patterns of Track B (`healing_patterns.problem_signature`); an incident's type is
# the pattern its evidence matched.
Pattern = Literal[
    "service_down",
    "service_hung",
    "error_spike_after_config_change",
    "latency_regression",
    "db_pool_exhaustion",
    "stale_cache",
    "overload",
    "memory_leak",
    "disk_filling",
]

PATTERNS: tuple[str, ...] = get_args(Pattern)

Signal = Literal[
    "probe_refused",  # nothing listens: connection refused
    "probe_timeout",  # something listens but does not answer in time
    "process_down",  # the provider says the process is not running
    "process_frozen",  # the process exists but is stopped (SIGSTOP)
    "error_ratio_up",  # share of 5xx answers above its baseline
    "latency_up",  # p95 latency above its baseline
    "request_rate_up",  # offered load above its baseline
    "pool_saturated",  # database pool fully in use, requests waiting
    "cache_stale",  # the cache serves values older than the source of truth
    "memory_growing",  # resident memory rising steadily
    "disk_growing",  # disk use rising steadily towards its quota
    "config_changed",  # a configuration version was applied shortly before the onset
]


class Anomaly(Contract):
    """One metric of one service behaving unlike its own past, and who said so."""

    service: str
    metric: str
    onset: datetime = Field(description="first sample the ensemble flagged in this episode")
    last_seen: datetime
    score: float = Field(ge=0, le=1)
    direction: Literal["up", "down"] | None = None
    value: float | None = None
    baseline: float | None = None
    detectors: list[str] = Field(default_factory=list, description="which detectors fired")
    reasons: list[str] = Field(default_factory=list, description="why, one sentence each")


class ConfigChange(Contract):
    service: str
    version: int
    applied_at: datetime
    applied_by: str
    reason: str | None = None
    restores_version: int | None = Field(
        default=None, description="an earlier version with the same configuration (a rollback)"
    )


class ServiceEvidence(Contract):
    """Everything diagnosis knows about one service at one tick."""

    service: str
    observed_at: datetime
    signals: list[Signal] = Field(default_factory=list)
    anomalies: list[Anomaly] = Field(default_factory=list)
    recent_changes: list[ConfigChange] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list, description="readable facts, e.g. probe detail")

    @property
    def onset(self) -> datetime:
        """When the trouble began: the earliest anomaly onset, else the observation time."""
        return min((a.onset for a in self.anomalies), default=self.observed_at)


class PatternMatch(Contract):
    pattern: Pattern
    confidence: float = Field(ge=0, le=1)
    matched: list[Signal] = Field(description="the signals the pattern's signature requires")
    supporting: list[Signal] = Field(default_factory=list)
    missing: list[Signal] = Field(default_factory=list, description="supporting signals absent")


class RootCauseCandidate(Contract):
    """One possible origin of an incident, with the reasons for its rank."""

    service: str
    cause: Literal["configuration", "dependency", "self"]
    score: float
    detail: str
    reasons: list[str] = Field(default_factory=list)


class Diagnosis(Contract):
    """What is wrong with a service and where it most likely started."""

    service: str
    pattern: PatternMatch
    alternatives: list[PatternMatch] = Field(default_factory=list)
    root_causes: list[RootCauseCandidate] = Field(default_factory=list)


class ScrapeFleetInput(Contract):
    at: datetime = Field(description="the monitor tick: one sample per series per tick")
    timeout_seconds: float = Field(default=2.0, gt=0, le=60)


class ScrapeFleetResult(Contract):
    skipped: bool = Field(default=False, description="another telemetry source is configured")
    scraped: int = 0
    failed: dict[str, str] = Field(default_factory=dict, description="service -> why")


class FleetDiagnosis(Contract):
    """One tick's diagnoses, plus the evidence of every service that showed any signal."""

    diagnoses: list[Diagnosis] = Field(default_factory=list)
    evidence: dict[str, ServiceEvidence] = Field(default_factory=dict)


class TrainDetectorInput(Contract):
    """Train the learned detector on the labelled history (see nofx.diagnosis.training)."""

    hours: float = Field(default=6.0, gt=0, le=24 * 14, description="history to learn from")
    until: datetime | None = Field(default=None, description="end of the history (default: now)")
    holdout_share: float = Field(
        default=0.3, gt=0, lt=1, description="the latest share of fault episodes held out to judge"
    )
    holdout_from: datetime | None = Field(
        default=None, description="hold out from this moment instead of by share"
    )
    activate: bool | None = Field(
        default=None, description="None: when the held-out figures qualify; True/False: force"
    )
    services: list[str] = Field(
        default_factory=list, description="default: the inventory and every faulted service"
    )
    skip_without_history: bool = Field(
        default=False, description="end without a model (not fail) when nothing is labelled"
    )


class DetectorModelReport(Contract):
    """A trained detector: where it is stored, whether it went live and why, and its figures."""

    model_id: str | None = Field(default=None, description="None: the run was skipped")
    version: str | None = None
    active: bool = False
    verdict: str
    holdout: dict[str, Any] = Field(default_factory=dict)
    training: dict[str, Any] = Field(default_factory=dict)
