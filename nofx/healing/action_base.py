"""What every action is made of: where it runs (`ActionContext`), what it did (`Performed`),
why it cannot (`ActionError`), and the shape an action has (`Action`: capture, perform, undo,
restored, plan; see nofx.healing.actions).

A module of its own so that actions of other tracks (nofx.optimization) are written against
it without importing the healing actions, which register every action in `ACTIONS`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy.engine import Engine

from models.healing import FleetTarget
from nofx.providers.config import ConfigError, ConfigStore, delivery_of

HEALING_ACTOR = "nofx-healing"


class ActionError(RuntimeError):
    """The action cannot be done on this target (and retrying will not change that)."""


@dataclass
class ActionContext:
    """Where an action runs: its target, the platform database, and its idempotency key."""

    target: FleetTarget
    engine: Engine
    database_url: str | None
    key: str

    @property
    def service(self) -> str:
        return self.target.service

    def meta(self, name: str) -> Any:
        value = self.target.metadata.get(name)
        if value in (None, ""):
            raise ActionError(f"service {self.service!r} has no metadata.{name} in the inventory")
        return value

    def config(self) -> ConfigStore:
        """The target's configuration versions and their delivery (its config provider)."""
        try:
            return ConfigStore(
                self.engine, self.service, delivery_of(self.service, self.target.metadata)
            )
        except ConfigError as err:
            raise ActionError(str(err)) from err


@dataclass
class Performed:
    performed: bool
    detail: dict[str, Any] = field(default_factory=dict)


class Action(Protocol):
    """A healing action (module doc); `plan` says, in words, what it and its undo would do."""

    @property
    def name(self) -> str: ...

    def capture(self, ctx: ActionContext, params: Any) -> dict[str, Any]: ...

    def perform(self, ctx: ActionContext, params: Any, prior: Mapping[str, Any]) -> Performed: ...

    def undo(self, ctx: ActionContext, prior: Mapping[str, Any]) -> Performed: ...

    def restored(self, ctx: ActionContext, prior: Mapping[str, Any]) -> tuple[bool, str]: ...

    def plan(self, params: Any) -> tuple[str, str]: ...


def reason_of(ctx: ActionContext, what: str) -> str:
    """The reason a configuration version records for a change an action makes."""
    return f"{what} (healing step {ctx.key})"
