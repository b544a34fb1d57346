"""HAProxy in front of the staging fleet: config rendering and a foreground process launcher.

Each logical service gets one frontend (its public port) and one backend balancing its replicas
round-robin, with HTTP health checks on ``/health``. The platform reroutes traffic through
the admin socket declared here (its HAProxy provider), so the socket is always ``level admin``;
the fleet itself only reads it (`admin_command`, `server_statuses`) to know when it is up.

`render_config` is usable on its own because the fleet will later run haproxy under supervisord;
`HAProxyProcess` runs it directly (``-db``: foreground, no daemon) for tests and demos.
"""

from __future__ import annotations

import contextlib
import csv
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import structlog
from pydantic import BaseModel, Field, field_validator, model_validator

log = structlog.get_logger(__name__)

# Names HAProxy accepts for proxies and servers (letters, digits, '-', '_', '.', ':').
_NAME_PATTERN = r"^[A-Za-z0-9_.:-]+$"

# sun_path is 108 bytes on Linux, including the terminating NUL.
_MAX_SOCKET_PATH = 107

_FALLBACK_BINARY = Path("/usr/sbin/haproxy")


class HAProxyAdminError(RuntimeError):
    """HAProxy's admin socket could not be reached or did not answer."""


def admin_command(socket_path: Path, command: str, *, timeout: float = 5.0) -> str:
    """One command on HAProxy's admin socket (a connection per command; HAProxy answers and
    closes it)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(timeout)
            conn.connect(str(socket_path))
            conn.sendall(f"{command}\n".encode())
            with conn.makefile("rb") as answer:
                return answer.read().decode(errors="replace")
    except OSError as exc:  # FileNotFoundError, ConnectionRefusedError, TimeoutError, ...
        raise HAProxyAdminError(f"HAProxy admin socket {socket_path}: {exc}") from None


def server_statuses(socket_path: Path, backend: str, *, timeout: float = 5.0) -> dict[str, str]:
    """The status (UP, DOWN, MAINT, ...) of each server of `backend`, from ``show stat``."""
    answer = admin_command(socket_path, "show stat", timeout=timeout)
    rows = csv.DictReader(answer.lstrip("# ").splitlines())
    return {
        row["svname"]: row["status"]
        for row in rows
        if row.get("pxname") == backend and row.get("svname") not in ("FRONTEND", "BACKEND")
    }


class HAProxyProcessError(RuntimeError):
    """haproxy could not be found, configured or started; the message says why."""


class HAProxyConfigError(HAProxyProcessError):
    """``haproxy -c`` rejected a configuration; the message carries haproxy's own words."""


class HAProxyServer(BaseModel):
    """One replica behind a service; also accepted as a ``(name, host, port)`` tuple.

    A `disabled` server is a spare slot: declared (so it can be brought into rotation through
    the runtime API, and survives a restart of haproxy as a slot) but in maintenance at start.
    """

    name: str = Field(pattern=_NAME_PATTERN)
    host: str = Field(pattern=r"^[^\s#]+$")
    port: int = Field(ge=1, le=65535)
    disabled: bool = False

    @model_validator(mode="before")
    @classmethod
    def _from_tuple(cls, data: Any) -> Any:
        if isinstance(data, tuple | list):
            if len(data) != 3:
                raise ValueError(f"a server is (name, host, port), got {data!r}")
            name, host, port = data
            return {"name": name, "host": host, "port": port}
        return data


class HAProxyFrontend(BaseModel):
    """One logical service: a listening port and the replicas it balances over.

    The backend carries the service's name, since that is what the healing track addresses;
    the frontend gets a suffix so that ``show stat <name>`` is never ambiguous.
    """

    name: str = Field(pattern=_NAME_PATTERN)
    bind_port: int = Field(ge=1, le=65535)
    bind_host: str = Field(default="127.0.0.1", pattern=r"^[^\s#]+$")
    servers: list[HAProxyServer] = Field(min_length=1)

    @property
    def frontend_name(self) -> str:
        return f"{self.name}-fe"

    @property
    def backend_name(self) -> str:
        return self.name

    @model_validator(mode="after")
    def _unique_servers(self) -> Self:
        names = [server.name for server in self.servers]
        if len(set(names)) != len(names):
            raise ValueError(f"service {self.name!r} has duplicate server names: {names}")
        return self


class HAProxySpec(BaseModel):
    """What an haproxy in front of the fleet serves, and where its admin socket lives."""

    socket_path: Path
    frontends: list[HAProxyFrontend] = Field(min_length=1)

    @field_validator("socket_path")
    @classmethod
    def _socket_path_fits(cls, value: Path) -> Path:
        text = str(value)
        if len(os.fsencode(text)) > _MAX_SOCKET_PATH:
            raise ValueError(
                f"socket path {text!r} is longer than the {_MAX_SOCKET_PATH} bytes a Unix "
                "socket address can hold"
            )
        if any(char.isspace() or char in "#\"'\\" for char in text):
            raise ValueError(f"socket path {text!r} must not contain spaces, quotes or '#'")
        return value

    @model_validator(mode="after")
    def _unique_services(self) -> Self:
        names = [frontend.name for frontend in self.frontends]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate service names: {names}")
        ports = [frontend.bind_port for frontend in self.frontends]
        if len(set(ports)) != len(ports):
            raise ValueError(f"duplicate bind ports: {ports}")
        return self


def render_config(spec: HAProxySpec) -> str:
    """The haproxy.cfg text for `spec`.

    Timeouts are short because the fleet is local: a replica that takes a second to accept a
    connection is already a fault. Checks run every second and need two results to flip, so a
    dead replica leaves rotation within about two seconds without flapping on one lost probe.
    No server-state-file: after a restart haproxy starts from the configuration, and the
    healing track re-applies what it needs.
    """
    lines = [
        "# Rendered by pilot.haproxy; edits are overwritten.",
        "global",
        f"    stats socket {spec.socket_path} mode 600 level admin expose-fd listeners",
        "    stats timeout 10s",
        "",
        "defaults",
        "    mode http",
        "    timeout connect 1s",
        "    timeout client 10s",
        "    timeout server 10s",
        "    option httpchk GET /health",
        "    default-server inter 1s fall 2 rise 2 check",
    ]
    for frontend in spec.frontends:
        lines += [
            "",
            f"frontend {frontend.frontend_name}",
            f"    bind {frontend.bind_host}:{frontend.bind_port}",
            f"    default_backend {frontend.backend_name}",
            "",
            f"backend {frontend.backend_name}",
            "    balance roundrobin",
        ]
        lines += [
            f"    server {server.name} {server.host}:{server.port}"
            + (" disabled" if server.disabled else "")
            for server in frontend.servers
        ]
    return "\n".join(lines) + "\n"


def haproxy_binary() -> str | None:
    """Path of the haproxy executable, or None when it is not installed.

    Debian installs it in /usr/sbin, which is not on a non-root user's PATH.
    """
    found = shutil.which("haproxy")
    if found is not None:
        return found
    if _FALLBACK_BINARY.is_file() and os.access(_FALLBACK_BINARY, os.X_OK):
        return str(_FALLBACK_BINARY)
    return None


def validate_config(path: Path) -> None:
    """Check the configuration at `path` with ``haproxy -c``.

    Raises:
        HAProxyConfigError: haproxy rejected it; the message is haproxy's.
        HAProxyProcessError: haproxy is not installed.
    """
    binary = _require_binary()
    result = subprocess.run(
        [binary, "-c", "-f", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if result.returncode != 0:
        message = (result.stderr + result.stdout).strip()
        raise HAProxyConfigError(f"haproxy rejected {path}: {message}")


class HAProxyProcess:
    """An haproxy in the foreground for `spec`, running for the duration of a ``with`` block.

    Entering writes ``haproxy.cfg`` into `workdir`, validates it, starts haproxy with its output
    in ``haproxy.log`` and returns once the admin socket answers; leaving stops it (SIGTERM,
    then SIGKILL).

    Args:
        spec: what to serve.
        workdir: where the configuration and the log go; created if missing.
        start_timeout: seconds to wait for the admin socket to answer.
    """

    def __init__(self, spec: HAProxySpec, workdir: Path, *, start_timeout: float = 10.0) -> None:
        self.spec = spec
        self.workdir = Path(workdir)
        self.start_timeout = start_timeout
        self.config_path = self.workdir / "haproxy.cfg"
        self.log_path = self.workdir / "haproxy.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def frontend_url(self, name: str) -> str:
        """The base URL of service `name` through haproxy."""
        for frontend in self.spec.frontends:
            if frontend.name == name:
                return f"http://{frontend.bind_host}:{frontend.bind_port}"
        raise KeyError(f"no service {name!r} in this haproxy")

    def start(self) -> None:
        """Write and validate the configuration, start haproxy and wait for its admin socket."""
        if self._process is not None:
            raise HAProxyProcessError("haproxy is already started")
        binary = _require_binary()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(render_config(self.spec))
        validate_config(self.config_path)
        with self.log_path.open("ab") as log_file:
            self._process = subprocess.Popen(
                [binary, "-f", str(self.config_path), "-db"],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        log.info("haproxy started", pid=self._process.pid, config=str(self.config_path))

    def stop(self, *, grace: float = 5.0) -> None:
        """Stop haproxy: SIGTERM, then SIGKILL after `grace` seconds. Safe to call twice."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                process.wait(timeout=grace)
        log.info("haproxy stopped", pid=process.pid, returncode=process.returncode)

    def _wait_ready(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self._process.poll() is not None:
                raise HAProxyProcessError(
                    f"haproxy exited with {self._process.returncode} on start: {self._log_tail()}"
                )
            try:
                admin_command(self.spec.socket_path, "show info", timeout=1.0)
                return
            except HAProxyAdminError as exc:
                if time.monotonic() > deadline:
                    raise HAProxyProcessError(
                        f"haproxy's admin socket {self.spec.socket_path} did not answer within "
                        f"{self.start_timeout}s ({exc}): {self._log_tail()}"
                    ) from None
            time.sleep(0.05)

    def _log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _require_binary() -> str:
    binary = haproxy_binary()
    if binary is None:
        raise HAProxyProcessError("haproxy is not installed (Debian: apt-get install haproxy)")
    return binary
