"""Traffic provider for HAProxy, over its runtime API (the admin ``stats socket``).

The healing track calls this module to take a bad replica out of rotation (drain or maintenance)
or to shift weights between replicas, and its compensation calls `HAProxyRuntime.restore` to put
back what was there before. It is plain code (no Temporal imports) so tests drive it directly
against a real haproxy, and an activity only has to wrap it with heartbeats and error typing.

Every change is idempotent because Temporal may run an activity again after a worker crash: the
provider first reads the current state and does nothing when the goal already holds. Each change
returns a `TrafficChange` whose ``before`` is exactly what a compensation must restore.

The runtime API speaks one command per connection here (HAProxy closes a non-interactive session
after answering its line), so a restarted haproxy never leaves a stale connection behind.
"""

from __future__ import annotations

import csv
import re
import socket
from pathlib import Path
from typing import Literal, get_args

from pydantic import BaseModel, Field

from nofx.logging import get_logger

log = get_logger(__name__)

AdminState = Literal["ready", "drain", "maint"]
OperationalState = Literal["down", "starting", "up", "stopping"]

ADMIN_STATES: frozenset[str] = frozenset(get_args(AdminState))

# HAProxy accepts absolute weights in this range (SRV_UWGHT_MAX); 0 takes no new traffic.
MAX_WEIGHT = 256

# srv_admin_state bits (enum srv_admin in HAProxy's server-t.h). CMAINT (0x04, "disabled" in the
# config) is deliberately not part of the maintenance mask: HAProxy keeps that bit after
# `set server ... state ready` and serves traffic, so counting it would report a ready server as
# in maintenance forever. 0x40 (FQDN changed) says nothing about traffic either.
_ADMF_FMAINT = 0x01  # forced into maintenance (CLI, stats page, or "disabled" in the config)
_ADMF_IMAINT = 0x02  # inherited from a tracked server
_ADMF_FDRAIN = 0x08  # forced into drain
_ADMF_IDRAIN = 0x10  # inherited from a tracked server
_ADMF_RMAINT = 0x20  # DNS resolution of the server's address failed
_ADMF_MAINT = _ADMF_FMAINT | _ADMF_IMAINT | _ADMF_RMAINT
_ADMF_DRAIN = _ADMF_FDRAIN | _ADMF_IDRAIN

# srv_op_state values (enum srv_state). "stopping" is a soft stop, e.g. a 404 health check with
# `http-check disable-on-404`; a drained server stays "up".
_OP_STATES: dict[int, OperationalState] = {0: "down", 1: "starting", 2: "up", 3: "stopping"}

# The only `show servers state` format HAProxy has ever emitted (SRV_STATE_FILE_VERSION).
_SERVERS_STATE_VERSION = "1"

# Proxy and server names HAProxy accepts in its configuration. Anything else cannot exist, and
# refusing it here also keeps a name from smuggling a second command (";") into the CLI line.
_NAME = re.compile(r"[A-Za-z0-9_.:-]+")

# With `set severity-output number`, HAProxy prefixes every message (not data) with its syslog
# severity: 0-3 are errors, 4 warnings, 5-7 informational.
_SEVERITY = re.compile(r"\[(\d)\]: ?")
_ERROR_SEVERITY_MAX = 3

# Answers that mean the named object does not exist, across `set`, `get` and `show` commands.
_NO_BACKEND = ("no such backend", "can't find backend", "no such proxy")
_NO_SERVER = ("no such server",)


class HAProxyError(RuntimeError):
    """HAProxy refused or failed an operation; the message says which and why.

    Attributes:
        answer: HAProxy's own message, or None when it could not be reached.
    """

    def __init__(self, message: str, *, answer: str | None = None) -> None:
        super().__init__(message)
        self.answer = answer


class HAProxyUnavailableError(HAProxyError):
    """HAProxy does not answer on its admin socket; retrying later may succeed."""


class UnknownServerError(ValueError):
    """The named backend or server does not exist in HAProxy; retrying cannot help."""


class ServerState(BaseModel):
    """One server of an HAProxy backend, as the healing track sees it."""

    backend: str
    server: str
    address: str
    port: int
    weight: int = Field(
        description="the runtime weight HAProxy balances with (what `set weight` changes)"
    )
    initial_weight: int = Field(description="the weight from the configuration")
    admin_state: AdminState
    operational_state: OperationalState
    check_status: str | None = Field(
        default=None,
        description="last health check result as HAProxy names it (L7OK, L4CON, ...); "
        "None when the server has no check",
    )
    admin_flags: int = Field(default=0, description="raw srv_admin_state bitfield")

    @property
    def takes_new_traffic(self) -> bool:
        """Whether the load balancer may pick this server for a new request right now."""
        return (
            self.admin_state == "ready"
            and self.operational_state in ("up", "starting")
            and self.weight > 0
        )


class TrafficSetting(BaseModel):
    """The part of a server's state that traffic changes touch, and compensations restore."""

    weight: int
    admin_state: AdminState


class TrafficChange(BaseModel):
    """What a traffic change did; ``before`` is what a compensation must put back."""

    backend: str
    server: str
    action: str = Field(description="set_weight, set_state or restore")
    before: TrafficSetting
    after: TrafficSetting
    changed: bool = Field(description="False when the goal already held and nothing was done")


class HAProxyRuntime:
    """Reads and changes the servers of one haproxy through its admin socket.

    Args:
        socket_path: the ``stats socket`` of the haproxy, declared with ``level admin``.
        timeout: seconds a single command may take (connect, send and receive).
    """

    def __init__(self, socket_path: Path, timeout: float = 5.0) -> None:
        self.socket_path = Path(socket_path)
        self.timeout = timeout

    def command(self, cmd: str) -> str:
        """Send one runtime API command and return HAProxy's answer, trailing blank lines removed.

        The command is preceded by ``set severity-output number`` on the same line, so HAProxy
        tags its messages with a severity: errors are recognised by that tag rather than by
        knowing every message text. Tags are removed from the answer.

        Raises:
            HAProxyUnavailableError: the socket is missing, refuses connections or times out.
            HAProxyError: HAProxy answered with an error (e.g. "No such server.").
        """
        if "\n" in cmd or "\r" in cmd:
            raise ValueError(f"an HAProxy command is a single line, got {cmd!r}")
        raw = self._exchange(f"set severity-output number; {cmd}\n")
        # The first line is the (empty) answer to `set severity-output`.
        answer = raw[1:] if raw.startswith("\n") else raw
        answer = answer.rstrip("\n")
        tag = _SEVERITY.match(answer)
        if tag is not None:
            answer = answer[tag.end() :]
        if (tag is not None and int(tag.group(1)) <= _ERROR_SEVERITY_MAX) or answer.startswith(
            "Unknown command"
        ):
            message = answer.splitlines()[0] if answer else "(empty answer)"
            raise HAProxyError(
                f"HAProxy at {self.socket_path} refused {cmd!r}: {message}", answer=answer
            )
        return answer

    def servers(self, backend: str) -> list[ServerState]:
        """Every server of `backend`, in configuration order.

        Raises:
            UnknownServerError: HAProxy has no backend called `backend`.
            HAProxyError: HAProxy could not be reached or answered something unexpected.
        """
        _check_name("backend", backend)
        rows = self._servers_state(backend)
        checks: dict[str, str | None] = {}
        if rows:
            # By numeric id, not name: `show stat <name>` picks a frontend of the same name.
            checks = self._check_statuses(backend, rows[0]["be_id"])
        return [self._server_state(backend, row, checks.get(row["srv_name"])) for row in rows]

    def server(self, backend: str, server: str) -> ServerState:
        """The state of server `server` in `backend`.

        Raises:
            UnknownServerError: the backend or the server does not exist.
            HAProxyError: HAProxy could not be reached or answered something unexpected.
        """
        _check_name("server", server)
        for state in self.servers(backend):
            if state.server == server:
                return state
        raise UnknownServerError(
            f"HAProxy at {self.socket_path} has no server {server!r} in backend {backend!r}"
        )

    def set_weight(self, backend: str, server: str, weight: int) -> TrafficChange:
        """Give `server` the runtime weight `weight` (0 takes it out of load balancing).

        Only the weight changes: a drained or maintained server stays so.

        Raises:
            ValueError: `weight` is not an integer in 0..256.
            UnknownServerError: the backend or the server does not exist.
            HAProxyError: HAProxy refused the change or could not be reached.
        """
        _check_weight(weight)
        return self._apply(backend, server, action="set_weight", weight=weight)

    def set_state(self, backend: str, server: str, state: AdminState) -> TrafficChange:
        """Put `server` in admin state `state`.

        ``drain`` stops new traffic while letting current requests (and health checks) finish;
        ``maint`` also stops health checks; ``ready`` takes traffic again. The weight is kept.

        Raises:
            ValueError: `state` is not ready, drain or maint.
            UnknownServerError: the backend or the server does not exist.
            HAProxyError: HAProxy refused the change, or the state is inherited (from a tracked
                server or a DNS resolution failure) and cannot be changed from here.
        """
        if state not in ADMIN_STATES:
            raise ValueError(f"admin state must be one of {sorted(ADMIN_STATES)}, got {state!r}")
        return self._apply(backend, server, action="set_state", state=state)

    def restore(self, change: TrafficChange) -> TrafficChange:
        """Put the weight and admin state of ``change``'s server back to ``change.before``.

        This is the compensation of `set_weight` and `set_state`; like them it does nothing when
        the server is already as it was, so running it twice is harmless.
        """
        _check_weight(change.before.weight)
        return self._apply(
            change.backend,
            change.server,
            action="restore",
            weight=change.before.weight,
            state=change.before.admin_state,
        )

    def _apply(
        self,
        backend: str,
        server: str,
        *,
        action: str,
        weight: int | None = None,
        state: AdminState | None = None,
    ) -> TrafficChange:
        """Bring `server` to the given weight and/or state, reading first and verifying after."""
        before = self.server(backend, server)
        target = f"{backend}/{server}"
        commands: list[str] = []
        if weight is not None and before.weight != weight:
            commands.append(f"set weight {target} {weight}")
        if state is not None and before.admin_state != state:
            state_command = f"set server {target} state {state}"
            # When the server comes back into rotation, set its weight first so it never takes
            # traffic at the old weight; when it leaves, stop its traffic first.
            if state == "ready":
                commands.append(state_command)
            else:
                commands.insert(0, state_command)
        if not commands:
            setting = _setting(before)
            return TrafficChange(
                backend=backend,
                server=server,
                action=action,
                before=setting,
                after=setting,
                changed=False,
            )

        for cmd in commands:
            self._run(cmd, backend=backend, server=server)
        after = self.server(backend, server)
        if (weight is not None and after.weight != weight) or (
            state is not None and after.admin_state != state
        ):
            raise HAProxyError(
                f"HAProxy at {self.socket_path} accepted {action} on {target} but the server is "
                f"now weight {after.weight}, {after.admin_state} (admin flags "
                f"{after.admin_flags:#04x}); an inherited maintenance or drain (tracked server, "
                "DNS resolution) cannot be lifted from here"
            )
        log.info(
            "haproxy traffic changed",
            backend=backend,
            server=server,
            action=action,
            weight_before=before.weight,
            weight_after=after.weight,
            state_before=before.admin_state,
            state_after=after.admin_state,
        )
        return TrafficChange(
            backend=backend,
            server=server,
            action=action,
            before=_setting(before),
            after=_setting(after),
            changed=True,
        )

    def _servers_state(self, backend: str) -> list[dict[str, str]]:
        """Rows of `show servers state <backend>`, keyed by the header's field names."""
        answer = self._run(f"show servers state {backend}", backend=backend)
        lines = [line for line in answer.splitlines() if line.strip()]
        if len(lines) < 2 or lines[0].strip() != _SERVERS_STATE_VERSION:
            raise HAProxyError(
                f"HAProxy at {self.socket_path} sent a `show servers state` answer this module "
                f"cannot read (expected format version {_SERVERS_STATE_VERSION}): {answer[:200]!r}",
                answer=answer,
            )
        header = lines[1].lstrip("#").split()
        missing = {
            "be_id",
            "srv_name",
            "srv_addr",
            "srv_op_state",
            "srv_admin_state",
            "srv_uweight",
            "srv_iweight",
            "srv_port",
        }.difference(header)
        if missing:
            raise HAProxyError(
                f"HAProxy at {self.socket_path}: `show servers state` lacks fields "
                f"{sorted(missing)}",
                answer=answer,
            )
        # Trailing fields may be absent on older versions (the format allows 20 to 25 fields).
        return [dict(zip(header, line.split(), strict=False)) for line in lines[2:]]

    def _check_statuses(self, backend: str, backend_id: str) -> dict[str, str | None]:
        """Health check status names per server, from `show stat` (the state dump has codes)."""
        answer = self._run(f"show stat {backend_id} 4 -1", backend=backend)
        lines = answer.splitlines()
        if not lines or not lines[0].startswith("# "):
            return {}
        reader = csv.DictReader([lines[0][2:], *lines[1:]])
        return {
            row["svname"]: (row.get("check_status") or None)
            for row in reader
            if row.get("pxname") == backend and row.get("svname")
        }

    def _server_state(self, backend: str, row: dict[str, str], check: str | None) -> ServerState:
        flags = int(row["srv_admin_state"])
        admin: AdminState = (
            "maint" if flags & _ADMF_MAINT else "drain" if flags & _ADMF_DRAIN else "ready"
        )
        op_code = int(row["srv_op_state"])
        if op_code not in _OP_STATES:
            raise HAProxyError(
                f"HAProxy at {self.socket_path} reports {backend}/{row['srv_name']} in unknown "
                f"operational state {op_code}"
            )
        return ServerState(
            backend=backend,
            server=row["srv_name"],
            address=row["srv_addr"],
            port=int(row["srv_port"]),
            weight=int(row["srv_uweight"]),
            initial_weight=int(row["srv_iweight"]),
            admin_state=admin,
            operational_state=_OP_STATES[op_code],
            check_status=check,
            admin_flags=flags,
        )

    def _run(self, cmd: str, *, backend: str, server: str | None = None) -> str:
        """`command`, with "no such backend/server" answers turned into `UnknownServerError`."""
        try:
            return self.command(cmd)
        except HAProxyUnavailableError:
            raise
        except HAProxyError as exc:
            text = (exc.answer or "").lower()
            if any(marker in text for marker in _NO_BACKEND):
                raise UnknownServerError(
                    f"HAProxy at {self.socket_path} has no backend {backend!r}"
                ) from None
            if server is not None and any(marker in text for marker in _NO_SERVER):
                raise UnknownServerError(
                    f"HAProxy at {self.socket_path} has no server {server!r} in backend {backend!r}"
                ) from None
            raise

    def _exchange(self, line: str) -> str:
        """Send `line` on a fresh connection and read the answer until HAProxy closes it."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(str(self.socket_path))
            sock.sendall(line.encode())
            chunks: list[bytes] = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except TimeoutError:
            raise HAProxyUnavailableError(
                f"HAProxy at {self.socket_path} did not answer within {self.timeout}s"
            ) from None
        except FileNotFoundError:
            raise HAProxyUnavailableError(
                f"HAProxy admin socket {self.socket_path} does not exist"
            ) from None
        except OSError as exc:
            raise HAProxyUnavailableError(
                f"HAProxy at {self.socket_path} is unreachable: {exc}"
            ) from None
        finally:
            sock.close()
        return b"".join(chunks).decode(errors="replace")


def _setting(state: ServerState) -> TrafficSetting:
    return TrafficSetting(weight=state.weight, admin_state=state.admin_state)


def _check_weight(weight: int) -> None:
    """Refuse weights HAProxy would refuse, before anything is read or sent."""
    if isinstance(weight, bool) or not isinstance(weight, int):
        raise ValueError(f"weight must be an integer in 0..{MAX_WEIGHT}, got {weight!r}")
    if not 0 <= weight <= MAX_WEIGHT:
        raise ValueError(f"weight must be in 0..{MAX_WEIGHT}, got {weight}")


def _check_name(kind: str, name: str) -> None:
    """Refuse a backend or server name that HAProxy could not have."""
    if not _NAME.fullmatch(name):
        raise UnknownServerError(
            f"there is no HAProxy {kind} named {name!r}: names are made of letters, digits "
            "and '-', '_', '.', ':'"
        )
