"""Configuration provider: versions the platform keeps, delivered as a file plus a reload.

The platform owns a service's configuration history (`config_versions`: one active version per
service, every push and rollback a new version, history kept). How a version reaches the
service is the mechanism any service can follow, documented here and in the README:

1. **The file.** The platform writes, atomically (temporary file, fsync, rename), the JSON
   document ``{"version": N, "config": {...}}`` to the path the inventory names
   (``providers.config.path``). The service reads ``config`` and remembers ``version``.
2. **The reload.** ``reload: signal`` sends the process the inventory's process provider runs a
   signal (SIGHUP by default); ``reload: http`` POSTs to ``reload_url``; ``reload: watch``
   sends nothing (the service watches the file itself).
3. **The proof.** When ``version_url`` is set, the platform GETs it until the JSON body's
   ``version_field`` (``config_version`` by default) equals N. A body with a ``config_error``
   (a string, or ``{"message": ..., "version": N}``) is a refusal, reported at once. A version
   that is refused or not loaded in time is withdrawn: the previous file is put back and
   reloaded, and no row is left in `config_versions` — a refused push changes nothing.

A service that is not running (or frozen) gets the file and picks it up when it starts; the push
is recorded as delivered but not yet loaded. Before anything is delivered the change is checked
against the configuration in force: a key it does not have, or a value of another JSON type, is
refused by name (the service's own validation is the second line, reported through the proof).
"""

from __future__ import annotations

import json
import os
import signal
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel, ValidationError
from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine

from models.inventory import FileConfig
from nofx.logging import get_logger
from nofx.providers.supervisor import SupervisorError, SupervisorProvider, UnknownTargetError

log = get_logger(__name__)

_POLL_S = 0.1


class ConfigError(RuntimeError):
    """A configuration change was refused, or could not be delivered; nothing was changed."""


class ConfigVersion(BaseModel):
    """One row of `config_versions`: a service's configuration at one version."""

    service: str
    version: int
    config: dict[str, Any]
    applied_by: str
    reason: str | None = None
    active: bool
    created_at: datetime | None = None
    rolled_back_to: int | None = None


class Delivered(BaseModel):
    """How a version reached the service."""

    version: int
    loaded: bool
    detail: str


_COLUMNS = "service, version, config, applied_by, reason, active, created_at, rolled_back_to"
_SELECT = f"SELECT {_COLUMNS} FROM config_versions"


def document(version: int, config: Mapping[str, Any]) -> dict[str, Any]:
    """The file the service reads for `version`."""
    return {"version": version, "config": dict(config)}


def write_atomically(path: Path, body: Mapping[str, Any]) -> None:
    """Write JSON so a reader never sees half of it: a temporary file beside it, flushed to
    disk, renamed over it (the rename also gives the file a new inode, which watchers see)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(
        "w", dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False
    ) as out:
        try:
            json.dump(body, out, indent=2, sort_keys=True)
            out.flush()
            os.fsync(out.fileno())
        except BaseException:
            Path(out.name).unlink(missing_ok=True)
            raise
    os.replace(out.name, path)


def read_document(path: Path) -> tuple[int, dict[str, Any]] | None:
    """The version and configuration in the service's file; None when it has none readable."""
    try:
        body = json.loads(path.read_bytes())
        version, config = int(body["version"]), body["config"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return (version, config) if isinstance(config, dict) and version >= 1 else None


def check_change(current: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """`current` with `changes`, refusing keys it lacks and values of another JSON type.

    Raises:
        ConfigError: naming every key that is wrong.
    """
    problems = []
    for key, value in changes.items():
        if key not in current:
            known = ", ".join(sorted(current)) or "none"
            problems.append(f"{key}: not a setting of this service (it has {known})")
        elif _json_type(value) != _json_type(current[key]):
            problems.append(
                f"{key}: {value!r} is a {_json_type(value)}, the setting is a"
                f" {_json_type(current[key])}"
            )
    if problems:
        raise ConfigError("; ".join(problems))
    return {**current, **changes}


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if value is None:
        return "null"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object" if isinstance(value, dict) else type(value).__name__


@dataclass(frozen=True)
class Delivery:
    """The file-plus-reload mechanism of one service (its inventory settings)."""

    settings: FileConfig
    pid_of: Callable[[], tuple[int | None, str]]

    @property
    def path(self) -> Path:
        return Path(self.settings.path)

    def deliver(self, version: int, config: Mapping[str, Any]) -> Delivered:
        """Write the file, reload and wait for the proof.

        Raises:
            ConfigError: the service refused the version or did not load it in time.
        """
        write_atomically(self.path, document(version, config))
        reloaded, why = self._reload()
        if not reloaded:
            return Delivered(version=version, loaded=False, detail=why)
        if self.settings.version_url is None:
            return Delivered(version=version, loaded=True, detail=f"{why}; no version URL")
        deadline = time.monotonic() + self.settings.timeout_s
        seen: Any = None
        while True:
            body = self._version_body()
            seen = body.get(self.settings.version_field) if body is not None else None
            if seen == version:
                return Delivered(version=version, loaded=True, detail=f"{why}; serving v{version}")
            refusal = _refusal(body, version)
            if refusal:
                raise ConfigError(f"the service refused v{version}: {refusal}")
            if time.monotonic() >= deadline:
                raise ConfigError(
                    f"the service did not load v{version} within {self.settings.timeout_s:g}s"
                    f" ({self.settings.version_url} reports {seen!r})"
                )
            time.sleep(_POLL_S)

    def _reload(self) -> tuple[bool, str]:
        how = self.settings.reload
        if how == "watch":
            return True, "the service watches its file"
        if how == "http":
            assert self.settings.reload_url is not None  # FileConfig requires it
            try:
                response = httpx.post(
                    str(self.settings.reload_url), timeout=self.settings.timeout_s
                )
            except httpx.TransportError as exc:
                return False, f"not reachable ({exc}); it reads the file when it starts"
            if response.status_code >= 400:
                raise ConfigError(
                    f"reload refused: {self.settings.reload_url} answered {response.status_code}"
                    f" {response.text[:200]}"
                )
            return True, f"reloaded by POST {self.settings.reload_url}"
        pid, why = self.pid_of()
        if pid is None:
            return False, f"{why}; it reads the file when it starts"
        signum = signal.Signals[f"SIG{self.settings.signal}"]
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            return False, f"pid {pid} is gone; it reads the file when it starts"
        return True, f"SIG{self.settings.signal} to pid {pid}"

    def _version_body(self) -> dict[str, Any] | None:
        try:
            body = httpx.get(str(self.settings.version_url), timeout=1.0).json()
        except (httpx.HTTPError, ValueError):
            return None
        return body if isinstance(body, dict) else None


def _refusal(body: Mapping[str, Any] | None, version: int) -> str | None:
    """The service's reason for refusing `version`: a ``config_error`` string, or an object
    ``{"message", "version"}`` for this version (an older file's error is not this one's)."""
    error = (body or {}).get("config_error")
    if isinstance(error, str) and error:
        return error
    if isinstance(error, dict) and error.get("version") == version:
        return str(error.get("message") or "refused")
    return None


def supervised_pid(socket: str, program: str) -> Callable[[], tuple[int | None, str]]:
    """The pid to signal: the running, unfrozen process supervisord runs as `program`."""

    def pid_of() -> tuple[int | None, str]:
        try:
            state = SupervisorProvider(Path(socket), timeout=10.0).process_state(program)
        except (SupervisorError, UnknownTargetError) as exc:
            return None, f"process {program} unknown to supervisord ({exc})"
        if state.pid is None or state.state != "RUNNING":
            return None, f"process {program} is {state.state}"
        if state.frozen:
            return None, f"process {program} (pid {state.pid}) is frozen"
        return state.pid, "running"

    return pid_of


def delivery_of(service: str, metadata: Mapping[str, Any]) -> Delivery:
    """The delivery an inventory entry's metadata describes.

    Raises:
        ConfigError: the service has no configuration provider, or it cannot be used.
    """
    raw = metadata.get("config")
    if not raw:
        raise ConfigError(f"service {service!r} has no configuration provider in the inventory")
    try:
        settings = FileConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"service {service!r}: bad providers.config: {exc}") from None
    socket, program = metadata.get("supervisor_socket"), metadata.get("process") or service
    if settings.reload == "signal":
        if not socket:
            raise ConfigError(
                f"service {service!r}: providers.config reload 'signal' needs a process provider"
            )
        return Delivery(settings, supervised_pid(str(socket), str(program)))
    return Delivery(settings, lambda: (None, "no process to signal"))


class ConfigStore:
    """The configuration versions of one service and their delivery."""

    def __init__(self, engine: Engine, service: str, delivery: Delivery) -> None:
        self.engine = engine
        self.service = service
        self.delivery = delivery

    @classmethod
    def of(cls, engine: Engine, service: str) -> ConfigStore:
        """The store of a service of the inventory (table `services`).

        Raises:
            ConfigError: the service is not registered or has no configuration provider.
        """
        with engine.connect() as conn:
            meta = conn.execute(
                text("SELECT metadata FROM services WHERE name = :n"), {"n": service}
            ).scalar_one_or_none()
        if meta is None:
            raise ConfigError(f"service {service!r} is not in the inventory (nofx services list)")
        return cls(engine, service, delivery_of(service, meta))

    def active(self) -> ConfigVersion | None:
        """The active version; None before the first push."""
        with self.engine.connect() as conn:
            return self._active(conn)

    def current(self) -> dict[str, Any]:
        """The configuration in force: the active version's, else (before the first push) what
        the service's file holds; {} when neither exists."""
        active = self.active()
        if active is not None:
            return dict(active.config)
        found = read_document(self.delivery.path)
        return dict(found[1]) if found else {}

    def history(self) -> list[ConfigVersion]:
        """Every version, oldest first."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                text(_SELECT + " WHERE service = :s ORDER BY version"), {"s": self.service}
            ).mappings()
            return [ConfigVersion.model_validate(dict(r)) for r in rows]

    def push(
        self,
        changes: Mapping[str, Any],
        *,
        applied_by: str,
        reason: str | None = None,
        refuse_over: str | None = None,
    ) -> tuple[ConfigVersion, ConfigVersion]:
        """Apply `changes` to the configuration in force as a new active version, delivered.

        The service's first push records the configuration it ran before (its file) as the
        baseline version, so there is always something to roll back to.

        Args:
            refuse_over: refuse when the active version was applied by this actor.

        Returns:
            The version replaced and the new one.

        Raises:
            ConfigError: a bad change, an active version by `refuse_over`, or a delivery the
                service refused (nothing is recorded then).
        """
        with self.engine.begin() as conn:
            previous = self._lock(conn, bootstrap=True)
            assert previous is not None  # bootstrap=True always yields a version
            if refuse_over is not None and previous.applied_by == refuse_over:
                raise ConfigError(
                    f"{self.service}: v{previous.version} by {refuse_over} is active"
                    f" ({previous.reason}); roll it back first"
                )
            config = check_change(previous.config, changes)
            pushed = self._activate(conn, config, applied_by, reason, None)
            self._deliver(previous, pushed)
        return previous, pushed

    def rollback(
        self,
        *,
        applied_by: str,
        reason: str | None = None,
        to_version: int | None = None,
        skipping: str | None = None,
        only_over: str | None = None,
    ) -> tuple[ConfigVersion, ConfigVersion] | None:
        """Make an earlier version's configuration active again, as a new version.

        Args:
            to_version: the version to restore; default the latest one before the active one
                (not applied by `skipping`).
            only_over: do nothing (return None) unless the active version is by this actor.

        Returns:
            The version replaced and the new one; None when `only_over` does not hold.

        Raises:
            ConfigError: no active version, no such version, or a refused delivery.
        """
        with self.engine.begin() as conn:
            active = self._lock(conn, bootstrap=False)
            if only_over is not None and (active is None or active.applied_by != only_over):
                return None
            if active is None:
                raise ConfigError(f"{self.service} has no active configuration version")
            if to_version is None:
                row = (
                    conn.execute(
                        text(
                            _SELECT + " WHERE service = :s AND version < :v"
                            " AND applied_by IS DISTINCT FROM :skip ORDER BY version DESC LIMIT 1"
                        ),
                        {"s": self.service, "v": active.version, "skip": skipping},
                    )
                    .mappings()
                    .first()
                )
            else:
                row = (
                    conn.execute(
                        text(_SELECT + " WHERE service = :s AND version = :v"),
                        {"s": self.service, "v": to_version},
                    )
                    .mappings()
                    .first()
                )
            if row is None:
                wanted = f"v{to_version}" if to_version else f"a version before v{active.version}"
                raise ConfigError(f"cannot roll back {self.service}: it has no {wanted}")
            target = ConfigVersion.model_validate(dict(row))
            rolled = self._activate(
                conn,
                target.config,
                applied_by,
                reason or f"roll back v{active.version} to v{target.version}",
                target.version,
            )
            self._deliver(active, rolled)
        return active, rolled

    def reconcile(self) -> Delivered | None:
        """Deliver the active version when the service's file holds another; None if in step."""
        active = self.active()
        if active is None:
            return None
        if read_document(self.delivery.path) == (active.version, active.config):
            return None
        return self.delivery.deliver(active.version, active.config)

    # -- inside the transaction ------------------------------------------------------------

    def _active(self, conn: Connection) -> ConfigVersion | None:
        row = (
            conn.execute(text(_SELECT + " WHERE service = :s AND active"), {"s": self.service})
            .mappings()
            .first()
        )
        return ConfigVersion.model_validate(dict(row)) if row else None

    def _lock(self, conn: Connection, *, bootstrap: bool) -> ConfigVersion | None:
        """Lock the service's inventory row (serialising its changes) and read the active
        version; with `bootstrap`, a service without one gets its file's as the baseline."""
        registered = conn.execute(
            text("SELECT name FROM services WHERE name = :s FOR UPDATE"), {"s": self.service}
        ).first()
        if registered is None:
            raise ConfigError(f"service {self.service!r} is not in the inventory")
        active = self._active(conn)
        if active is not None or not bootstrap:
            return active
        current = read_document(self.delivery.path)
        if current is None:
            raise ConfigError(
                f"{self.service}: no active version and no readable configuration file at"
                f" {self.delivery.path} to take as the baseline"
            )
        newest = conn.execute(
            text("SELECT coalesce(max(version), 0) FROM config_versions WHERE service = :s"),
            {"s": self.service},
        ).scalar_one()
        return self._insert(
            conn,
            max(current[0], int(newest) + 1),
            current[1],
            "nofx-config",
            "baseline: the configuration the service ran before its first push",
            None,
        )

    def _activate(
        self,
        conn: Connection,
        config: Mapping[str, Any],
        applied_by: str,
        reason: str | None,
        rolled_back_to: int | None,
    ) -> ConfigVersion:
        newest = conn.execute(
            text("SELECT coalesce(max(version), 0) FROM config_versions WHERE service = :s"),
            {"s": self.service},
        ).scalar_one()
        conn.execute(
            text("UPDATE config_versions SET active = false WHERE service = :s AND active"),
            {"s": self.service},
        )
        return self._insert(conn, int(newest) + 1, config, applied_by, reason, rolled_back_to)

    def _insert(
        self,
        conn: Connection,
        version: int,
        config: Mapping[str, Any],
        applied_by: str,
        reason: str | None,
        rolled_back_to: int | None,
    ) -> ConfigVersion:
        row = (
            conn.execute(
                text(
                    "INSERT INTO config_versions (service, version, config, applied_by, reason,"
                    " active, rolled_back_to) VALUES (:s, :v, CAST(:c AS jsonb), :by, :why, true,"
                    f" :to) RETURNING {_COLUMNS}"
                ),
                {
                    "s": self.service,
                    "v": version,
                    "c": json.dumps(dict(config)),
                    "by": applied_by,
                    "why": reason,
                    "to": rolled_back_to,
                },
            )
            .mappings()
            .one()
        )
        return ConfigVersion.model_validate(dict(row))

    def _deliver(self, previous: ConfigVersion, new: ConfigVersion) -> Delivered:
        """Deliver `new`; on a refusal put `previous` back and raise (the caller's transaction
        then records nothing)."""
        try:
            delivered = self.delivery.deliver(new.version, new.config)
        except ConfigError as refused:
            try:
                self.delivery.deliver(previous.version, previous.config)
            except ConfigError as again:
                raise ConfigError(
                    f"{self.service}: {refused}; putting v{previous.version} back failed too:"
                    f" {again}"
                ) from refused
            raise ConfigError(
                f"{self.service}: {refused}; v{previous.version} is back in force"
            ) from None
        log.info(
            "configuration delivered",
            service=self.service,
            version=new.version,
            applied_by=new.applied_by,
            loaded=delivered.loaded,
            detail=delivered.detail,
        )
        return delivered
