"""A private PostgreSQL 15 for staging, with `pg_stat_statements` preloaded.

The machine's PostgreSQL (and the embedded pgserver one) does not load `pg_stat_statements`,
which the platform's index advisor reads; a staging database that should get index
recommendations runs here instead, from Debian's binaries (`postgresql-15`), in a temporary
directory on a free port, and goes away with it::

    with PrivatePostgres() as url:
        ...  # postgresql://postgres@127.0.0.1:PORT/postgres

initdb and postgres refuse to run as root: as root they run as the `postgres` user.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import psycopg

from pilot.fleet import free_port

PG_BIN = Path("/usr/lib/postgresql/15/bin")
READY_WITHIN_S = 60.0


class PostgresUnavailableError(RuntimeError):
    """No private PostgreSQL can be started here (the message says what is missing)."""


def _as_postgres() -> list[str]:
    """The prefix that runs a command as the `postgres` user when we are root."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise PostgresUnavailableError(
            "running as root and there is no 'postgres' user to run PostgreSQL as"
        ) from None
    runuser = shutil.which("runuser")
    if runuser is None:
        raise PostgresUnavailableError("running as root and runuser is not installed")
    return [runuser, "-u", "postgres", "--"]


class PrivatePostgres:
    """Start on enter (its admin URL), stop and remove on exit."""

    def __init__(self, *, bin_dir: Path = PG_BIN, preload: str = "pg_stat_statements") -> None:
        self.bin_dir = bin_dir
        self.preload = preload
        self.base: Path | None = None
        self.server: subprocess.Popen[bytes] | None = None
        self.url = ""

    def __enter__(self) -> str:
        if not (self.bin_dir / "initdb").exists() or not (self.bin_dir / "postgres").exists():
            raise PostgresUnavailableError(
                f"no PostgreSQL 15 binaries in {self.bin_dir} (Debian postgresql-15)"
            )
        prefix = _as_postgres()
        self.base = Path(tempfile.mkdtemp(prefix="nofx-pg-"))
        data = self.base / "data"
        if prefix:
            shutil.chown(self.base, "postgres", "postgres")
        subprocess.run(
            [*prefix, str(self.bin_dir / "initdb"), "-D", str(data), "-A", "trust",
             "-U", "postgres", "-E", "UTF8", "--no-sync"],
            check=True, capture_output=True, timeout=180,
        )  # fmt: skip
        port = free_port()
        logfile = self.base / "server.log"
        with logfile.open("wb") as out:
            self.server = subprocess.Popen(
                [*prefix, str(self.bin_dir / "postgres"), "-D", str(data), "-p", str(port),
                 "-k", str(self.base), "-c", "listen_addresses=127.0.0.1",
                 "-c", f"shared_preload_libraries={self.preload}", "-c", "fsync=off"],
                stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        self.url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
        deadline = time.monotonic() + READY_WITHIN_S
        while True:
            try:
                psycopg.connect(self.url, connect_timeout=2).close()
                return self.url
            except psycopg.OperationalError:
                if self.server.poll() is not None or time.monotonic() > deadline:
                    self.__exit__(None, None, None)
                    raise PostgresUnavailableError(
                        f"private PostgreSQL did not start:\n{logfile.read_text()}"
                    ) from None
                time.sleep(0.2)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.base is None:
            return
        prefix = _as_postgres()
        subprocess.run(
            [*prefix, str(self.bin_dir / "pg_ctl"), "-D", str(self.base / "data"), "stop",
             "-m", "fast", "-w"],
            capture_output=True, timeout=120, check=False,
        )  # fmt: skip
        if self.server is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.server.wait(timeout=60)
            if self.server.poll() is None:
                self.server.kill()
                self.server.wait(timeout=30)
        shutil.rmtree(self.base, ignore_errors=True)
        self.base = None
