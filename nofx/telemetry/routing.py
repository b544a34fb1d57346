"""Per-service metric sources, as the inventory names them.

The inventory file gives each service a metric source (`metrics: {scrape: URL}` or `metrics:
{prometheus: {url, service_label, service_value}}`, stored as `services.metadata.metrics`). A
service whose source is a Prometheus server is read from that server, with its own label and
value; every other service from the platform's configured source (NOFX_TELEMETRY). The routes
are re-read from the inventory at most every `refresh` seconds, so an `apply` takes effect
without a worker restart.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

import pandas as pd
from sqlalchemy import text
from sqlalchemy.engine import Engine

from nofx.settings import Settings
from nofx.telemetry.sources import MetricSource, PrometheusSource, Sample, make_source

REFRESH_SECONDS = 30.0


class InventoryRoutedSource:
    """A `MetricSource` that sends each service's queries where its inventory entry says."""

    def __init__(
        self,
        engine: Engine,
        default: MetricSource,
        *,
        refresh: float = REFRESH_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._engine = engine
        self.default = default
        self._refresh = refresh
        self._clock = clock
        self._loaded_at: float | None = None
        self._routes: dict[str, tuple[MetricSource, str]] = {}
        self._servers: dict[tuple[str, str], PrometheusSource] = {}

    def _load(self) -> None:
        with self._engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT name, metadata->'metrics'->'prometheus' AS prom FROM services"
                    " WHERE metadata->'metrics' ? 'prometheus'"
                )
            ).all()
        routes: dict[str, tuple[MetricSource, str]] = {}
        for name, prom in rows:
            if not isinstance(prom, Mapping) or not prom.get("url"):
                continue
            label = str(prom.get("service_label") or "service")
            key = (str(prom["url"]), label)
            server = self._servers.get(key)
            if server is None:
                server = self._servers[key] = PrometheusSource(key[0], service_label=label)
            routes[name] = (server, str(prom.get("service_value") or name))
        self._routes = routes
        self._loaded_at = self._clock()

    def route(self, service: str) -> tuple[MetricSource, str]:
        """The source that holds `service`'s metrics and the name it has there."""
        if self._loaded_at is None or self._clock() - self._loaded_at >= self._refresh:
            self._load()
        return self._routes.get(service, (self.default, service))

    def query_range(
        self,
        service: str,
        metric: str,
        start: datetime,
        end: datetime,
        step: timedelta,
        labels: Mapping[str, str] | None = None,
    ) -> pd.Series:
        source, name = self.route(service)
        return source.query_range(name, metric, start, end, step, labels)

    def query_range_by(
        self,
        service: str,
        metric: str,
        by: str,
        start: datetime,
        end: datetime,
        step: timedelta,
        labels: Mapping[str, str] | None = None,
    ) -> pd.DataFrame:
        source, name = self.route(service)
        return source.query_range_by(name, metric, by, start, end, step, labels)

    def latest(
        self,
        service: str,
        metric: str,
        labels: Mapping[str, str] | None = None,
        at: datetime | None = None,
    ) -> Sample | None:
        source, name = self.route(service)
        return source.latest(name, metric, labels, at)

    def close(self) -> None:
        for server in self._servers.values():
            server.close()
        closer: Any = getattr(self.default, "close", None)
        if callable(closer):
            closer()


def metric_source(engine: Engine, settings: Settings) -> MetricSource:
    """The configured telemetry backend (NOFX_TELEMETRY), with the services whose inventory
    entry names a Prometheus server of their own read from it (a CSV replay is read as is)."""
    if settings.telemetry == "csv":
        return make_source("csv", path=settings.telemetry_csv_path)
    if settings.telemetry == "prometheus":
        default = make_source(
            "prometheus",
            base_url=settings.prometheus_url,
            service_label=settings.prometheus_service_label,
        )
    else:
        default = make_source("scrape", engine=engine)
    return InventoryRoutedSource(engine, default)
