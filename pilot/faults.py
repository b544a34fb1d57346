"""Faults that live inside a pilot process: each one real, bounded, and undone by `stop`.

A fault here is a background thread that misbehaves the way a bug would — it holds memory, fills
the disk, takes database connections and never returns them — so that the process's own metrics
and the outside world (RSS, ``du``, ``pg_stat_activity``) show it, not a flag. Each is bounded so
that injecting it can never endanger the machine it runs on: memory and disk stop at a cap well
below what a developer's laptop or CI has, and the disk fill also stops when the filesystem
runs low.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
from pydantic import BaseModel, ConfigDict, Field

from pilot.cache import SourceCache
from pilot.pool import ConnectionPool, PoolTimeoutError, is_dead

MIB = 1024 * 1024
MEMORY_LEAK_MAX_MB = 512
DISK_FILL_MAX_MB = 1024
# The disk fill never leaves the filesystem with less than this free, whatever its quota says.
DISK_MIN_FREE_BYTES = 1024 * MIB
FILL_PREFIX = "fill-"
_FILL_FILE_MAX = 64 * MIB
_CHUNK = 4 * MIB


class FaultParams(BaseModel):
    """Parameters of an injected fault; unknown names are refused, so typos do not pass."""

    model_config = ConfigDict(extra="forbid")


class MemoryLeakParams(FaultParams):
    """How fast RSS grows and where it stops."""

    rate_mb_s: float = Field(default=32.0, gt=0, le=1024, description="growth rate")
    limit_mb: int = Field(
        default=256, ge=1, le=MEMORY_LEAK_MAX_MB, description="stop growing at this much"
    )


class DiskFillParams(FaultParams):
    """How fast the data directory grows and where it stops."""

    rate_mb_s: float = Field(default=32.0, gt=0, le=1024, description="write rate")
    quota_mb: int | None = Field(
        default=None,
        ge=1,
        le=DISK_FILL_MAX_MB,
        description="stop at this much; default the service's disk_quota_mb",
    )


class ConnectionLeakParams(FaultParams):
    """How many connections leak and how fast."""

    connections: int | None = Field(
        default=None, ge=1, le=100, description="how many to leak; default the whole pool"
    )
    interval_s: float = Field(default=0.1, ge=0, le=60, description="pause between two leaks")


class CrashParams(FaultParams):
    """The exit status of the crash and how long after the request it happens."""

    exit_code: int = Field(default=1, ge=1, le=125)
    after_s: float = Field(default=0.1, ge=0, le=60, description="delay, so the reply gets out")


class StaleCacheParams(FaultParams):
    """The stale cache takes no parameters (an empty body, so typos are still refused)."""


class BackgroundFault:
    """A fault run by one daemon thread until `stop`."""

    kind = "fault"

    def __init__(self) -> None:
        self.started_at = time.time()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"fault-{self.kind}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        raise NotImplementedError

    def _join(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def status(self) -> dict[str, Any]:
        return {"kind": self.kind, "started_at": self.started_at}

    def stop(self) -> dict[str, Any]:
        self._join()
        return self.status()


class MemoryLeak(BackgroundFault):
    """Grows the resident set by `rate_mb_s` up to `limit_mb`, in anonymous memory maps.

    Maps rather than Python objects: every page is written so it is resident, and unmapping
    returns it to the kernel at once, so RSS falls when the fault is cleared instead of staying
    at its high-water mark inside malloc's arenas.
    """

    kind = "memory_leak"

    def __init__(self, params: MemoryLeakParams) -> None:
        super().__init__()
        self.params = params
        self._chunks: list[mmap.mmap] = []
        self._lock = threading.Lock()

    @property
    def retained_bytes(self) -> int:
        with self._lock:
            return sum(len(chunk) for chunk in self._chunks)

    def _run(self) -> None:
        limit = self.params.limit_mb * MIB
        chunk = min(MIB, limit)
        pattern = b"\xa5" * chunk
        pause = chunk / (self.params.rate_mb_s * MIB)
        while not self._stop.is_set() and self.retained_bytes + chunk <= limit:
            block = mmap.mmap(-1, chunk)
            block.write(pattern)
            with self._lock:
                self._chunks.append(block)
            self._stop.wait(pause)

    def status(self) -> dict[str, Any]:
        return {
            **super().status(),
            "retained_bytes": self.retained_bytes,
            "limit_bytes": self.params.limit_mb * MIB,
        }

    def stop(self) -> dict[str, Any]:
        self._join()
        with self._lock:
            chunks, self._chunks = self._chunks, []
        freed = sum(len(chunk) for chunk in chunks)
        for block in chunks:
            block.close()
        return {**super().status(), "freed_bytes": freed}


class DiskUsage:
    """What a service's data directory holds, measured from the files themselves.

    Scans are cached for a fraction of a second: GET / checks the quota on every request and
    a scrape reads the gauge, and neither needs a fresher number than that.
    """

    def __init__(self, directory: Path, quota_bytes: int, *, max_age_s: float = 0.25) -> None:
        self.directory = directory
        self.quota_bytes = quota_bytes
        self._max_age_s = max_age_s
        self._lock = threading.Lock()
        self._measured_at = 0.0
        self._used = 0

    def used_bytes(self, *, fresh: bool = False) -> int:
        with self._lock:
            now = time.monotonic()
            if fresh or now - self._measured_at > self._max_age_s:
                self._used = _directory_size(self.directory)
                self._measured_at = now
            return self._used

    @property
    def full(self) -> bool:
        return self.used_bytes() >= self.quota_bytes

    def delete_fill_files(self) -> tuple[int, int]:
        """Delete what a disk fill wrote; return (files, bytes)."""
        files = deleted = 0
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self.directory):
                if entry.name.startswith(FILL_PREFIX) and entry.is_file():
                    size = entry.stat().st_size
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)
                        files += 1
                        deleted += size
        self.used_bytes(fresh=True)
        return files, deleted


def _directory_size(directory: Path) -> int:
    total = 0
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(directory):
            with contextlib.suppress(FileNotFoundError):
                if entry.is_file(follow_symlinks=False):
                    total += entry.stat(follow_symlinks=False).st_size
    return total


class DiskFill(BackgroundFault):
    """Writes ``fill-*.bin`` files into the data directory at `rate_mb_s` until the quota.

    It stops early when the filesystem would keep less than `DISK_MIN_FREE_BYTES` free, so a
    fill can never take a real disk down with the staging fleet.
    """

    kind = "disk_fill"

    def __init__(self, params: DiskFillParams, usage: DiskUsage) -> None:
        super().__init__()
        self.params = params
        self.usage = usage
        self.quota_bytes = (
            params.quota_mb * MIB if params.quota_mb is not None else usage.quota_bytes
        )
        self.written = 0
        self.stopped_because = ""

    def _run(self) -> None:
        directory = self.usage.directory
        directory.mkdir(parents=True, exist_ok=True)
        pattern = b"\x5a" * _CHUNK
        bytes_per_s = self.params.rate_mb_s * MIB
        index = 0
        out = None
        try:
            while not self._stop.is_set():
                room = self.quota_bytes - self.usage.used_bytes(fresh=True)
                if room <= 0:
                    self.stopped_because = "quota reached"
                    break
                if shutil.disk_usage(directory).free - _CHUNK < DISK_MIN_FREE_BYTES:
                    self.stopped_because = "filesystem low on space"
                    break
                if out is None or out.tell() >= _FILL_FILE_MAX:
                    if out is not None:
                        out.close()
                    index += 1
                    name = f"{FILL_PREFIX}{os.getpid()}-{index:04d}.bin"
                    out = (directory / name).open("ab")
                size = min(_CHUNK, room)
                out.write(pattern[:size])
                out.flush()
                self.written += size
                self._stop.wait(size / bytes_per_s)
        except OSError as exc:  # ENOSPC, a deleted directory: a full disk is the point
            self.stopped_because = f"write failed: {exc}"
        finally:
            if out is not None:
                with contextlib.suppress(OSError):
                    out.close()

    def status(self) -> dict[str, Any]:
        return {
            **super().status(),
            "written_bytes": self.written,
            "quota_bytes": self.quota_bytes,
            "used_bytes": self.usage.used_bytes(),
            "stopped_because": self.stopped_because or None,
        }

    def stop(self) -> dict[str, Any]:
        self._join()
        files, deleted = self.usage.delete_fill_files()
        return {**super().status(), "deleted_files": files, "deleted_bytes": deleted}


class ConnectionLeak(BackgroundFault):
    """Takes connections from the pool, opens a transaction on each and never gives them back.

    Each leaked connection sits ``idle in transaction`` under the service's application_name,
    which is what a forgotten ``with pool.connection()`` looks like from the database. The leak
    takes `connections` of them (the whole pool by default), one every `interval_s`, so the pool
    exhausts and GET / first waits, then fails.

    A leaked connection whose backend is terminated (``pg_terminate_backend``, the healing
    track's remedy) is noticed and handed back, so the pool recovers without a restart: the
    fault then stays listed, holding nothing, until it is cleared.
    """

    kind = "connection_leak"

    def __init__(self, params: ConnectionLeakParams, pool: ConnectionPool) -> None:
        super().__init__()
        self.params = params
        self.pool = pool
        self.target = params.connections or pool.max_size
        self._lock = threading.Lock()
        self._held: list[tuple[psycopg.Connection[Any], int]] = []
        self.leaked = 0
        self.reclaimed = 0
        self.errors = 0

    def _run(self) -> None:
        while not self._stop.is_set():
            if self.leaked < self.target:
                self._leak_one()
                self._stop.wait(self.params.interval_s)
            else:
                self._stop.wait(0.25)
            self._reclaim_dead()

    def _leak_one(self) -> None:
        try:
            conn = self.pool.acquire(timeout=0.5)
        except (PoolTimeoutError, psycopg.Error):
            self.errors += 1
            return
        try:
            conn.execute("BEGIN")
            row = conn.execute("SELECT pg_backend_pid()").fetchone()
        except psycopg.Error:
            self.errors += 1
            self.pool.release(conn)
            return
        with self._lock:
            self._held.append((conn, int(row[0]) if row else 0))
            self.leaked += 1

    def _reclaim_dead(self) -> None:
        with self._lock:
            dead = [(conn, pid) for conn, pid in self._held if is_dead(conn)]
            self._held = [held for held in self._held if held not in dead]
        for conn, _pid in dead:
            with contextlib.suppress(psycopg.Error, OSError):
                conn.close()
            self.pool.release(conn)
            self.reclaimed += 1

    def status(self) -> dict[str, Any]:
        with self._lock:
            backends = [pid for _conn, pid in self._held]
        return {
            **super().status(),
            "target": self.target,
            "leaked": self.leaked,
            "held": len(backends),
            "backend_pids": backends,
            "reclaimed": self.reclaimed,
        }

    def stop(self) -> dict[str, Any]:
        self._join()
        with self._lock:
            held, self._held = self._held, []
        for conn, _pid in held:
            self.pool.release(conn)  # rolls the transaction back, or drops a dead connection
        return {**super().status(), "returned": len(held), "reclaimed": self.reclaimed}


class StaleCache:
    """Serves stale data: the cache stops being invalidated and its entry stops expiring.

    No thread: the fault is the absence of the invalidation that `SourceCache.advance_source`
    normally does, so it holds as long as the flag does (or until someone deletes the key).
    """

    kind = "stale_cache"

    def __init__(self, cache: SourceCache) -> None:
        self.cache = cache
        self.started_at = time.time()
        self.keys = cache.freeze()

    def status(self) -> dict[str, Any]:
        return {"kind": self.kind, "started_at": self.started_at, **self.keys}

    def stop(self) -> dict[str, Any]:
        return {**self.status(), **self.cache.thaw()}
