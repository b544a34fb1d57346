"""The live staging fleet and the track workers, for integration and end-to-end tests.

Each test that asks for `live_fleet` gets its own supervisord with two pilot services whose names
are unique to the test, registered in the inventory so the monitor probes them, and removed again
afterwards so later tests never see a stale service.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine
from temporalio.client import Client

from nofx.inventory import register_fleet, unregister
from nofx.settings import (
    TASK_QUEUE_DECISIONS,
    TASK_QUEUE_HEALING,
    TASK_QUEUE_MAINTENANCE,
    Settings,
)
from pilot.fleet import Fleet, FleetSpec, ServiceSpec, free_port
from workers import decisions, healing, maintenance
from workers.common import Dependencies, build_worker


@pytest.fixture
def live_fleet(tmp_path: Path, db_engine: Engine, database_url: str) -> Iterator[Fleet]:
    tag = uuid.uuid4().hex[:6]
    api, orders = f"t{tag}-api", f"t{tag}-orders"
    fleet = Fleet(
        tmp_path,
        FleetSpec(
            services=[
                ServiceSpec(name=api, port=free_port(), depends_on=[orders]),
                ServiceSpec(name=orders, port=free_port()),
            ]
        ),
        database_url=database_url,
    )
    fleet.start()
    names = register_fleet(db_engine, fleet)  # once up: starting is not down
    try:
        yield fleet
    finally:
        unregister(db_engine, names)
        fleet.stop()


@pytest.fixture
def deps(client: Client, db_engine: Engine, database_url: str) -> Dependencies:
    return Dependencies(
        engine=db_engine, client=client, settings=Settings(database_url=database_url)
    )


@pytest.fixture
async def decisions_worker(deps: Dependencies) -> AsyncIterator[None]:
    """The real decisions worker, in process."""
    worker = build_worker(deps, TASK_QUEUE_DECISIONS, decisions.WORKFLOWS, decisions.activities)
    async with worker:
        yield


@pytest.fixture
async def healing_worker(deps: Dependencies, decisions_worker: None) -> AsyncIterator[None]:
    """The real healing worker (with the decisions worker it asks), in process."""
    worker = build_worker(deps, TASK_QUEUE_HEALING, healing.WORKFLOWS, healing.activities)
    async with worker:
        yield


@pytest.fixture
async def maintenance_worker(deps: Dependencies) -> AsyncIterator[None]:
    """The real maintenance worker (audit verification, detector training), in process."""
    worker = build_worker(
        deps, TASK_QUEUE_MAINTENANCE, maintenance.WORKFLOWS, maintenance.activities
    )
    async with worker:
        yield
