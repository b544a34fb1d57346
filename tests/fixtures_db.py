"""PostgreSQL fixtures: a real server, a migrated scratch database per session, engines.

Loaded by ``tests/conftest.py`` through ``pytest_plugins``. The server is the one named by
``NOFX_TEST_DATABASE_URL`` when set (CI points it at its PostgreSQL service; the role must be
allowed to CREATE DATABASE), otherwise an embedded ``pgserver`` started under the session's tmp
dir, so ``pytest`` works on a laptop with nothing installed. Tests never share a database with a
developer's data: every session works in a ``nofx_test_*`` database dropped at the end.

Fixtures:
    pg_admin_url: (session) a URL on the server that may create databases.
    database_url: (session) a scratch database with every migration applied, shared by the
        session's tests; tests must not assume it is empty.
    db_engine: (function) a SQLAlchemy engine on ``database_url``, disposed after the test.
    fresh_database_url: (function) a migrated scratch database of the test's own, for tests that
        need an empty table or break things on purpose (tampering with the audit chain).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from pgserver.postgres_server import get_server
from sqlalchemy import Engine

from nofx.db import make_engine, migrate, scratch_database

TEST_DATABASE_URL_ENV = "NOFX_TEST_DATABASE_URL"


@pytest.fixture(scope="session")
def pg_admin_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A server to create scratch databases on: the CI/dev server, or an embedded one."""
    configured = os.environ.get(TEST_DATABASE_URL_ENV)
    if configured:
        yield configured
        return
    server = get_server(tmp_path_factory.mktemp("pgserver") / "pgdata", cleanup_mode="stop")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()


@pytest.fixture(scope="session")
def database_url(pg_admin_url: str) -> Iterator[str]:
    """The session's migrated scratch database."""
    with scratch_database(pg_admin_url) as url:
        migrate(url)
        yield url


@pytest.fixture
def db_engine(database_url: str) -> Iterator[Engine]:
    """An engine on the session's database, disposed after the test."""
    engine = make_engine(database_url)
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.fixture
def fresh_database_url(pg_admin_url: str) -> Iterator[str]:
    """A migrated scratch database for this test alone."""
    with scratch_database(pg_admin_url) as url:
        migrate(url)
        yield url
