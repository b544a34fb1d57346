"""The inventory file an SRE team writes: its services, how to watch them and how to act on them.

YAML (or JSON) with one list, ``services``; each entry is validated field by field (unknown
keys are refused, so a typo is an error, not a silently ignored setting). `nofx services apply
-f FILE` turns it into rows of the `services` table: the providers' settings become the row's
`metadata` keys that the actions' capabilities read (`nofx.healing.actions.capabilities`).

    services:
      - name: checkout
        endpoint: http://127.0.0.1:8101        # GET {endpoint}/health is the probe
        tier: tier-1
        owner: payments-sre
        group: checkout                        # replica group (with checkout-2, ...)
        dependencies: [orders]
        slo: {availability: 0.999, recovery_time_objective_s: 120, latency_p95_ms: 250}
        metrics: {scrape: http://127.0.0.1:8101/metrics}
        limits: {process_resident_memory_bytes: 536870912, pilot_db_pool_in_use: 5}
        providers:
          process: {kind: supervisor, socket: /srv/checkout/supervisor.sock, program: checkout}
          traffic: {kind: haproxy, socket: /srv/lb/admin.sock, backend: checkout, server: c1}
          database: {kind: postgresql, application_name: "checkout"}
          cache: {kind: redis, url: "redis://127.0.0.1:6379/0", prefix: "checkout:"}
          files: {kind: files, data_dir: /srv/checkout/data}

`docs/inventory.example.yaml` is the documented example.
"""

from __future__ import annotations

import re
from datetime import time
from typing import Annotated, Any, Literal

from pydantic import (
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from models.decisions import Tier

SERVICE_NAME = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$")
ServiceName = Annotated[str, StringConstraints(pattern=SERVICE_NAME.pattern)]
NonEmpty = Annotated[str, StringConstraints(min_length=1, strip_whitespace=True)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Resources(_Strict):
    """What one replica of the service is given: what the cost report prices."""

    vcpu: float | None = Field(default=None, gt=0, description="CPU cores per replica")
    memory_bytes: float | None = Field(default=None, gt=0, description="memory per replica")
    memory_metric: NonEmpty | None = Field(
        default=None,
        description="the limited metric (in bytes) that measures this memory, whose rightsizing"
        " recommendations the cost report prices (default: the first limit whose name has"
        " 'mem' or 'rss' and ends in '_bytes')",
    )


class PoolTuning(_Strict):
    """How to size the service's connection pool from its telemetry (Erlang C)."""

    in_use: NonEmpty = Field(description="gauge: connections handed out (its limit: the size)")
    requests: NonEmpty = Field(description="counter: requests that each hold one connection")
    max_wait_ms: float = Field(default=50.0, gt=0, description="the longest wait tolerated")
    quantile: float = Field(
        default=0.95, gt=0, lt=1, description="share of requests that wait less than that"
    )
    hold_seconds: NonEmpty | None = Field(
        default=None,
        description="histogram: how long each use held a connection (its _sum and _count give"
        " the holding time and the arrivals exactly; else Little's law from the in-use gauge)",
    )


class CacheTuning(_Strict):
    """How to choose the service's cache TTL from its telemetry (hit ratio and staleness)."""

    hits: NonEmpty = Field(description="counter: reads served from the cache")
    misses: NonEmpty = Field(description="counter: reads loaded from the source")
    stale: NonEmpty = Field(description="counter: hits that served an outdated answer")
    ttl_s: float = Field(gt=0, description="the TTL the cache has now")
    stale_budget: float = Field(
        default=0.01, gt=0, lt=1, description="share of all answers allowed to be stale"
    )
    max_ttl_s: float = Field(default=86_400.0, gt=0, description="the longest TTL to recommend")


_SQL_NAME = r"[A-Za-z_][A-Za-z0-9_]{0,62}"
TableName = Annotated[str, StringConstraints(pattern=rf"^({_SQL_NAME}\.)?{_SQL_NAME}$")]


class IndexTuning(_Strict):
    """Which statements of the service's database to find indexes for (pg_stat_statements).

    The service's database is the one its `providers.database` sessions use; its statements are
    those touching `tables` (a database may serve several services).
    """

    tables: list[TableName] = Field(
        min_length=1, description="tables (name or schema.name): the service's statements"
    )
    min_calls: int = Field(default=50, ge=1, description="statements called fewer times: skipped")
    min_mean_ms: float = Field(default=1.0, ge=0, description="statements faster: skipped")
    min_improvement: float = Field(
        default=2.0, gt=1, description="the plan's cost (or measured time) falls this many times"
    )
    max_statements: int = Field(default=20, ge=1, le=500, description="heaviest statements read")
    check: Literal["auto", "hypopg", "measured"] = Field(
        default="auto",
        description="hypopg: hypothetical indexes (EXPLAIN costs); measured: EXPLAIN ANALYZE with"
        " the index built in a transaction rolled back; auto: hypopg where it is installed",
    )
    measure_max_bytes: int = Field(
        default=1 << 30,
        ge=0,
        description="a measured check builds the index for real (writes wait meanwhile): only on"
        " tables up to this size",
    )
    probe_path: str | None = Field(
        default=None,
        pattern=r"^/",
        description="a request path that runs these statements: applying an index measures it",
    )
    query_seconds: str | None = Field(
        default=None,
        min_length=1,
        description="a histogram of the statements' time (its _sum and _count give the mean"
        " query time before and after an index is applied)",
    )


class LimitSetting(_Strict):
    """The service's setting that enforces a limit: `key` = limit * `scale`, rounded (for
    example the pilot's `disk_quota_mb` is pilot_disk_used_bytes' limit / 2**20)."""

    key: str = Field(pattern=r"^[a-z_][a-z0-9_]*$", description="the configuration key")
    scale: float = Field(default=1.0, gt=0, description="setting = limit * scale")


class ScalingTuning(_Strict):
    """How to plan the replica count of the service's group from a forecast of its load
    (nofx.optimization.scaling): add replicas `lead_minutes` before a forecast rise, remove them
    once the forecast has stayed low for `cooldown_minutes`, at most `max_changes_per_day`."""

    load_metric: NonEmpty = Field(
        description="the group's load: requests/s, or a counter (name ending _total) whose rate is"
    )
    capacity_per_replica: float = Field(
        gt=0, description="requests/s one replica serves within the SLO (measured in staging)"
    )
    target_utilisation: float = Field(
        default=0.7, gt=0, le=1, description="share of that capacity a replica is planned to use"
    )
    quantile: Literal[80, 95] = Field(
        default=95, description="the forecast band whose upper edge is planned for"
    )
    min_replicas: int = Field(default=1, ge=1, le=1000)
    max_replicas: int = Field(default=10, ge=1, le=1000)
    lead_minutes: float = Field(default=15, ge=0, le=24 * 60)
    cooldown_minutes: float = Field(default=60, ge=0, le=24 * 60)
    max_changes_per_day: int = Field(default=6, ge=1, le=1000, description="disruption budget")
    horizon_hours: float = Field(default=24, gt=0, le=14 * 24, description="how far to plan")

    @model_validator(mode="after")
    def _ordered(self) -> ScalingTuning:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"min_replicas {self.min_replicas} is above max_replicas {self.max_replicas}"
            )
        return self


class Optimization(_Strict):
    pool: PoolTuning | None = None
    scaling: ScalingTuning | None = None
    cache: CacheTuning | None = None
    limit_settings: dict[NonEmpty, LimitSetting] = Field(
        default_factory=dict,
        description="by metric of `limits`: the setting a rightsizing changes with the limit",
    )
    index: IndexTuning | None = None


class SloTargets(_Strict):
    availability: float | None = Field(default=None, gt=0, lt=1, description="e.g. 0.999")
    recovery_time_objective_s: float | None = Field(default=None, gt=0)
    latency_p95_ms: float | None = Field(default=None, gt=0)
    error_ratio: float | None = Field(default=None, ge=0, le=1)


class PrometheusSeries(_Strict):
    url: AnyHttpUrl = Field(description="the Prometheus server, e.g. http://prometheus:9090")
    service_label: NonEmpty = Field(default="service", description="the label naming the service")
    service_value: NonEmpty | None = Field(
        default=None, description="the label's value for this service (default: its name)"
    )


class MetricSource(_Strict):
    """Where the service's metrics come from: a /metrics page scraped into `metric_samples`, or
    a Prometheus server queried with PromQL. Exactly one."""

    scrape: AnyHttpUrl | None = Field(default=None, description="the /metrics URL to scrape")
    prometheus: PrometheusSeries | None = None

    @model_validator(mode="after")
    def _one(self) -> MetricSource:
        if (self.scrape is None) == (self.prometheus is None):
            raise ValueError("give exactly one of scrape or prometheus")
        return self


class SupervisorProcess(_Strict):
    kind: Literal["supervisor"]
    socket: NonEmpty = Field(description="supervisord's Unix socket (supervisorctl's serverurl)")
    program: NonEmpty | None = Field(default=None, description="program name (default: service)")


class HAProxyTraffic(_Strict):
    kind: Literal["haproxy"]
    socket: NonEmpty = Field(description="HAProxy's admin (runtime API) Unix socket")
    backend: NonEmpty
    server: NonEmpty
    frontend: AnyHttpUrl | None = Field(default=None, description="the group's public URL")


class ReplicaSlot(_Strict):
    """A spare replica: a supervisord program not started by itself, and its server in the
    group's HAProxy backend (declared disabled)."""

    program: NonEmpty = Field(description="the supervisord program (autostart=false)")
    server: NonEmpty = Field(description="its server in the backend of providers.traffic")


class ReplicaSlots(_Strict):
    """Spare replicas the group can scale out into, on the service's own supervisord (its
    providers.process) and HAProxy backend (its providers.traffic)."""

    kind: Literal["supervisor-haproxy"]
    slots: list[ReplicaSlot] = Field(min_length=1, description="used in this order")
    min_replicas: int = Field(
        default=1, ge=1, description="a scale-in never leaves fewer replicas in rotation"
    )
    weight: int | None = Field(
        default=None, ge=1, le=256, description="a slot's HAProxy weight (default: configured)"
    )

    @model_validator(mode="after")
    def _distinct(self) -> ReplicaSlots:
        for what in ("program", "server"):
            names = [getattr(slot, what) for slot in self.slots]
            if len(set(names)) != len(names):
                raise ValueError(f"slots repeat a {what}: {names}")
        return self


class PostgresSessions(_Strict):
    kind: Literal["postgresql"]
    application_name: NonEmpty = Field(
        description="the application_name of the service's connections (pg_stat_activity)"
    )


class RedisCache(_Strict):
    kind: Literal["redis"]
    url: NonEmpty = Field(description="redis://host:port/db or unix://path?db=N")
    prefix: NonEmpty = Field(description="the key prefix the service's cache entries share")

    @field_validator("url")
    @classmethod
    def _scheme(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value


class Files(_Strict):
    kind: Literal["files"]
    data_dir: NonEmpty = Field(description="the directory a disk cleanup may quarantine files of")


class FileConfig(_Strict):
    """Configuration delivered as a file the service reads plus a reload (see
    nofx.providers.config for the file's format and the proof of loading)."""

    kind: Literal["file"]
    path: NonEmpty = Field(description="the JSON file the service reads its configuration from")
    reload: Literal["signal", "http", "watch"] = Field(
        default="signal",
        description="signal: the process provider's process gets `signal`; http: POST"
        " reload_url; watch: the service notices the file itself",
    )
    signal: Literal["HUP", "USR1", "USR2"] = "HUP"
    reload_url: AnyHttpUrl | None = None
    version_url: AnyHttpUrl | None = Field(
        default=None, description="GET returns JSON whose `version_field` is the loaded version"
    )
    version_field: NonEmpty = "config_version"
    timeout_s: float = Field(default=10.0, gt=0, le=300, description="wait for the proof")

    @model_validator(mode="after")
    def _reload_target(self) -> FileConfig:
        if self.reload == "http" and self.reload_url is None:
            raise ValueError("reload 'http' needs reload_url")
        return self


class Providers(_Strict):
    process: SupervisorProcess | None = None
    traffic: HAProxyTraffic | None = None
    database: PostgresSessions | None = None
    cache: RedisCache | None = None
    files: Files | None = None
    config: FileConfig | None = None
    replicas: ReplicaSlots | None = None

    @model_validator(mode="after")
    def _replicas_reachable(self) -> Providers:
        if self.replicas is not None and (self.process is None or self.traffic is None):
            raise ValueError("providers.replicas needs providers.process and providers.traffic")
        return self


Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class Blackout(_Strict):
    """A daily span (UTC) in which no maintenance of the service may run, e.g. a business peak.
    An end before the start crosses midnight."""

    start: time
    end: time
    days: list[Weekday] = Field(default_factory=lambda: list(WEEKDAYS))
    reason: NonEmpty

    @model_validator(mode="after")
    def _not_empty(self) -> Blackout:
        if self.start == self.end:
            raise ValueError("start and end are the same time: the blackout would be empty")
        return self


class MaintenancePolicy(_Strict):
    """How the service's predictive maintenance is planned (nofx.maintenance.jobs)."""

    duration_minutes: float = Field(default=10, gt=0, le=24 * 60, description="a job's length")
    lead_minutes: float = Field(
        default=0, ge=0, le=7 * 24 * 60, description="no job starts sooner than this from now"
    )
    spare: float = Field(
        default=1 / 3,
        ge=0,
        lt=1,
        description="share of the time left before the predicted failure a job leaves unused"
        " (a prediction's error grows with how far ahead it looks)",
    )
    load_metric: NonEmpty | None = Field(
        default=None,
        description="the metric whose forecast is the service's load (requests, say); a job"
        " goes where it is lowest. Unset: the earliest allowed start",
    )
    disruption_budget_per_day: int = Field(
        default=2, ge=1, le=1000, description="maintenance jobs a UTC day in the replica group"
    )
    blackouts: list[Blackout] = Field(default_factory=list)


class ServiceEntry(_Strict):
    name: ServiceName = Field(description="lower-case letters, digits, '.', '_' and '-'")
    endpoint: AnyHttpUrl = Field(description="base URL; GET {endpoint}/health is the probe")
    tier: Tier = "tier-2"
    owner: NonEmpty | None = None
    dependencies: list[ServiceName] = Field(default_factory=list)
    capacity: int = Field(default=1, ge=1, description="replicas the service normally runs")
    group: ServiceName | None = Field(
        default=None,
        description="replica group: the services of one group serve the same traffic, and"
        " guardrails keep enough of them serving",
    )
    slo: SloTargets = Field(default_factory=SloTargets)
    metrics: MetricSource | None = Field(
        default=None, description="default: scrape {endpoint}/metrics"
    )
    limits: dict[NonEmpty, float] = Field(
        default_factory=dict,
        description="per metric (the name the metric source has: a scraped metric or a"
        " Prometheus series), the value at which it is exhausted (memory, disk, pool): what a"
        " forecast's time to exhaustion is measured against",
    )
    providers: Providers = Field(default_factory=Providers)
    resources: Resources | None = Field(
        default=None, description="per replica: vCPU and memory, for the cost report"
    )
    optimization: Optimization | None = Field(
        default=None, description="what the recommendations tune beyond the limits' sizes"
    )
    maintenance: MaintenancePolicy | None = Field(
        default=None, description="default: 10-minute jobs, 2 a day per group, no blackouts"
    )
    annotations: dict[NonEmpty, str] = Field(
        default_factory=dict,
        description="free-form notes for tools (as Kubernetes annotations); the platform's"
        " decisions never read them",
    )

    @field_validator("limits")
    @classmethod
    def _positive(cls, value: dict[str, float]) -> dict[str, float]:
        bad = sorted(k for k, v in value.items() if not v > 0)
        if bad:
            raise ValueError(f"must be positive: {', '.join(bad)}")
        return value

    @model_validator(mode="after")
    def _not_itself(self) -> ServiceEntry:
        if self.name in self.dependencies:
            raise ValueError(f"{self.name} lists itself among its dependencies")
        config = self.providers.config
        if config is not None and config.reload == "signal" and self.providers.process is None:
            raise ValueError("providers.config reload 'signal' needs providers.process")
        pool = self.optimization.pool if self.optimization is not None else None
        if pool is not None and pool.in_use not in self.limits:
            raise ValueError(f"optimization.pool.in_use {pool.in_use!r} needs its size in limits")
        return self


class InventoryFile(_Strict):
    services: list[ServiceEntry] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> InventoryFile:
        names = [s.name for s in self.services]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"services listed twice: {', '.join(twice)}")
        return self


ChangeKind = Literal["add", "change", "unchanged", "remove"]


class ServiceChange(_Strict):
    """One line of an apply's diff: a service added, changed (with the fields) or unchanged."""

    service: str
    change: ChangeKind
    fields: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="per changed field, its value before and after"
    )


class ApplyReport(_Strict):
    dry_run: bool
    changes: list[ServiceChange]

    @property
    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for c in self.changes:
            out[c.change] = out.get(c.change, 0) + 1
        return out
