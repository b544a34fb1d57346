"""Where metric series come from: one interface, three implementations chosen by configuration.

Detectors, root-cause ranking and forecasts ask a ``MetricSource`` for "metric M of service S
from t0 to t1 every step" and get back a cleaned ``pandas.Series``; they never know whether it
came from

* ``scrape`` (``ScrapeSource``, the embedded default): the platform's own table
  ``metric_samples``, filled by ``nofx.telemetry.scrape.scrape_targets`` from each service's
  ``/metrics``, so a laptop needs nothing but PostgreSQL;
* ``prometheus`` (``PrometheusSource``): a Prometheus server's HTTP API (PromQL), what a
  production deployment already runs;
* ``csv`` (``CsvReplaySource``): recorded series (the NAB corpus, simulations) replayed for
  benchmarks.

Semantics every source keeps, so that a detector tuned on one behaves the same on another:

* ``labels`` are equality matchers; series of the metric that match all of them are **summed**
  per timestamp, like PromQL ``sum(metric{...})``. ``query_range_by`` sums per value of one
  label instead (``sum by (le) (...)``), which histograms need.
* The result lies on the grid ``start + k * step`` (``k >= 0``, up to ``end``); a point holds the
  latest value at or before it, short gaps are bridged and long gaps left out
  (``nofx.telemetry.cleaning``). Naive datetimes are UTC.
* No data is an empty series, not an error; an unreachable or failing backend raises
  ``MetricSourceError``.
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self, runtime_checkable

import httpx
import numpy as np
import pandas as pd
from sqlalchemy import text
from sqlalchemy.engine import Engine

from nofx.telemetry.cleaning import (
    DEFAULT_MAX_GAP_STEPS,
    clean_series,
    empty_series,
    step_nanoseconds,
    to_utc_timestamp,
)

__all__ = [
    "DEFAULT_LOOKBACK",
    "SOURCE_KINDS",
    "CsvReplaySource",
    "MetricSource",
    "MetricSourceError",
    "PrometheusSource",
    "Sample",
    "ScrapeSource",
    "SeriesNotFoundError",
    "make_source",
]

DEFAULT_LOOKBACK = timedelta(minutes=5)
"""How old the newest sample may be for ``latest`` to report it (Prometheus' default)."""

SOURCE_KINDS = ("scrape", "prometheus", "csv")

_METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


class MetricSourceError(RuntimeError):
    """The metric backend could not answer (unreachable, refused the query, bad response)."""


class SeriesNotFoundError(LookupError):
    """A replayed data set has no such series; the message lists what it has."""


@dataclass(frozen=True)
class Sample:
    """One observed value of a series and when it was observed (UTC)."""

    ts: datetime
    value: float


@runtime_checkable
class MetricSource(Protocol):
    """Read access to the fleet's metrics, whatever stores them."""

    def query_range(
        self,
        service: str,
        metric: str,
        start: datetime,
        end: datetime,
        step: timedelta,
        labels: Mapping[str, str] | None = None,
    ) -> pd.Series:
        """``sum(metric{service, labels})`` on the grid ``start + k * step`` up to ``end``.

        Returns:
            A cleaned float series with a UTC DatetimeIndex (empty when there is no data).
        """
        ...

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
        """``sum by (by) (metric{service, labels})``: one cleaned column per value of ``by``.

        Series without the label fall in the column ``""``; a column may hold NaN where only
        that series has a long gap.
        """
        ...

    def latest(
        self,
        service: str,
        metric: str,
        labels: Mapping[str, str] | None = None,
        at: datetime | None = None,
    ) -> Sample | None:
        """The summed value at ``at`` (default: now), or None when nothing recent exists."""
        ...


# --------------------------------------------------------------------------------------------
# Shared checks


def _check_selector(metric: str, labels: Mapping[str, str] | None) -> dict[str, str]:
    """Validate a metric name and label matchers the same way for every source."""
    if not _METRIC_NAME.match(metric):
        raise ValueError(f"not a metric name: {metric!r}")
    matchers = dict(labels or {})
    for name, value in matchers.items():
        if not _LABEL_NAME.match(name):
            raise ValueError(f"not a label name: {name!r}")
        if not isinstance(value, str):
            raise ValueError(f"label {name} must be a string, got {value!r}")
    return matchers


def _check_window(start: datetime, end: datetime, step: timedelta) -> tuple[pd.Timestamp, ...]:
    first, last = to_utc_timestamp(start), to_utc_timestamp(end)
    step_nanoseconds(step)  # raises on a non-positive step
    if last < first:
        raise ValueError(f"end {last} is before start {first}")
    return first, last


def _pivot_clean(
    frame: pd.DataFrame,
    step: timedelta,
    start: pd.Timestamp,
    end: pd.Timestamp,
    max_gap_steps: int,
) -> pd.DataFrame:
    """Rows (ts, group, value) to one cleaned column per group on a shared grid."""
    columns: dict[str, pd.Series] = {}
    for group, rows in frame.groupby("group", sort=True):
        raw = pd.Series(
            rows["value"].to_numpy(dtype=float), index=pd.to_datetime(rows["ts"], utc=True)
        )
        columns[str(group)] = clean_series(
            raw, step, start=start, end=end, max_gap_steps=max_gap_steps
        )
    if not columns:
        return pd.DataFrame(index=empty_series().index, dtype="float64")
    return pd.DataFrame(columns).sort_index()


# --------------------------------------------------------------------------------------------
# scrape: the platform's own metric_samples table


class ScrapeSource:
    """Series from ``metric_samples``, the table ``scrape_targets`` fills (the default source).

    Args:
        engine: the process's SQLAlchemy engine on the platform database.
        lookback: the oldest a sample may be for ``latest`` to report it.
        max_gap_steps: grid points in a row bridged from the last sample (see cleaning).
    """

    def __init__(
        self,
        engine: Engine,
        *,
        lookback: timedelta = DEFAULT_LOOKBACK,
        max_gap_steps: int = DEFAULT_MAX_GAP_STEPS,
    ) -> None:
        self.engine = engine
        self.lookback = lookback
        self.max_gap_steps = max_gap_steps

    def _fetch_from(self, start: pd.Timestamp, step: timedelta) -> datetime:
        # The first grid point takes the latest sample of (start - step, start], and a short gap
        # right before it is bridged from up to max_gap_steps steps earlier: read that far back.
        earliest: datetime = (start - pd.Timedelta(step) * (self.max_gap_steps + 1)).to_pydatetime()
        return earliest

    def query_range(
        self,
        service: str,
        metric: str,
        start: datetime,
        end: datetime,
        step: timedelta,
        labels: Mapping[str, str] | None = None,
    ) -> pd.Series:
        """See ``MetricSource.query_range``."""
        matchers = _check_selector(metric, labels)
        first, last = _check_window(start, end, step)
        with self.engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT ts, sum(value) AS value FROM metric_samples"
                    " WHERE service = :service AND metric = :metric"
                    " AND ts > :lo AND ts <= :hi AND labels @> CAST(:labels AS jsonb)"
                    " GROUP BY ts ORDER BY ts"
                ),
                {
                    "service": service,
                    "metric": metric,
                    "lo": self._fetch_from(first, step),
                    "hi": last.to_pydatetime(),
                    "labels": json.dumps(matchers),
                },
            ).all()
        if not rows:
            return empty_series(metric)
        raw = pd.Series(
            [row.value for row in rows],
            # utc=True: the server's TimeZone setting may hand back mixed offsets (DST).
            index=pd.to_datetime([row.ts for row in rows], utc=True),
            name=metric,
            dtype="float64",
        )
        return clean_series(raw, step, start=first, end=last, max_gap_steps=self.max_gap_steps)

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
        """See ``MetricSource.query_range_by``."""
        matchers = _check_selector(metric, labels)
        _check_selector(metric, {by: ""})
        first, last = _check_window(start, end, step)
        with self.engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT ts, coalesce(labels ->> :by, '') AS grp, sum(value) AS value"
                    " FROM metric_samples"
                    " WHERE service = :service AND metric = :metric"
                    " AND ts > :lo AND ts <= :hi AND labels @> CAST(:labels AS jsonb)"
                    " GROUP BY ts, grp ORDER BY ts"
                ),
                {
                    "by": by,
                    "service": service,
                    "metric": metric,
                    "lo": self._fetch_from(first, step),
                    "hi": last.to_pydatetime(),
                    "labels": json.dumps(matchers),
                },
            ).all()
        frame = pd.DataFrame(
            {
                "ts": [row.ts for row in rows],
                "group": [row.grp for row in rows],
                "value": [row.value for row in rows],
            }
        )
        return _pivot_clean(frame, step, first, last, self.max_gap_steps)

    def latest(
        self,
        service: str,
        metric: str,
        labels: Mapping[str, str] | None = None,
        at: datetime | None = None,
    ) -> Sample | None:
        """See ``MetricSource.latest``."""
        matchers = _check_selector(metric, labels)
        when = to_utc_timestamp(at if at is not None else datetime.now(UTC))
        with self.engine.connect() as conn:
            row = conn.execute(
                text(
                    "SELECT ts, sum(value) AS value FROM metric_samples"
                    " WHERE service = :service AND metric = :metric"
                    " AND ts > :lo AND ts <= :hi AND labels @> CAST(:labels AS jsonb)"
                    " GROUP BY ts ORDER BY ts DESC LIMIT 1"
                ),
                {
                    "service": service,
                    "metric": metric,
                    "lo": (when - pd.Timedelta(self.lookback)).to_pydatetime(),
                    "hi": when.to_pydatetime(),
                    "labels": json.dumps(matchers),
                },
            ).first()
        if row is None or not np.isfinite(row.value):
            return None
        return Sample(ts=row.ts.astimezone(UTC), value=float(row.value))


# --------------------------------------------------------------------------------------------
# prometheus: PromQL over the HTTP API


def _promql_string(value: str) -> str:
    """A PromQL double-quoted string literal holding ``value``."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def _rfc3339_ms(stamp: pd.Timestamp) -> str:
    """A UTC timestamp as RFC 3339 with milliseconds, which Prometheus parses exactly."""
    seconds: str = stamp.strftime("%Y-%m-%dT%H:%M:%S")
    return f"{seconds}.{stamp.microsecond // 1000:03d}Z"


class PrometheusSource:
    """Series from a Prometheus server through its HTTP API (PromQL range queries).

    Service mapping: a service is the value of one target label, ``service_label``. The default
    ``"service"`` fits a scrape config that labels each target with its service name
    (``static_configs: [{targets: [...], labels: {service: pilot-api}}]``, what the test fixture
    and a per-service relabelling produce); use ``service_label="job"`` when each service is its
    own scrape job. ``query_range("pilot-api", "pilot_requests_total", ..., labels={"path":
    "/"})`` runs ``sum(pilot_requests_total{service="pilot-api",path="/"})``.

    Timestamps are sent with millisecond precision (Prometheus' resolution) and the grid starts
    at ``start`` rounded down to the millisecond; the step is rounded to whole milliseconds.
    Ranges longer than ``max_points`` steps are fetched in several requests, since the server
    refuses more than 11,000 points per series.

    Args:
        base_url: the server, e.g. ``http://127.0.0.1:9090`` (a path prefix is kept).
        service_label: the target label that names the service.
        timeout: seconds per HTTP request.
        max_gap_steps: grid points in a row bridged from the last value (see cleaning).
        max_points: points per range request.
        client: an ``httpx.Client`` to use (e.g. with auth); created and owned here if None.
    """

    def __init__(
        self,
        base_url: str,
        *,
        service_label: str = "service",
        timeout: float = 10.0,
        max_gap_steps: int = DEFAULT_MAX_GAP_STEPS,
        max_points: int = 11_000,
        client: httpx.Client | None = None,
    ) -> None:
        if not _LABEL_NAME.match(service_label):
            raise ValueError(f"not a label name: {service_label!r}")
        if max_points < 2:
            raise ValueError(f"max_points must be >= 2, got {max_points}")
        self.base_url = base_url.rstrip("/")
        self.service_label = service_label
        self.max_gap_steps = max_gap_steps
        self.max_points = max_points
        self._owns_client = client is None
        self._client = client if client is not None else httpx.Client(timeout=timeout)
        self._timeout = timeout

    def close(self) -> None:
        """Close the HTTP client if this source created it."""
        if self._owns_client:
            self._client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def selector(self, service: str, metric: str, labels: Mapping[str, str] | None = None) -> str:
        """The PromQL series selector for ``metric`` of ``service`` with ``labels``."""
        matchers = _check_selector(metric, labels)
        matchers = {self.service_label: service, **matchers}
        inner = ",".join(f"{name}={_promql_string(value)}" for name, value in matchers.items())
        return f"{metric}{{{inner}}}"

    def _api(self, endpoint: str, params: dict[str, str]) -> dict[str, Any]:
        url = f"{self.base_url}/api/v1/{endpoint}"
        try:
            # POST with a form body: the API accepts it and long selectors never hit URL limits.
            response = self._client.post(url, data=params, timeout=self._timeout)
        except httpx.HTTPError as exc:
            raise MetricSourceError(f"prometheus at {self.base_url} unreachable: {exc!r}") from exc
        try:
            body: dict[str, Any] = response.json()
        except ValueError:
            raise MetricSourceError(
                f"prometheus at {self.base_url} answered HTTP {response.status_code}"
                f" without JSON: {response.text[:200]!r}"
            ) from None
        if body.get("status") != "success":
            raise MetricSourceError(
                f"prometheus refused {params.get('query')!r}: "
                f"{body.get('errorType', 'error')}: {body.get('error', response.status_code)}"
            )
        data: dict[str, Any] = body.get("data", {})
        return data

    def _grid(
        self, start: datetime, end: datetime, step: timedelta
    ) -> tuple[pd.Timestamp, pd.Timestamp, int]:
        first, last = _check_window(start, end, step)
        step_ms = max(1, round(step_nanoseconds(step) / 1_000_000))
        return first.floor("ms"), last.floor("ms"), step_ms

    def _matrix(
        self, expr: str, first: pd.Timestamp, last: pd.Timestamp, step_ms: int
    ) -> list[tuple[dict[str, str], list[tuple[int, str]]]]:
        """Run a range query in chunks; (labels, [(ms, value)]) per series, chunks merged."""
        merged: dict[str, tuple[dict[str, str], list[tuple[int, str]]]] = {}
        chunk = pd.Timedelta(milliseconds=step_ms * (self.max_points - 1))
        chunk_start = first
        while chunk_start <= last:
            chunk_end = min(chunk_start + chunk, last)
            data = self._api(
                "query_range",
                {
                    "query": expr,
                    "start": _rfc3339_ms(chunk_start),
                    "end": _rfc3339_ms(chunk_end),
                    "step": f"{step_ms}ms",
                },
            )
            if data.get("resultType") != "matrix":
                raise MetricSourceError(f"expected a matrix for {expr!r}, got {data!r:.200}")
            for series in data.get("result", []):
                metric = {str(k): str(v) for k, v in series.get("metric", {}).items()}
                key = json.dumps(metric, sort_keys=True)
                points = [(round(float(t) * 1000), str(v)) for t, v in series.get("values", [])]
                merged.setdefault(key, (metric, []))[1].extend(points)
            chunk_start = chunk_end + pd.Timedelta(milliseconds=step_ms)
        return list(merged.values())

    def _clean(
        self,
        points: list[tuple[int, str]],
        name: str,
        step_ms: int,
        first: pd.Timestamp,
        last: pd.Timestamp,
    ) -> pd.Series:
        raw = pd.Series(
            pd.to_numeric([value for _, value in points], errors="coerce"),
            index=pd.to_datetime([ms for ms, _ in points], unit="ms", utc=True),
            name=name,
            dtype="float64",
        )
        return clean_series(
            raw,
            timedelta(milliseconds=step_ms),
            start=first,
            end=last,
            max_gap_steps=self.max_gap_steps,
        )

    def query_range(
        self,
        service: str,
        metric: str,
        start: datetime,
        end: datetime,
        step: timedelta,
        labels: Mapping[str, str] | None = None,
    ) -> pd.Series:
        """See ``MetricSource.query_range``; runs ``sum(<selector>)``."""
        expr = f"sum({self.selector(service, metric, labels)})"
        first, last, step_ms = self._grid(start, end, step)
        series = self._matrix(expr, first, last, step_ms)
        points = [point for _, values in series for point in values]
        if not points:
            return empty_series(metric)
        return self._clean(points, metric, step_ms, first, last)

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
        """See ``MetricSource.query_range_by``; runs ``sum by (<by>) (<selector>)``."""
        _check_selector(metric, {by: ""})
        expr = f"sum by ({by}) ({self.selector(service, metric, labels)})"
        first, last, step_ms = self._grid(start, end, step)
        columns: dict[str, pd.Series] = {}
        for metric_labels, points in self._matrix(expr, first, last, step_ms):
            group = metric_labels.get(by, "")
            columns[group] = self._clean(points, metric, step_ms, first, last)
        if not columns:
            return pd.DataFrame(index=empty_series().index, dtype="float64")
        return pd.DataFrame(dict(sorted(columns.items()))).sort_index()

    def latest(
        self,
        service: str,
        metric: str,
        labels: Mapping[str, str] | None = None,
        at: datetime | None = None,
    ) -> Sample | None:
        """See ``MetricSource.latest``; instant queries (the server's look-back applies).

        An instant query reports the evaluation time, not when the value was scraped, so a
        second query (``max(timestamp(...))``) fetches the newest sample's own time: staleness
        checks need it.
        """
        selector = self.selector(service, metric, labels)
        when = {"time": _rfc3339_ms(to_utc_timestamp(at).floor("ms"))} if at is not None else {}
        value = self._instant(f"sum({selector})", when)
        if value is None or not np.isfinite(value[1]):
            return None
        observed = self._instant(f"max(timestamp({selector}))", when)
        stamp = observed[1] if observed is not None else value[0]
        return Sample(ts=datetime.fromtimestamp(stamp, UTC), value=value[1])

    def _instant(self, expr: str, when: dict[str, str]) -> tuple[float, float] | None:
        """(evaluation time, value) of a query returning one series, or None if it is empty."""
        data = self._api("query", {"query": expr, **when})
        result = data.get("result", [])
        if data.get("resultType") != "vector" or not result:
            return None
        stamp, raw = result[0]["value"]
        return float(stamp), float(raw)


# --------------------------------------------------------------------------------------------
# csv: recorded series replayed


def parse_timestamps(column: pd.Series) -> pd.DatetimeIndex:
    """A CSV time column as UTC (naive times are UTC); unparseable cells become NaT.

    Numbers are epoch seconds (milliseconds when they are that large). ISO 8601 (what NAB and
    most exports write) parses fast and exactly; anything else falls back to parsing cell by
    cell, so one odd row costs time, never the whole file.
    """
    numbers = pd.to_numeric(column, errors="coerce")
    if len(column) and numbers.notna().mean() > 0.5:
        unit = "ms" if float(numbers.abs().median()) > 1e11 else "s"
        return pd.DatetimeIndex(pd.to_datetime(numbers, unit=unit, utc=True)).as_unit("ns")
    try:
        stamps = pd.to_datetime(column, utc=True, format="ISO8601")
    except (ValueError, TypeError):
        stamps = pd.to_datetime(column, utc=True, errors="coerce", format="mixed")
    return pd.DatetimeIndex(stamps).as_unit("ns")


class CsvReplaySource:
    """Series replayed from CSV files (the NAB corpus, recorded runs), for benchmarks.

    Each file is one service; its columns are a timestamp column and one column per metric
    (NAB files are ``timestamp,value``, so their metric is ``value``). Pointing at a directory
    takes every ``*.csv`` below it; a service is then named by its path relative to the
    directory without ``.csv`` (``realAWSCloudwatch/ec2_cpu_utilization_5f5533``) or by its bare
    file name when that is unique. Recorded series have no labels, so any label matcher matches
    nothing and ``query_range_by`` yields one column, ``""``.

    Args:
        path: a CSV file or a directory of them.
        start_at: replay as if the first row of every file was recorded at this time (a
            simulation of live data); by default the recorded timestamps are kept.
        timestamp_column: the name of the time column.
        lookback: the oldest a row may be for ``latest(at=...)`` to report it.
        max_gap_steps: grid points in a row bridged from the last value (see cleaning).

    Raises:
        FileNotFoundError: ``path`` does not exist or holds no CSV file.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        start_at: datetime | None = None,
        timestamp_column: str = "timestamp",
        lookback: timedelta = DEFAULT_LOOKBACK,
        max_gap_steps: int = DEFAULT_MAX_GAP_STEPS,
    ) -> None:
        root = Path(path)
        if root.is_file():
            files = {root.stem: root}
        elif root.is_dir():
            found = sorted(p for p in root.rglob("*.csv") if p.is_file())
            files = {p.relative_to(root).with_suffix("").as_posix(): p for p in found}
            stems: dict[str, list[str]] = {}
            for name, file in files.items():
                stems.setdefault(file.stem, []).append(name)
            for stem, names in stems.items():
                if len(names) == 1 and stem not in files:
                    files[stem] = files[names[0]]
        else:
            raise FileNotFoundError(f"no such CSV file or directory: {root}")
        if not files:
            raise FileNotFoundError(f"no *.csv files under {root}")
        self.path = root
        self.start_at = to_utc_timestamp(start_at) if start_at is not None else None
        self.timestamp_column = timestamp_column
        self.lookback = lookback
        self.max_gap_steps = max_gap_steps
        self._files = files
        self._frames: dict[Path, pd.DataFrame] = {}

    def services(self) -> list[str]:
        """Every name a series can be asked for by (relative paths, and unique file names)."""
        return sorted(self._files)

    def _frame(self, service: str) -> pd.DataFrame:
        file = self._files.get(service)
        if file is None:
            raise SeriesNotFoundError(
                f"no replayed series {service!r} under {self.path} "
                f"({len(self._files)} known, e.g. {', '.join(self.services()[:3])})"
            )
        if file not in self._frames:
            frame = pd.read_csv(file)
            if self.timestamp_column not in frame.columns:
                raise SeriesNotFoundError(
                    f"{file} has no {self.timestamp_column!r} column (columns: "
                    f"{', '.join(map(str, frame.columns))})"
                )
            frame.index = parse_timestamps(frame.pop(self.timestamp_column))
            if self.start_at is not None and frame.index.notna().any():
                frame.index = frame.index + (self.start_at - frame.index.min())
            self._frames[file] = frame
        return self._frames[file]

    def series(self, service: str, metric: str = "value") -> pd.Series:
        """The whole recorded series, cleaned but at its own timestamps (what NAB scores).

        Raises:
            SeriesNotFoundError: no such service or column.
        """
        frame = self._frame(service)
        if metric not in frame.columns:
            raise SeriesNotFoundError(
                f"{service} has no column {metric!r} (columns: "
                f"{', '.join(map(str, frame.columns))})"
            )
        return clean_series(frame[metric].rename(metric))

    def query_range(
        self,
        service: str,
        metric: str,
        start: datetime,
        end: datetime,
        step: timedelta,
        labels: Mapping[str, str] | None = None,
    ) -> pd.Series:
        """See ``MetricSource.query_range``.

        Raises:
            SeriesNotFoundError: no such service or column (a typo in a benchmark must not
                score an empty series silently).
        """
        matchers = _check_selector(metric, labels)
        first, last = _check_window(start, end, step)
        recorded = self.series(service, metric)
        if matchers:
            return empty_series(metric)
        return clean_series(recorded, step, start=first, end=last, max_gap_steps=self.max_gap_steps)

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
        """See ``MetricSource.query_range_by``: the one column ``""`` (no labels recorded)."""
        _check_selector(metric, {by: ""})
        series = self.query_range(service, metric, start, end, step, labels)
        if series.empty:
            return pd.DataFrame(index=series.index, dtype="float64")
        return pd.DataFrame({"": series})

    def latest(
        self,
        service: str,
        metric: str,
        labels: Mapping[str, str] | None = None,
        at: datetime | None = None,
    ) -> Sample | None:
        """The last row at or before ``at`` within ``lookback``; the last row if ``at`` is None."""
        matchers = _check_selector(metric, labels)
        recorded = self.series(service, metric)
        if matchers or recorded.empty:
            return None
        if at is not None:
            when = to_utc_timestamp(at)
            recorded = recorded[
                (recorded.index <= when) & (recorded.index > when - pd.Timedelta(self.lookback))
            ]
            if recorded.empty:
                return None
        return Sample(ts=recorded.index[-1].to_pydatetime(), value=float(recorded.iloc[-1]))


# --------------------------------------------------------------------------------------------
# Choosing a source by configuration

_SOURCES: dict[str, type[ScrapeSource] | type[PrometheusSource] | type[CsvReplaySource]] = {
    "scrape": ScrapeSource,
    "prometheus": PrometheusSource,
    "csv": CsvReplaySource,
}


def make_source(kind: str, **config: Any) -> MetricSource:
    """The metric source ``kind`` names, built from ``config``.

    One switch (``NOFX_TELEMETRY``) picks the backend; everything downstream sees a
    ``MetricSource``. Config keys are the chosen class's constructor arguments:

    * ``scrape``: ``engine`` (required), ``lookback``, ``max_gap_steps``;
    * ``prometheus``: ``base_url`` (required), ``service_label``, ``timeout``, ...;
    * ``csv``: ``path`` (required), ``start_at``, ``timestamp_column``, ...

    Raises:
        ValueError: unknown kind, or config the kind does not take / is missing (the message
            names the kind and the argument).
    """
    cls = _SOURCES.get(kind)
    if cls is None:
        raise ValueError(f"unknown telemetry source {kind!r}; expected one of {SOURCE_KINDS}")
    try:
        inspect.signature(cls).bind(**config)
    except TypeError as exc:
        raise ValueError(f"telemetry source {kind!r}: {exc}") from None
    source: MetricSource = cls(**config)
    return source
