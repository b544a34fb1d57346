"""Infrastructure provider for processes run by a local supervisord, over its XML-RPC API.

The healing activities call this module to read a process's state and restart it. It is plain
code (no Temporal imports) so tests drive it directly against a real supervisord, and an activity
only has to wrap it with heartbeats and error typing.

Every action is idempotent because Temporal may run an activity again after a worker crash: the
provider first reads the current state and does nothing when the goal already holds.
"""

from __future__ import annotations

import contextlib
import http.client
import math
import os
import signal
import socket
import xmlrpc.client
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, Field

from nofx.logging import get_logger

log = get_logger(__name__)

# supervisord state names (supervisor.states.ProcessStates) in which the OS process may exist.
_ALIVE_STATES = frozenset({"STARTING", "RUNNING", "BACKOFF", "STOPPING"})

# Fault codes from supervisor.xmlrpc.Faults, named here so this module needs only the stdlib.
_FAULT_BAD_NAME = 10
_FAULT_ALREADY_STARTED = 60
_FAULT_NOT_RUNNING = 70
_FAULT_NAMES = {
    1: "UNKNOWN_METHOD",
    2: "INCORRECT_PARAMETERS",
    3: "BAD_ARGUMENTS",
    6: "SHUTDOWN_STATE",
    10: "BAD_NAME",
    20: "NO_FILE",
    21: "NOT_EXECUTABLE",
    30: "FAILED",
    40: "ABNORMAL_TERMINATION",
    50: "SPAWN_ERROR",
    60: "ALREADY_STARTED",
    70: "NOT_RUNNING",
}


class SupervisorError(RuntimeError):
    """supervisord refused or failed an operation; the message says which and why.

    Attributes:
        fault: the supervisord fault name (e.g. ``SPAWN_ERROR``), or None when the failure was
            not a fault (e.g. supervisord could not be reached).
    """

    def __init__(self, message: str, *, fault: str | None = None) -> None:
        super().__init__(message)
        self.fault = fault


class SupervisorUnavailableError(SupervisorError):
    """supervisord does not answer on its socket; retrying later may succeed."""


class UnknownTargetError(ValueError):
    """The named process is not configured in supervisord; retrying cannot help."""


class ProcessState(BaseModel):
    """One supervisord program as the healing track sees it."""

    name: str
    state: str = Field(description="supervisord state name: RUNNING, EXITED, STOPPED, FATAL, ...")
    pid: int | None = Field(default=None, description="OS pid; None when not running")
    started_at: float | None = Field(
        default=None,
        description="epoch seconds of the last start, as supervisord reports it (whole seconds)",
    )
    frozen: bool = Field(
        default=False, description="the OS process is stopped (SIGSTOP): alive but serving nothing"
    )
    description: str = ""

    @property
    def healthy(self) -> bool:
        """Running and able to run code (a frozen process is RUNNING to supervisord)."""
        return self.state == "RUNNING" and not self.frozen


class RestartOutcome(BaseModel):
    """What `SupervisorProvider.restart` did, so the incident can record and verify it."""

    name: str
    restarted: bool = Field(description="False when the goal already held and nothing was done")
    reason: str
    old_pid: int | None = None
    new_pid: int | None = None
    started_at: float | None = Field(default=None, description="start epoch of the running pid")


class _UnixSocketHTTPConnection(http.client.HTTPConnection):
    """An HTTP connection over an AF_UNIX stream socket (supervisord's `unix_http_server`)."""

    def __init__(self, socket_path: str, timeout: float) -> None:
        # The host only fills the Host header; supervisord ignores it.
        super().__init__("localhost", timeout=timeout)
        self._socket_path = socket_path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._socket_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class UnixSocketTransport(xmlrpc.client.Transport):
    """XML-RPC transport to a Unix socket, as supervisorctl uses, but with a timeout.

    supervisor's own `SupervisorTransport` connects without a timeout, so a wedged supervisord
    would hang the caller (and a Temporal activity) forever; here every call is bounded.
    """

    def __init__(self, socket_path: Path | str, *, timeout: float = 10.0) -> None:
        super().__init__()
        self._socket_path = str(socket_path)
        self._timeout = timeout

    def make_connection(self, host: Any) -> http.client.HTTPConnection:
        connection = _UnixSocketHTTPConnection(self._socket_path, self._timeout)
        self._connection = (host, connection)  # so that close() closes it
        return connection

    def single_request(
        self, host: Any, handler: str, request_body: Any, verbose: bool = False
    ) -> Any:
        # One connection per call, closed once the reply is read: proxies are made per operation
        # and dropped, so a kept-alive socket would only leak; it also survives a supervisord
        # restart without a stale connection.
        try:
            return super().single_request(host, handler, request_body, verbose)
        finally:
            self.close()


def supervisor_proxy(
    socket_path: Path | str, *, timeout: float = 10.0
) -> xmlrpc.client.ServerProxy:
    """An XML-RPC proxy to the supervisord listening on `socket_path`.

    Args:
        socket_path: the `unix_http_server` file of that supervisord.
        timeout: seconds any single call may take (connect, send and receive).
    """
    return xmlrpc.client.ServerProxy(
        "http://localhost/RPC2",
        transport=UnixSocketTransport(socket_path, timeout=timeout),
        allow_none=True,
    )


def is_frozen(pid: int) -> bool:
    """Whether the OS process `pid` is stopped by a signal (state ``T`` in /proc/PID/stat).

    supervisord still says RUNNING for a SIGSTOPped process, so only the kernel can tell that it
    hangs. A missing process is not frozen.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    # The command name (2nd field) is in parentheses and may contain spaces: split after it.
    fields = stat[stat.rindex(")") + 2 :].split()
    return bool(fields) and fields[0] == "T"


def fault_name(code: int) -> str:
    """The supervisord name of an XML-RPC fault code (``UNKNOWN`` for codes we do not know)."""
    return _FAULT_NAMES.get(code, "UNKNOWN")


class SupervisorProvider:
    """Reads and restarts processes of one local supervisord.

    The provider runs on the same host as supervisord (the socket is a Unix socket), so it can
    also signal the processes directly: that is how it sees and undoes a SIGSTOP hang, which
    supervisord itself neither notices nor can stop cleanly.

    Args:
        socket_path: the `unix_http_server` file of the supervisord.
        timeout: seconds a single XML-RPC call may take; a stop waits up to supervisord's
            `stopwaitsecs` inside one call, so keep this above it.
    """

    capabilities: ClassVar[frozenset[str]] = frozenset({"restart"})

    def __init__(self, socket_path: Path, *, timeout: float = 30.0) -> None:
        self.socket_path = Path(socket_path)
        self.timeout = timeout

    def process_state(self, name: str) -> ProcessState:
        """The supervisord view of process `name`, plus whether the OS process is frozen.

        Raises:
            UnknownTargetError: supervisord has no program called `name`.
            SupervisorError: supervisord could not be reached or refused the call.
        """
        info = self._call("getProcessInfo", name)
        pid = int(info["pid"]) or None
        state = str(info["statename"])
        return ProcessState(
            name=name,
            state=state,
            pid=pid,
            started_at=float(info["start"]) or None,
            frozen=pid is not None and state in _ALIVE_STATES and is_frozen(pid),
            description=str(info.get("description", "")),
        )

    def restart(self, name: str, *, not_before: float) -> RestartOutcome:
        """Restart process `name` unless it was already restarted at or after `not_before`.

        A retried activity calls this again with the same `not_before` (the incident's detection
        time); when the process already runs, is not frozen and started since then, the first
        attempt did the job and nothing is done. supervisord reports start times in whole
        seconds, so the comparison is made at that resolution.

        Args:
            name: the supervisord program name.
            not_before: epoch seconds; a start at or after it counts as this incident's restart.

        Raises:
            UnknownTargetError: supervisord has no program called `name`.
            SupervisorError: the stop or the start failed (e.g. the process died on start).
        """
        before = self.process_state(name)
        if (
            before.healthy
            and before.started_at is not None
            and before.started_at >= math.floor(not_before)
        ):
            since = datetime.fromtimestamp(before.started_at, UTC).isoformat()
            return RestartOutcome(
                name=name,
                restarted=False,
                reason=f"already running since {since} (pid {before.pid})",
                old_pid=before.pid,
                new_pid=before.pid,
                started_at=before.started_at,
            )

        if before.frozen and before.pid is not None:
            # A stopped process keeps SIGTERM pending: wake it so it can shut down cleanly
            # instead of being SIGKILLed after stopwaitsecs.
            _signal(before.pid, signal.SIGCONT)
        if before.state in _ALIVE_STATES:
            self._call("stopProcess", name, True, tolerate=_FAULT_NOT_RUNNING)
        self._call("startProcess", name, True, tolerate=_FAULT_ALREADY_STARTED)

        after = self.process_state(name)
        reason = f"restarted from {before.state}" + (" (frozen)" if before.frozen else "")
        log.info(
            "process restarted",
            process=name,
            old_pid=before.pid,
            new_pid=after.pid,
            reason=reason,
        )
        return RestartOutcome(
            name=name,
            restarted=True,
            reason=reason,
            old_pid=before.pid,
            new_pid=after.pid,
            started_at=after.started_at,
        )

    def _call(self, method: str, name: str, *args: Any, tolerate: int | None = None) -> Any:
        """Call `supervisor.<method>(name, *args)`, turning faults into this module's errors."""
        proxy = supervisor_proxy(self.socket_path, timeout=self.timeout)
        try:
            return getattr(proxy.supervisor, method)(name, *args)
        except xmlrpc.client.Fault as exc:
            if exc.faultCode == tolerate:
                return None
            if exc.faultCode == _FAULT_BAD_NAME:
                raise UnknownTargetError(
                    f"supervisord at {self.socket_path} has no process named {name!r}"
                ) from None
            fault = fault_name(exc.faultCode)
            raise SupervisorError(
                f"supervisord {method}({name!r}) failed: {exc.faultString}", fault=fault
            ) from None
        except (OSError, http.client.HTTPException, xmlrpc.client.ProtocolError) as exc:
            raise SupervisorUnavailableError(
                f"supervisord at {self.socket_path} is unreachable ({method}): {exc}"
            ) from None


def _signal(pid: int, signum: signal.Signals) -> None:
    """Send `signum` to `pid`, ignoring a process that is already gone."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)
