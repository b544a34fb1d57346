"""Optimisation actions on settings: a cache's TTL (through the service's configuration
provider) and a metric's limit (the inventory's record of it and, where the service has a
setting that enforces it, that setting).

Each follows the healing actions' shape (nofx.healing.action_base): `capture` reads the prior
state before anything changes, `perform` is idempotent, `undo` puts the prior state back and
`restored` checks it. The pool size is the healing track's `resize_pool` with an exact `size`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from sqlalchemy import text

from models.actions import SetCacheTtlParams, SetLimitParams
from nofx.healing.action_base import (
    HEALING_ACTOR,
    ActionContext,
    ActionError,
    Performed,
    reason_of,
)
from nofx.providers.config import ConfigError, ConfigVersion

CACHE_TTL_KEY = "cache_ttl_s"


def _setting(ctx: ActionContext, key: str) -> Any:
    """The setting in force (the file's, before the platform's first push)."""
    return ctx.config().current().get(key)


def _push(ctx: ActionContext, changes: dict[str, Any], why: str) -> ConfigVersion:
    try:
        _, pushed = ctx.config().push(changes, applied_by=HEALING_ACTOR, reason=reason_of(ctx, why))
    except ConfigError as err:
        raise ActionError(str(err)) from err
    return pushed


def _same(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return abs(a - b) <= 1e-9 * max(abs(a), abs(b), 1.0)


class SetCacheTtl:
    """Set the service's cache TTL (`cache_ttl_s` in its configuration); undo sets it back."""

    name = "set_cache_ttl"

    def capture(self, ctx: ActionContext, params: SetCacheTtlParams) -> dict[str, Any]:
        now = _setting(ctx, CACHE_TTL_KEY)
        if now is None:
            now = params.default_ttl_s
        if now is None:
            raise ActionError(
                f"service {ctx.service!r}: its configuration names no {CACHE_TTL_KEY} and the"
                " step gives no default_ttl_s: the TTL to restore is unknown"
            )
        return {"ttl_s": float(now), "target": params.ttl_s}

    def perform(
        self, ctx: ActionContext, params: SetCacheTtlParams, prior: Mapping[str, Any]
    ) -> Performed:
        now = _setting(ctx, CACHE_TTL_KEY)
        target = float(prior["target"])
        if now is not None and _same(float(now), target):
            return Performed(False, {"ttl_s": target, "reason": f"cache TTL already {target:g} s"})
        was = float(now) if now is not None else float(prior["ttl_s"])
        pushed = _push(ctx, {CACHE_TTL_KEY: target}, f"cache TTL {was:g} s -> {target:g} s")
        return Performed(True, {"from": was, "to": target, "version": pushed.version})

    def undo(self, ctx: ActionContext, prior: Mapping[str, Any]) -> Performed:
        before = float(prior["ttl_s"])
        now = _setting(ctx, CACHE_TTL_KEY)
        if now is None or _same(float(now), before):
            return Performed(False, {"reason": f"the cache TTL is back at {before:g} s"})
        _push(ctx, {CACHE_TTL_KEY: before}, f"compensation: cache TTL back to {before:g} s")
        return Performed(True, {"ttl_s": before})

    def restored(self, ctx: ActionContext, prior: Mapping[str, Any]) -> tuple[bool, str]:
        before = float(prior["ttl_s"])
        now = _setting(ctx, CACHE_TTL_KEY)
        value = before if now is None else float(now)
        return _same(value, before), f"cache TTL {value:g} s (before the step: {before:g} s)"

    def plan(self, params: SetCacheTtlParams) -> tuple[str, str]:
        return f"set the cache TTL to {params.ttl_s:g} s", "set the cache TTL back"


class SetLimit:
    """Set the limit the inventory records for a metric (what time-to-exhaustion, rightsizing
    and the cost report measure against) and the setting that enforces it, when the step names
    one; undo puts both back. A later `nofx services apply` of an inventory file that still
    says the old limit sets it again: the file is the source of truth, so change it too."""

    name = "set_limit"

    @staticmethod
    def _limit(ctx: ActionContext, metric: str) -> float | None:
        with ctx.engine.connect() as conn:
            row = conn.execute(
                text("SELECT metadata->'limits'->:m AS v FROM services WHERE name = :s"),
                {"m": metric, "s": ctx.service},
            ).first()
        if row is None:
            raise ActionError(f"service {ctx.service!r} is not in the inventory")
        return None if row.v is None else float(row.v)

    @staticmethod
    def _write_limit(ctx: ActionContext, metric: str, value: float) -> None:
        with ctx.engine.begin() as conn:
            conn.execute(
                text(
                    "UPDATE services SET metadata = jsonb_set(COALESCE(metadata, '{}'::jsonb),"
                    " ARRAY['limits', :m], CAST(:v AS jsonb), true)"
                    " WHERE name = :s AND metadata ? 'limits'"
                ),
                {"m": metric, "v": json.dumps(value), "s": ctx.service},
            )

    @staticmethod
    def _setting_value(limit: float, params: Mapping[str, Any]) -> int:
        return round(limit * float(params["config_scale"]))

    def capture(self, ctx: ActionContext, params: SetLimitParams) -> dict[str, Any]:
        limit = self._limit(ctx, params.metric)
        if limit is None:
            raise ActionError(
                f"service {ctx.service!r} has no limit for {params.metric} in the inventory"
            )
        setting = None
        if params.config_key is not None:
            setting = _setting(ctx, params.config_key)
            if setting is None:
                raise ActionError(
                    f"service {ctx.service!r}: its configuration names no {params.config_key}:"
                    " the setting to restore is unknown"
                )
        return {
            "metric": params.metric,
            "limit": limit,
            "target": params.to,
            "config_key": params.config_key,
            "config_scale": params.config_scale,
            "setting": setting,
        }

    def perform(
        self, ctx: ActionContext, params: SetLimitParams, prior: Mapping[str, Any]
    ) -> Performed:
        metric, target = str(prior["metric"]), float(prior["target"])
        detail: dict[str, Any] = {"metric": metric, "from": prior["limit"], "to": target}
        changed = False
        key = prior.get("config_key")
        if key:
            want = self._setting_value(target, prior)
            if _setting(ctx, key) != want:
                pushed = _push(ctx, {key: want}, f"{key} -> {want} for the {metric} limit")
                detail.update(setting=key, setting_to=want, version=pushed.version)
                changed = True
        if not _same(self._limit(ctx, metric), target):
            self._write_limit(ctx, metric, target)
            changed = True
        if not changed:
            detail["reason"] = f"the limit of {metric} is already {target:g}"
        return Performed(changed, detail)

    def undo(self, ctx: ActionContext, prior: Mapping[str, Any]) -> Performed:
        metric, before = str(prior["metric"]), float(prior["limit"])
        changed = False
        key = prior.get("config_key")
        if key and _setting(ctx, key) != prior["setting"]:
            _push(ctx, {key: prior["setting"]}, f"compensation: {key} back to {prior['setting']}")
            changed = True
        if not _same(self._limit(ctx, metric), before):
            self._write_limit(ctx, metric, before)
            changed = True
        return Performed(changed, {"metric": metric, "limit": before})

    def restored(self, ctx: ActionContext, prior: Mapping[str, Any]) -> tuple[bool, str]:
        metric, before = str(prior["metric"]), float(prior["limit"])
        now = self._limit(ctx, metric)
        ok = _same(now, before)
        seen = f"limit of {metric} {now} (before the step: {before:g})"
        key = prior.get("config_key")
        if key:
            setting = _setting(ctx, key)
            ok = ok and setting == prior["setting"]
            seen += f"; {key} {setting} (before: {prior['setting']})"
        return ok, seen

    def plan(self, params: SetLimitParams) -> tuple[str, str]:
        also = f" and {params.config_key}" if params.config_key else ""
        return f"set the limit of {params.metric} to {params.to:g}{also}", "set the limit back"
