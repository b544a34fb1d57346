"""The database engine, the migration runner and throw-away databases for tests.

The numbered files in ``sql/`` are the schema's single source of truth: the SQLModel classes in
``models/tables.py`` mirror them and are never used to create tables. ``migrate`` applies the
files that a database has not seen yet, in name order, each in its own transaction, and records
each one's SHA-256 in ``schema_migrations`` so that an edited, already-applied file is refused
instead of silently diverging from what production runs.

Every function here accepts any PostgreSQL URL a user is likely to hold — ``postgresql://``,
``postgres://``, ``postgresql+psycopg://`` and the unix-socket form that ``pgserver`` prints
(``postgresql://postgres:@/postgres?host=/some/dir``) — so ``NOFX_DATABASE_URL`` can be pasted
from anywhere.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from sqlalchemy import Engine, create_engine
from sqlalchemy.engine import URL, make_url

SQL_DIR = Path(__file__).resolve().parent.parent / "sql"
"""Where the numbered migrations live (shipped next to the packages when installed)."""

MIGRATION_TABLE = "schema_migrations"

# One constant key for every NOFX process: concurrent `migrate` calls (workers starting together,
# parallel test sessions) queue on it instead of racing to create the same tables.
MIGRATION_LOCK_KEY = 0x6E6F_6678_6D69_67  # "nofxmig"

_MIGRATION_NAME = re.compile(r"^\d{3}_[A-Za-z0-9_\-]+\.sql$")
_POSTGRES_SCHEMES = {"postgres", "postgresql"}
_DATABASE_PREFIX = re.compile(r"^[a-z_][a-z0-9_]{0,39}$")


class MigrationError(RuntimeError):
    """The migrations on disk and the database disagree; nothing was applied.

    Raised when a file already applied to the database has changed since (its checksum differs),
    which would leave the database built from SQL that no longer exists anywhere.
    """


@dataclass(frozen=True)
class Migration:
    """One numbered SQL file on disk."""

    name: str
    path: Path
    checksum: str


@dataclass(frozen=True)
class AppliedMigration:
    """One row of ``schema_migrations``: a file the database has run."""

    name: str
    checksum: str
    applied_at: datetime


@dataclass(frozen=True)
class MigrationStatus:
    """How a database compares with the migrations on disk.

    Attributes:
        applied: files the database has run, in order.
        pending: files on disk the database has not run yet, in the order ``migrate`` would.
        changed: applied files whose content differs from what was run (``migrate`` refuses).
        unknown: files the database has run that are not on disk (a newer release ran here).
    """

    applied: list[AppliedMigration] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)

    @property
    def up_to_date(self) -> bool:
        """True when nothing is pending and nothing applied has changed."""
        return not self.pending and not self.changed


# --------------------------------------------------------------------------------------------
# URLs and engines


def _parse_postgres_url(url: str | URL) -> URL:
    """Parse ``url`` and refuse anything that is not PostgreSQL, naming what was given."""
    parsed = make_url(url) if isinstance(url, str) else url
    backend = parsed.drivername.split("+", 1)[0]
    if backend not in _POSTGRES_SCHEMES:
        raise ValueError(
            f"not a PostgreSQL URL: {parsed.render_as_string(hide_password=True)!r} "
            "(expected postgresql://, postgres:// or postgresql+psycopg://)"
        )
    return parsed


def to_sqlalchemy_url(url: str | URL) -> str:
    """Return ``url`` as a SQLAlchemy URL for the psycopg 3 driver.

    SQLAlchemy reads a bare ``postgresql://`` as psycopg2, which is not installed, and does not
    know ``postgres://`` at all; both are rewritten to ``postgresql+psycopg://``. Credentials,
    host, port, database and query options (including ``host=/socket/dir``) are kept.

    Args:
        url: a PostgreSQL URL in any of the usual spellings.

    Returns:
        The same location as a ``postgresql+psycopg://`` URL string, password included.

    Raises:
        ValueError: the URL is not a PostgreSQL URL.
    """
    parsed = _parse_postgres_url(url).set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def to_libpq_url(url: str | URL) -> str:
    """Return ``url`` as a plain ``postgresql://`` URI that libpq (psycopg, psql) understands.

    Raises:
        ValueError: the URL is not a PostgreSQL URL.
    """
    parsed = _parse_postgres_url(url).set(drivername="postgresql")
    return parsed.render_as_string(hide_password=False)


def with_database(url: str | URL, database: str) -> str:
    """Return ``url`` pointing at another database on the same server, in the same spelling.

    Raises:
        ValueError: the URL is not a PostgreSQL URL.
    """
    parsed = _parse_postgres_url(url).set(database=database)
    return parsed.render_as_string(hide_password=False)


def make_engine(url: str | URL, **kwargs: Any) -> Engine:
    """Create the process's SQLAlchemy engine (one per worker process, shared by activities).

    ``pool_pre_ping`` is on because the platform must ride out a database restart: a pooled
    connection that died with the old server is replaced instead of failing an activity attempt.

    Args:
        url: a PostgreSQL URL in any of the spellings ``to_sqlalchemy_url`` accepts.
        **kwargs: passed to ``sqlalchemy.create_engine`` (e.g. ``pool_size``, ``echo``).

    Returns:
        An engine on the psycopg 3 driver.
    """
    kwargs.setdefault("pool_pre_ping", True)
    return create_engine(to_sqlalchemy_url(url), **kwargs)


def _connect(url: str | URL, **kwargs: Any) -> psycopg.Connection[Any]:
    return psycopg.connect(to_libpq_url(url), **kwargs)


# --------------------------------------------------------------------------------------------
# Migrations


def discover_migrations(sql_dir: Path | None = None) -> list[Migration]:
    """List the ``NNN_name.sql`` files of ``sql_dir`` in the order they are applied.

    Raises:
        MigrationError: the directory does not exist.
    """
    directory = SQL_DIR if sql_dir is None else Path(sql_dir)
    if not directory.is_dir():
        raise MigrationError(f"migration directory not found: {directory}")
    found = [
        Migration(
            name=path.name,
            path=path,
            checksum=hashlib.sha256(path.read_bytes()).hexdigest(),
        )
        for path in directory.iterdir()
        if path.is_file() and _MIGRATION_NAME.match(path.name)
    ]
    return sorted(found, key=lambda migration: migration.name)


def _ensure_migration_table(conn: psycopg.Connection[Any]) -> None:
    conn.execute(
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} ("
            " filename TEXT PRIMARY KEY,"
            " checksum TEXT NOT NULL,"
            " applied_at TIMESTAMPTZ NOT NULL DEFAULT NOW())"
        ).format(sql.Identifier(MIGRATION_TABLE))
    )


def _read_applied(conn: psycopg.Connection[Any]) -> list[AppliedMigration]:
    exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", [MIGRATION_TABLE]).fetchone()
    if not exists or not exists[0]:
        return []
    rows = conn.execute(
        sql.SQL("SELECT filename, checksum, applied_at FROM {} ORDER BY filename").format(
            sql.Identifier(MIGRATION_TABLE)
        )
    ).fetchall()
    return [AppliedMigration(name=row[0], checksum=row[1], applied_at=row[2]) for row in rows]


def _compare(on_disk: list[Migration], applied: list[AppliedMigration]) -> MigrationStatus:
    applied_by_name = {row.name: row for row in applied}
    disk_names = {migration.name for migration in on_disk}
    return MigrationStatus(
        applied=applied,
        pending=[m.name for m in on_disk if m.name not in applied_by_name],
        changed=[
            m.name
            for m in on_disk
            if m.name in applied_by_name and applied_by_name[m.name].checksum != m.checksum
        ],
        unknown=[row.name for row in applied if row.name not in disk_names],
    )


def migrate(url: str | URL, *, sql_dir: Path | None = None) -> list[str]:
    """Apply the pending migrations of ``sql_dir`` to the database at ``url``.

    Safe to call from every process at start-up: a session advisory lock serialises concurrent
    callers, so the second one finds everything applied and returns an empty list. Each file runs
    in its own transaction together with its ``schema_migrations`` row, so a failing file leaves
    the database at the previous file, never half-way through one.

    Args:
        url: the database to migrate (any spelling ``to_sqlalchemy_url`` accepts).
        sql_dir: the directory of ``NNN_name.sql`` files; the project's ``sql/`` by default.

    Returns:
        The file names applied by this call, in order (empty when already up to date).

    Raises:
        MigrationError: an applied file's content changed since it ran (the message names it);
            nothing is applied in that case.
        psycopg.Error: a migration failed; the message is PostgreSQL's, and the files before it
            stay applied.
    """
    on_disk = discover_migrations(sql_dir)
    applied_now: list[str] = []
    with _connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", [MIGRATION_LOCK_KEY])
        try:
            _ensure_migration_table(conn)
            status = _compare(on_disk, _read_applied(conn))
            if status.changed:
                raise MigrationError(
                    "applied migration(s) changed since they ran: "
                    + ", ".join(status.changed)
                    + "; never edit an applied migration, add a new numbered file instead"
                )
            pending = set(status.pending)
            for migration in on_disk:
                if migration.name not in pending:
                    continue
                script = migration.path.read_text(encoding="utf-8")
                with conn.transaction():
                    # No parameters: psycopg sends the file with the simple query protocol, which
                    # runs every statement of it (and leaves `%` in the SQL alone).
                    conn.execute(script.encode("utf-8"))
                    conn.execute(
                        sql.SQL("INSERT INTO {} (filename, checksum) VALUES (%s, %s)").format(
                            sql.Identifier(MIGRATION_TABLE)
                        ),
                        [migration.name, migration.checksum],
                    )
                applied_now.append(migration.name)
        finally:
            if not conn.broken:  # a dead connection has released its session lock already
                conn.execute("SELECT pg_advisory_unlock(%s)", [MIGRATION_LOCK_KEY])
    return applied_now


def migration_status(url: str | URL, *, sql_dir: Path | None = None) -> MigrationStatus:
    """Compare the database at ``url`` with the migrations on disk, changing nothing.

    Args:
        url: the database to inspect.
        sql_dir: the directory of ``NNN_name.sql`` files; the project's ``sql/`` by default.

    Returns:
        Which files are applied, pending, changed since applied, or unknown to this release.
    """
    on_disk = discover_migrations(sql_dir)
    with _connect(url, autocommit=True) as conn:
        return _compare(on_disk, _read_applied(conn))


# --------------------------------------------------------------------------------------------
# Throw-away databases


@contextmanager
def scratch_database(admin_url: str | URL, prefix: str = "nofx_test") -> Iterator[str]:
    """Create a uniquely named, empty database on ``admin_url``'s server; drop it afterwards.

    Tests (and benchmarks) get a database nobody else writes to, on a real server, without
    needing one server each. The drop uses ``WITH (FORCE)``, so connections a test forgot to
    close (an engine's pool, a worker) do not keep the database alive.

    Args:
        admin_url: a URL of any existing database on the server, as a role that may
            ``CREATE DATABASE``.
        prefix: start of the new database's name (lowercase letters, digits, underscores).

    Yields:
        The new database's URL, spelled like ``admin_url`` (same scheme, host and options).

    Raises:
        ValueError: ``prefix`` is not a plain lowercase identifier.
    """
    if not _DATABASE_PREFIX.match(prefix):
        raise ValueError(f"database prefix must match {_DATABASE_PREFIX.pattern}: {prefix!r}")
    name = f"{prefix}_{uuid.uuid4().hex[:16]}"
    with _connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield with_database(admin_url, name)
    finally:
        with _connect(admin_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
