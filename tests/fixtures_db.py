"""PostgreSQL fixtures: a real server, a migrated scratch database per session, engines.

Loaded by ``tests/conftest.py`` through ``pytest_plugins``. The server is the one named by
``NOFX_TEST_DATABASE_URL`` when set (CI points it at its PostgreSQL service; the role must be
allowed to CREATE DATABASE), otherwise an embedded ``pgserver`` started in a temporary
directory (removed at the end), so ``pytest`` works on a laptop with nothing installed. Tests
never share a database with a developer's data: every session works in a ``nofx_test_*``
database dropped at the end.

Fixtures:
    pg_admin_url: (session) a URL on the server that may create databases.
    database_url: (session) a scratch database with every migration applied, shared by the
        session's tests; tests must not assume it is empty.
    db_engine: (function) a SQLAlchemy engine on ``database_url``, disposed after the test.
    fresh_database_url: (function) a migrated scratch database of the test's own, for tests that
        need an empty table or break things on purpose (tampering with the audit chain).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pgserver.postgres_server import get_server
from sqlalchemy import Engine

from nofx.db import make_engine, migrate, scratch_database
from nofx.healing.guardrails import set_policy
from nofx.settings import get_settings

TEST_DATABASE_URL_ENV = "NOFX_TEST_DATABASE_URL"


@pytest.fixture(scope="session")
def pg_admin_url() -> Iterator[str]:
    """A server to create scratch databases on: the CI/dev server, or an embedded one.

    The embedded server's data lives in its own directory under the system temp dir, not under
    pytest's ``tmp_path_factory``: run as root, pgserver runs PostgreSQL as the ``pgserver``
    user, and every pytest session that starts resets ``/tmp/pytest-of-root`` to mode 0700,
    which cuts a running server off from its data directory (PANIC mid-run).
    """
    configured = os.environ.get(TEST_DATABASE_URL_ENV)
    if configured:
        yield configured
        return
    base = Path(tempfile.mkdtemp(prefix="nofx-pgserver-"))
    try:
        server = get_server(base / "pgdata", cleanup_mode="stop")
        try:
            yield server.get_uri()
        finally:
            server.cleanup()
    finally:
        shutil.rmtree(base, ignore_errors=True)


# Tests fail incidents on purpose and fault many services at once; with the production policy
# the circuit breaker and the unhealthy-fleet stop would then (rightly) hold every later test's
# healing for a person. The session runs with these limits; tests/test_guardrails.py sets the
# ones it checks and puts this back.
TEST_POLICY = {
    "breaker_failures": 10_000,
    "unhealthy_share_stop": 1.0,
    "cooldown_seconds": 0,
    "max_actions_per_hour": 10_000,
    "max_concurrent_actions": 50,
}


@contextlib.contextmanager
def policed_database(admin_url: str) -> Iterator[str]:
    """A migrated scratch database with the tests' guardrail policy, dropped afterwards."""
    with scratch_database(admin_url) as url:
        migrate(url)
        engine = make_engine(url)
        try:
            set_policy(engine, TEST_POLICY)
        finally:
            engine.dispose()
        yield url


@pytest.fixture(scope="session")
def database_url(pg_admin_url: str) -> Iterator[str]:
    """The session's migrated scratch database, with the test session's guardrail policy."""
    with policed_database(pg_admin_url) as url:
        yield url


def _disposed(url: str) -> Iterator[Engine]:
    engine = make_engine(url)
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.fixture
def db_engine(database_url: str) -> Iterator[Engine]:
    """An engine on the session's database, disposed after the test."""
    yield from _disposed(database_url)


@pytest.fixture
def fresh_database_url(pg_admin_url: str) -> Iterator[str]:
    """A migrated scratch database for this test alone."""
    with scratch_database(pg_admin_url) as url:
        migrate(url)
        yield url


@pytest.fixture
def nofx_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Any]]:
    """Run `nofx ...` in process against a database: `nofx_cli(url, "healing", "status")`.

    The settings are read once per process (`get_settings` is cached), so the cache is cleared
    around each test that points the CLI somewhere else.
    """
    from typer.testing import CliRunner

    from nofx.cli import app

    monkeypatch.setenv("NOFX_HOME", str(tmp_path))
    runner = CliRunner()

    def run(database_url: str, *args: str, stdin: str | None = None) -> Any:
        monkeypatch.setenv("NOFX_DATABASE_URL", database_url)
        get_settings.cache_clear()
        return runner.invoke(app, list(args), input=stdin)

    try:
        yield run
    finally:
        get_settings.cache_clear()


@pytest.fixture
def fresh_engine(fresh_database_url: str) -> Iterator[Engine]:
    """An engine on a migrated database of this test's own (exact counts, tampering)."""
    yield from _disposed(fresh_database_url)
