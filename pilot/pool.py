"""A small, bounded PostgreSQL connection pool for the pilot service.

Why not ``psycopg_pool``: the staging fleet needs to *misuse* its pool on purpose — a connection
leak takes connections out and never gives them back — and to report exactly how many are open,
in use and waited for. A pool of our own of a few dozen lines makes those numbers exact and keeps
one dependency out of the project; the pilot is a test subject, not a production service.

Connections are opened lazily, in autocommit mode, with the service's ``application_name`` so
that ``pg_stat_activity`` shows whose they are. A connection whose server side went away (a
restart, or ``pg_terminate_backend`` from the healing track) is noticed when it is handed out or
given back, and replaced.
"""

from __future__ import annotations

import contextlib
import select
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus


class PoolTimeoutError(TimeoutError):
    """No connection became free within the caller's timeout: the pool is exhausted."""


@dataclass(frozen=True)
class PoolStats:
    """A snapshot of the pool, as the pilot exports it to Prometheus."""

    size: int
    open: int
    in_use: int
    idle: int
    waiting: int


def is_dead(conn: psycopg.Connection[Any]) -> bool:
    """Whether the server side of an *idle* connection is gone.

    An idle connection (autocommit, or idle in transaction) receives nothing unless the server
    is about to close it: PostgreSQL sends a FATAL error on ``pg_terminate_backend`` or shutdown,
    then closes the socket. So a readable socket on an idle connection means it is dead, and
    finding that out costs one ``select`` instead of a round trip.
    """
    if conn.closed or conn.broken:
        return True
    try:
        readable, _, _ = select.select([conn.fileno()], [], [], 0)
    except (OSError, ValueError, psycopg.Error):
        return True
    return bool(readable)


class ConnectionPool:
    """At most `max_size` connections, handed out one thread at a time.

    Args:
        conninfo: a libpq URL or DSN.
        max_size: the most connections open at once; `resize` changes it (config reload).
        application_name: set on every connection, to find them in ``pg_stat_activity``.
        connect_timeout: seconds a new connection may take to open.
    """

    def __init__(
        self,
        conninfo: str,
        *,
        max_size: int,
        application_name: str,
        connect_timeout: float = 3.0,
    ) -> None:
        self._conninfo = conninfo
        self._max_size = max_size
        self._application_name = application_name
        self._connect_timeout = max(1, round(connect_timeout))
        self._cond = threading.Condition()
        self._idle: list[psycopg.Connection[Any]] = []
        self._open = 0
        self._in_use = 0
        self._waiting = 0
        self._closed = False
        self.on_hold: Callable[[float], None] | None = None

    @property
    def max_size(self) -> int:
        return self._max_size

    def resize(self, max_size: int) -> None:
        """Change the bound; surplus connections are closed as they come back."""
        with self._cond:
            self._max_size = max_size
            surplus = []
            while self._idle and self._open > self._max_size:
                surplus.append(self._idle.pop())
                self._open -= 1
            self._cond.notify_all()
        for conn in surplus:
            _close(conn)

    def stats(self) -> PoolStats:
        with self._cond:
            return PoolStats(
                size=self._max_size,
                open=self._open,
                in_use=self._in_use,
                idle=len(self._idle),
                waiting=self._waiting,
            )

    def acquire(self, timeout: float) -> psycopg.Connection[Any]:
        """Take a connection, waiting up to `timeout` seconds for one to be free.

        Raises:
            PoolTimeoutError: every connection stayed in use for `timeout` seconds.
            psycopg.OperationalError: a new connection could not be opened.
        """
        deadline = time.monotonic() + timeout
        conn: psycopg.Connection[Any] | None = None
        dead: list[psycopg.Connection[Any]] = []
        with self._cond:
            if self._closed:
                raise PoolTimeoutError("the pool is closed")
            self._waiting += 1
            try:
                while True:
                    while self._idle:
                        candidate = self._idle.pop()
                        if is_dead(candidate):
                            dead.append(candidate)
                            self._open -= 1
                            continue
                        conn = candidate
                        break
                    if conn is not None or self._open < self._max_size:
                        break
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise PoolTimeoutError(
                            f"no free connection within {timeout:g}s"
                            f" ({self._in_use} of {self._max_size} in use)"
                        )
                    self._cond.wait(remaining)
                self._in_use += 1
                if conn is None:
                    self._open += 1  # reserve the slot; the connection opens outside the lock
            finally:
                self._waiting -= 1
        for corpse in dead:
            _close(corpse)
        if conn is not None:
            return conn
        try:
            return psycopg.connect(
                self._conninfo,
                autocommit=True,
                application_name=self._application_name,
                connect_timeout=self._connect_timeout,
            )
        except BaseException:
            with self._cond:
                self._open -= 1
                self._in_use -= 1
                self._cond.notify()
            raise

    def release(self, conn: psycopg.Connection[Any]) -> None:
        """Give a connection back: rolled back if a transaction is open, closed if broken."""
        keep = not conn.closed and not conn.broken
        if keep and not _idle(conn):
            try:
                conn.rollback()
            except psycopg.Error:
                keep = False
            keep = keep and _idle(conn)
        with self._cond:
            self._in_use -= 1
            pooled = keep and not self._closed and self._open <= self._max_size
            if pooled:
                self._idle.append(conn)
            else:
                self._open -= 1
            self._cond.notify()
        if not pooled:
            _close(conn)

    @contextlib.contextmanager
    def connection(self, timeout: float) -> Iterator[psycopg.Connection[Any]]:
        """`acquire` for the length of a ``with`` block, then `release`; how long the
        connection was held goes to `on_hold` (the service's histogram), if set."""
        conn = self.acquire(timeout)
        taken = time.monotonic()
        try:
            yield conn
        finally:
            self.release(conn)
            if self.on_hold is not None:
                self.on_hold(time.monotonic() - taken)

    def close(self) -> None:
        """Close the idle connections and refuse new requests; borrowed ones close on return."""
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
            self._open -= len(idle)
            self._cond.notify_all()
        for conn in idle:
            _close(conn)


def _idle(conn: psycopg.Connection[Any]) -> bool:
    """Whether the server sees `conn` outside any transaction (ready for the next borrower)."""
    return conn.info.transaction_status == TransactionStatus.IDLE


def _close(conn: psycopg.Connection[Any]) -> None:
    with contextlib.suppress(psycopg.Error, OSError):
        conn.close()
