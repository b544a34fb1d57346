"""One way to reach Temporal: the pydantic data converter on every client, and a clean close."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from temporalio.client import Client
from temporalio.common import SearchAttributeKey
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig

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


@asynccontextmanager
async def temporal_client(settings: Settings) -> AsyncIterator[Client]:
    """Connect for the length of a CLI command.

    The client has no close(); dropping the last reference before the interpreter exits avoids the
    shutdown crash of sdk-python issue 300, so callers must not keep the client past the block.
    """
    client = await connect(settings)
    try:
        yield client
    finally:
        del client
