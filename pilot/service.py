"""The pilot HTTP service: one real process of the staging fleet the platform heals.

Run as ``python -m pilot.service --name NAME --port PORT --state-dir DIR``. It answers
``GET /health`` (what the monitor probes), ``GET /metrics`` (what telemetry scrapes) and ``GET /``
(the "work" a user would notice missing). Every start appends a line to ``DIR/starts.log`` so
tests and chaos experiments can count restarts from outside, independently of supervisord.

``GET /`` is a small but real request path, so that faults have something real to break: it waits
for one of a bounded number of worker slots (overload queues here), runs a query on a pooled
PostgreSQL connection (a connection leak exhausts the pool), reads a value through a Redis cache
(a stale cache serves an old version), and honours the versioned config file the fleet writes
(a bad push adds errors and latency). The database and Redis come from the environment the fleet
sets (`pilot.config.ENV_DATABASE_URL`, `ENV_REDIS_URL`); without them the path skips that step.
``GET /orders?customer=N`` runs a real query on a table of a few hundred thousand orders whose
filtered column has no index (`pilot_orders_query_seconds`): what index recommendations are for.

Faults that live inside the process are switched on ``/faults`` (loopback only):
``POST /faults/<kind>`` with a JSON object of parameters, ``DELETE /faults/<kind>``, and
``GET /faults`` to list them. SIGKILL, SIGSTOP and config pushes come from outside.

It uses only the standard library's HTTP server so that a fault injected into it (SIGKILL,
SIGSTOP) behaves exactly as it would for any process, with no framework in between.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import parse_qs, urlsplit

import psycopg
import redis
import structlog
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    ProcessCollector,
    generate_latest,
)
from psycopg import sql
from pydantic import ValidationError

from pilot.cache import SourceCache
from pilot.config import (
    ENV_CACHE_PREFIX,
    ENV_DATABASE_URL,
    ENV_REDIS_URL,
    ORDERS_CUSTOMERS,
    ORDERS_ROWS,
    ORDERS_TABLE,
    PilotConfig,
    VersionedConfig,
    application_name,
    config_path,
    data_dir,
    read_config,
)
from pilot.faults import (
    MIB,
    ConnectionLeak,
    ConnectionLeakParams,
    CrashParams,
    DiskFill,
    DiskFillParams,
    DiskUsage,
    MemoryLeak,
    MemoryLeakParams,
    StaleCache,
    StaleCacheParams,
)
from pilot.pool import ConnectionPool, PoolTimeoutError

HOST = "127.0.0.1"
STARTS_LOG = "starts.log"
# Faults switched on the pilot's /faults endpoint (the fleet adds kill, hang, bad_config and
# overload from outside the process).
IN_PROCESS_FAULTS = ("crash", "connection_leak", "stale_cache", "memory_leak", "disk_fill")
# Paths outside this set are counted as "other", so a scanner cannot blow up label cardinality.
_KNOWN_PATHS = frozenset({"/", "/health", "/metrics", "/faults", "/orders"})
# Fine at the low end, where a healthy GET / lives, so a regression shows in the quantiles.
_LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0,
    10.0,
)  # fmt: skip
# A query of GET /orders: tens of microseconds on an index, milliseconds on a sequential scan.
_QUERY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
)  # fmt: skip
_ORDERS = sql.Identifier(ORDERS_TABLE)
_ORDERS_SETUP = (
    sql.SQL(
        "CREATE TABLE IF NOT EXISTS {} (id bigint PRIMARY KEY, customer_id integer NOT NULL,"
        " amount_cents integer NOT NULL, status text NOT NULL, created_at timestamptz NOT NULL)"
    ).format(_ORDERS),
    # 7919 is prime to ORDERS_CUSTOMERS: every customer gets the same number of orders, spread
    # over the whole table (no physical order to lean on).
    sql.SQL(
        "INSERT INTO {t} SELECT i, (i::bigint * 7919) % {customers}, (i * 31) % 100000,"
        " (ARRAY['new', 'paid', 'shipped', 'returned'])[1 + i % 4],"
        " timestamptz '2026-01-01 00:00:00+00' + i * interval '1 minute'"
        " FROM generate_series(1, {rows}) i WHERE NOT EXISTS (SELECT 1 FROM {t})"
    ).format(t=_ORDERS, customers=sql.Literal(ORDERS_CUSTOMERS), rows=sql.Literal(ORDERS_ROWS)),
)
_ORDERS_QUERY = sql.SQL(
    "SELECT id, amount_cents, status, created_at FROM {} WHERE customer_id = %s"
    " ORDER BY created_at DESC LIMIT 50"
).format(_ORDERS)
_MAX_BODY = 64 * 1024
_LOOPBACK = frozenset({"127.0.0.1", "::1"})

log = structlog.get_logger("pilot.service")


def _package_version() -> str:
    try:
        return version("nofx-autonomy")
    except PackageNotFoundError:
        return "0.0.0+local"


class QueueTimeoutError(TimeoutError):
    """No worker slot became free in time: the service is overloaded."""


class FaultRequestError(Exception):
    """A /faults request that cannot be honoured; `status` is the HTTP status to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class WorkSlots:
    """The bounded worker pool of ``GET /``: `capacity` requests at once, the rest queue.

    The HTTP server itself runs a thread per connection, so /health and /metrics always answer;
    only the work is bounded, which is what makes overload visible as queueing and latency
    rather than as a service that stops answering its health checks.
    """

    def __init__(self, capacity: int) -> None:
        self._cond = threading.Condition()
        self._capacity = capacity
        self.busy = 0
        self.waiting = 0

    @property
    def capacity(self) -> int:
        return self._capacity

    def resize(self, capacity: int) -> None:
        with self._cond:
            self._capacity = capacity
            self._cond.notify_all()

    @contextlib.contextmanager
    def slot(self, timeout: float) -> Iterator[float]:
        """Hold a worker slot for a ``with`` block; yields the seconds spent waiting for it.

        Raises:
            QueueTimeoutError: no slot was free within `timeout` seconds.
        """
        began = time.monotonic()
        deadline = began + timeout
        with self._cond:
            self.waiting += 1
            try:
                while self.busy >= self._capacity:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise QueueTimeoutError(
                            f"overloaded: no worker free within {timeout:g}s"
                            f" ({self.busy} busy, {self.waiting} waiting)"
                        )
                    self._cond.wait(remaining)
                self.busy += 1
            finally:
                self.waiting -= 1
        try:
            yield time.monotonic() - began
        finally:
            with self._cond:
                self.busy -= 1
                self._cond.notify()


class PilotService:
    """State and metrics of one pilot process, shared by its request threads.

    Args:
        name: the service name (the supervisord program name), reported by /health and metrics.
        port: the TCP port it serves on 127.0.0.1.
        state_dir: where `starts.log`, the config files and the data directories live; shared
            by the whole fleet.
        config_file: the versioned config to follow; default `pilot.config.config_path`.
        database_url: PostgreSQL for the connection pool of GET /; None skips the query.
        redis_url: Redis for the cache of GET /; None skips the cache.
        cache_prefix: this service's Redis key prefix.

    Raises:
        ValueError: the config file exists but is not a valid config.
    """

    def __init__(
        self,
        name: str,
        port: int,
        state_dir: Path,
        *,
        config_file: Path | None = None,
        database_url: str | None = None,
        redis_url: str | None = None,
        cache_prefix: str | None = None,
    ) -> None:
        self.name = name
        self.port = port
        self.state_dir = state_dir
        self.pid = os.getpid()
        self.started_at = time.time()
        self._started_monotonic = time.monotonic()
        self._work_lock = threading.Lock()
        self.work_done = 0
        self.stopping = threading.Event()

        self.config_file = config_file or config_path(state_dir, name)
        self._config_signature = _file_signature(self.config_file)
        self.versioned = _initial_config(self.config_file)
        self.config_error: dict[str, Any] | None = None
        config = self.versioned.config
        self.slots = WorkSlots(config.workers)
        self.pool = (
            ConnectionPool(
                database_url, max_size=config.db_pool_size, application_name=application_name(name)
            )
            if database_url
            else None
        )
        self.redis = (
            redis.Redis.from_url(redis_url, socket_timeout=1.0, socket_connect_timeout=1.0)
            if redis_url
            else None
        )
        self.cache = (
            SourceCache(self.redis, cache_prefix or f"nofx:pilot:{name}", ttl_s=config.cache_ttl_s)
            if self.redis is not None
            else None
        )
        # a service has its data directory from the start, as a real one has its volume
        data = data_dir(state_dir, name)
        data.mkdir(parents=True, exist_ok=True)
        self.disk = DiskUsage(data, config.disk_quota_mb * MIB)
        self.faults: dict[str, Any] = {}
        self._faults_lock = threading.Lock()
        self._reload_requested = threading.Event()
        self._orders_ready = False
        self._orders_lock = threading.Lock()
        self._build_metrics()

    # -- metrics -------------------------------------------------------------------------------

    def _build_metrics(self) -> None:
        # An own registry: the default one would mix in whatever else imported prometheus_client.
        self.registry = registry = CollectorRegistry()
        self.requests = Counter(
            "pilot_requests",
            "HTTP requests served, by path and status code.",
            ["path", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "pilot_request_duration_seconds",
            "Time to serve an HTTP request, by path (GET / includes the wait for a worker).",
            ["path"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.queue_wait = Histogram(
            "pilot_request_queue_seconds",
            "Time a GET / waited for a free worker slot.",
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        # process_start_time_seconds, CPU, resident memory, open fds: what a leak looks like.
        ProcessCollector(registry=registry)
        up = Gauge("pilot_up", "1 while this pilot process serves requests.", registry=registry)
        up.set(1)
        Info("pilot_build", "Build of the pilot service.", registry=registry).info(
            {
                "service": self.name,
                "version": _package_version(),
                "python": platform.python_version(),
            }
        )

        def gauge(name: str, doc: str, read: Callable[[], float]) -> None:
            Gauge(name, doc, registry=registry).set_function(read)

        gauge("pilot_workers", "Worker slots for GET /.", lambda: self.slots.capacity)
        gauge("pilot_requests_in_progress", "GET / being served.", lambda: self.slots.busy)
        gauge("pilot_requests_queued", "GET / waiting for a worker.", lambda: self.slots.waiting)
        gauge(
            "pilot_config_version",
            "Version (config_versions.version) of the config in force.",
            lambda: self.versioned.version,
        )
        self.config_loaded = Gauge(
            "pilot_config_loaded_timestamp_seconds",
            "When the config in force was loaded.",
            registry=registry,
        )
        self.config_loaded.set_to_current_time()
        self.config_reloads = Counter(
            "pilot_config_reloads",
            "Config file reloads, by result (ok, error: the previous config stays in force).",
            ["result"],
            registry=registry,
        )
        pool = self.pool
        gauge("pilot_db_pool_size", "Most connections the pool opens.", lambda: _pool(pool, "size"))
        gauge("pilot_db_pool_open", "Connections open.", lambda: _pool(pool, "open"))
        gauge("pilot_db_pool_in_use", "Connections handed out.", lambda: _pool(pool, "in_use"))
        gauge(
            "pilot_db_pool_waiting",
            "Requests waiting for a connection.",
            lambda: _pool(pool, "waiting"),
        )
        self.db_pool_timeouts = Counter(
            "pilot_db_pool_timeouts",
            "GET / that found no free connection within db_timeout_s.",
            registry=registry,
        )
        self.db_errors = Counter(
            "pilot_db_errors", "Queries that failed in PostgreSQL.", registry=registry
        )
        self.db_pool_hold = Histogram(
            "pilot_db_pool_hold_seconds",
            "How long a request held its pooled connection.",
            buckets=_QUERY_BUCKETS,
            registry=registry,
        )
        if pool is not None:
            pool.on_hold = self.db_pool_hold.observe
        self.orders_query = Histogram(
            "pilot_orders_query_seconds",
            "Time of the query GET /orders runs (a customer's latest orders).",
            buckets=_QUERY_BUCKETS,
            registry=registry,
        )
        self.cache_hits = Counter(
            "pilot_cache_hits", "Cache reads served from Redis.", registry=registry
        )
        self.cache_misses = Counter(
            "pilot_cache_misses", "Cache reads loaded from the source.", registry=registry
        )
        self.cache_stale = Counter(
            "pilot_cache_stale_reads",
            "Cache reads that served an older version than the source's.",
            registry=registry,
        )
        self.cache_errors = Counter(
            "pilot_cache_errors", "Cache reads or updates that failed in Redis.", registry=registry
        )
        self.cache_age = Gauge(
            "pilot_cache_age_seconds",
            "Age of the cached value the last read served.",
            registry=registry,
        )
        self.cache_lag = Gauge(
            "pilot_cache_version_lag",
            "Source version minus served version, at the last read.",
            registry=registry,
        )
        gauge(
            "pilot_disk_used_bytes",
            "Bytes in the service's data directory.",
            lambda: self.disk.used_bytes(),
        )
        gauge(
            "pilot_disk_quota_bytes",
            "Quota of the service's data directory.",
            lambda: self.disk.quota_bytes,
        )

    # -- state ---------------------------------------------------------------------------------

    @property
    def config(self) -> PilotConfig:
        return self.versioned.config

    @property
    def uptime_seconds(self) -> float:
        return time.monotonic() - self._started_monotonic

    def record_start(self) -> None:
        """Append this start to `starts.log`, durably, as one line per start.

        One `write` of a short line to an O_APPEND file is atomic, so the fleet's processes can
        share the file; fsync makes the count survive a crash right after the start.
        """
        self.state_dir.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"service": self.name, "pid": self.pid, "started_at": self.started_at})
        fd = os.open(self.state_dir / STARTS_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (line + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    def do_work(self) -> int:
        """Count one unit of work and return the running total."""
        with self._work_lock:
            self.work_done += 1
            return self.work_done

    def health(self) -> dict[str, Any]:
        """GET /health: liveness only; the config version tells a push has been loaded."""
        return {
            "status": "ok",
            "service": self.name,
            "pid": self.pid,
            "started_at": self.started_at,
            "uptime_seconds": round(self.uptime_seconds, 3),
            "config_version": self.versioned.version,
            "config_error": self.config_error,
        }

    # -- config --------------------------------------------------------------------------------

    def request_reload(self) -> None:
        """Ask the config watcher to re-read the file now (SIGHUP)."""
        self._reload_requested.set()

    def reload_config(self) -> bool:
        """Re-read the config file and apply it; on a bad file keep the config in force.

        Returns:
            Whether a new config is now in force.
        """
        try:
            versioned = read_config(self.config_file)
        except (OSError, ValueError) as exc:
            self.config_reloads.labels(result="error").inc()
            message = _describe(exc)
            # /health tells whoever pushed the file that this version was refused, and why
            self.config_error = {"version": _version_in(self.config_file), "message": message}
            log.warning(
                "config reload failed; keeping the config in force",
                service=self.name,
                version=self.versioned.version,
                error=message,
            )
            return False
        self.config_reloads.labels(result="ok").inc()
        self.config_error = None
        if versioned == self.versioned:
            return False
        self.apply_config(versioned)
        return True

    def apply_config(self, versioned: VersionedConfig) -> None:
        """Put `versioned` in force: resize the worker and connection pools, retune the cache."""
        previous = self.versioned.version
        self.versioned = versioned
        config = versioned.config
        self.slots.resize(config.workers)
        if self.pool is not None:
            self.pool.resize(config.db_pool_size)
        if self.cache is not None:
            self.cache.set_ttl(config.cache_ttl_s)
        self.disk.quota_bytes = config.disk_quota_mb * MIB
        self.config_loaded.set_to_current_time()
        log.info(
            "config applied",
            service=self.name,
            version=versioned.version,
            previous_version=previous,
            config=config.model_dump(),
        )

    def watch_config(self) -> None:
        """Reload the config when its file changes (inode, mtime or size) or on request."""
        while not self.stopping.is_set():
            requested = self._reload_requested.wait(0.2)
            self._reload_requested.clear()
            signature = _file_signature(self.config_file)
            if requested or signature != self._config_signature:
                self._config_signature = signature
                if signature is not None:
                    self.reload_config()

    # -- cache ---------------------------------------------------------------------------------

    def update_source(self) -> None:
        """Advance the source of truth every `source_update_s`, as upstream data would change."""
        if self.cache is None:
            return
        while not self.stopping.wait(self.config.source_update_s):
            try:
                self.cache.advance_source()
            except redis.RedisError as exc:
                self.cache_errors.inc()
                log.warning("source update failed", service=self.name, error=str(exc))

    def read_cache(self) -> dict[str, Any] | None:
        """One cache read for GET /, counted in the cache metrics; None without Redis."""
        if self.cache is None:
            return None
        try:
            read = self.cache.read()
        except redis.RedisError:
            self.cache_errors.inc()
            return None
        (self.cache_hits if read.hit else self.cache_misses).inc()
        if read.stale:
            self.cache_stale.inc()
        self.cache_age.set(read.age_s)
        self.cache_lag.set(read.source_version - read.version)
        return read.as_dict()

    # -- the work ------------------------------------------------------------------------------

    def serve_work(self) -> tuple[int, dict[str, Any]]:
        """Serve one ``GET /``: a worker slot, the config's effects, a query, a cache read."""
        config = self.config
        try:
            with self.slots.slot(config.queue_timeout_s) as waited:
                self.queue_wait.observe(waited)
                return self._work(config)
        except QueueTimeoutError as exc:
            self.queue_wait.observe(config.queue_timeout_s)
            return 503, {"error": str(exc)}

    def _work(self, config: PilotConfig) -> tuple[int, dict[str, Any]]:
        version = self.versioned.version
        pause = (config.extra_latency_ms + config.work_ms) / 1000
        if pause:
            time.sleep(pause)
        if self.disk.full:
            return 507, {"error": f"data directory {self.disk.directory} is over its quota"}
        if config.error_rate and random.random() < config.error_rate:  # noqa: S311 - not crypto
            return 500, {"error": f"internal error (config version {version})"}
        if self.pool is not None:
            try:
                with self.pool.connection(timeout=config.db_timeout_s) as conn:
                    conn.execute("SELECT 1").fetchone()
            except PoolTimeoutError as exc:
                self.db_pool_timeouts.inc()
                return 503, {"error": f"database pool exhausted: {exc}"}
            except psycopg.Error as exc:
                self.db_errors.inc()
                return 503, {"error": f"database error: {str(exc).strip().splitlines()[0]}"}
        cache = self.read_cache()
        return 200, {
            "service": self.name,
            "pid": self.pid,
            "n": self.do_work(),
            "config_version": version,
            "cache": cache,
        }

    def serve_orders(self, target: str) -> tuple[int, dict[str, Any]]:
        """Serve one ``GET /orders?customer=N``: the customer's latest orders, by a real query.

        The orders table (`pilot.config.ORDERS_TABLE`) is made and filled on first use. The
        query filters on `customer_id`, which has no index until one is made for it: the case
        the platform's index recommendations are for. Its time is `pilot_orders_query_seconds`.
        """
        values = parse_qs(urlsplit(target).query).get("customer", [])
        if not values:
            return 400, {"error": "query parameter 'customer' is required: /orders?customer=N"}
        try:
            customer = int(values[0])
        except ValueError:
            customer = -1
        if not 0 <= customer < 2**31:
            return 400, {"error": f"customer must be an integer >= 0, got {values[0]!r}"}
        if self.pool is None:
            return 503, {"error": f"no database: {ENV_DATABASE_URL} is not set"}
        try:
            with self.pool.connection(timeout=self.config.db_timeout_s) as conn:
                self._ensure_orders(conn)
                started = time.perf_counter()
                rows = conn.execute(_ORDERS_QUERY, (customer,)).fetchall()
                self.orders_query.observe(time.perf_counter() - started)
        except PoolTimeoutError as exc:
            self.db_pool_timeouts.inc()
            return 503, {"error": f"database pool exhausted: {exc}"}
        except psycopg.Error as exc:
            self.db_errors.inc()
            return 503, {"error": f"database error: {str(exc).strip().splitlines()[0]}"}
        orders = [
            {"id": i, "amount_cents": a, "status": s, "created_at": c.isoformat()}
            for i, a, s, c in rows
        ]
        return 200, {"service": self.name, "customer": customer, "orders": orders}

    def _ensure_orders(self, conn: psycopg.Connection[Any]) -> None:
        """Make and fill the orders table once per database, whichever pilot comes first."""
        if self._orders_ready:
            return
        with self._orders_lock, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (ORDERS_TABLE,))
            create, fill = _ORDERS_SETUP
            conn.execute(create)
            if conn.execute(fill).rowcount > 0:
                conn.execute(sql.SQL("ANALYZE {}").format(_ORDERS))
                log.info("orders table filled", service=self.name, rows=ORDERS_ROWS)
            self._orders_ready = True

    # -- faults --------------------------------------------------------------------------------

    def list_faults(self) -> dict[str, Any]:
        """GET /faults: the in-process faults now active, with what each holds."""
        with self._faults_lock:
            active = {kind: fault.status() for kind, fault in self.faults.items()}
        return {
            "service": self.name,
            "pid": self.pid,
            "config_version": self.versioned.version,
            "active": active,
        }

    def inject_fault(self, kind: str, params: dict[str, Any]) -> dict[str, Any]:
        """Switch on an in-process fault.

        Raises:
            FaultRequestError: unknown kind (404), bad parameters (400), already active or
                missing what it breaks (409).
        """
        if kind not in IN_PROCESS_FAULTS:
            raise FaultRequestError(
                404, f"unknown fault {kind!r}; this pilot has {', '.join(IN_PROCESS_FAULTS)}"
            )
        try:
            with self._faults_lock:
                if kind in self.faults:
                    raise FaultRequestError(409, f"{kind} is already active; clear it first")
                if kind == "crash":
                    return self._crash(CrashParams.model_validate(params))
                fault = self._new_fault(kind, params)
                self.faults[kind] = fault
        except ValidationError as exc:
            detail = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'params'}: {e['msg']}"
                for e in exc.errors()
            )
            raise FaultRequestError(400, f"bad parameters for {kind}: {detail}") from None
        log.warning("fault injected", service=self.name, fault=kind, params=params)
        return dict(fault.status())

    def _new_fault(self, kind: str, params: dict[str, Any]) -> Any:
        if kind == "memory_leak":
            memory = MemoryLeak(MemoryLeakParams.model_validate(params))
            memory.start()
            return memory
        if kind == "disk_fill":
            fill = DiskFill(DiskFillParams.model_validate(params), self.disk)
            fill.start()
            return fill
        if kind == "connection_leak":
            leak_params = ConnectionLeakParams.model_validate(params)
            if self.pool is None:
                raise FaultRequestError(
                    409, f"{self.name} has no database (set {ENV_DATABASE_URL})"
                )
            leak = ConnectionLeak(leak_params, self.pool)
            leak.start()
            return leak
        StaleCacheParams.model_validate(params)
        if self.cache is None:
            raise FaultRequestError(409, f"{self.name} has no cache (set {ENV_REDIS_URL})")
        try:
            return StaleCache(self.cache)
        except redis.RedisError as exc:
            raise FaultRequestError(409, f"Redis refused the stale cache: {exc}") from None

    def _crash(self, params: CrashParams) -> dict[str, Any]:
        """Exit with `exit_code` after `after_s`, the way an unhandled error ends a process."""

        def crash() -> None:
            time.sleep(params.after_s)
            log.error(
                "fatal error: crashing on purpose (injected fault)",
                service=self.name,
                pid=self.pid,
                exit_code=params.exit_code,
            )
            sys.stderr.flush()
            os._exit(params.exit_code)

        threading.Thread(target=crash, name="fault-crash", daemon=True).start()
        return {"kind": "crash", "pid": self.pid, **params.model_dump()}

    def clear_fault(self, kind: str) -> dict[str, Any]:
        """Switch an in-process fault off; a disk fill's files are deleted even when inactive.

        Raises:
            FaultRequestError: unknown kind (404).
        """
        if kind not in IN_PROCESS_FAULTS:
            raise FaultRequestError(
                404, f"unknown fault {kind!r}; this pilot has {', '.join(IN_PROCESS_FAULTS)}"
            )
        with self._faults_lock:
            fault = self.faults.pop(kind, None)
        if fault is None:
            if kind == "disk_fill":
                files, deleted = self.disk.delete_fill_files()
                return {
                    "kind": kind,
                    "cleared": files > 0,
                    "deleted_files": files,
                    "deleted_bytes": deleted,
                }
            return {"kind": kind, "cleared": False}
        try:
            detail = fault.stop()
        except redis.RedisError as exc:
            detail = {"error": str(exc)}
        log.warning("fault cleared", service=self.name, fault=kind, detail=detail)
        return {**detail, "kind": kind, "cleared": True}

    def close(self) -> None:
        """Stop the background loops and close the pool and Redis client (at shutdown).

        In-process faults are not undone: a disk fill's files stay, as a real crash would
        leave them, and what a leak held goes with the process.
        """
        self.stopping.set()
        if self.pool is not None:
            self.pool.close()
        if self.redis is not None:
            with contextlib.suppress(redis.RedisError):
                self.redis.close()


def _pool(pool: ConnectionPool | None, field: str) -> float:
    return float(getattr(pool.stats(), field)) if pool is not None else 0.0


def _file_signature(path: Path) -> tuple[int, int, int] | None:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return (stat.st_ino, stat.st_mtime_ns, stat.st_size)


def _describe(exc: Exception) -> str:
    """One line naming what is wrong with a config file (the field and why, when invalid)."""
    if isinstance(exc, ValidationError):
        return "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:3]
        )
    return str(exc).splitlines()[0]


def _version_in(path: Path) -> int | None:
    """The version a config file claims, even when the rest of it is not a valid config."""
    try:
        version = json.loads(path.read_bytes()).get("version")
    except (OSError, ValueError, AttributeError):
        return None
    return version if isinstance(version, int) else None


def _initial_config(path: Path) -> VersionedConfig:
    """The config to start with: the file when there is one, else version 1 of the defaults.

    A file that exists but is invalid stops the start (ValueError): serving defaults while the
    fleet believes another version is in force would hide exactly what a config push changed.
    """
    try:
        return read_config(path)
    except FileNotFoundError:
        return VersionedConfig(version=1)
    except (OSError, ValueError) as exc:
        raise ValueError(f"config file {path} is invalid: {str(exc).splitlines()[0]}") from None


class PilotHTTPServer(ThreadingHTTPServer):
    """A threading HTTP server that carries the pilot's state for its handlers."""

    daemon_threads = True
    # Do not join the request threads on close: a kept-alive idle connection would hold the
    # shutdown for its whole `timeout`, past supervisord's stopwaitsecs and into a SIGKILL.
    block_on_close = False
    # A load generator opens many connections at once; the default backlog of 5 would drop
    # them before the worker queue ever sees them.
    request_queue_size = 256

    def __init__(self, service: PilotService) -> None:
        self.service = service
        super().__init__((HOST, service.port), PilotRequestHandler)


class PilotRequestHandler(BaseHTTPRequestHandler):
    """Serves /health, /metrics, / and /faults and records each request in the metrics."""

    server: PilotHTTPServer
    server_version = "pilot"
    # Keep-alive, so a load generator reuses its connections instead of exhausting ports.
    protocol_version = "HTTP/1.1"
    # An idle kept-alive connection frees its thread after this many seconds.
    timeout = 30
    # Headers and body go out in two writes; with Nagle on, the body of a kept-alive reply
    # would wait for the client's delayed ACK (40 ms on Linux) and swamp the service time.
    disable_nagle_algorithm = True

    def do_GET(self) -> None:
        service = self.server.service
        path = self.path.split("?", 1)[0]
        with self._measured(path) as respond:
            if path == "/health":
                respond(200, service.health())
            elif path == "/metrics":
                respond(200, generate_latest(service.registry), CONTENT_TYPE_LATEST)
            elif path == "/":
                respond(*service.serve_work())
            elif path == "/orders":
                respond(*service.serve_orders(self.path))
            elif path == "/faults":
                respond(*self._control(service.list_faults))
            else:
                respond(404, {"error": f"no such path: {path}"})

    def do_POST(self) -> None:
        service = self.server.service
        path = self.path.split("?", 1)[0]
        with self._measured(path) as respond:
            # Read the body before anything else: left unread, it would be taken for the next
            # request on this kept-alive connection.
            try:
                params = self._json_body()
            except ValueError as exc:
                self.close_connection = True
                respond(400, {"error": str(exc)})
                return
            kind = _fault_kind(path)
            if kind is None:
                respond(404, {"error": f"no such path: {path}"})
                return
            respond(*self._control(lambda: service.inject_fault(kind, params)))

    def do_DELETE(self) -> None:
        service = self.server.service
        path = self.path.split("?", 1)[0]
        with self._measured(path) as respond:
            kind = _fault_kind(path)
            if kind is None:
                respond(404, {"error": f"no such path: {path}"})
                return
            respond(*self._control(lambda: service.clear_fault(kind)))

    @contextlib.contextmanager
    def _measured(self, path: str) -> Iterator[Callable[..., None]]:
        """Yield a `respond(status, body[, content_type])` and record the request's metrics."""
        service = self.server.service
        label = "/faults" if path.startswith("/faults") else path
        label = label if label in _KNOWN_PATHS else "other"
        started = time.perf_counter()
        sent: list[int] = []

        def respond(
            status: int, body: dict[str, Any] | bytes, content_type: str = "application/json"
        ) -> None:
            payload = body if isinstance(body, bytes) else json.dumps(body).encode()
            self._send(status, payload, content_type)
            sent.append(status)

        yield respond
        if sent:
            service.requests.labels(path=label, status=str(sent[0])).inc()
            service.latency.labels(path=label).observe(time.perf_counter() - started)

    def _control(self, action: Callable[[], dict[str, Any]]) -> tuple[int, dict[str, Any]]:
        """Run a /faults action for a loopback caller; map refusals to their HTTP status."""
        if self.client_address[0] not in _LOOPBACK:
            return 403, {"error": "the fault control endpoint answers 127.0.0.1 only"}
        try:
            return 200, action()
        except FaultRequestError as exc:
            return exc.status, {"error": str(exc)}

    def _json_body(self) -> dict[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        if length > _MAX_BODY:
            raise ValueError(f"body over {_MAX_BODY} bytes")
        raw = self.rfile.read(length) if length else b""
        if not raw.strip():
            return {}
        try:
            body = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ValueError(f"body is not JSON: {exc}") from None
        if not isinstance(body, dict):
            raise ValueError("body must be a JSON object of fault parameters")
        return body

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            # Say so: a client that reuses the connection would otherwise race our close.
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Access logs are off: the request counter says the same without filling the disk."""

    def log_error(self, format: str, *args: Any) -> None:
        log.warning("http error", detail=format % args, service=self.server.service.name)


def _fault_kind(path: str) -> str | None:
    prefix = "/faults/"
    if not path.startswith(prefix) or "/" in path[len(prefix) :] or path == prefix:
        return None
    return path[len(prefix) :]


def serve(
    name: str,
    port: int,
    state_dir: Path,
    *,
    config_file: Path | None = None,
    database_url: str | None = None,
    redis_url: str | None = None,
    cache_prefix: str | None = None,
) -> int:
    """Serve until SIGTERM or SIGINT; return the process exit code.

    The port is bound before the start is recorded, so `starts.log` counts only starts that
    actually served. SIGHUP re-reads the config file.
    """
    try:
        service = PilotService(
            name,
            port,
            state_dir,
            config_file=config_file,
            database_url=database_url,
            redis_url=redis_url,
            cache_prefix=cache_prefix,
        )
    except ValueError as exc:
        log.error("cannot start", service=name, error=str(exc))
        return 1
    try:
        server = PilotHTTPServer(service)
    except OSError as exc:
        log.error("cannot bind", service=name, host=HOST, port=port, error=str(exc))
        return 1

    def stop(signum: int, _frame: FrameType | None) -> None:
        # shutdown() waits for serve_forever() to return, which runs on this (main) thread:
        # ask for it from another thread or the handler would deadlock.
        log.info("stopping", service=name, signal=signal.Signals(signum).name)
        threading.Thread(target=server.shutdown, daemon=True).start()

    def reload(_signum: int, _frame: FrameType | None) -> None:
        service.request_reload()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGHUP, reload)
    threading.Thread(target=service.watch_config, name="config", daemon=True).start()
    threading.Thread(target=service.update_source, name="source", daemon=True).start()
    service.record_start()
    log.info(
        "started",
        service=name,
        pid=service.pid,
        host=HOST,
        port=port,
        config_version=service.versioned.version,
        database=service.pool is not None,
        cache=service.cache is not None,
    )
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        service.close()
    log.info("stopped", service=name, pid=service.pid, uptime_seconds=service.uptime_seconds)
    return 0


def configure_logging(level: str) -> None:
    """JSON lines on stderr (supervisord keeps them in the fleet's logs), at `level` and above.

    The pilot is a stand-in for a customer's service: it logs with structlog on its own, not
    through the platform's pipeline.
    """
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level.upper()),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pilot.service", description=__doc__)
    parser.add_argument("--name", required=True, help="service name (the supervisord program)")
    parser.add_argument("--port", required=True, type=int, help="TCP port on 127.0.0.1")
    parser.add_argument(
        "--state-dir", required=True, type=Path, help="directory of starts.log, config/, data/"
    )
    parser.add_argument(
        "--config", type=Path, default=None, help="config file (default STATE_DIR/config/NAME.json)"
    )
    args = parser.parse_args(argv)
    configure_logging(os.environ.get("NOFX_LOG_LEVEL", "INFO"))
    return serve(
        args.name,
        args.port,
        args.state_dir,
        config_file=args.config,
        database_url=os.environ.get(ENV_DATABASE_URL) or None,
        redis_url=os.environ.get(ENV_REDIS_URL) or None,
        cache_prefix=os.environ.get(ENV_CACHE_PREFIX) or None,
    )


if __name__ == "__main__":
    sys.exit(main())
