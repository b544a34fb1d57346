"""Scale a replica group out and in: spare replicas started and put into its HAProxy backend,
then drained out and stopped (nofx.providers.replicas), as actions with capture and undo.

The target is any service of the group whose inventory entry has ``providers.replicas`` (its
spare slots) beside ``providers.process`` (the supervisord that runs them) and
``providers.traffic`` (the backend they join). The prior state is every slot's process state and
server setting (admin state, weight), read before anything changes, with the sockets and backend
it was read from; the undo brings each slot back to exactly that, so the group's set of replicas
in rotation, and which of their processes run, is what it was.

Guards, each refused with a clear error before anything changes:

* scale-out never goes above the free slots, nor above ``max_replicas`` when it is given;
* scale-in never leaves fewer replicas in rotation than the minimum (the inventory's
  ``min_replicas``, or the step's), and removes only slots, the newest first: the group's own
  replicas are never the platform's to remove.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from models.actions import ScaleInParams, ScaleOutParams
from nofx.healing.action_base import ActionContext, ActionError, Performed
from nofx.logging import get_logger
from nofx.providers.haproxy import HAProxyError, HAProxyUnavailableError, UnknownServerError
from nofx.providers.replicas import ReplicaGroup, ReplicaGroupError, Slot, SlotState
from nofx.providers.supervisor import SupervisorError, SupervisorUnavailableError

log = get_logger(__name__)

# How long an undo waits for a replica to serve, or for a drained one's sessions to end.
UNDO_TIMEOUT_S = 60.0


def _group(ctx: ActionContext) -> tuple[ReplicaGroup, dict[str, Any]]:
    """The target's replica group, from its inventory entry, and its slots' settings."""
    spec = ctx.meta("replica_slots")
    slots = [Slot(str(s["program"]), str(s["server"])) for s in spec.get("slots") or []]
    if not slots:
        raise ActionError(f"service {ctx.service!r}: providers.replicas lists no slot")
    group = ReplicaGroup(
        str(ctx.meta("supervisor_socket")),
        str(ctx.meta("haproxy_socket")),
        str(ctx.meta("haproxy_backend")),
        slots,
    )
    return group, spec


def _recorded(prior: Mapping[str, Any]) -> ReplicaGroup:
    """The group exactly as the capture read it (the inventory may have changed since)."""
    return ReplicaGroup(
        prior["supervisor_socket"],
        prior["haproxy_socket"],
        prior["backend"],
        [Slot(s["program"], s["server"]) for s in prior["slots"]],
    )


_PERMANENT = (HAProxyError, UnknownServerError, SupervisorError, ReplicaGroupError)


def _guarded(backend: str, call: Any, *args: Any, **kwargs: Any) -> Any:
    """Run a provider call; refusals that retrying will not change become ActionError.

    An unreachable supervisord or HAProxy is left as it is, so the activity retries.
    """
    try:
        return call(*args, **kwargs)
    except (HAProxyUnavailableError, SupervisorUnavailableError):
        raise
    except _PERMANENT as err:
        raise ActionError(f"replica group {backend!r}: {err}") from err


def _states(group: ReplicaGroup) -> list[SlotState]:
    return list(_guarded(group.backend, group.states))


def _in_rotation(group: ReplicaGroup) -> list[str]:
    return list(_guarded(group.backend, group.in_rotation))


class _Scaling:
    """What `ScaleOut` and `ScaleIn` share: the capture, the undo and its check."""

    def capture(self, ctx: ActionContext, params: Any) -> dict[str, Any]:
        group, spec = _group(ctx)
        states = _states(group)
        return {
            "supervisor_socket": str(group.supervisor_socket),
            "haproxy_socket": str(group.haproxy.socket_path),
            "backend": group.backend,
            "slots": [s.record() for s in states],
            "in_rotation": _in_rotation(group),
            "min_replicas": int(spec.get("min_replicas", 1)),
            "weight": spec.get("weight"),
        }

    def undo(self, ctx: ActionContext, prior: Mapping[str, Any]) -> Performed:
        group = _recorded(prior)
        changed: list[str] = []
        for record, now in zip(prior["slots"], _states(group), strict=True):
            if _differences(record, now):
                _guarded(group.backend, _put_back, group, record, now)
                changed.append(now.slot.server)
        if not changed:
            return Performed(False, {"reason": "every slot is as it was"})
        log.info("replica group restored", backend=group.backend, slots=changed)
        return Performed(True, {"restored": changed, "in_rotation": _in_rotation(group)})

    def restored(self, ctx: ActionContext, prior: Mapping[str, Any]) -> tuple[bool, str]:
        group = _recorded(prior)
        try:
            states = group.states()
            rotation = group.in_rotation()
        except (*_PERMANENT, HAProxyUnavailableError, SupervisorUnavailableError) as err:
            return False, f"replica group {group.backend!r} could not be read: {err}"
        off = [
            f"{now.slot.server}: {', '.join(diff)}"
            for record, now in zip(prior["slots"], states, strict=True)
            if (diff := _differences(record, now))
        ]
        if off:
            return False, "; ".join(off)
        if sorted(rotation) != sorted(prior["in_rotation"]):
            return (
                False,
                f"in rotation: {sorted(rotation)} (before: {sorted(prior['in_rotation'])})",
            )
        return True, f"{group.backend}: {len(rotation)} replica(s) in rotation, as before"


def _differences(record: Mapping[str, Any], now: SlotState) -> list[str]:
    """How a slot differs from its record (empty: as it was)."""
    out = []
    if now.running != bool(record["running"]):
        out.append(f"process {'running' if now.running else now.process.state}")
    if now.server.admin_state != record["admin_state"]:
        out.append(f"{now.server.admin_state} (was {record['admin_state']})")
    if now.server.weight != int(record["weight"]):
        out.append(f"weight {now.server.weight} (was {record['weight']})")
    return out


def _put_back(group: ReplicaGroup, record: Mapping[str, Any], now: SlotState) -> None:
    """Bring one slot back to its record: out of rotation before its process stops, its process
    serving before it comes back into rotation."""
    slot = now.slot
    if now.server.admin_state == "ready" and record["admin_state"] != "ready":
        group.take_out(slot, admin_state=record["admin_state"], timeout=UNDO_TIMEOUT_S, stop=False)
    if record["admin_state"] == "ready" and now.server.admin_state != "ready":
        group.bring_in(now, weight=int(record["weight"]), timeout=UNDO_TIMEOUT_S)
    elif record["admin_state"] != "ready":
        group.haproxy.set_state(group.backend, slot.server, record["admin_state"])
    if not record["running"]:
        group.stop(slot)
    elif group.supervisor.process_state(slot.program).state != "RUNNING":
        group.start(slot)
    if group.haproxy.server(group.backend, slot.server).weight != int(record["weight"]):
        group.haproxy.set_weight(group.backend, slot.server, int(record["weight"]))


class ScaleOut(_Scaling):
    """Add replicas to the group: start spare slots and put them into its HAProxy backend."""

    name = "scale_out"

    def perform(
        self, ctx: ActionContext, params: ScaleOutParams, prior: Mapping[str, Any]
    ) -> Performed:
        group = _recorded(prior)
        goal = len(prior["in_rotation"]) + params.replicas
        rotation = _in_rotation(group)
        if len(rotation) >= goal:
            return Performed(
                False, {"in_rotation": rotation, "reason": f"{len(rotation)} already in rotation"}
            )
        if params.max_replicas is not None and goal > params.max_replicas:
            raise ActionError(
                f"refusing to scale {group.backend!r} out to {goal} replicas: above the maximum"
                f" of {params.max_replicas}"
            )
        free = [s for s in _states(group) if not s.in_rotation]
        needed = goal - len(rotation)
        if len(free) < needed:
            raise ActionError(
                f"refusing to add {needed} replica(s) to {group.backend!r}: only {len(free)} spare"
                f" slot(s) free ({', '.join(s.slot.server for s in free) or 'none'}) of"
                f" {len(group.slots)}"
            )
        weight = prior.get("weight")
        added = []
        for state in free[:needed]:
            try:
                added.append(
                    _guarded(
                        group.backend,
                        group.bring_in,
                        state,
                        weight=weight,
                        timeout=params.health_timeout_seconds,
                    )
                )
            except ActionError:
                # Leave no half-added replica behind: out of rotation, process stopped.
                _guarded(
                    group.backend,
                    group.take_out,
                    state.slot,
                    admin_state=state.server.admin_state,
                    timeout=UNDO_TIMEOUT_S,
                )
                raise
        return Performed(True, {"added": added, "in_rotation": _in_rotation(group)})

    def plan(self, params: ScaleOutParams) -> tuple[str, str]:
        return (
            f"start {params.replicas} spare replica(s) of the group and put them into its HAProxy"
            " backend once they serve",
            "drain the added replicas out of the backend and stop them",
        )


class ScaleIn(_Scaling):
    """Remove replicas the platform added: drain the newest out of the backend and stop it."""

    name = "scale_in"

    def perform(
        self, ctx: ActionContext, params: ScaleInParams, prior: Mapping[str, Any]
    ) -> Performed:
        group = _recorded(prior)
        goal = len(prior["in_rotation"]) - params.replicas
        rotation = _in_rotation(group)
        if len(rotation) <= goal:
            return Performed(
                False, {"in_rotation": rotation, "reason": f"{len(rotation)} left in rotation"}
            )
        minimum = params.min_replicas or int(prior["min_replicas"])
        if goal < minimum:
            raise ActionError(
                f"refusing to scale {group.backend!r} in to {goal} replica(s): below the minimum"
                f" of {minimum} ({len(rotation)} in rotation now)"
            )
        added = sorted(
            (s for s in _states(group) if s.in_rotation),
            key=lambda s: (s.process.started_at or 0.0, group.slots.index(s.slot)),
            reverse=True,
        )
        needed = len(rotation) - goal
        if len(added) < needed:
            own = sorted(set(rotation) - {s.slot.server for s in added})
            raise ActionError(
                f"refusing to remove {needed} replica(s) from {group.backend!r}: only"
                f" {len(added)} of those in rotation were added by the platform; the group's own"
                f" replicas ({', '.join(own)}) are never removed"
            )
        removed = [
            _guarded(
                group.backend,
                group.take_out,
                state.slot,
                admin_state="maint",
                timeout=params.drain_timeout_seconds,
            )
            for state in added[:needed]
        ]
        return Performed(True, {"removed": removed, "in_rotation": _in_rotation(group)})

    def plan(self, params: ScaleInParams) -> tuple[str, str]:
        return (
            f"drain the {params.replicas} replica(s) the platform added last out of the group's"
            " HAProxy backend and stop them, never below the minimum",
            "start them again and put them back into the backend",
        )
