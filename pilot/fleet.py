"""The staging fleet: pilot services run as real processes under a private supervisord.

The fleet is what the platform heals in demos, chaos experiments and tests. supervisord only
starts and stops processes here (``autorestart=false``, ``startretries=0``): noticing a failure and
restarting is the platform's job, so a kill stays visible until the platform acts.

Everything lives under ``home / "fleet"``: the rendered ``supervisord.conf``, supervisord's socket,
pidfile and log, the programs' logs in ``logs/``, and ``state/starts.log`` in which every pilot
process records its start.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import xmlrpc.client
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal, Self

import httpx
import psutil
from pydantic import BaseModel, Field, model_validator

from nofx.providers.supervisor import is_frozen, supervisor_proxy

HOST = "127.0.0.1"
PROJECT_ROOT = Path(__file__).resolve().parent.parent
FAULT_KINDS = ("kill", "hang")
# AF_UNIX paths longer than this do not fit in sockaddr_un on Linux.
_MAX_SOCKET_PATH = 107
_STOP_STATES = frozenset({"STOPPED", "EXITED", "FATAL", "UNKNOWN"})


class FleetError(RuntimeError):
    """The fleet cannot do what was asked; the one-line message names the culprit."""


class ServiceSpec(BaseModel):
    """One pilot service: a supervisord program serving HTTP on 127.0.0.1:`port`."""

    name: str = Field(pattern=r"^[a-z][a-z0-9-]*$", description="supervisord program name")
    port: int = Field(ge=1, le=65535)
    depends_on: list[str] = Field(default_factory=list, description="services it calls")


class FleetSpec(BaseModel):
    """The services of a fleet and their dependencies (which must form no cycle)."""

    services: list[ServiceSpec] = Field(min_length=1)

    @classmethod
    def default(cls, base_port: int) -> FleetSpec:
        """The demo fleet: `pilot-api` on `base_port` calling `pilot-orders` on the next port."""
        return cls(
            services=[
                ServiceSpec(name="pilot-api", port=base_port, depends_on=["pilot-orders"]),
                ServiceSpec(name="pilot-orders", port=base_port + 1),
            ]
        )

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        names = [s.name for s in self.services]
        ports = [s.port for s in self.services]
        if len(set(names)) != len(names):
            raise ValueError(f"service names repeat: {names}")
        if len(set(ports)) != len(ports):
            raise ValueError(f"service ports repeat: {ports}")
        for service in self.services:
            unknown = set(service.depends_on) - set(names)
            if unknown:
                raise ValueError(f"{service.name} depends on unknown services {sorted(unknown)}")
        self.start_order()  # raises on a cycle
        return self

    def get(self, name: str) -> ServiceSpec:
        """The service called `name`.

        Raises:
            FleetError: no such service in this fleet.
        """
        for service in self.services:
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

    Tests use it to run fleets side by side; `FleetSpec.default` needs a span of two.
    """
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((HOST, 0))
            base = int(sock.getsockname()[1])
        if base + span - 1 <= 65535 and not any(port_in_use(base + i) for i in range(1, span)):
            return base
    raise FleetError(f"no {span} consecutive free ports found on {HOST}")


def _conf_value(value: str | Path) -> str:
    """Escape a value for supervisord's config parser, which expands `%(name)s`."""
    return str(value).replace("%", "%%")


class Fleet:
    """A fleet of pilot services under its own supervisord, rooted at ``home / "fleet"``.

    Args:
        home: the NOFX state directory (`Settings.home`); the fleet uses its `fleet/` subfolder.
        spec: the services to run.
    """

    def __init__(self, home: Path, spec: FleetSpec) -> None:
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

    # -- configuration -------------------------------------------------------------------------

    def write_config(self) -> Path:
        """Render `supervisord.conf` for the spec and return its path.

        Raises:
            FleetError: the socket path is too long for AF_UNIX (choose a shorter home).
        """
        if len(os.fsencode(self.socket_path)) > _MAX_SOCKET_PATH:
            raise FleetError(
                f"socket path {self.socket_path} is longer than {_MAX_SOCKET_PATH} bytes; "
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
        order = self.spec.start_order()
        for service in self.spec.services:
            sections += [
                *self._program_section(service, priority=100 + 10 * order.index(service.name)),
                "",
            ]
        self.conf_path.write_text("\n".join(sections))
        return self.conf_path

    def _program_section(self, service: ServiceSpec, *, priority: int) -> list[str]:
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
        environment = {"PYTHONPATH": str(PROJECT_ROOT), "PYTHONUNBUFFERED": "1"}
        env = ",".join(f'{key}="{_conf_value(value)}"' for key, value in environment.items())
        return [
            f"[program:{service.name}]",
            f"command={_conf_value(shlex.join(argv))}",
            f"directory={_conf_value(PROJECT_ROOT)}",
            f"environment={env}",
            f"priority={priority}",
            "autostart=true",
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
        for service in self.spec.services:
            if port_in_use(service.port):
                raise FleetError(
                    f"port {service.port} for {service.name} is already in use on {HOST}"
                )
        self.write_config()
        # A socket file left by a supervisord that died would make the new one refuse to start.
        self.socket_path.unlink(missing_ok=True)
        deadline = time.monotonic() + timeout
        try:
            self._launch_supervisord(timeout)
            self._wait_supervisord(deadline)
            self._wait_healthy(deadline)
        except BaseException:
            self.stop()
            raise

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
            if state == "RUNNING" and self._answers_health(name):
                pending.pop(0)
                continue
            if time.monotonic() > deadline:
                raise FleetError(f"{name} was not healthy in time (supervisord state {state})")
            time.sleep(0.1)

    def _answers_health(self, name: str) -> bool:
        try:
            return httpx.get(self.health_url(name), timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self, timeout: float = 15.0) -> None:
        """Shut supervisord down (it stops every service first) and wait until it has exited.

        Tolerant: a fleet that is not running is left as it is. Frozen services are resumed first
        so they can handle SIGTERM instead of waiting out `stopwaitsecs` for a SIGKILL.
        """
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

    def health_url(self, name: str) -> str:
        """The /health URL of service `name` (FleetError when the fleet has no such service)."""
        return f"http://{HOST}:{self.spec.get(name).port}/health"

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

    def inject(self, kind: str, name: str) -> int:
        """Inject a real fault into service `name` and return the pid it hit.

        ``kill`` sends SIGKILL: the process dies and supervisord reports it EXITED.
        ``hang`` sends SIGSTOP: supervisord still says RUNNING but nothing answers.
        Returns once the kernel shows the effect (process gone, or in state ``T``).

        Raises:
            FleetError: unknown kind or service, or the service is not running.
        """
        if kind not in FAULT_KINDS:
            raise FleetError(
                f"unknown fault kind {kind!r}; expected one of {', '.join(FAULT_KINDS)}"
            )
        self.spec.get(name)
        info = self._process_info(name)
        pid = int(info["pid"])
        if not pid:
            raise FleetError(f"cannot inject {kind} into {name}: it is {info['statename']}")
        # Signals are delivered asynchronously: wait until the fault has taken hold, so that
        # whoever injected it observes its effect rather than racing the kernel.
        if kind == "kill":
            os.kill(pid, signal.SIGKILL)
            took_hold = _wait_gone([pid], time.monotonic() + 5)
        else:
            os.kill(pid, signal.SIGSTOP)
            took_hold = _wait_until(lambda: is_frozen(pid), time.monotonic() + 5)
        if not took_hold:
            raise FleetError(f"{kind} of {name} (pid {pid}) did not take effect within 5s")
        return pid

    def clear(self, name: str) -> Literal["resumed", "started", "nothing to clear"]:
        """Undo an injected fault by hand: resume a hung service, start a dead one."""
        self.spec.get(name)
        supervisor = self._supervisor(timeout=30.0)
        info = self._process_info(name)
        pid = int(info["pid"])
        if pid and is_frozen(pid):
            os.kill(pid, signal.SIGCONT)
            return "resumed"
        if info["statename"] in _STOP_STATES:
            try:
                supervisor.startProcess(name, True)
            except xmlrpc.client.Fault as exc:
                if "ALREADY_STARTED" not in exc.faultString:
                    raise FleetError(f"cannot start {name}: {exc.faultString}") from None
            return "started"
        return "nothing to clear"


def _signal(pid: int, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def _alive(pid: int) -> bool:
    """Whether `pid` still runs; a zombie (exited, not yet reaped) counts as gone."""
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
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
