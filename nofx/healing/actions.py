"""The healing actions, against real components, each with the undo that restores the prior state.

Plain code (no Temporal): `activities.actions` wraps it with the exactly-once bookkeeping. Every
action has three parts:

* `capture` reads, *before anything changes*, what its undo needs (the active config version, the
  cache entries' dumps, where the quarantined files go). The activity stores it in `action_log`
  first, so an undo after a worker crash mid-action still knows the true prior state.
* `perform` acts, idempotently: it reads the current state and does nothing when the goal holds.
* `undo` puts the prior state back (idempotent too) — the saga's compensation.

Which actions a target supports is declared by its inventory entry (`capabilities`): an action is
offered only where its provider exists — never faked.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import os
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import redis
from sqlalchemy import text

from models.actions import (
    AdmitTrafficParams,
    Capability,
    CleanupDiskParams,
    DrainTrafficParams,
    InvalidateCacheParams,
    ResizePoolParams,
    RollbackConfigParams,
    ShiftWeightParams,
    TerminateIdleParams,
)
from models.healing import FleetTarget
from nofx.healing.action_base import HEALING_ACTOR as HEALING_ACTOR
from nofx.healing.action_base import Action as Action
from nofx.healing.action_base import ActionContext as ActionContext
from nofx.healing.action_base import ActionError as ActionError
from nofx.healing.action_base import Performed as Performed
from nofx.healing.action_base import reason_of
from nofx.logging import get_logger
from nofx.providers.config import ConfigError, ConfigStore, ConfigVersion
from nofx.providers.haproxy import (
    HAProxyError,
    HAProxyRuntime,
    HAProxyUnavailableError,
    ServerState,
    TrafficChange,
    TrafficSetting,
    UnknownServerError,
)

log = get_logger(__name__)


def capabilities(target: FleetTarget) -> dict[Capability, str]:
    """What can be done to `target`, each capability with the provider that offers it."""
    meta = target.metadata
    found: dict[Capability, str] = {"probe.http": "http"}
    if meta.get("limits"):  # the platform's own record of where each metric runs out
        found["inventory.limits"] = "nofx-inventory"
    if target.provider == "supervisor" and meta.get("supervisor_socket"):
        found["process.restart"] = "supervisor"
    if meta.get("data_dir"):
        found["disk.cleanup"] = "files"
    if (meta.get("config") or {}).get("kind") == "file":
        found["config.rollback"] = "config-file"
        found["config.adjust"] = "config-file"
    if meta.get("application_name"):
        found["db.terminate_idle"] = "postgresql"
        found["db.index"] = "postgresql"
    if meta.get("redis_url") and meta.get("cache_prefix"):
        found["cache.invalidate"] = "redis"
    socket = meta.get("haproxy_socket")
    if (
        socket
        and meta.get("haproxy_backend")
        and meta.get("haproxy_server")
        and Path(socket).exists()
    ):
        found["traffic.drain"] = "haproxy"
        found["traffic.weight"] = "haproxy"
        if meta.get("replica_slots") and meta.get("supervisor_socket"):
            found["replicas.scale"] = "supervisor-haproxy"
    return found


# ---- disk: quarantine, never delete ------------------------------------------------------


class CleanupDisk:
    """Move matching files out of the service's data directory (its quota) into a quarantine.

    Nothing is deleted: the quarantine sits next to the data directory, outside the quota, and
    the undo moves every file back. Purging the quarantine after its retention is a separate,
    audited maintenance job — healing never destroys data.
    """

    name = "cleanup_disk"

    def capture(self, ctx: ActionContext, params: CleanupDiskParams) -> dict[str, Any]:
        data = Path(ctx.meta("data_dir"))
        digest = hashlib.sha256(ctx.key.encode()).hexdigest()[:16]
        return {"data_dir": str(data), "quarantine": str(data.parent / ".quarantine" / digest)}

    def perform(
        self, ctx: ActionContext, params: CleanupDiskParams, prior: Mapping[str, Any]
    ) -> Performed:
        data, quarantine = Path(prior["data_dir"]), Path(prior["quarantine"])
        if not data.is_dir():
            raise ActionError(f"{ctx.service}: data directory {data} does not exist")
        now = time.time()
        moved, size = [], 0
        for path in sorted(data.iterdir()):
            if not path.is_file() or path.is_symlink():
                continue
            if not any(fnmatch.fnmatch(path.name, p) for p in params.patterns):
                continue
            stat = path.stat()
            if now - stat.st_mtime < params.min_age_seconds:
                continue
            quarantine.mkdir(parents=True, exist_ok=True)
            os.replace(path, quarantine / path.name)
            moved.append(path.name)
            size += stat.st_size
        already = sorted(p.name for p in quarantine.iterdir()) if quarantine.is_dir() else []
        return Performed(
            bool(moved),
            {
                "moved": moved,
                "bytes": size,
                "quarantine": str(quarantine),
                "in_quarantine": len(already),
            },
        )

    def undo(self, ctx: ActionContext, prior: Mapping[str, Any]) -> Performed:
        data, quarantine = Path(prior["data_dir"]), Path(prior["quarantine"])
        if not quarantine.is_dir():
            return Performed(False, {"reason": "nothing was quarantined"})
        restored, kept = [], []
        for path in sorted(quarantine.iterdir()):
            destination = data / path.name
            if destination.exists():
                kept.append(path.name)  # never overwrite what the service wrote since
                continue
            os.replace(path, destination)
            restored.append(path.name)
        if not kept:
            shutil.rmtree(quarantine, ignore_errors=True)
        return Performed(bool(restored), {"restored": restored, "left_in_quarantine": kept})

    def restored(self, ctx: ActionContext, prior: Mapping[str, Any]) -> tuple[bool, str]:
        quarantine = Path(prior["quarantine"])
        left = sorted(p.name for p in quarantine.iterdir()) if quarantine.is_dir() else []
        if left:
            return False, f"{len(left)} file(s) still in quarantine: {', '.join(left[:5])}"
        return True, "every quarantined file is back in the data directory"

    def plan(self, params: CleanupDiskParams) -> tuple[str, str]:
        return (
            f"move files matching {', '.join(params.patterns)} out of the data directory into a"
            " quarantine",
            "move the quarantined files back",
        )


# ---- configuration: versions in config_versions -------------------------------------------


class RollbackConfig:
    """Make an earlier configuration version active again (as a new version; history is kept)."""

    name = "rollback_config"

    def capture(self, ctx: ActionContext, params: RollbackConfigParams) -> dict[str, Any]:
        active = ctx.config().active()
        if active is None:
            raise ActionError(f"{ctx.service} has no active configuration version to roll back")
        rolled_back = active.applied_by == HEALING_ACTOR and "roll back" in (active.reason or "")
        if params.to_version is None and rolled_back:
            # "The previous version" of a rollback is the configuration it just removed.
            raise ActionError(
                f"{ctx.service}: v{active.version} is already a rollback by healing"
                f" ({active.reason}); rolling back again would restore what it removed"
            )
        return {"from_version": active.version}

    def perform(
        self, ctx: ActionContext, params: RollbackConfigParams, prior: Mapping[str, Any]
    ) -> Performed:
        store = ctx.config()
        active = store.active()
        if active is not None and ctx.key in (active.reason or ""):
            return Performed(
                True, {"active_version": active.version, "note": "already rolled back"}
            )
        rolled = self._roll_back(
            ctx, store, params.to_version, f"roll back v{prior['from_version']}"
        )
        return Performed(
            True,
            {
                "from_version": prior["from_version"],
                "active_version": rolled.version,
                "config": rolled.config,
            },
        )

    @staticmethod
    def _roll_back(
        ctx: ActionContext, store: ConfigStore, to_version: int | None, why: str
    ) -> ConfigVersion:
        try:
            rolled = store.rollback(
                applied_by=HEALING_ACTOR, reason=reason_of(ctx, why), to_version=to_version
            )
        except ConfigError as err:
            raise ActionError(str(err)) from err
        assert rolled is not None  # only `only_over` makes a rollback a no-op
        return rolled[1]

    @staticmethod
    def _before(store: ConfigStore, prior: Mapping[str, Any]) -> ConfigVersion | None:
        wanted = int(prior["from_version"])
        return next((v for v in store.history() if v.version == wanted), None)

    def undo(self, ctx: ActionContext, prior: Mapping[str, Any]) -> Performed:
        store = ctx.config()
        before, active = self._before(store, prior), store.active()
        if before is None or active is None or active.config == before.config:
            return Performed(False, {"reason": "the prior configuration is in force"})
        restored = self._roll_back(
            ctx, store, before.version, f"compensation: restore v{before.version}"
        )
        return Performed(True, {"restored_version": before.version, "active": restored.version})

    def restored(self, ctx: ActionContext, prior: Mapping[str, Any]) -> tuple[bool, str]:
        store = ctx.config()
        before, active = self._before(store, prior), store.active()
        if before is None or active is None:
            return False, f"v{prior['from_version']} or the active version is missing"
        if active.config != before.config:
            return False, f"active v{active.version} differs from v{before.version}"
        return True, f"active v{active.version} has v{before.version}'s configuration"

    def plan(self, params: RollbackConfigParams) -> tuple[str, str]:
        target = f"v{params.to_version}" if params.to_version else "the previous version"
        return f"roll the configuration back to {target}", "re-apply the configuration it replaced"


class ResizePool:
    """Grow the service's database connection pool, or set it to an exact size (a config change;
    undo restores the size)."""

    name = "resize_pool"

    @staticmethod
    def _size(active: ConfigVersion | None, default: int) -> int:
        return int((active.config if active else {}).get("db_pool_size", default))

    def capture(self, ctx: ActionContext, params: ResizePoolParams) -> dict[str, Any]:
        size = self._size(ctx.config().active(), 5)
        if params.size is not None:  # an optimisation: exactly this size, larger or smaller
            return {"size": size, "target": params.size}
        return {
            "size": size,
            "target": min(params.max_size, max(size + 1, round(size * params.factor))),
        }

    def _set(self, ctx: ActionContext, size: int, why: str) -> ConfigVersion:
        try:
            _, pushed = ctx.config().push(
                {"db_pool_size": size}, applied_by=HEALING_ACTOR, reason=reason_of(ctx, why)
            )
        except ConfigError as err:
            raise ActionError(str(err)) from err
        return pushed

    def perform(
        self, ctx: ActionContext, params: ResizePoolParams, prior: Mapping[str, Any]
    ) -> Performed:
        current = self._size(ctx.config().active(), int(prior["size"]))
        target = int(prior["target"])
        exact = params.size is not None
        if current == target or (current > target and not exact):
            return Performed(False, {"size": current, "reason": f"pool already {current}"})
        verb = "grow" if target > current else "shrink"
        pushed = self._set(ctx, target, f"{verb} the database pool {current} -> {target}")
        return Performed(True, {"from": current, "to": target, "version": pushed.version})

    def undo(self, ctx: ActionContext, prior: Mapping[str, Any]) -> Performed:
        size = int(prior["size"])
        active = ctx.config().active()
        if active is None or self._size(active, size) == size:
            return Performed(False, {"reason": f"the pool is back at {size}"})
        self._set(ctx, size, f"compensation: pool back to {size}")
        return Performed(True, {"size": size})

    def restored(self, ctx: ActionContext, prior: Mapping[str, Any]) -> tuple[bool, str]:
        size = int(prior["size"])
        now = self._size(ctx.config().active(), 5)
        return now == size, f"pool size {now} (before the step: {size})"

    def plan(self, params: ResizePoolParams) -> tuple[str, str]:
        if params.size is not None:
            return f"set the database pool to {params.size} connections", "set the pool size back"
        return (
            f"grow the database pool by a factor of {params.factor:g} (at most {params.max_size})",
            "set the pool size back",
        )


# ---- database: sessions stuck idle in a transaction ---------------------------------------

_IDLE_IN_TRANSACTION = text(
    "SELECT pid, backend_xid IS NOT NULL AS wrote,"
    " extract(epoch FROM now() - state_change)::float8 AS idle_s"
    " FROM pg_stat_activity WHERE application_name = :app AND pid <> pg_backend_pid()"
    " AND state IN ('idle in transaction', 'idle in transaction (aborted)')"
    " AND state_change < now() - make_interval(secs => :floor) ORDER BY pid"
)


class TerminateIdleConnections:
    """End the service's sessions idle in a transaction that wrote nothing.

    A session whose transaction holds a transaction id (`backend_xid`) has written: ending it
    would roll those writes back, so it is left alone and reported — zero data loss. The ones
    ended held only a snapshot; the service's pool notices and reconnects. There is no state to
    restore, so the undo only says so.

    A leak takes its sessions one after another, so a pass may see some already stuck and
    others on their way (idle in a transaction for `approaching_seconds`, which no healthy
    request is, but not yet `idle_seconds`). The next pass waits until the first of those
    crosses the threshold, at most `scan_interval_seconds`; when none is on its way the action
    stops, so a leak that has already taken all it takes is ended in one pass.
    """

    name = "terminate_idle_connections"

    def capture(self, ctx: ActionContext, params: TerminateIdleParams) -> dict[str, Any]:
        return {"application_name": ctx.meta("application_name")}

    def perform(
        self, ctx: ActionContext, params: TerminateIdleParams, prior: Mapping[str, Any]
    ) -> Performed:
        ended: list[int] = []
        spared: set[int] = set()
        seen: set[int] = set()
        floor = min(params.approaching_seconds, params.idle_seconds)
        scans = 0
        for scan in range(params.scans):
            scans += 1
            coming: list[float] = []
            with ctx.engine.begin() as conn:
                sessions = conn.execute(
                    _IDLE_IN_TRANSACTION, {"app": prior["application_name"], "floor": floor}
                ).all()
                for pid, wrote, idle_s in sessions:
                    if pid in ended:
                        continue  # terminated, still listed for a moment
                    if idle_s < params.idle_seconds:
                        coming.append(idle_s)
                        continue
                    seen.add(pid)
                    if wrote:
                        spared.add(pid)
                    elif conn.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid}).scalar():
                        ended.append(pid)
            if not coming or scan == params.scans - 1:
                break
            # Just past the crossing, so the one waited for counts as stuck on the next pass.
            time.sleep(min(params.scan_interval_seconds, params.idle_seconds - max(coming) + 0.05))
        return Performed(
            bool(ended),
            {
                "terminated": ended,
                "spared_with_writes": sorted(spared),
                "seen": len(seen),
                "scans": scans,
            },
        )

    def undo(self, ctx: ActionContext, prior: Mapping[str, Any]) -> Performed:
        return Performed(
            False, {"reason": "ended sessions had written nothing; nothing to restore"}
        )

    def restored(self, ctx: ActionContext, prior: Mapping[str, Any]) -> tuple[bool, str]:
        return True, "the ended sessions held no writes: no state was lost"

    def plan(self, params: TerminateIdleParams) -> tuple[str, str]:
        return (
            f"end the service's sessions idle in a transaction for {params.idle_seconds:g}s or"
            " more that wrote nothing (sessions with writes are spared)",
            "nothing to restore (the ended sessions held no writes)",
        )


# ---- cache: invalidate by namespace, keep the dumps ---------------------------------------


def _redis(ctx: ActionContext) -> redis.Redis:
    return redis.Redis.from_url(str(ctx.meta("redis_url")), socket_timeout=5.0)


def _lived_out(entry: Mapping[str, Any]) -> bool:
    """An entry with a TTL that would have expired by now, restored or not: the service has
    rebuilt it from its source since, so its value is not held against the undo."""
    pttl, at = int(entry.get("pttl", 0)), entry.get("captured_at")
    return pttl > 0 and at is not None and time.time() >= float(at) + pttl / 1000


class InvalidateCache:
    """Delete the service's cache namespace (SCAN, never KEYS) and warm it with real requests.

    Only derived data lives under ``<prefix>:<namespace>:``; the source of truth is elsewhere, so
    the next read rebuilds every entry. The entries' DUMPs (with their TTLs) are kept as the
    prior state, so the undo restores them exactly.
    """

    name = "invalidate_cache"

    @staticmethod
    def _match(ctx: ActionContext, params: InvalidateCacheParams) -> str:
        return f"{ctx.meta('cache_prefix')}:{params.namespace}:*"

    def capture(self, ctx: ActionContext, params: InvalidateCacheParams) -> dict[str, Any]:
        client = _redis(ctx)
        try:
            entries = []
            for key in client.scan_iter(match=self._match(ctx, params), count=500):
                dumped = client.dump(key)
                if dumped is None:
                    continue
                entries.append(
                    {
                        "key": base64.b64encode(key).decode(),
                        "dump": base64.b64encode(dumped).decode(),
                        "pttl": max(0, int(client.pttl(key))),
                        "captured_at": time.time(),
                    }
                )
        finally:
            client.close()
        return {"match": self._match(ctx, params), "entries": entries}

    def perform(
        self, ctx: ActionContext, params: InvalidateCacheParams, prior: Mapping[str, Any]
    ) -> Performed:
        client = _redis(ctx)
        try:
            deleted = 0
            batch: list[bytes] = []
            for key in client.scan_iter(match=prior["match"], count=500):
                batch.append(key)
                if len(batch) >= 500:
                    deleted += int(client.unlink(*batch))
                    batch.clear()
            if batch:
                deleted += int(client.unlink(*batch))
        finally:
            client.close()
        warmed: list[int | str] = []
        for _ in range(params.warm_requests):
            try:
                response = httpx.get(f"{ctx.target.endpoint}{params.warm_path}", timeout=2.0)
                warmed.append(response.status_code)
            except httpx.HTTPError as err:
                warmed.append(type(err).__name__)
        return Performed(
            deleted > 0,
            {"deleted": deleted, "match": prior["match"], "warm_responses": warmed},
        )

    def undo(self, ctx: ActionContext, prior: Mapping[str, Any]) -> Performed:
        client = _redis(ctx)
        try:
            for entry in prior["entries"]:
                client.restore(
                    base64.b64decode(entry["key"]),
                    int(entry["pttl"]),
                    base64.b64decode(entry["dump"]),
                    replace=True,
                )
        finally:
            client.close()
        return Performed(bool(prior["entries"]), {"restored": len(prior["entries"])})

    def restored(self, ctx: ActionContext, prior: Mapping[str, Any]) -> tuple[bool, str]:
        client = _redis(ctx)
        try:
            differ = [
                entry
                for entry in prior["entries"]
                if client.dump(base64.b64decode(entry["key"])) != base64.b64decode(entry["dump"])
                and not _lived_out(entry)
            ]
        finally:
            client.close()
        if differ:
            return False, f"{len(differ)} of {len(prior['entries'])} entries differ from before"
        return True, f"all {len(prior['entries'])} entries hold their values from before"

    def plan(self, params: InvalidateCacheParams) -> tuple[str, str]:
        return (
            f"delete the cache namespace '{params.namespace}' (SCAN) and warm it with"
            f" {params.warm_requests} request(s)",
            "restore the deleted entries from their dumps",
        )


# ---- traffic: HAProxy runtime API, never the last serving server ----------------------------


@dataclass(frozen=True)
class _Place:
    """Where the target sits behind HAProxy: the admin socket, its backend and its server."""

    socket: str
    backend: str
    server: str

    @classmethod
    def of(cls, ctx: ActionContext) -> _Place:
        return cls(
            str(ctx.meta("haproxy_socket")),
            str(ctx.meta("haproxy_backend")),
            str(ctx.meta("haproxy_server")),
        )

    @classmethod
    def recorded(cls, prior: Mapping[str, Any]) -> _Place:
        return cls(str(prior["socket"]), str(prior["backend"]), str(prior["server"]))

    @property
    def runtime(self) -> HAProxyRuntime:
        return HAProxyRuntime(Path(self.socket))

    def __str__(self) -> str:
        return f"{self.backend}/{self.server}"


def _haproxy_failure(place: _Place, err: HAProxyError | UnknownServerError) -> ActionError:
    """A refusal HAProxy will repeat on retry (unknown server, inherited state), as ActionError.

    `HAProxyUnavailableError` is not converted: HAProxy may answer again, so the activity retries.
    """
    return ActionError(f"HAProxy server {place}: {err}")


class _TrafficAction:
    """What `DrainTraffic` and `ShiftWeight` share: capture, the last-server guard, the undo.

    The prior state is the server's runtime weight and admin state, read from HAProxy before
    anything changes, with where it was read (socket, backend, server): the undo puts back
    exactly that setting on exactly that server, even if the inventory changed since.
    """

    def capture(self, ctx: ActionContext, params: Any) -> dict[str, Any]:
        place = _Place.of(ctx)
        state = self._read(place)
        return {
            "socket": place.socket,
            "backend": place.backend,
            "server": place.server,
            "weight": state.weight,
            "admin_state": state.admin_state,
        }

    def undo(self, ctx: ActionContext, prior: Mapping[str, Any]) -> Performed:
        place = _Place.recorded(prior)
        before = TrafficSetting(weight=int(prior["weight"]), admin_state=prior["admin_state"])
        try:
            restored = place.runtime.restore(
                TrafficChange(
                    backend=place.backend,
                    server=place.server,
                    action="restore",
                    before=before,
                    after=before,
                    changed=True,
                )
            )
        except HAProxyUnavailableError:
            raise
        except (HAProxyError, UnknownServerError) as err:
            raise _haproxy_failure(place, err) from err
        if not restored.changed:
            return Performed(
                False,
                {"server": str(place), "reason": "the prior weight and state are in force"},
            )
        log.info("haproxy server restored", server=str(place), **before.model_dump())
        return Performed(True, {"server": str(place), **_change_detail(restored)})

    def restored(self, ctx: ActionContext, prior: Mapping[str, Any]) -> tuple[bool, str]:
        place = _Place.recorded(prior)
        try:
            now = place.runtime.server(place.backend, place.server)
        except (HAProxyError, UnknownServerError) as err:
            return False, f"{place} could not be read: {err}"
        was = f"weight {prior['weight']}, {prior['admin_state']}"
        if (now.weight, now.admin_state) != (int(prior["weight"]), prior["admin_state"]):
            return False, f"{place} is weight {now.weight}, {now.admin_state} (before: {was})"
        return True, f"{place} is back at {was}"

    @staticmethod
    def _read(place: _Place) -> ServerState:
        try:
            return place.runtime.server(place.backend, place.server)
        except HAProxyUnavailableError:
            raise
        except (HAProxyError, UnknownServerError) as err:
            raise _haproxy_failure(place, err) from err

    @staticmethod
    def _refuse_if_last(place: _Place, what: str) -> list[str]:
        """Refuse `what` when no other server of the backend takes new traffic right now.

        Returns the servers that do, so the detail says where the traffic goes.
        """
        try:
            servers = place.runtime.servers(place.backend)
        except HAProxyUnavailableError:
            raise
        except (HAProxyError, UnknownServerError) as err:
            raise _haproxy_failure(place, err) from err
        others = [s.server for s in servers if s.server != place.server and s.takes_new_traffic]
        if not others:
            raise ActionError(
                f"refusing to {what} HAProxy server {place}: no other server of backend"
                f" {place.backend!r} takes traffic, so the whole service would go offline"
            )
        return others

    @classmethod
    def _take_out(
        cls, place: _Place, what: str, change: Callable[[], TrafficChange]
    ) -> tuple[TrafficChange, list[str]]:
        """Make a change that takes `place` out of rotation, never the last one serving.

        Checked before, and again after: two incidents on two replicas of one backend may each
        see the other serving and act at once. Whichever finds nobody else serving afterwards
        puts its server back and refuses.
        """
        cls._refuse_if_last(place, what)
        done = cls._apply(place, change)
        try:
            serving = cls._refuse_if_last(place, what)
        except ActionError:
            if done.changed:
                cls._apply(place, lambda: place.runtime.restore(done))
            raise
        return done, serving

    @staticmethod
    def _apply(place: _Place, change: Callable[[], TrafficChange]) -> TrafficChange:
        try:
            result = change()
        except HAProxyUnavailableError:
            raise
        except (HAProxyError, UnknownServerError) as err:
            raise _haproxy_failure(place, err) from err
        return result


def _change_detail(change: TrafficChange) -> dict[str, Any]:
    return {"before": change.before.model_dump(), "after": change.after.model_dump()}


class DrainTraffic(_TrafficAction):
    """Put the target's server in drain: no new requests, the ones in flight finish.

    Health checks go on, so HAProxy still sees when the replica is well again; the weight is
    kept. Refused when no other server of the backend takes traffic.
    """

    name = "drain_traffic"

    def perform(
        self, ctx: ActionContext, params: DrainTrafficParams, prior: Mapping[str, Any]
    ) -> Performed:
        place = _Place.recorded(prior)
        current = self._read(place)
        if current.admin_state != "ready":
            return Performed(
                False,
                {"server": str(place), "reason": f"already {current.admin_state}: no new traffic"},
            )
        change, serving = self._take_out(
            place, "drain", lambda: place.runtime.set_state(place.backend, place.server, "drain")
        )
        return Performed(
            change.changed, {"server": str(place), "serving": serving, **_change_detail(change)}
        )

    def plan(self, params: DrainTrafficParams) -> tuple[str, str]:
        return (
            "drain the replica in its HAProxy backend (no new requests; those in flight finish),"
            " unless it is the last server taking traffic",
            "put the server's prior admin state and weight back",
        )


class ShiftWeight(_TrafficAction):
    """Give the target's server a new runtime weight in its backend (0: no new requests).

    Lowering the weight to 0 is refused when no other server of the backend takes traffic; the
    admin state is left as it is.
    """

    name = "shift_weight"

    def perform(
        self, ctx: ActionContext, params: ShiftWeightParams, prior: Mapping[str, Any]
    ) -> Performed:
        place = _Place.recorded(prior)
        current = self._read(place)
        if current.weight == params.weight:
            return Performed(
                False, {"server": str(place), "reason": f"weight already {params.weight}"}
            )
        detail: dict[str, Any] = {"server": str(place)}

        def shift() -> TrafficChange:
            return place.runtime.set_weight(place.backend, place.server, params.weight)

        if params.weight == 0:
            change, detail["serving"] = self._take_out(place, "set weight 0 on", shift)
        else:
            change = self._apply(place, shift)
        return Performed(change.changed, {**detail, **_change_detail(change)})

    def plan(self, params: ShiftWeightParams) -> tuple[str, str]:
        if params.weight == 0:
            what = "set the replica's HAProxy weight to 0 (no new requests), unless no other"
            what += " server of its backend takes traffic"
        else:
            what = f"set the replica's HAProxy weight to {params.weight}"
        return what, "put the server's prior weight and admin state back"


class AdmitTraffic(_TrafficAction):
    """Put the target's server back into rotation (admin state ``ready``), the weight kept.

    The last step of a playbook that drained a replica to work on it: once the replica is
    healthy again it takes its share back, so the fix does not cost the group a replica. A
    server already ready is left alone; the undo puts the prior state (drained) back.
    """

    name = "admit_traffic"

    def perform(
        self, ctx: ActionContext, params: AdmitTrafficParams, prior: Mapping[str, Any]
    ) -> Performed:
        place = _Place.recorded(prior)
        current = self._read(place)
        if current.admin_state == "ready":
            return Performed(False, {"server": str(place), "reason": "already ready"})
        change = self._apply(
            place, lambda: place.runtime.set_state(place.backend, place.server, "ready")
        )
        detail = {"server": str(place), **_change_detail(change)}
        if change.after.weight == 0:
            detail["note"] = "ready, but weight 0: it takes no new requests until reweighted"
        return Performed(change.changed, detail)

    def plan(self, params: AdmitTrafficParams) -> tuple[str, str]:
        return (
            "put the replica back into rotation in its HAProxy backend (admin state ready)",
            "put the server's prior admin state and weight back",
        )


# Actions of the optimisation track, written against nofx.healing.action_base like these.
from nofx.optimization.config_actions import SetCacheTtl, SetLimit  # noqa: E402
from nofx.optimization.index_actions import CreateIndex  # noqa: E402
from nofx.optimization.scaling_actions import ScaleIn, ScaleOut  # noqa: E402

ACTIONS: dict[str, Action] = {
    action.name: action
    for action in (
        CleanupDisk(),
        RollbackConfig(),
        ResizePool(),
        TerminateIdleConnections(),
        InvalidateCache(),
        DrainTraffic(),
        ShiftWeight(),
        AdmitTraffic(),
        SetCacheTtl(),
        SetLimit(),
        CreateIndex(),
        ScaleOut(),
        ScaleIn(),
    )
}
