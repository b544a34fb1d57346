"""One way to reach Temporal: the pydantic data converter on every client, and a clean close."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, NoReturn

from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleIntervalSpec,
    ScheduleSpec,
    ScheduleUpdate,
    ScheduleUpdateInput,
)
from temporalio.common import SearchAttributeKey
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig
from temporalio.service import RPCError, RPCStatusCode

from nofx.settings import Settings

TRACK = SearchAttributeKey.for_keyword("NofxTrack")
SERVICE = SearchAttributeKey.for_keyword("NofxService")
STATUS = SearchAttributeKey.for_keyword("NofxStatus")
RISK = SearchAttributeKey.for_keyword("NofxRisk")
AWAITING_APPROVAL = SearchAttributeKey.for_bool("NofxAwaitingApproval")
ALL_SEARCH_ATTRIBUTES = (TRACK, SERVICE, STATUS, RISK, AWAITING_APPROVAL)


def metrics_runtime(bind_address: str) -> Runtime:
    """A Temporal runtime serving Prometheus `/metrics` on `bind_address` (host:port).

    The SDK's own metrics (task latencies, slots, failures) and ours (incidents, actions, MTTR,
    through `workflow.metric_meter()` / `activity.metric_meter()`) share this one endpoint.
    """
    return Runtime(telemetry=TelemetryConfig(metrics=PrometheusConfig(bind_address=bind_address)))


async def connect(settings: Settings, *, runtime: Runtime | None = None) -> Client:
    """A client for the configured cluster, speaking pydantic models."""
    return await Client.connect(
        settings.temporal_address,
        namespace=settings.temporal_namespace,
        data_converter=pydantic_data_converter,
        runtime=runtime,
    )


def exit_process(code: int) -> NoReturn:
    """End a short-lived process that used a Temporal client without interpreter finalization.

    The SDK's Rust core threads can call into Python while the interpreter finalizes and abort the
    process ("PyGILState_Release ... finalizing", sdk-python issue 300) — seen here on `nofx demo`
    about one run in ten. Flushing everything and leaving through `os._exit` skips finalization.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)


@asynccontextmanager
async def temporal_client(settings: Settings) -> AsyncIterator[Client]:
    """Connect for the length of a CLI command (which then ends through `exit_process`)."""
    client = await connect(settings)
    try:
        yield client
    finally:
        del client


@dataclass(frozen=True)
class StandingJob:
    """A workflow a Temporal Schedule starts every `every` (visible in the Web UI's Schedules)."""

    schedule_id: str
    workflow: str
    args: list[Any]
    every: timedelta
    task_queue: str


async def schedule_phase(client: Client, schedule_id: str) -> tuple[timedelta, timedelta] | None:
    """(every, offset) of an interval Schedule; None when it does not exist or has no interval."""
    try:
        described = await client.get_schedule_handle(schedule_id).describe()
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            return None
        raise
    intervals = described.schedule.spec.intervals
    if not intervals:
        return None
    return intervals[0].every, intervals[0].offset or timedelta(0)


async def set_schedule_offset(client: Client, schedule_id: str, offset: timedelta) -> timedelta:
    """Move an interval Schedule's runs to `offset` into each period; the offset it had."""
    before: list[timedelta] = []

    def moved(update: ScheduleUpdateInput) -> ScheduleUpdate:
        schedule = update.description.schedule
        interval = schedule.spec.intervals[0]
        before.append(interval.offset or timedelta(0))
        schedule.spec.intervals = [
            ScheduleIntervalSpec(every=interval.every, offset=offset),
            *schedule.spec.intervals[1:],
        ]
        return ScheduleUpdate(schedule=schedule)

    await client.get_schedule_handle(schedule_id).update(moved)
    return before[-1]


async def ensure_schedules(client: Client, jobs: list[StandingJob]) -> list[str]:
    """Create the Schedules that do not exist yet (one that does is left as it is); the ids
    created."""
    created = []
    for job in jobs:
        with contextlib.suppress(ScheduleAlreadyRunningError):
            await client.create_schedule(
                job.schedule_id,
                Schedule(
                    action=ScheduleActionStartWorkflow(
                        job.workflow, args=job.args, id=job.schedule_id, task_queue=job.task_queue
                    ),
                    spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=job.every)]),
                ),
            )
            created.append(job.schedule_id)
    return created
