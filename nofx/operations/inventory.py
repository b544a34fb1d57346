"""The inventory's operations (`nofx services ...`): apply a file of services, list them, show
one with what its providers can do, remove some; typed errors, all or nothing, audited."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine

from models.inventory import ApplyReport
from nofx import inventory
from nofx.healing.actions import capabilities
from nofx.operations.errors import InvalidRequest, NotFound


class InventoryOperations:
    """The services the platform manages, against the platform database."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def apply(self, file: Path, *, dry_run: bool, actor: str) -> ApplyReport:
        """Add or change the file's services (all or none); unlisted ones stay."""

        def run() -> ApplyReport:
            loaded = inventory.load(file)
            return inventory.apply(self.engine, loaded, dry_run=dry_run, actor=actor)

        try:
            return await asyncio.to_thread(run)
        except inventory.InventoryError as err:
            raise InvalidRequest([str(err)]) from None

    async def services(self) -> list[dict[str, Any]]:
        return await asyncio.to_thread(inventory.describe, self.engine)

    async def service(self, name: str) -> dict[str, Any]:
        """One service's row, with the capabilities its providers offer."""

        def read() -> dict[str, Any]:
            rows = inventory.describe(self.engine, name)
            if not rows:
                raise NotFound(f"{name} is not in the inventory (nofx services list)")
            target = inventory.find_target(self.engine, name)
            row = rows[0]
            if target is not None:
                row["capabilities"] = capabilities(target)
            return row

        return await asyncio.to_thread(read)

    async def remove(self, names: list[str], *, dry_run: bool, actor: str) -> ApplyReport:
        """Take services out (and their configuration history), all or none."""
        try:
            return await asyncio.to_thread(
                lambda: inventory.remove(self.engine, names, dry_run=dry_run, actor=actor)
            )
        except inventory.InventoryError as err:
            raise InvalidRequest([str(err)]) from None
