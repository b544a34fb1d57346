"""`terminate_idle_connections` against a real PostgreSQL: what it ends, what it spares, and how
many passes it makes (one when the leak has taken all it takes; another, waited for, when a
session is still on its way to stuck)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator

import psycopg
import pytest
from sqlalchemy import Engine, text

from models.actions import TerminateIdleParams
from models.healing import FleetTarget
from nofx.db import to_libpq_url
from nofx.healing.actions import ActionContext, TerminateIdleConnections

ACTION = TerminateIdleConnections()


@pytest.fixture
def app() -> str:
    return f"stuck-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def sessions(database_url: str, app: str) -> Iterator[Callable[[bool], psycopg.Connection]]:
    """Open sessions of `app` left idle in a transaction (`wrote`: holding a transaction id)."""
    opened: list[psycopg.Connection] = []

    def open_idle(wrote: bool = False) -> psycopg.Connection:
        conn = psycopg.connect(to_libpq_url(database_url), application_name=app)
        opened.append(conn)
        conn.execute("SELECT txid_current()" if wrote else "SELECT 1")  # opens the transaction
        return conn

    yield open_idle
    for conn in opened:
        conn.close()


def context(db_engine: Engine, database_url: str, app: str) -> ActionContext:
    target = FleetTarget(
        service=app, endpoint="http://127.0.0.1:1", metadata={"application_name": app}
    )
    return ActionContext(target=target, engine=db_engine, database_url=database_url, key=app)


def pid(conn: psycopg.Connection) -> int:
    return conn.info.backend_pid


def idle_for(db_engine: Engine, pids: list[int], seconds: float, timeout: float = 30.0) -> None:
    """Wait until every session in `pids` has been idle in its transaction for `seconds`."""
    deadline = time.monotonic() + timeout
    query = text(
        "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(:p)"
        " AND state = 'idle in transaction'"
        " AND state_change < now() - make_interval(secs => :s)"
    )
    while True:
        with db_engine.connect() as conn:
            if conn.execute(query, {"p": pids, "s": seconds}).scalar() == len(pids):
                return
        assert time.monotonic() < deadline, f"sessions {pids} not idle for {seconds}s"
        time.sleep(0.1)


def alive(conn: psycopg.Connection) -> bool:
    try:
        conn.execute("SELECT 1")
    except psycopg.OperationalError:
        return False
    return True


def test_a_finished_leak_is_ended_in_one_pass_and_writers_are_spared(
    db_engine: Engine, database_url: str, app: str, sessions: Callable[..., psycopg.Connection]
) -> None:
    leaked = [sessions() for _ in range(3)]
    writer = sessions(wrote=True)
    params = TerminateIdleParams(idle_seconds=1.0, scans=3, scan_interval_seconds=5.0)
    idle_for(db_engine, [pid(c) for c in [*leaked, writer]], params.idle_seconds)
    ctx = context(db_engine, database_url, app)

    done = ACTION.perform(ctx, params, ACTION.capture(ctx, params))

    assert done.performed
    assert sorted(done.detail["terminated"]) == sorted(pid(c) for c in leaked)
    assert done.detail["spared_with_writes"] == [pid(writer)]
    assert done.detail["scans"] == 1, done.detail  # nothing was on its way: no second pass
    assert not any(alive(c) for c in leaked)
    assert alive(writer)


def test_a_session_on_its_way_to_stuck_is_waited_for_and_ended(
    db_engine: Engine, database_url: str, app: str, sessions: Callable[..., psycopg.Connection]
) -> None:
    params = TerminateIdleParams(
        idle_seconds=4.0, scans=3, scan_interval_seconds=10.0, approaching_seconds=0.0
    )
    first = sessions()
    idle_for(db_engine, [pid(first)], params.idle_seconds)
    late = sessions()  # the leak took this one just now: idle, not yet for idle_seconds
    ctx = context(db_engine, database_url, app)

    done = ACTION.perform(ctx, params, ACTION.capture(ctx, params))

    assert sorted(done.detail["terminated"]) == sorted([pid(first), pid(late)]), done.detail
    assert done.detail["scans"] == 2, done.detail
    assert not alive(first)
    assert not alive(late)


def test_nothing_stuck_ends_nothing(
    db_engine: Engine, database_url: str, app: str, sessions: Callable[..., psycopg.Connection]
) -> None:
    busy = sessions()  # idle in a transaction for a moment only, as a request between statements
    ctx = context(db_engine, database_url, app)
    params = TerminateIdleParams(idle_seconds=60.0)

    done = ACTION.perform(ctx, params, ACTION.capture(ctx, params))

    assert not done.performed
    assert done.detail["terminated"] == []
    assert alive(busy)
