"""Replica-group provider: spare replicas started by supervisord and put into HAProxy rotation.

A replica group that can grow has spare *slots* (its inventory's ``providers.replicas``): each a
supervisord program configured but not started (``autostart=false``) and a server of the group's
HAProxy backend declared ``disabled``. Bringing a slot in starts its program over supervisord's
XML-RPC, waits until the process answers its health check (at the address HAProxy balances to),
sets its weight and admin state ``ready`` over HAProxy's runtime API and waits for HAProxy's own
health check to call it up. Taking a slot out puts it in ``drain`` (no new requests), waits for
its sessions to end, puts it in ``maint`` and stops the program.

Plain code (no Temporal): the scaling actions (nofx.optimization.scaling_actions) call it, tests
drive it against a real supervisord and haproxy. Every wait has a deadline; every step reads the
current state first, so running one twice does nothing more.
"""

from __future__ import annotations

import csv
import http.client
import time
import xmlrpc.client
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from nofx.logging import get_logger
from nofx.providers.haproxy import AdminState, HAProxyRuntime, ServerState
from nofx.providers.supervisor import (
    ProcessState,
    SupervisorError,
    SupervisorProvider,
    SupervisorUnavailableError,
    UnknownTargetError,
    fault_name,
    supervisor_proxy,
)

log = get_logger(__name__)

_FAULT_ALREADY_STARTED = 60
_FAULT_NOT_RUNNING = 70
_POLL_S = 0.1


class ReplicaGroupError(RuntimeError):
    """The group cannot do what was asked (a slot is missing, a wait ran out); the message
    names the slot and what was seen."""


@dataclass(frozen=True)
class Slot:
    """One spare replica: its supervisord program and its HAProxy server."""

    program: str
    server: str


@dataclass(frozen=True)
class SlotState:
    """A slot as supervisord and HAProxy see it now."""

    slot: Slot
    process: ProcessState
    server: ServerState

    @property
    def running(self) -> bool:
        return self.process.state == "RUNNING"

    @property
    def in_rotation(self) -> bool:
        """HAProxy may send it new requests (admin state ready): capacity the group has."""
        return self.server.admin_state == "ready"

    def record(self) -> dict[str, Any]:
        """What a capture keeps of the slot, and what an undo puts back."""
        return {
            "program": self.slot.program,
            "server": self.slot.server,
            "running": self.running,
            "admin_state": self.server.admin_state,
            "weight": self.server.weight,
            "started_at": self.process.started_at,
        }


class ReplicaGroup:
    """The spare slots of one HAProxy backend, with the supervisord that runs their programs.

    Args:
        supervisor_socket: the supervisord's Unix socket (its XML-RPC API).
        haproxy_socket: HAProxy's admin socket (``level admin``).
        backend: the group's backend.
        slots: its spare replicas, in the order scale-out uses them.
    """

    def __init__(
        self,
        supervisor_socket: Path | str,
        haproxy_socket: Path | str,
        backend: str,
        slots: Sequence[Slot],
    ) -> None:
        self.supervisor_socket = Path(supervisor_socket)
        self.haproxy = HAProxyRuntime(Path(haproxy_socket))
        self.supervisor = SupervisorProvider(self.supervisor_socket)
        self.backend = backend
        self.slots = list(slots)

    # -- reading -----------------------------------------------------------------------------

    def servers(self) -> list[ServerState]:
        """Every server of the backend (the group's own replicas and the slots).

        Raises:
            UnknownServerError: HAProxy has no such backend.
            HAProxyError: HAProxy could not be reached or answered something unexpected.
        """
        return self.haproxy.servers(self.backend)

    def states(self) -> list[SlotState]:
        """Each slot's process and server, in slot order.

        Raises:
            ReplicaGroupError: a slot's server is not in the backend, or its program is not
                configured in supervisord.
        """
        servers = {s.server: s for s in self.servers()}
        out = []
        for slot in self.slots:
            server = servers.get(slot.server)
            if server is None:
                raise ReplicaGroupError(
                    f"HAProxy backend {self.backend!r} has no server {slot.server!r} for the"
                    f" replica slot of program {slot.program!r}"
                )
            try:
                process = self.supervisor.process_state(slot.program)
            except UnknownTargetError as err:
                raise ReplicaGroupError(f"replica slot {slot.server!r}: {err}") from None
            out.append(SlotState(slot, process, server))
        return out

    def in_rotation(self) -> list[str]:
        """The backend's servers in admin state ready (own replicas and slots alike)."""
        return [s.server for s in self.servers() if s.admin_state == "ready"]

    def sessions(self, server: str) -> int:
        """Current sessions on `server` (HAProxy's ``scur``): requests in flight to it."""
        answer = self.haproxy.command("show stat -1 4 -1")
        lines = answer.splitlines()
        if not lines or not lines[0].startswith("# "):
            raise ReplicaGroupError(f"HAProxy sent a `show stat` answer without a header: {lines}")
        for row in csv.DictReader([lines[0][2:], *lines[1:]]):
            if row.get("pxname") == self.backend and row.get("svname") == server:
                return int(row.get("scur") or 0)
        raise ReplicaGroupError(f"HAProxy backend {self.backend!r} has no server {server!r}")

    # -- changing ----------------------------------------------------------------------------

    def bring_in(self, state: SlotState, *, weight: int | None, timeout: float) -> dict[str, Any]:
        """Start the slot's program, wait until it serves, put its server into rotation and
        wait until HAProxy's health check has it up.

        Raises:
            ReplicaGroupError: the process did not start or serve, or HAProxy did not see it up,
                within `timeout` seconds (counted from the start).
        """
        slot = state.slot
        deadline = time.monotonic() + timeout
        self.start(slot)
        url = f"http://{state.server.address}:{state.server.port}/health"
        self._wait(
            lambda: self.supervisor.process_state(slot.program).healthy and _answers(url),
            deadline,
            lambda: (
                f"replica {slot.program} did not answer {url} within {timeout:g}s"
                f" (supervisord: {self.supervisor.process_state(slot.program).state})"
            ),
        )
        if weight is not None:
            self.haproxy.set_weight(self.backend, slot.server, weight)
        self.haproxy.set_state(self.backend, slot.server, "ready")
        self._wait(
            lambda: self.haproxy.server(self.backend, slot.server).takes_new_traffic,
            deadline,
            lambda: (
                f"HAProxy did not see {self.backend}/{slot.server} up within {timeout:g}s"
                f" ({self.haproxy.server(self.backend, slot.server).operational_state})"
            ),
        )
        now = self.haproxy.server(self.backend, slot.server)
        pid = self.supervisor.process_state(slot.program).pid
        log.info("replica added", backend=self.backend, server=slot.server, pid=pid)
        return {"server": slot.server, "pid": pid, "weight": now.weight}

    def take_out(
        self, slot: Slot, *, admin_state: AdminState, timeout: float, stop: bool = True
    ) -> dict[str, Any]:
        """Drain the slot's server, wait for its sessions to end, put it in `admin_state`
        and (with `stop`) stop its program.

        Raises:
            ReplicaGroupError: sessions were still open after `timeout` seconds; the server is
                put back as it was and the program left running.
        """
        before = self.haproxy.server(self.backend, slot.server)
        if before.admin_state == "ready":
            self.haproxy.set_state(self.backend, slot.server, "drain")
        deadline = time.monotonic() + timeout
        try:
            self._wait(
                lambda: self.sessions(slot.server) == 0,
                deadline,
                lambda: (
                    f"{self.backend}/{slot.server} still had {self.sessions(slot.server)}"
                    f" session(s) {timeout:g}s after it was drained"
                ),
            )
        except ReplicaGroupError:
            if before.admin_state == "ready":
                self.haproxy.set_state(self.backend, slot.server, "ready")
            raise
        self.haproxy.set_state(self.backend, slot.server, admin_state)
        if stop:
            self.stop(slot)
        log.info("replica removed", backend=self.backend, server=slot.server)
        return {"server": slot.server, "admin_state": admin_state}

    def start(self, slot: Slot) -> None:
        """Start the slot's program (nothing when it runs)."""
        self._rpc("startProcess", slot.program, True, tolerate=_FAULT_ALREADY_STARTED)

    def stop(self, slot: Slot) -> None:
        """Stop the slot's program (nothing when it does not run)."""
        self._rpc("stopProcess", slot.program, True, tolerate=_FAULT_NOT_RUNNING)

    def _rpc(self, method: str, name: str, *args: Any, tolerate: int) -> Any:
        """`supervisor.<method>(name, *args)`, a `tolerate`d fault meaning the goal holds."""
        proxy = supervisor_proxy(self.supervisor_socket, timeout=60.0)
        try:
            return getattr(proxy.supervisor, method)(name, *args)
        except xmlrpc.client.Fault as exc:
            if exc.faultCode == tolerate:
                return None
            raise SupervisorError(
                f"supervisord {method}({name!r}) failed: {exc.faultString}",
                fault=fault_name(exc.faultCode),
            ) from None
        except (OSError, http.client.HTTPException, xmlrpc.client.ProtocolError) as exc:
            raise SupervisorUnavailableError(
                f"supervisord at {self.supervisor_socket} is unreachable ({method}): {exc}"
            ) from None

    @staticmethod
    def _wait(holds: Callable[[], bool], deadline: float, why: Callable[[], str]) -> None:
        while not holds():
            if time.monotonic() > deadline:
                raise ReplicaGroupError(why())
            time.sleep(_POLL_S)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1.0, trust_env=False).status_code == 200
    except httpx.HTTPError:
        return False
