"""The contract between the fleet and its pilot processes: config, paths, names, environment.

The fleet writes each pilot's versioned configuration to ``state/config/<service>.json`` and the
pilot reloads it when the file changes (or on SIGHUP), so a config push is a real change of a
running process, the same shape as a bad deploy of a feature flag. Both sides import this module
so they agree on the file format, where things live and how the platform finds a pilot's
PostgreSQL backends and Redis keys again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

CONFIG_DIR = "config"
DATA_DIR = "data"

# Environment variables the fleet sets for each pilot (supervisord `environment=`).
ENV_DATABASE_URL = "NOFX_PILOT_DATABASE_URL"
ENV_REDIS_URL = "NOFX_PILOT_REDIS_URL"
ENV_CACHE_PREFIX = "NOFX_PILOT_CACHE_PREFIX"

# The orders table GET /orders reads (pilot.service): one per database, shared by the pilots of a
# fleet, made and filled once under an advisory lock by whichever pilot is asked first. Large
# enough that a query on a column without an index is a sequential scan of several ms.
ORDERS_TABLE = "pilot_orders"
ORDERS_ROWS = 300_000
ORDERS_CUSTOMERS = 10_000  # each customer has ORDERS_ROWS / ORDERS_CUSTOMERS orders

# PostgreSQL truncates application_name to NAMEDATALEN - 1 bytes.
_APPLICATION_NAME_MAX = 63
_APPLICATION_NAME_PREFIX = "nofx-pilot:"


class PilotConfig(BaseModel):
    """What a pilot process can be told to do differently without a restart.

    Every field has a safe default, so version 1 of every service is ``PilotConfig()``. A "bad"
    config is a valid one with harmful values (errors, latency): a push that fails validation
    never reaches a pilot, which is not the incident the platform has to heal.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    error_rate: float = Field(
        default=0.0, ge=0.0, le=1.0, description="share of GET / answered with HTTP 500"
    )
    extra_latency_ms: int = Field(
        default=0, ge=0, le=30_000, description="added to every GET / before it is served"
    )
    work_ms: float = Field(
        default=10.0, ge=0.0, le=5_000.0, description="service time of one GET / (a worker slot)"
    )
    workers: int = Field(
        default=4, ge=1, le=256, description="GET / served at once; the rest wait in a queue"
    )
    queue_timeout_s: float = Field(
        default=5.0, gt=0.0, le=120.0, description="wait for a worker before answering 503"
    )
    cache_ttl_s: float = Field(default=30.0, gt=0.0, le=86_400.0, description="Redis entry TTL")
    source_update_s: float = Field(
        default=1.0, gt=0.0, le=3_600.0, description="how often the source of truth changes"
    )
    db_pool_size: int = Field(default=5, ge=1, le=100, description="PostgreSQL pool size")
    db_timeout_s: float = Field(
        default=1.0, gt=0.0, le=60.0, description="wait for a pooled connection before 503"
    )
    disk_quota_mb: int = Field(
        default=256, ge=1, le=1_024, description="quota of the service's data directory"
    )


class VersionedConfig(BaseModel):
    """The file a pilot reads: a config and the `config_versions.version` it came from."""

    version: int = Field(ge=1)
    config: PilotConfig = Field(default_factory=PilotConfig)


def config_path(state_dir: Path, service: str) -> Path:
    """Where the fleet writes, and the pilot reads, the config of `service`."""
    return state_dir / CONFIG_DIR / f"{service}.json"


def data_dir(state_dir: Path, service: str) -> Path:
    """The data directory of `service`: what a disk fill fills and its quota covers."""
    return state_dir / DATA_DIR / service


def application_name(service: str) -> str:
    """The PostgreSQL ``application_name`` of every connection a pilot of `service` opens.

    The healing track finds a service's backends in ``pg_stat_activity`` by it (for example to
    terminate the connections a leak holds), so it must fit PostgreSQL's 63-byte limit exactly
    as the server stores it.
    """
    return f"{_APPLICATION_NAME_PREFIX}{service}".encode()[:_APPLICATION_NAME_MAX].decode(
        errors="ignore"
    )


def cache_prefix(fleet_root: Path, service: str) -> str:
    """The Redis key prefix of `service` in the fleet rooted at `fleet_root`.

    Fleets side by side (tests, CI) may share one Redis server; the hash of the fleet's root
    keeps their keys apart, and the service name keeps a fleet's pilots apart.
    """
    fleet_id = hashlib.sha256(str(fleet_root).encode()).hexdigest()[:12]
    return f"nofx:fleet:{fleet_id}:{service}"


def read_config(path: Path) -> VersionedConfig:
    """Read and validate a pilot config file.

    Raises:
        OSError: the file cannot be read.
        ValueError: it is not valid JSON or not a valid config (pydantic's ValidationError).
    """
    return VersionedConfig.model_validate_json(path.read_bytes())


def write_config(path: Path, versioned: VersionedConfig) -> None:
    """Write a pilot config file atomically (temporary file, fsync, rename).

    A pilot polling the file must never read half of it; the rename also gives the file a new
    inode, which the pilot's watcher notices even when the mtime does not move.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    body: dict[str, Any] = versioned.model_dump(mode="json")
    try:
        with tmp.open("w") as out:
            json.dump(body, out, indent=2, sort_keys=True)
            out.flush()
            os.fsync(out.fileno())
        tmp.replace(path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
