"""Telemetry: what the platform sees of the fleet, behind one interface.

``MetricSource`` (``query_range``, ``query_range_by``, ``latest``) is all detectors use;
``make_source`` picks the backend by configuration: ``scrape`` (the embedded default, samples the
platform scrapes itself into ``metric_samples``), ``prometheus`` (PromQL over a Prometheus
server's HTTP API) or ``csv`` (recorded series replayed for benchmarks). Every source returns
series cleaned the same way (``clean_series``), and ``rate`` / ``window_quantile`` derive counter
rates and latency quantiles from them.
"""

from nofx.telemetry.cleaning import DEFAULT_MAX_GAP_STEPS, clean_series, empty_series
from nofx.telemetry.derived import (
    histogram_quantile,
    increase,
    latency_quantile,
    rate,
    window_quantile,
)
from nofx.telemetry.scrape import (
    ScrapeResult,
    ScrapeTarget,
    inventory_targets,
    parse_exposition,
    prune_samples,
    scrape_targets,
)
from nofx.telemetry.sources import (
    SOURCE_KINDS,
    CsvReplaySource,
    MetricSource,
    MetricSourceError,
    PrometheusSource,
    Sample,
    ScrapeSource,
    SeriesNotFoundError,
    make_source,
)

__all__ = [
    "DEFAULT_MAX_GAP_STEPS",
    "SOURCE_KINDS",
    "CsvReplaySource",
    "MetricSource",
    "MetricSourceError",
    "PrometheusSource",
    "Sample",
    "ScrapeResult",
    "ScrapeSource",
    "ScrapeTarget",
    "SeriesNotFoundError",
    "clean_series",
    "empty_series",
    "histogram_quantile",
    "increase",
    "inventory_targets",
    "latency_quantile",
    "make_source",
    "parse_exposition",
    "prune_samples",
    "rate",
    "scrape_targets",
    "window_quantile",
]
