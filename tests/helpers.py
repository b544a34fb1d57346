"""Small waits the end-to-end tests share, and a track worker run as its own process."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from temporalio.api.enums.v1 import EventType
from temporalio.testing import WorkflowEnvironment

from models.healing import IncidentInput, IncidentState, IncidentStatus
from nofx.client import incident_workflow_id
from nofx.settings import TASK_QUEUE_HEALING
from pilot.fleet import free_port
from workflows.healing import HealingIncidentWorkflow

T = TypeVar("T")
ROOT = Path(__file__).resolve().parent.parent


async def eventually(check: Callable[[], T], what: str, timeout: float = 30.0) -> T:
    """Call the blocking `check` (in a thread) until it returns something truthy, and return
    it; fail naming `what` and the last value when `timeout` seconds pass first."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        seen = await asyncio.to_thread(check)
        if seen:
            return seen
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not {what} within {timeout:.0f}s (last: {seen!r})")
        await asyncio.sleep(0.2)


async def heal_once(client: Any, service: str, incident_type: str, **evidence: Any) -> Any:
    """Start a healing incident of its own (a fresh workflow id) for `service`: its handle."""
    return await client.start_workflow(
        HealingIncidentWorkflow.run,
        IncidentInput(
            service=service,
            incident_type=incident_type,
            detected_at=datetime.now(UTC),
            evidence=evidence,
        ),
        id=f"{incident_workflow_id(service, incident_type)}-{uuid.uuid4().hex[:6]}",
        task_queue=TASK_QUEUE_HEALING,
    )


@asynccontextmanager
async def serving(app: Any) -> AsyncIterator[str]:
    """An ASGI app (the HTTP API) on a real uvicorn server on a free port: its base URL."""
    import uvicorn

    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", timeout_graceful_shutdown=5
    )
    server = uvicorn.Server(config)
    serve = asyncio.create_task(server.serve())
    deadline = asyncio.get_running_loop().time() + 30
    try:
        while not server.started:
            assert not serve.done(), "uvicorn stopped while starting"
            assert asyncio.get_running_loop().time() < deadline, "uvicorn did not start"
            await asyncio.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await serve


async def query_until(
    handle: Any,
    query: Any,
    done: Callable[[Any], bool],
    describe: Callable[[Any], str],
    timeout: float = 120,
) -> Any:
    """Query the workflow until `done` holds for what it answers; fail with `describe` of it."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        answer = await handle.query(query)
        if done(answer):
            return answer
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(describe(answer))
        await asyncio.sleep(0.2)


async def wait_for_state(
    handle: Any, *states: IncidentState, timeout: float = 120
) -> IncidentStatus:
    """Query the incident until it is in one of `states`; fail with its status otherwise."""
    status: IncidentStatus = await query_until(
        handle,
        HealingIncidentWorkflow.status,
        lambda s: s.state in states,
        lambda s: f"incident still {s.state.value}: {s.timeline[-3:]}",
        timeout,
    )
    return status


async def assert_replays(handle: Any) -> None:
    """Replay the run's recorded history through the current code; on a mismatch, keep the
    history next to the test run and show where it diverged."""
    from temporalio.contrib.pydantic import pydantic_data_converter
    from temporalio.worker import Replayer

    from workers import decisions, healing, maintenance

    history = await handle.fetch_history()
    replayer = Replayer(
        workflows=[*healing.WORKFLOWS, *decisions.WORKFLOWS, *maintenance.WORKFLOWS],
        data_converter=pydantic_data_converter,
    )
    result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
    if result.replay_failure is None:
        return
    kept = Path(tempfile.gettempdir()) / f"nondeterministic-{history.workflow_id}.json"
    kept.write_text(history.to_json())
    tail = [f"{e.event_id} {EventType.Name(e.event_type)}" for e in history.events[-40:]]
    raise AssertionError(f"{result.replay_failure}; history kept in {kept}; last events {tail}")


class WorkerProcess:
    """`python -m <module>` (a track worker) as its own OS process, the way `nofx up` runs it."""

    def __init__(self, env: WorkflowEnvironment, database_url: str, log: Path, module: str) -> None:
        self._module = module
        self._env = {
            **os.environ,
            "NOFX_TEMPORAL_ADDRESS": env.client.service_client.config.target_host,
            "NOFX_DATABASE_URL": database_url,
            "NOFX_METRICS_PORT": str(free_port()),
            "NOFX_LOG_LEVEL": "INFO",
        }
        self._log = log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self._log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", self._module],
                cwd=ROOT,
                env=self._env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def kill_9(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()


def run_benchmark(
    script: str, *args: str, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """Run `benchmarks/<script>` with `args` as a user would (from the project's root) and fail
    with the end of its stderr when it does not exit 0."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done
