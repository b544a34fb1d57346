"""The embedded telemetry pipeline: scrape each service's ``/metrics`` into ``metric_samples``.

When no Prometheus server is configured the platform keeps its own samples, so detection works
on a laptop with nothing but PostgreSQL. A scrape is one HTTP GET per target, in parallel, parsed
with ``prometheus_client``'s own parser; what lands in the table is what PromQL would see:

* counters as their ``_total`` sample; histograms and summaries as ``_bucket`` (label ``le``),
  ``_count`` and ``_sum`` (and a summary's quantiles), each its own metric name with its labels;
* the ``_created`` companions of counters, histograms and summaries are dropped (a creation
  time, not a measurement), as are NaN and infinite values (nothing to learn from them).

Writes are idempotent: the primary key is (service, metric, label set, timestamp) and inserts
skip existing rows, so an activity attempt retried for the same monitor tick (same ``at``)
changes nothing. A target that is down, hung, answering errors or serving garbage is reported
with its reason and does not stop the others; only a database failure raises.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import httpx
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text
from sqlalchemy.engine import Engine

__all__ = [
    "ParsedSample",
    "ScrapeResult",
    "ScrapeTarget",
    "inventory_targets",
    "parse_exposition",
    "prune_samples",
    "scrape_targets",
]

DEFAULT_TIMEOUT_SECONDS = 2.0
MAX_BODY_BYTES = 16 * 1024 * 1024
"""A /metrics page larger than this is refused: it means a label cardinality explosion, and
storing it would flood the table."""

_COMPANIONS = ("_total", "_count", "_bucket")
_INSERT = text(
    "INSERT INTO metric_samples (service, metric, labels, ts, value)"
    " SELECT :service, s.metric, CAST(s.labels AS jsonb), s.ts, s.value"
    " FROM unnest(CAST(:metrics AS text[]), CAST(:labels AS text[]),"
    " CAST(:stamps AS timestamptz[]), CAST(:values AS float8[])) AS s(metric, labels, ts, value)"
    " ON CONFLICT DO NOTHING"
)


@dataclass(frozen=True)
class ScrapeTarget:
    """A service and the base URL its ``/metrics`` is served under (``services.endpoint``)."""

    service: str
    endpoint: str
    path: str = "/metrics"
    metrics_url: str | None = None  # the inventory's own URL for it, when it names one

    @property
    def url(self) -> str:
        """The full URL scraped."""
        if self.metrics_url:
            return self.metrics_url
        return self.endpoint.rstrip("/") + "/" + self.path.lstrip("/")


@dataclass(frozen=True)
class ParsedSample:
    """One sample of an exposition: metric name, labels, value, and its own time if it had one."""

    metric: str
    labels: dict[str, str]
    value: float
    ts: datetime | None = None


@dataclass(frozen=True)
class ScrapeResult:
    """What scraping one target did.

    Attributes:
        service: the target's service.
        url: the URL scraped.
        ok: True when the page was fetched and parsed (even if every row already existed).
        samples: samples parsed and kept (after dropping ``_created`` and non-finite values).
        inserted: rows written; 0 when the same tick was stored before.
        error: why the target failed, one line (``ok`` is False), else None.
        duration_ms: time spent on the HTTP request.
    """

    service: str
    url: str
    ok: bool
    samples: int = 0
    inserted: int = 0
    error: str | None = None
    duration_ms: float = 0.0


def parse_exposition(page: str) -> list[ParsedSample]:
    """Parse a Prometheus text exposition into the samples worth storing.

    Raises:
        ValueError: the page is not valid exposition text.
    """
    samples = [
        sample for family in text_string_to_metric_families(page) for sample in family.samples
    ]
    names = {sample.name for sample in samples}
    kept: list[ParsedSample] = []
    for sample in samples:
        if sample.name.endswith("_created"):
            base = sample.name[: -len("_created")]
            if any(base + suffix in names for suffix in _COMPANIONS):
                continue
        value = float(sample.value)
        if not math.isfinite(value):
            continue
        stamp = (
            datetime.fromtimestamp(float(str(sample.timestamp)), UTC)
            if sample.timestamp is not None
            else None
        )
        kept.append(ParsedSample(sample.name, dict(sample.labels), value, stamp))
    return kept


def _fetch(client: httpx.Client, target: ScrapeTarget, timeout: float) -> tuple[str, float]:
    """GET the target's page; (text, milliseconds). Raises on any failure, with a reason."""
    started = time.perf_counter()
    with client.stream("GET", target.url, timeout=timeout) as response:
        if response.status_code != 200:
            raise _TargetError(f"HTTP {response.status_code} from {target.url}")
        body = bytearray()
        for chunk in response.iter_bytes():
            body.extend(chunk)
            if len(body) > MAX_BODY_BYTES:
                raise _TargetError(f"response larger than {MAX_BODY_BYTES} bytes")
    # The exposition format is UTF-8 by definition; a stray byte must not lose the whole page.
    return body.decode("utf-8", errors="replace"), (time.perf_counter() - started) * 1000


class _TargetError(Exception):
    """A target-level failure whose message is already the reason to report."""


def _reason(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, _TargetError):
        return str(exc)
    if isinstance(exc, httpx.TimeoutException):
        return f"timed out after {timeout:g}s ({type(exc).__name__})"
    if isinstance(exc, httpx.HTTPError):
        return f"{type(exc).__name__}: {exc}"
    return f"unparseable /metrics page: {type(exc).__name__}: {exc}"


def _scrape_one(
    client: httpx.Client, target: ScrapeTarget, timeout: float
) -> tuple[ScrapeTarget, list[ParsedSample] | None, str | None, float, datetime]:
    started = time.perf_counter()
    try:
        page, elapsed_ms = _fetch(client, target, timeout)
        received = datetime.now(UTC)
        return target, parse_exposition(page), None, elapsed_ms, received
    except Exception as exc:  # noqa: BLE001 - any failure of one target is that target's result
        elapsed_ms = (time.perf_counter() - started) * 1000
        return target, None, _reason(exc, timeout), elapsed_ms, datetime.now(UTC)


def _store(engine: Engine, service: str, samples: list[ParsedSample], at: datetime) -> int:
    if not samples:
        return 0
    with engine.begin() as conn:
        result = conn.execute(
            _INSERT,
            {
                "service": service,
                "metrics": [s.metric for s in samples],
                "labels": [json.dumps(s.labels, sort_keys=True) for s in samples],
                "stamps": [s.ts or at for s in samples],
                "values": [s.value for s in samples],
            },
        )
    return int(result.rowcount)


def scrape_targets(
    engine: Engine,
    targets: Iterable[ScrapeTarget],
    timeout: float = DEFAULT_TIMEOUT_SECONDS,
    *,
    at: datetime | None = None,
    max_workers: int = 16,
) -> list[ScrapeResult]:
    """Scrape every target in parallel and store its samples in ``metric_samples``.

    Args:
        engine: the platform database.
        targets: what to scrape (see ``inventory_targets`` for the whole fleet).
        timeout: seconds per target (connect, and each read); a hung process costs this once,
            in parallel with the others.
        at: the timestamp of samples that carry none. Pass the monitor tick's time so a retried
            attempt writes the very same rows (idempotent); by default each target's own
            receive time.
        max_workers: concurrent HTTP requests.

    Returns:
        One result per target, in the order given.

    Raises:
        sqlalchemy.exc.SQLAlchemyError: the database failed (the caller's retry repeats it
            harmlessly).
    """
    wanted = list(targets)
    if not wanted:
        return []
    stamp = None
    if at is not None:
        stamp = at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
    with (
        httpx.Client(follow_redirects=True) as client,
        ThreadPoolExecutor(max_workers=max(1, min(max_workers, len(wanted)))) as pool,
    ):
        fetched = list(pool.map(lambda t: _scrape_one(client, t, timeout), wanted))
    results: list[ScrapeResult] = []
    for target, samples, error, elapsed_ms, received in fetched:
        if samples is None:
            results.append(
                ScrapeResult(
                    target.service,
                    target.url,
                    ok=False,
                    error=error,
                    duration_ms=round(elapsed_ms, 1),
                )
            )
            continue
        inserted = _store(engine, target.service, samples, stamp or received)
        results.append(
            ScrapeResult(
                target.service,
                target.url,
                ok=True,
                samples=len(samples),
                inserted=inserted,
                duration_ms=round(elapsed_ms, 1),
            )
        )
    return results


def inventory_targets(engine: Engine) -> list[ScrapeTarget]:
    """Every service of the inventory (table ``services``) to scrape, by name: its
    ``metrics.scrape`` URL when the inventory gives one, else ``{endpoint}/metrics``; a service
    whose metrics live in a Prometheus server of its own is not scraped."""
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT name, endpoint, metadata->'metrics'->>'scrape' AS url FROM services"
                " WHERE endpoint IS NOT NULL AND NOT coalesce(metadata->'metrics' ? 'prometheus',"
                " false) ORDER BY name"
            )
        ).all()
    return [
        ScrapeTarget(service=row.name, endpoint=row.endpoint, metrics_url=row.url) for row in rows
    ]


def prune_samples(
    engine: Engine,
    older_than: timedelta | datetime,
    *,
    now: datetime | None = None,
    batch_size: int = 50_000,
) -> int:
    """Delete samples older than a retention cut-off; return how many were deleted.

    Deletes in batches, each its own transaction, so pruning a large backlog never holds locks
    or a huge transaction while scrapes keep writing.

    Args:
        engine: the platform database.
        older_than: a retention period (samples older than ``now - older_than`` go) or the
            cut-off time itself.
        now: the reference time for a retention period (default: the current time).
        batch_size: rows per batch.

    Raises:
        ValueError: a negative retention period or a non-positive batch size.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if isinstance(older_than, timedelta):
        if older_than < timedelta(0):
            raise ValueError(f"retention must not be negative, got {older_than}")
        cutoff = (now or datetime.now(UTC)) - older_than
    else:
        cutoff = older_than
    if cutoff.tzinfo is None:
        cutoff = cutoff.replace(tzinfo=UTC)
    deleted = 0
    while True:
        with engine.begin() as conn:
            batch = conn.execute(
                text(
                    "DELETE FROM metric_samples WHERE ctid = ANY(ARRAY("
                    "SELECT ctid FROM metric_samples WHERE ts < :cutoff LIMIT :batch))"
                ),
                {"cutoff": cutoff, "batch": batch_size},
            ).rowcount
        deleted += int(batch)
        if batch < batch_size:
            return deleted
