"""The healing actions a playbook step may name: their parameters, and the capability each needs.

A playbook's steps are validated against these models when the playbook is written and again when
it runs, so a typo in a parameter is refused field by field ("steps.1.params.factor: Input should
be greater than 1") rather than failing mid-incident. Each action needs one capability, which the
target's providers must declare (see nofx.healing.capabilities); the decision track offers only
playbooks whose every action the target supports.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from models.common import Contract

Capability = Literal[
    "process.restart",
    "disk.cleanup",
    "config.rollback",
    "config.adjust",
    "db.terminate_idle",
    "cache.invalidate",
    "traffic.drain",
    "traffic.weight",
    "probe.http",
    "inventory.limits",
    "db.index",
    "replicas.scale",
]


class ActionParams(BaseModel):
    """Base of every action's parameters: unknown keys are refused."""

    model_config = ConfigDict(extra="forbid")


class RestartParams(ActionParams):
    pass


class ValidateHealthParams(ActionParams):
    consecutive_passes: int = Field(default=3, ge=1, le=100)
    interval_seconds: float = Field(default=1.0, gt=0, le=60)
    timeout_seconds: float = Field(default=60, gt=0, le=3600)
    probe_timeout_seconds: float = Field(default=1.0, gt=0, le=30)


class ValidateRequestsParams(ActionParams):
    """A synthetic check: real requests to the service's work path must come back good."""

    path: str = Field(default="/", pattern=r"^/")
    requests: int = Field(default=20, ge=1, le=1000)
    max_error_ratio: float = Field(default=0.05, ge=0, le=1)
    max_p95_ms: float | None = Field(default=None, gt=0)
    fresh_cache: bool = Field(default=False, description="no response may come from a stale cache")
    attempts: int = Field(default=10, ge=1, le=100, description="rounds before giving up")
    interval_seconds: float = Field(default=1.0, gt=0, le=60)
    request_timeout_seconds: float = Field(default=2.0, gt=0, le=60)
    via_frontend: bool = Field(
        default=False,
        description="send them through the load balancer in front of the service"
        " (metadata.haproxy_frontend), not to the replica itself",
    )


class CleanupDiskParams(ActionParams):
    """Move files matching `patterns` out of the service's data directory into a quarantine."""

    patterns: list[str] = Field(min_length=1, description="glob patterns, e.g. '*.tmp'")
    min_age_seconds: float = Field(default=0, ge=0, description="leave files younger than this")


class RollbackConfigParams(ActionParams):
    to_version: int | None = Field(default=None, ge=1, description="default: the previous one")


class ResizePoolParams(ActionParams):
    """Grow the pool by `factor` (healing), or set it to `size` exactly (an optimisation)."""

    factor: float = Field(default=2.0, gt=1, le=10)
    max_size: int = Field(default=50, ge=1, le=100)
    size: int | None = Field(
        default=None, ge=1, le=100, description="the exact size; overrides factor and max_size"
    )


class SetCacheTtlParams(ActionParams):
    """Set the TTL of the service's cache entries (its `cache_ttl_s` setting)."""

    ttl_s: float = Field(gt=0, le=86_400)
    default_ttl_s: float | None = Field(
        default=None, gt=0, description="the TTL in force when the config does not name one"
    )


class SetLimitParams(ActionParams):
    """Set the limit the inventory records for a metric and, where the service has a setting
    that enforces it, that setting (`config_key` = limit * `config_scale`, rounded)."""

    metric: str = Field(min_length=1)
    to: float = Field(gt=0, description="the new limit, in the metric's unit")
    from_: float | None = Field(
        default=None, alias="from", gt=0, description="the limit the recommendation saw"
    )
    config_key: str | None = Field(default=None, min_length=1, pattern=r"^[a-z_][a-z0-9_]*$")
    config_scale: float = Field(default=1.0, gt=0)

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class TerminateIdleParams(ActionParams):
    """End the service's database sessions stuck idle in a transaction that wrote nothing."""

    idle_seconds: float = Field(default=2.0, ge=0, description="idle in transaction at least")
    scans: int = Field(default=3, ge=1, le=20, description="passes over pg_stat_activity, at most")
    scan_interval_seconds: float = Field(
        default=1.0, ge=0, le=30, description="the longest wait between two passes"
    )
    approaching_seconds: float = Field(
        default=0.25,
        ge=0,
        description="idle in a transaction this long but not yet idle_seconds: on its way to"
        " stuck, so another pass waits for it to cross (none such: the action stops)",
    )


class InvalidateCacheParams(ActionParams):
    namespace: str = Field(
        default="cache", pattern=r"^[A-Za-z0-9_.-]+$", description="key namespace under the prefix"
    )
    warm_requests: int = Field(default=3, ge=0, le=100, description="GETs that rebuild hot keys")
    warm_path: str = Field(default="/", pattern=r"^/")


class DrainTrafficParams(ActionParams):
    pass


class ShiftWeightParams(ActionParams):
    weight: int = Field(default=0, ge=0, le=256)


class AdmitTrafficParams(ActionParams):
    """Put a drained or maintained replica back into rotation (admin state ready)."""


_SQL_NAME = r"[A-Za-z_][A-Za-z0-9_]{0,62}"
SqlName = Annotated[str, StringConstraints(pattern=rf"^{_SQL_NAME}$")]


class CreateIndexParams(ActionParams):
    """Build a btree index without blocking writes (CREATE INDEX CONCURRENTLY).

    Names are plain SQL identifiers (a letter or '_', then letters, digits or '_'; at most 63),
    quoted exactly as given: never pasted into SQL as text.
    """

    table: str = Field(
        pattern=rf"^({_SQL_NAME}\.)?{_SQL_NAME}$", description="table, or schema.table"
    )
    columns: list[SqlName] = Field(
        min_length=1,
        max_length=32,
        description="the indexed columns, in order",
        json_schema_extra={"uniqueItems": True},
    )
    name: SqlName | None = Field(
        default=None, description="the index's name (default: derived from the step's key)"
    )
    method: Literal["btree"] = "btree"
    lock_timeout_ms: int = Field(default=5_000, ge=1, le=600_000, description="wait for locks")
    statement_timeout_s: float = Field(default=1_800, gt=0, le=86_400, description="the build")

    @field_validator("columns")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        twice = sorted({c for c in value if value.count(c) > 1})
        if twice:
            raise ValueError(f"columns listed twice: {', '.join(twice)}")
        return value


class ScaleOutParams(ActionParams):
    """Start spare replicas of the service's group and put them into its HAProxy backend."""

    replicas: int = Field(default=1, ge=1, le=100, description="replicas to add")
    max_replicas: int | None = Field(
        default=None, ge=1, description="refuse to go above this many replicas in rotation"
    )
    health_timeout_seconds: float = Field(
        default=30, gt=0, le=600, description="a new replica must serve within this"
    )


class ScaleInParams(ActionParams):
    """Drain the replicas the platform added last out of the group and stop them."""

    replicas: int = Field(default=1, ge=1, le=100, description="replicas to remove")
    min_replicas: int | None = Field(
        default=None,
        ge=1,
        description="refuse to leave fewer in rotation (default: the inventory's min_replicas)",
    )
    drain_timeout_seconds: float = Field(
        default=30, gt=0, le=3600, description="sessions must end within this once drained"
    )


ActionName = Literal[
    "restart_service",
    "validate_health",
    "validate_requests",
    "cleanup_disk",
    "rollback_config",
    "resize_pool",
    "terminate_idle_connections",
    "invalidate_cache",
    "drain_traffic",
    "shift_weight",
    "admit_traffic",
    "set_cache_ttl",
    "set_limit",
    "create_index",
    "scale_out",
    "scale_in",
]

ACTION_PARAMS: dict[str, type[ActionParams]] = {
    "restart_service": RestartParams,
    "validate_health": ValidateHealthParams,
    "validate_requests": ValidateRequestsParams,
    "cleanup_disk": CleanupDiskParams,
    "rollback_config": RollbackConfigParams,
    "resize_pool": ResizePoolParams,
    "terminate_idle_connections": TerminateIdleParams,
    "invalidate_cache": InvalidateCacheParams,
    "drain_traffic": DrainTrafficParams,
    "shift_weight": ShiftWeightParams,
    "admit_traffic": AdmitTrafficParams,
    "set_cache_ttl": SetCacheTtlParams,
    "set_limit": SetLimitParams,
    "create_index": CreateIndexParams,
    "scale_out": ScaleOutParams,
    "scale_in": ScaleInParams,
}

ACTION_CAPABILITY: dict[str, Capability] = {
    "restart_service": "process.restart",
    "validate_health": "probe.http",
    "validate_requests": "probe.http",
    "cleanup_disk": "disk.cleanup",
    "rollback_config": "config.rollback",
    "resize_pool": "config.adjust",
    "terminate_idle_connections": "db.terminate_idle",
    "invalidate_cache": "cache.invalidate",
    "drain_traffic": "traffic.drain",
    "shift_weight": "traffic.weight",
    "admit_traffic": "traffic.drain",
    "set_cache_ttl": "config.adjust",
    "set_limit": "inventory.limits",
    "create_index": "db.index",
    "scale_out": "replicas.scale",
    "scale_in": "replicas.scale",
}

# Actions that only look: nothing to undo, never counted by the action guardrails.
CHECKS = frozenset({"validate_health", "validate_requests"})


def compensation(action: str, service: str) -> str:
    """The name of the step that undoes `action` on `service`, as a rollback plan lists it:
    a restart is undone by making sure the service runs again, the rest by their own undo."""
    name = "restore_service_running" if action == "restart_service" else f"undo_{action}"
    return f"{name}({service})"


class ActionRequest(Contract):
    """One state-changing step on one service, idempotent under `idempotency_key`."""

    idempotency_key: str
    workflow_id: str
    step: str
    service: str
    action: ActionName
    params: dict[str, Any] = Field(default_factory=dict)
    not_before: datetime = Field(description="when the incident was detected")


class RequestCheck(Contract):
    """The outcome of one `validate_requests` check."""

    service: str
    passed: bool
    rounds: int
    error_ratio: float
    p95_ms: float | None
    stale_reads: int
    detail: str


class ServiceCapabilities(Contract):
    """What can be done to a service, each capability with the provider that offers it."""

    service: str
    known: bool = Field(description="the service is in the inventory")
    capabilities: dict[Capability, str] = Field(default_factory=dict)

    def missing_for(self, actions: list[str]) -> list[Capability]:
        """The capabilities `actions` need that this service lacks."""
        needed = dict.fromkeys(ACTION_CAPABILITY[a] for a in actions)
        return [c for c in needed if c not in self.capabilities]
