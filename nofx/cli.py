"""The `nofx` command: the local stack, the demo, the database, the fleet and the audit chain.

Every command reads the same settings (environment variables, see README) and ends with a
one-line error naming what is wrong instead of a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import json
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, TypeVar, cast

import sqlalchemy.exc
import typer
from pydantic import ValidationError
from sqlalchemy.engine import Engine
from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowUpdateFailedError,
)
from temporalio.service import RPCError

from models.chaos import ChaosSuiteInput
from models.common import AbortRequest
from models.decisions import (
    Approve,
    ArmSpec,
    DecideRequest,
    DecisionRecord,
    DecisionResult,
    ExperimentReport,
    ExperimentSpec,
    Mode,
    ModelInfo,
    Operator,
    Override,
    Reject,
    SimulateRequest,
    Simulation,
    SuccessModelReport,
    TrainRequest,
    VerdictAck,
)
from models.detection import TrainDetectorInput
from models.forecasting import ForecastRequest
from models.healing import TERMINAL_STATES, IncidentState, IncidentStatus
from models.inventory import ApplyReport
from models.maintenance import CancelJob, JobAck, Reschedule, RunNow
from models.operations import FreezeRequest, KillSwitch, ModeChange, PatternSummary
from models.optimization import ApplyInput, ApplyStatusView, apply_workflow_id
from nofx import chaos
from nofx import inventory as inventory_store
from nofx.client import NofxClient, incident_workflow_id
from nofx.db import MigrationError, make_engine, migrate, migration_status
from nofx.decisions import approval
from nofx.decisions import context as decision_context
from nofx.decisions import store as decision_store
from nofx.faults import FAULT_KINDS, active_faults, clear_recorded, inject_recorded
from nofx.healing.operations import PlaybookSpec
from nofx.inventory import list_targets
from nofx.logging import configure_logging
from nofx.operations.controls import ControlsOperations
from nofx.operations.errors import InvalidRequest, OperationError
from nofx.operations.healing import HealingOperations
from nofx.operations.inventory import InventoryOperations
from nofx.operations.operators import OperatorsOperations
from nofx.operations.oversight import OversightOperations
from nofx.operations.predictive import PredictiveOperations
from nofx.payloads import field_errors
from nofx.settings import Settings, SettingsError, get_settings
from nofx.shutdown import StopOnSignals
from nofx.stack import Stack, StackError
from nofx.temporal import exit_process, temporal_client
from pilot.fleet import FleetError

T = TypeVar("T")
Ops = TypeVar("Ops")
app = typer.Typer(help="NOFX Autonomy: self-healing, decisions and predictive maintenance.")
db_app = typer.Typer(help="The platform database.")
fleet_app = typer.Typer(help="The staging fleet (pilot services under supervisord).")
audit_app = typer.Typer(help="The append-only audit trail.")
detect_app = typer.Typer(help="The learned anomaly detector: train it, list its versions.")
guardrails_app = typer.Typer(help="Guardrails every healing action passes: policy, freezes.")
freeze_app = typer.Typer(help="Change-freeze windows: no automated change inside them.")
healing_app = typer.Typer(
    help="Healing operations: status, patterns, playbooks, simulate, metrics."
)
chaos_app = typer.Typer(help="Chaos experiments: inject real faults, judge how healing copes.")
playbooks_app = typer.Typer(help="Recovery playbooks: list, show, create, update, disable.")
app.add_typer(db_app, name="db")
app.add_typer(fleet_app, name="fleet")
app.add_typer(audit_app, name="audit")
app.add_typer(detect_app, name="detect")
app.add_typer(guardrails_app, name="guardrails")
guardrails_app.add_typer(freeze_app, name="freeze")
app.add_typer(healing_app, name="healing")
healing_app.add_typer(playbooks_app, name="playbooks")
app.add_typer(chaos_app, name="chaos")
operators_app = typer.Typer(help="People who may approve, reject or override decisions.")
autonomous_app = typer.Typer(
    help="The decision engine: decide, simulate, explain, approve, reject, override; its mode."
)
mode_app = typer.Typer(help="observe | assist | autonomous, globally or per service.")
app.add_typer(operators_app, name="operators")
app.add_typer(autonomous_app, name="autonomous")
autonomous_app.add_typer(mode_app, name="mode")


def fail(message: str) -> typer.Exit:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(1)


def settings() -> Settings:
    try:
        return get_settings()
    except SettingsError as err:
        raise fail(str(err)) from None


def say(message: str) -> None:
    typer.echo(f"  {message}")


@app.callback()
def main() -> None:
    """Every event as JSON in `.nofx/logs/nofx.log`; the console gets the command's own words
    (errors as one line), not log records."""
    configure_logging(json=False, level="CRITICAL", file=settings().logs_dir / "nofx.log")


# ---- stack ---------------------------------------------------------------------------------


@app.command()
def up() -> None:
    """Start Temporal, PostgreSQL, the workers, the fleet and the monitor (idempotent)."""
    stack = Stack(settings())
    typer.echo("starting NOFX Autonomy")
    try:
        stack.up(progress=say)
    except StackError as err:
        raise fail(str(err)) from None
    print_status(stack)


@app.command()
def bootstrap(as_json: JsonOption = False) -> None:
    """Bring the deployment to this version's definition: migrations, search attributes, every
    Schedule created or updated (idempotent: a second run changes nothing and says so)."""
    from nofx.bootstrap import BootstrapReport
    from nofx.bootstrap import bootstrap as run_bootstrap

    url = _database_url()

    async def go() -> BootstrapReport:
        async with temporal_client(settings()) as client:
            return await run_bootstrap(client, url, settings())

    try:
        report = asyncio.run(go())
    except RPCError as err:
        raise fail(f"cannot reach Temporal ({err.message}): is it running?") from None
    except MigrationError as err:
        raise fail(str(err)) from None
    data = {
        "migrations": report.migrations,
        "search_attributes": report.search_attributes,
        "schedules": report.schedules,
        "changed": report.changed,
    }
    _emit(data, as_json, report.lines())


@app.command()
def down() -> None:
    """Stop everything `nofx up` started."""
    stopped = Stack(settings()).down(progress=say)
    typer.echo(f"stopped {len(stopped)} part(s)" if stopped else "nothing was running")


@app.command()
def status() -> None:
    """Show each part of the local stack, its state and its address."""
    print_status(Stack(settings()))


def print_status(stack: Stack) -> None:
    parts = stack.status()
    width = max(len(p.name) for p in parts)
    for part in parts:
        pid = f"pid {part.pid}" if part.pid else ""
        typer.echo(f"{part.name:<{width}}  {part.state:<9} {part.address}  {pid}".rstrip())


# ---- demo ----------------------------------------------------------------------------------

DEMO_MODES = ("observe", "assist", "autonomous")
DEMO_APPROVAL_REASON = "approved by nofx demo --approve-as"


@app.command()
def demo(
    service: Annotated[str, typer.Option(help="pilot service to break")] = "pilot-api",
    fault: Annotated[str, typer.Option(help="kill (SIGKILL) or hang (SIGSTOP)")] = "kill",
    timeout: Annotated[
        float, typer.Option(help="seconds to wait for recovery (a wait for a person not counted)")
    ] = 110.0,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON summary line")] = False,
    mode: Annotated[
        str | None,
        typer.Option(
            help="observe | assist | autonomous for the demo's service only, put back when the"
            " demo ends (default: the mode configured)"
        ),
    ] = None,
    approve_as: Annotated[
        str | None,
        typer.Option(
            "--approve-as",
            metavar="NAME",
            help="approve a decision that waits for a person as this operator, once shown",
        ),
    ] = None,
) -> None:
    """Break a pilot service for real and watch NOFX Autonomy heal it, live."""
    if fault not in ("kill", "hang"):
        raise fail(f"--fault {fault!r}: expected kill or hang")
    if mode is not None and mode not in DEMO_MODES:
        raise fail(f"--mode {mode!r}: expected {', '.join(DEMO_MODES)}")
    if approve_as is not None:
        try:
            Operator(name=approve_as)
        except ValidationError as err:
            raise fail(f"--approve-as {approve_as!r}: {err.errors()[0]['msg']}") from None
    stack = Stack(settings())
    begun = time.monotonic()
    if not as_json:
        typer.echo("NOFX Autonomy demo: bring the stack up, break a service, watch it heal")
    try:
        stack.up(progress=(lambda _: None) if as_json else say)
    except StackError as err:
        raise fail(str(err)) from None
    fleet = stack.fleet()
    names = [s.name for s in fleet.spec.services]
    if service not in names:
        raise fail(f"--service {service!r}: not in the fleet ({', '.join(names)})")
    engine = make_engine(stack.recorded()["database_url"])
    try:
        # A Ctrl-C or SIGTERM unwinds through here too: the service's own mode is put back.
        with StopOnSignals() as undo:
            if mode is not None:
                undo.callback(_set_demo_mode(engine, service, cast("Mode", mode), quiet=as_json))
            summary = asyncio.run(
                _run_demo(
                    stack,
                    service,
                    fault,
                    timeout,
                    quiet=as_json,
                    engine=engine,
                    approve_as=approve_as,
                )
            )
    except FleetError as err:
        raise fail(str(err)) from None
    finally:
        engine.dispose()
    summary["demo_seconds"] = round(time.monotonic() - begun, 2)
    if as_json:
        typer.echo(json.dumps(summary))
    else:
        typer.echo("")
        if summary["state"] != "resolved":
            typer.echo(f"not healed: {summary['error']}")
        typer.echo(
            f"time to detect {summary['time_to_detect_s']}s, time to recover"
            f" {summary['time_to_recover_s']}s (fault injected → service healthy and incident"
            f" {summary['state']})"
        )
        if summary["waited_for_people_s"]:
            typer.echo(f"of which {summary['waited_for_people_s']}s waiting for a person")
        typer.echo(f"Web UI: {summary['web_ui']}")
        typer.echo("the stack keeps running: `nofx status`, `nofx down` to stop it")
    if summary["state"] != "resolved":
        raise typer.Exit(1)


def _set_demo_mode(engine: Engine, service: str, mode: Mode, *, quiet: bool) -> Callable[[], None]:
    """Give the demo's service a mode of its own; return what puts the previous one back."""
    previous = cast("Mode | None", decision_context.service_mode(engine, service))
    decision_store.set_mode(engine, mode, service=service)
    effective, why = approval.effective_mode(decision_store.get_policy(engine).mode, mode, None)
    before = f"mode {previous}" if previous else "no mode of its own"
    if not quiet:
        say(f"{service}: mode {mode} during the demo, {before} afterwards")
        say(f"mode in force: {effective} ({' and '.join(why)})")

    def put_back() -> None:
        decision_store.set_mode(engine, previous, service=service)
        if not quiet:
            say(f"{service}: {before} again")

    return put_back


async def _run_demo(
    stack: Stack,
    service: str,
    fault: str,
    timeout: float,
    *,
    quiet: bool,
    engine: Engine,
    approve_as: str | None = None,
) -> dict[str, object]:
    fleet = stack.fleet()
    incident_type = "service_down" if fault == "kill" else "service_hung"
    workflow_id = incident_workflow_id(service, incident_type)
    async with temporal_client(stack.settings) as client:
        people = _PersonWait(client, stack, engine, approve_as=approve_as, quiet=quiet)
        people.prepare(service)
        fleet.start()  # only waits for health when it is running already
        injected_at = datetime.now(UTC)
        outcome = inject_recorded(
            fleet, engine, fault, service, source="cli", actor=f"nofx-demo:{getpass.getuser()}"
        )
        pid = outcome.get("pid")
        if not quiet:
            typer.echo(f"\n{_clock(injected_at)}  +0.0s  fault   {fault} {service} (pid {pid})")
        status = await _follow_incident(
            client, workflow_id, injected_at, timeout, quiet=quiet, people=people
        )
        decisions = await people.outcomes()
    recovered = status.resolved_at or datetime.now(UTC)
    return {
        "service": service,
        "fault": fault,
        "workflow_id": workflow_id,
        "incident_id": status.incident_id,
        "state": status.state.value,
        "error": status.error,
        "time_to_detect_s": round((status.detected_at - injected_at).total_seconds(), 2),
        "time_to_recover_s": round((recovered - injected_at).total_seconds(), 2),
        "waited_for_people_s": round(people.waited_seconds, 2),
        "resolution_time_ms": status.resolution_time_ms,
        "decisions": decisions,
        "web_ui": stack_workflow_url(stack, workflow_id),
    }


def stack_workflow_url(stack: Stack, workflow_id: str) -> str:
    """Where a workflow of the local stack opens in its Web UI."""
    return f"{stack.ui_url}/namespaces/{stack.settings.temporal_namespace}/workflows/{workflow_id}"


class _PersonWait:
    """What `nofx demo` does when the incident's decision waits for a person: show the
    decision and exactly how to answer it, make sure somebody may, and — with `--approve-as` —
    approve it through the decision's `approve_decision` update."""

    def __init__(
        self,
        client: Client,
        stack: Stack,
        engine: Engine,
        *,
        approve_as: str | None,
        quiet: bool,
    ) -> None:
        self._client = client
        self._stack = stack
        self._engine = engine
        self._approve_as = approve_as
        self._quiet = quiet
        self._shown: dict[str, DecisionResult] = {}  # decision workflow id → as shown
        self._began: float | None = None
        self._added_late = False  # an operator added once a decision already waited
        self.waited_seconds = 0.0

    @property
    def answering(self) -> bool:
        """Someone will answer: the demo itself, or a person watching the console."""
        return self._approve_as is not None or not self._quiet

    async def wait_on(self, decision_wf: str) -> None:
        """The incident waits for `decision_wf`: show it (and answer it) once; time the wait."""
        if self._began is None:
            self._began = time.monotonic()
        if decision_wf not in self._shown:
            await self._show(decision_wf)

    def done_waiting(self) -> None:
        if self._began is not None:
            self.waited_seconds += time.monotonic() - self._began
            self._began = None

    async def _show(self, decision_wf: str) -> None:
        handle = self._client.get_workflow_handle(decision_wf)
        shown: DecisionResult = await handle.query("explain", result_type=DecisionResult)
        self._shown[decision_wf] = shown
        name = self._approver(shown)
        if not self._quiet:
            self._print(shown, name)
        if self._approve_as is None:
            return
        verdict = Approve(approver=self._approve_as, reason=DEMO_APPROVAL_REASON)
        try:
            ack: VerdictAck = await handle.execute_update(
                "approve_decision", verdict, result_type=VerdictAck
            )
        except WorkflowUpdateFailedError as err:
            refused = f"approval as {self._approve_as} refused: {_root_cause(err)}"
            if self._quiet:  # nobody else is watching: do not wait an hour for nothing
                raise fail(refused) from None
            self._echo(f"{refused}; the decision keeps waiting for a person")
            return
        self._echo(
            f"approved as {self._approve_as} (update approve_decision): decision {ack.status},"
            f" {ack.approvals} of {ack.approvers_needed} approval(s)"
        )

    async def outcomes(self) -> list[dict[str, object]]:
        """How each decision shown ended (its final result)."""
        ended = []
        for decision_wf, shown in self._shown.items():
            handle = self._client.get_workflow_handle(decision_wf, result_type=DecisionResult)
            try:
                result = await asyncio.wait_for(handle.result(), timeout=10)
            except (WorkflowFailureError, TimeoutError):
                result = shown
            ended.append(
                {
                    "decision_id": result.decision_id,
                    "workflow_id": decision_wf,
                    "waited_because": shown.approval.why,
                    "status": result.status,
                    "decided_by": result.decided_by,
                }
            )
        return ended

    def prepare(self, service: str) -> None:
        """Before the fault: when the decision will wait (assist mode, or `--approve-as`),
        make sure somebody may answer it — a decision reads its operators as it starts to wait,
        so one added later is seen by a signal (re-read then) but refused by the update."""
        policy = decision_store.get_policy(self._engine)
        own = decision_context.service_mode(self._engine, service)
        mode, _ = approval.effective_mode(policy.mode, cast("Mode | None", own), None)
        if mode == "assist" or self._approve_as is not None:
            self._ensure_operator()

    def _ensure_operator(self) -> dict[str, list[str]]:
        """The operators; with none at all nobody could approve: the approver-to-be
        (`--approve-as`, else the current user) is added with `healing:*`, and told so."""
        operators = decision_store.operator_permissions(self._engine)
        if operators:
            return operators
        me = getpass.getuser()
        added = Operator(name=self._approve_as or me, permissions=["healing:*"])
        decision_store.add_operator(self._engine, added, actor=f"nofx-demo:{me}")
        self._added_late = self._began is not None
        self._echo(
            f"  no operator could approve: added operator {added.name} with healing:*"
            f" (`nofx operators remove {added.name}` takes it away)"
        )
        return {added.name: added.permissions}

    def _approver(self, shown: DecisionResult) -> str:
        """Who may approve: the `--approve-as` operator, else one holding the permissions the
        decision needs (the current user first)."""
        me = getpass.getuser()
        operators = self._ensure_operator()
        if self._approve_as is not None:
            return self._approve_as
        needed = shown.approval.required_permissions
        able = [
            name
            for name in sorted(operators, key=lambda name: (name != me, name))
            if all(approval.holds(operators[name], p) for p in needed)
        ]
        return able[0] if able else "<operator>"

    def _print(self, shown: DecisionResult, name: str) -> None:
        record = shown.approval
        risk = f"risk {shown.risk.level} ({shown.risk.score:.2f})" if shown.risk else "risk ?"
        steps = " → ".join(s.action for s in shown.steps) or "none"
        undo = ", ".join(shown.rollback_plan) or "nothing to undo"
        wf = shown.workflow_id
        body = json.dumps({"approver": name, "reason": "looks right"})
        settings = self._stack.settings
        where = ""
        if settings.temporal_address not in ("127.0.0.1:7233", "localhost:7233"):
            where += f" --address {settings.temporal_address}"
        if settings.temporal_namespace != "default":
            where += f" --namespace {settings.temporal_namespace}"
        lines = [
            "",
            f"waiting for a person: decision {shown.decision_id} (workflow {wf})",
            f"  chose {shown.chosen}: {risk}, confidence {shown.confidence:.2f}, mode {shown.mode}",
            f"  why it waits: {'; '.join(record.why) or '?'}",
            f"  plan: {steps}; rollback plan: {undo}",
            f"  {shown.explanation.text.splitlines()[0] if shown.explanation.text else ''}",
            f"approve it as an operator holding {', '.join(record.required_permissions) or 'any'}"
            f" ({record.approvers_needed or 1} approval(s); they cover this decision only):",
            f"  Dashboard: {self._stack.api_url}/dashboard#/decisions/{shown.decision_id}",
            f"          (sign in with a token of theirs: nofx operators token {name})",
            f"  Web UI: {stack_workflow_url(self._stack, wf)}",
            f"          Signal `approve` with {body}",
            f"  CLI:    temporal workflow signal{where} --workflow-id {wf} --name approve"
            f" --input '{body}'",
            f"          nofx autonomous approve {shown.decision_id}",
            *(
                [
                    f"  ({name} was added after the decision read its operators: approve by"
                    " signal, which it checks against a fresh read; an update would be refused)"
                ]
                if self._added_late
                else []
            ),
            f'  (or `reject` with {{"approver": ..., "reason": ...}}; nobody answering within'
            f" {timedelta(seconds=record.timeout_seconds or 3600)} rejects)",
        ]
        for line in lines:
            typer.echo(line)

    def _echo(self, message: str) -> None:
        if not self._quiet:
            typer.echo(message)


async def _follow_incident(
    client: Client,
    workflow_id: str,
    since: datetime,
    timeout: float,
    *,
    quiet: bool,
    people: _PersonWait | None = None,
) -> IncidentStatus:
    """Print the incident's timeline as it grows, until it ends or the time runs out.

    While its decision waits for a person the clock stops: `people` shows the decision and how
    to answer it (and answers it with `--approve-as`); the demo follows on until the incident
    ends, healed after the approval or handed over after a rejection or a timeout.
    """
    handle = client.get_workflow_handle(workflow_id)
    deadline = time.monotonic() + timeout
    shown = 0
    answered = False  # the last look found a decision waiting for a person
    while time.monotonic() < deadline:
        try:
            described = await handle.describe()
        except RPCError:
            await asyncio.sleep(0.2)
            continue
        if described.start_time < since.replace(microsecond=0):
            await asyncio.sleep(0.2)  # an earlier incident's run: wait for the new one
            continue
        try:
            status: IncidentStatus = await handle.query("status", result_type=IncidentStatus)
        except RPCError:
            await asyncio.sleep(0.2)
            continue
        for entry in status.timeline[shown:]:
            if not quiet:
                offset = (entry.at - since).total_seconds()
                typer.echo(
                    f"{_clock(entry.at)}  +{offset:.1f}s  {entry.state.value:<8} {entry.message}"
                )
        shown = len(status.timeline)
        waits_for = status.awaiting_decision
        awaiting = status.state is IncidentState.AWAITING_APPROVAL
        if waits_for is None and people is not None:
            people.done_waiting()
        if awaiting and waits_for is None and answered:
            await asyncio.sleep(0.1)  # the decision just ended; the incident moves on from it
            continue
        if awaiting and (people is None or waits_for is None or not people.answering):
            why = status.timeline[-1].message if status.timeline else "approval"
            raise fail(
                f"incident {workflow_id} waits for a person ({why}). Approve it from the Web UI"
                f' (signal `approve` with {{"approver": "you", "reason": "..."}}),'
                " or see `nofx guardrails show`"
            )
        answered = awaiting
        if awaiting and people is not None and waits_for is not None:
            await people.wait_on(waits_for)
            deadline = time.monotonic() + timeout  # a person's time is not the platform's
            await asyncio.sleep(0.25)
            continue
        if status.state in TERMINAL_STATES and described.status != WorkflowExecutionStatus.RUNNING:
            return status
        if status.state in TERMINAL_STATES:
            await asyncio.sleep(0.1)
            continue
        await asyncio.sleep(0.25)
    raise fail(f"incident {workflow_id} did not finish within {timeout:.0f}s")


def _clock(moment: datetime) -> str:
    return moment.astimezone().strftime("%H:%M:%S.%f")[:-3]


# ---- db ------------------------------------------------------------------------------------


def _database_url() -> str:
    s = settings()
    url = s.database_url or Stack(s).recorded().get("database_url")
    if not url:
        raise fail("no database: set NOFX_DATABASE_URL or run `nofx up` for the embedded one")
    return str(url)


@contextlib.contextmanager
def _engine() -> Iterator[Engine]:
    """The platform database for one command; its failures end the command in one line."""
    engine = make_engine(_database_url())
    try:
        yield engine
    except sqlalchemy.exc.ProgrammingError as err:
        first = str(err.orig).strip().splitlines()[0]
        raise fail(f"the database is not ready ({first}): run `nofx db migrate`") from None
    except sqlalchemy.exc.OperationalError as err:
        first = str(err.orig).strip().splitlines()[0]
        raise fail(f"cannot use the database: {first}") from None
    finally:
        engine.dispose()


@db_app.command("migrate")
def db_migrate() -> None:
    """Apply pending migrations in order (each in a transaction; refuses edited ones)."""
    try:
        applied = migrate(_database_url())
    except MigrationError as err:
        raise fail(str(err)) from None
    typer.echo(f"applied {len(applied)}: {', '.join(applied)}" if applied else "up to date")


@db_app.command("status")
def db_status() -> None:
    """Applied and pending migrations."""
    state = migration_status(_database_url())
    for applied in state.applied:
        typer.echo(f"applied  {applied.name}  {applied.applied_at:%Y-%m-%d %H:%M:%S%z}")
    for name in state.pending:
        typer.echo(f"pending  {name}")
    for name in state.changed:
        typer.secho(f"CHANGED  {name} (edited after it was applied)", fg=typer.colors.RED)
    for name in state.unknown:
        typer.echo(f"unknown  {name} (applied here, not on disk)")


# ---- fleet ---------------------------------------------------------------------------------


def _parse_params(pairs: list[str], option: str = "--set ") -> dict[str, Any]:
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise fail(f"{option}{pair!r}: expected KEY=VALUE")
        try:
            params[key] = json.loads(raw)
        except json.JSONDecodeError:
            params[key] = raw
    return params


@fleet_app.command("inject")
def fleet_inject(
    kind: Annotated[str, typer.Argument(help=f"one of: {', '.join(FAULT_KINDS)}")],
    service: Annotated[str, typer.Option("--service", help="pilot service name")],
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="fault parameter KEY=VALUE (JSON value), repeatable"),
    ] = None,
) -> None:
    """Inject a real fault into a pilot service (recorded in fault_injections)."""
    params = _parse_params(set_ or [])
    with _engine() as engine:
        try:
            outcome = inject_recorded(
                Stack(settings()).fleet(),
                engine,
                kind,
                service,
                source="cli",
                actor=getpass.getuser(),
                **params,
            )
        except FleetError as err:
            raise fail(str(err)) from None
    detail = ", ".join(
        f"{k}={v}" for k, v in outcome.items() if k not in ("kind", "service", "injected_at")
    )
    typer.echo(f"injected {kind} into {service} ({detail})")


@fleet_app.command("clear")
def fleet_clear(
    service: Annotated[str, typer.Option("--service")],
    kind: Annotated[str | None, typer.Option("--kind", help="only this fault kind")] = None,
) -> None:
    """Remove injected faults by hand (every fault of the service unless --kind)."""
    with _engine() as engine:
        try:
            undone = clear_recorded(Stack(settings()).fleet(), engine, service, kind)
        except FleetError as err:
            raise fail(str(err)) from None
    for line in undone or ["nothing to clear"]:
        typer.echo(f"{service}: {line}")


@fleet_app.command("faults")
def fleet_faults(service: Annotated[str, typer.Option("--service")]) -> None:
    """The faults active on a pilot service, with their parameters."""
    with _engine() as engine:
        try:
            active = active_faults(Stack(settings()).fleet(), engine, service)
        except FleetError as err:
            raise fail(str(err)) from None
    for kind, detail in active.items() or [("none", {})]:
        typer.echo(f"{kind:<16} {json.dumps(detail, default=str)}")


# ---- guardrails ----------------------------------------------------------------------------


def _operate(make: Callable[[Engine], Ops], call: Callable[[Ops], Coroutine[Any, Any, T]]) -> T:
    """Run one operation of the operations layer (`make` builds its module on the platform
    database); its typed errors end the command in one line (a malformed request: one line
    per wrong field first)."""
    with _engine() as engine:
        try:
            return asyncio.run(call(make(engine)))
        except InvalidRequest as err:
            if len(err.errors) > 1:
                for line in err.errors:
                    typer.secho(f"  {line}", err=True)
                raise fail(f"refused: {len(err.errors)} field(s) wrong") from None
            raise fail(str(err)) from None
        except OperationError as err:
            raise fail(str(err)) from None


def _controls(call: Callable[[ControlsOperations], Coroutine[Any, Any, T]]) -> T:
    return _operate(ControlsOperations, call)


@app.command()
def pause(
    reason: Annotated[str, typer.Option(help="why (recorded, shown to every incident)")],
) -> None:
    """The kill switch: hold every automated healing action until `nofx resume`."""
    change = KillSwitch(paused=True, reason=reason)
    shown = _controls(lambda ops: ops.kill_switch(change, actor=getpass.getuser()))
    typer.echo(f"automation PAUSED by {shown.changed_by}: {shown.reason}")


@app.command()
def resume(reason: Annotated[str, typer.Option(help="why")] = "resumed") -> None:
    """Lift the kill switch; held incidents go ahead at their next check."""
    change = KillSwitch(paused=False, reason=reason)
    shown = _controls(lambda ops: ops.kill_switch(change, actor=getpass.getuser()))
    typer.echo(f"automation resumed by {shown.changed_by}")


@guardrails_app.command("show")
def guardrails_show(
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """The kill switch, the policy, active freezes and the last refusals."""
    shown = _controls(lambda ops: ops.show())
    if as_json:
        typer.echo(shown.model_dump_json(indent=2))
        return
    state = "PAUSED" if shown.paused else "active"
    typer.echo(f"automation: {state} (last change by {shown.changed_by}: {shown.reason})")
    for key, value in shown.policy.items():
        say(f"{key} = {value}")
    for freeze in shown.freezes:
        typer.echo(
            f"freeze {freeze.scope}: {freeze.starts_at:%Y-%m-%d %H:%M} →"
            f" {freeze.ends_at:%Y-%m-%d %H:%M} ({freeze.reason})"
        )
    for verdict in shown.refusals[-10:]:
        typer.echo(
            f"{verdict.decided_at:%H:%M:%S} {verdict.verdict:<4} {verdict.service}"
            f" {verdict.action}: {verdict.guardrail} — {verdict.reason}"
        )


@guardrails_app.command("set")
def guardrails_set(
    pairs: Annotated[list[str], typer.Argument(help="KEY=VALUE, e.g. max_concurrent_actions=2")],
) -> None:
    """Change guardrail limits (validated as a whole before anything is stored)."""
    changes = _parse_params(pairs, option="")
    shown = _controls(lambda ops: ops.set_policy(changes))
    for key in changes:
        say(f"{key} = {shown.policy[key]}")


@freeze_app.command("add")
def freeze_add(
    reason: Annotated[str, typer.Option(help="why nothing may change")],
    hours: Annotated[float, typer.Option(help="length of the window from --start")] = 1.0,
    start: Annotated[
        datetime | None, typer.Option(help="ISO time (default now)", formats=["%Y-%m-%dT%H:%M"])
    ] = None,
    scope: Annotated[str, typer.Option(help="a service name, or * for the fleet")] = "*",
) -> None:
    """Open a change-freeze window."""
    try:
        req = FreezeRequest(
            reason=reason,
            hours=hours,
            scope=scope,
            starts_at=start.astimezone() if start else None,
        )
    except ValidationError as err:
        raise fail(_first_error(err)) from None
    made = _controls(lambda ops: ops.add_freeze(req, actor=getpass.getuser()))
    typer.echo(
        f"freeze {made.id}: {made.scope} from {made.starts_at:%Y-%m-%d %H:%M %Z} for {hours:g} h"
    )


# ---- healing operations --------------------------------------------------------------------


def _emit(data: Any, as_json: bool, lines: list[str]) -> None:
    """The operation's answer as JSON (what `/api/...` answers, field for field), or lines."""
    if as_json:
        if isinstance(data, list):
            data = [d.model_dump(mode="json") if hasattr(d, "model_dump") else d for d in data]
        elif hasattr(data, "model_dump"):
            data = data.model_dump(mode="json")
        typer.echo(json.dumps(data, default=str, indent=2))
        return
    for line in lines:
        typer.echo(line)


JsonOption = Annotated[bool, typer.Option("--json", help="print JSON")]


def _healing(call: Callable[[HealingOperations], Coroutine[Any, Any, T]]) -> T:
    return _operate(HealingOperations, call)


@healing_app.command("status")
def healing_status(
    service: Annotated[str | None, typer.Option(help="one service only")] = None,
    limit: Annotated[int, typer.Option(help="how many incidents")] = 20,
    as_json: JsonOption = False,
) -> None:
    """Running incidents first, then the most recent."""
    rows = _healing(lambda ops: ops.status(service, limit))
    _emit(
        rows,
        as_json,
        [
            f"{r.started_at:%Y-%m-%d %H:%M:%S}  {r.status:<17} {r.service or '?':<20}"
            f" {r.incident_type:<32} {r.healing_strategy}"
            + (f"  {r.resolution_time_ms / 1000:.1f}s" if r.resolution_time_ms else "")
            for r in rows
        ]
        or ["no incidents"],
    )


@healing_app.command("patterns")
def healing_patterns(as_json: JsonOption = False) -> None:
    """Problem patterns with their success rate and average resolution time (from outcomes)."""
    rows = _healing(lambda ops: ops.patterns())

    def line(r: PatternSummary) -> str:
        rate = "-" if r.success_rate is None else f"{r.success_rate:.2f}"
        avg = r.average_resolution_time_ms
        solutions = ", ".join(f"{p.playbook} ({p.resolved})" for p in r.proven_solutions)
        return (
            f"{r.problem_signature:<32} incidents {r.incidents:>4}  success {rate:>4}"
            f"  avg resolution {'-' if avg is None else f'{avg / 1000:.1f}s':>6}  {solutions}"
        )

    _emit(rows, as_json, [line(r) for r in rows])


@playbooks_app.command("list")
def playbooks_list(
    incident_type: Annotated[str | None, typer.Option("--type", help="one incident type")] = None,
    as_json: JsonOption = False,
) -> None:
    """Every playbook, by incident type and rung of the escalation ladder."""
    rows = _healing(lambda ops: ops.playbooks(incident_type))
    _emit(
        rows,
        as_json,
        [
            f"{r.incident_type:<32} rung {r.escalation_rank}  {r.playbook_name:<34}"
            f" {r.automation_level or '-':<9} {'enabled' if r.enabled else 'DISABLED'}"
            f"  {' → '.join(s.action for s in r.recovery_steps)}"
            for r in rows
        ],
    )


@playbooks_app.command("show")
def playbooks_show(name: str) -> None:
    """One playbook, whole, as JSON."""
    book = _healing(lambda ops: ops.playbook(name))
    typer.echo(book.model_dump_json(indent=2))


def _read_json(path: str) -> dict[str, Any]:
    try:
        raw = Path(path).read_text() if path != "-" else sys.stdin.read()
        data = json.loads(raw)
    except (OSError, json.JSONDecodeError) as err:
        raise fail(f"--file {path}: {err}") from None
    if not isinstance(data, dict):
        raise fail(f"--file {path}: expected a JSON object")
    return data


def _refused(err: ValidationError) -> typer.Exit:
    for line in field_errors(err):
        typer.secho(f"  {line}", err=True)
    return fail(f"playbook refused: {len(err.errors())} field(s) wrong")


@playbooks_app.command("create")
def playbooks_create(
    file: Annotated[str, typer.Option("--file", help="JSON playbook (- for stdin)")],
) -> None:
    """Create a playbook; every field is checked, and nothing is written if one is wrong."""
    try:
        spec = PlaybookSpec.model_validate(_read_json(file))
    except ValidationError as err:
        raise _refused(err) from None
    book = _healing(lambda ops: ops.create_playbook(spec))
    typer.echo(f"created {book.playbook_name} for {book.incident_type} ({book.id})")


@playbooks_app.command("update")
def playbooks_update(
    name: str,
    file: Annotated[str, typer.Option("--file", help="JSON object of the fields to change")],
) -> None:
    """Change fields of a playbook (validated as a whole before anything is stored)."""
    changes = _read_json(file)
    book = _healing(lambda ops: ops.update_playbook(name, changes))
    typer.echo(f"updated {book.playbook_name}")


@playbooks_app.command("disable")
def playbooks_disable(name: str) -> None:
    """Take a playbook off the ladder (kept, so past incidents still name it)."""
    _set_enabled(name, False)


@playbooks_app.command("enable")
def playbooks_enable(name: str) -> None:
    """Put a disabled playbook back on the ladder."""
    _set_enabled(name, True)


def _set_enabled(name: str, enabled: bool) -> None:
    book = _healing(lambda ops: ops.set_enabled(name, enabled))
    typer.echo(f"{book.playbook_name}: {'enabled' if book.enabled else 'disabled'}")


@healing_app.command("simulate")
def healing_simulate(
    playbook: Annotated[str, typer.Option(help="playbook name")],
    service: Annotated[str, typer.Option(help="target service")],
    as_json: JsonOption = False,
) -> None:
    """Dry run: steps, compensations, guardrail verdicts, expected outcome — nothing touched."""
    plan = _healing(lambda ops: ops.simulate(playbook, service))
    lines = [
        f"{plan.playbook} on {plan.service} ({plan.incident_type}, "
        f"{plan.automation_level}) — nothing is touched"
    ]
    for step in plan.steps:
        guard = step.guardrail
        lines.append(
            f"  {step.step}. {step.action}: {step.does}"
            + ("" if step.supported else f"  [NOT OFFERED: needs {step.capability}]")
            + (f"  [guardrail: {guard.verdict} — {guard.reason}]" if guard else "")
        )
    lines.append("  rollback plan: " + ("; ".join(plan.rollback_plan) or "nothing to undo"))
    lines.append(f"  expected: {plan.expected_outcome}")
    _emit(plan, as_json, lines)


@healing_app.command("metrics")
def healing_metrics(
    hours: Annotated[float, typer.Option(help="over the last N hours")] = 24.0,
    as_json: JsonOption = False,
) -> None:
    """Detection rate, auto-resolution rate, MTTD and MTTR p50/p95, by pattern and overall."""
    report = _healing(lambda ops: ops.metrics(timedelta(hours=hours)))

    def show(value: Any) -> str:
        return "-" if value is None else f"{value:g}"

    lines = [
        f"{'pattern':<32} {'faults':>6} {'detect':>7} {'incid':>6} {'auto':>6}"
        f" {'MTTD p50':>9} {'p95':>7} {'MTTR p50':>9} {'p95':>7}"
    ]
    for r in report.table:
        lines.append(
            f"{r.pattern:<32} {r.faults_injected:>6} {show(r.detection_rate):>7}"
            f" {r.incidents:>6} {show(r.auto_resolution_rate):>6}"
            f" {show(r.mttd_p50_s):>9} {show(r.mttd_p95_s):>7}"
            f" {show(r.mttr_p50_s):>9} {show(r.mttr_p95_s):>7}"
        )
    _emit(report, as_json, lines)


# ---- audit ---------------------------------------------------------------------------------


@audit_app.command("verify")
def audit_verify() -> None:
    """Recompute the audit chain's hashes; exit 1 at the first event that does not match."""
    verdict = _operate(lambda engine: OversightOperations(None, engine), lambda o: o.verify_audit())
    if not verdict.ok:
        raise fail(f"audit chain broken at event {verdict.first_bad_id}: {verdict.problem}")
    typer.echo(f"audit chain intact: {verdict.events} event(s)")


# ---- detect --------------------------------------------------------------------------------


@detect_app.command("train")
def detect_train(
    hours: Annotated[float, typer.Option(help="learn from the last N hours of history")] = 6.0,
    holdout: Annotated[
        float, typer.Option(help="latest share of the fault episodes held out to judge")
    ] = 0.3,
    activate: Annotated[
        bool | None,
        typer.Option(
            "--activate/--no-activate",
            help="force or forbid going live (default: when the held-out figures qualify)",
        ),
    ] = None,
    service: Annotated[
        list[str] | None, typer.Option("--service", help="train on these services only")
    ] = None,
) -> None:
    """Train the LightGBM detector on recorded faults and incidents (DetectorTrainingWorkflow)."""
    try:
        request = TrainDetectorInput(
            hours=hours, holdout_share=holdout, activate=activate, services=service or []
        )
    except ValueError as err:
        raise fail(_first_error(err)) from None
    typer.echo(
        f"training on the last {hours:g} h (latest {holdout:.0%} of fault episodes held out)"
    )
    try:
        report = asyncio.run(_train(request))
    except (RPCError, WorkflowFailureError) as err:
        raise fail(f"training failed: {_root_cause(err)}") from None
    holdout_figures = report.holdout
    say(f"model {report.version} ({report.model_id})")
    say(
        f"trained on {report.training['points']} samples, {report.training['positives']} faulty,"
        f" from {report.training['windows']} labelled windows"
    )
    say(
        f"held out: {holdout_figures['points']} samples, {holdout_figures['episodes']} fault"
        f" episodes, {holdout_figures['episodes_detected']} flagged; ROC AUC"
        f" {holdout_figures['roc_auc']}, precision {holdout_figures['precision']}, recall"
        f" {holdout_figures['recall']}, false-positive rate"
        f" {holdout_figures['false_positive_rate']}"
    )
    typer.echo(f"{'ACTIVE' if report.active else 'kept inactive'}: {report.verdict}")


async def _train(request: TrainDetectorInput) -> Any:
    async with NofxClient.connect(settings()) as nofx:
        return await nofx.train_detector(request)


def _root_cause(err: BaseException) -> str:
    """The innermost failure's message (a workflow failed because an activity failed because...)."""
    while getattr(err, "cause", None) is not None:
        err = err.cause  # type: ignore[attr-defined]
    return str(getattr(err, "message", None) or err)


def _first_error(err: ValueError) -> str:
    errors = getattr(err, "errors", None)
    if callable(errors):
        first = errors()[0]
        return f"--{'.'.join(str(p) for p in first['loc'])}: {first['msg']}"
    return str(err)


@detect_app.command("models")
def detect_models() -> None:
    """The learned detector's versions, newest first, with their held-out figures."""
    models = _operate(
        lambda engine: OversightOperations(None, engine), lambda o: o.detector_models()
    )
    if not models:
        typer.echo("no learned detector yet: `nofx detect train` after some faults or incidents")
        return
    for model in models:
        holdout = (model["performance_metrics"] or {}).get("holdout", {})
        typer.echo(
            f"{model['model_version']}  {'ACTIVE  ' if model['active'] else 'inactive'}"
            f"  episodes {holdout.get('episodes_detected')}/{holdout.get('episodes')}"
            f"  auc {holdout.get('roc_auc')}  fpr {holdout.get('false_positive_rate')}"
            f"  {model['created_at']:%Y-%m-%d %H:%M}"
        )


# ---- chaos ---------------------------------------------------------------------------------


@chaos_app.command("suites")
def chaos_suites() -> None:
    """The chaos suites and the faults each injects."""
    for name, faults in chaos.SUITES.items():
        labels = [chaos.fault_label(f) + (" (drill)" if f.rollback_drill else "") for f in faults]
        typer.echo(f"{name:<9} {len(faults):>3} experiments: {', '.join(dict.fromkeys(labels))}")


@chaos_app.command("run")
def chaos_run(
    suite: Annotated[str, typer.Option(help="smoke, full or rollback (`nofx chaos suites`)")],
    service: Annotated[
        list[str] | None,
        typer.Option("--service", help="spread the faults over these (default: the fleet)"),
    ] = None,
    parallel: Annotated[int, typer.Option(help="experiments at once, on distinct services")] = 1,
    rto: Annotated[float, typer.Option(help="recovery-time objective, seconds")] = 300,
    out: Annotated[Path | None, typer.Option(help="write the results and figures as JSON")] = None,
) -> None:
    """Inject a suite's faults for real, one experiment each (ChaosSuiteWorkflow); print a table."""
    try:
        faults = chaos.suite_faults(suite)
    except ValueError as err:
        raise fail(str(err)) from None
    with _engine() as engine:
        fleet = [t.service for t in list_targets(engine) if t.metadata.get("fleet_home")]
    services = service or fleet
    unknown = sorted(set(services) - set(fleet))
    if unknown:
        raise fail(f"--service: {', '.join(unknown)} not in the staging fleet ({', '.join(fleet)})")
    try:
        request = ChaosSuiteInput(
            suite=suite, services=services, faults=faults, rto_seconds=rto, parallel=parallel
        )
    except ValidationError as err:
        raise fail(_first_error(err)) from None
    typer.echo(f"chaos suite {suite}: {len(faults)} experiments over {', '.join(services)}")
    try:
        progress = asyncio.run(_chaos(request))
    except (RPCError, WorkflowFailureError) as err:
        raise fail(f"chaos suite failed: {_root_cause(err)}") from None
    summary = chaos.summarise(progress.results)
    typer.echo(chaos.table(summary))
    if out is not None:
        results = [r.model_dump(mode="json") for r in progress.results]
        out.write_text(json.dumps({"summary": summary, "results": results}, indent=2, default=str))
        typer.echo(f"written: {out}")


async def _chaos(request: ChaosSuiteInput) -> Any:
    def show(result: Any) -> None:
        say(chaos.result_line(result))

    async with NofxClient.connect(settings()) as nofx:
        return await nofx.run_chaos_suite(request, on_result=show)


def run() -> None:
    """Entry point: one-line errors for bad settings, and an exit that cannot crash (issue 300)."""
    code = 0
    try:
        app()
    except SettingsError as err:
        typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
        code = 1
    except SystemExit as done:
        if isinstance(done.code, int):
            code = done.code
        elif done.code is not None:
            typer.echo(done.code, err=True)
            code = 1
    exit_process(code)


# ---- operators and the decision engine's mode -------------------------------------------


def _operators(call: Callable[[OperatorsOperations], Coroutine[Any, Any, T]]) -> T:
    return _operate(OperatorsOperations, call)


@operators_app.command("add")
def operators_add(
    name: Annotated[str, typer.Argument(help="the name they approve with, e.g. alice")],
    permission: Annotated[
        list[str], typer.Option("--permission", "-p", help="e.g. healing:restart, healing:*, *")
    ],
    display_name: Annotated[str | None, typer.Option(help="a readable name")] = None,
) -> None:
    """Add an operator (or replace an operator's permissions)."""
    operator = _operators(
        lambda ops: ops.add(name, permission, display_name=display_name, actor=getpass.getuser())
    )
    typer.echo(f"operator {operator.name}: {', '.join(operator.permissions) or 'no permission'}")


@operators_app.command("list")
def operators_list() -> None:
    """Operators and their permissions."""
    for operator in _operators(lambda ops: ops.operators()):
        typer.echo(f"{operator.name:<20} {', '.join(operator.permissions)}")


@operators_app.command("remove")
def operators_remove(name: Annotated[str, typer.Argument()]) -> None:
    """Remove an operator: their later answers are refused."""
    _operators(lambda ops: ops.remove(name))
    typer.echo(f"removed operator {name}")


@operators_app.command("token")
def operators_token(
    name: Annotated[str, typer.Argument(help="the operator the token acts as")],
    label: Annotated[str, typer.Option(help="what the token is for, e.g. ci, dashboard")] = "",
) -> None:
    """Make an API token acting as an operator, with their permissions; it is shown once."""
    info, token = _operators(
        lambda ops: ops.issue_token(name, label=label, actor=getpass.getuser())
    )
    typer.echo(token)  # alone on stdout: TOKEN=$(nofx operators token alice)
    typer.echo(f"token {info.id} for {info.operator}: keep it now, it is not shown again", err=True)


@operators_app.command("tokens")
def operators_tokens(
    operator: Annotated[str | None, typer.Option(help="only this operator's")] = None,
) -> None:
    """API tokens (never their secrets): id, operator, label, last use, revoked."""
    for t in _operators(lambda ops: ops.tokens(operator)):
        used = _clock(t.last_used_at) if t.last_used_at else "never used"
        gone = f" revoked {_clock(t.revoked_at)}" if t.revoked_at else ""
        typer.echo(f"{t.id}  {t.operator:<16} {t.label or '-':<12} {used}{gone}")


@operators_app.command("revoke-token")
def operators_revoke_token(token_id: Annotated[str, typer.Argument(help="the token's id")]) -> None:
    """Revoke an API token: it authenticates nobody from now on."""
    info = _operators(lambda ops: ops.revoke_token(token_id, actor=getpass.getuser()))
    typer.echo(f"revoked token {info.id} of {info.operator}")


@app.command()
def api(
    host: Annotated[str | None, typer.Option(help="default NOFX_API_HOST or 127.0.0.1")] = None,
    port: Annotated[int | None, typer.Option(help="default NOFX_API_PORT or 8400")] = None,
) -> None:
    """Serve the HTTP API (and the dashboard) alone, against the configured stack."""
    from nofx.api.app import run as run_api

    s = settings()
    run_api(s, host or s.api_host, port or s.api_port)


@mode_app.command("show")
def mode_show() -> None:
    """The global mode, the thresholds, and the services with a mode of their own."""
    shown = _controls(lambda ops: ops.show())
    typer.echo(
        f"global mode: {shown.mode} (autonomous asks at risk >= {shown.ask_at_risk} or"
        f" confidence < {shown.min_confidence}; critical always asks two people)"
    )
    for service, mode in sorted(shown.service_modes.items()):
        typer.echo(f"{service}: {mode}")


@mode_app.command("set")
def mode_set(
    mode: Annotated[str, typer.Argument(help="observe | assist | autonomous")],
    service: Annotated[str | None, typer.Option(help="only this service")] = None,
) -> None:
    """Set the global mode, or one service's (the strictest of the two applies)."""
    if mode not in ("observe", "assist", "autonomous"):
        raise fail(f"mode: {mode!r} is not one of observe, assist, autonomous")
    change = ModeChange(mode=mode, service=service)  # type: ignore[arg-type]
    _controls(lambda ops: ops.set_mode(change))
    typer.echo(f"mode {mode}" + (f" for {service}" if service else " (global)"))


# ---- the decision engine's operations ------------------------------------------------------

DecisionArg = Annotated[str, typer.Argument(help="a decision id, or its workflow's id")]
AsOption = Annotated[str | None, typer.Option("--as", help="approver name (default: you)")]
CauseOption = Annotated[
    str | None, typer.Option(help="the root-cause kind, if known: configuration|dependency|self")
]


def _decisions(call: Any) -> Any:
    """Run one decision operation; its typed errors end the command in one line each."""

    async def go() -> Any:
        async with NofxClient.connect(settings()) as nofx:
            if nofx.engine is None:
                raise fail("no database: set NOFX_DATABASE_URL or run `nofx up`")
            return await call(nofx)

    try:
        return asyncio.run(go())
    except OperationError as err:
        raise fail(str(err)) from None
    except RPCError as err:
        raise fail(f"cannot reach Temporal ({err.message}): is the stack up? (`nofx up`)") from None


def _request(model: type[Any], **fields: Any) -> Any:
    try:
        return model(**{k: v for k, v in fields.items() if v is not None})
    except ValidationError as err:
        lines = [line.partition(":") for line in field_errors(err)]
        raise fail("; ".join(f"--{f.replace('_', '-')}:{rest}" for f, _, rest in lines)) from None


def _decision_lines(record: DecisionRecord) -> list[str]:
    risk = record.risk.level if record.risk else "n/a"
    approval = record.approval
    lines = [
        f"decision {record.decision_id} (workflow {record.workflow_id})",
        f"  {record.subject} / {record.problem}: {record.status}, mode {record.mode},"
        f" chosen {record.chosen or 'none'} (confidence {record.confidence:.2f}, risk {risk})",
    ]
    if record.engine_choice and record.engine_choice != record.chosen:
        lines.append(f"  the engine chose {record.engine_choice}; a person overrode it")
    if approval.required:
        lines.append(
            f"  approval: {approval.outcome}, {approval.approvers_needed} approver(s) with"
            f" {', '.join(approval.required_permissions) or 'no permission'}:"
            f" {'; '.join(approval.why)}"
        )
        for v in approval.verdicts:
            refused = "" if v.accepted else f" REFUSED ({v.refused_because})"
            lines.append(f"    {v.kind} by {v.approver} via {v.via}{refused}: {v.reason}")
    if record.rollback_plan:
        lines.append(f"  rollback plan: {' -> '.join(record.rollback_plan)}")
    if record.actual_outcome:
        lines.append(f"  outcome: {json.dumps(record.actual_outcome, default=str)}")
    lines += ["", *record.explanation.text.splitlines()]
    return lines


def _show(model: Any, as_json: bool, lines: list[str]) -> None:
    _emit(model.model_dump(mode="json"), as_json, lines)


@autonomous_app.command("decide")
def autonomous_decide(
    service: Annotated[str, typer.Option(help="a service of the inventory")],
    incident_type: Annotated[str, typer.Option(help="the problem pattern, e.g. service_down")],
    cause: CauseOption = None,
    require_approval: Annotated[
        str | None, typer.Option(help="ask a person whatever the risk, with this reason")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Ask the engine now (DecisionWorkflow): recorded and explained; it may wait for a person."""
    request = _request(
        DecideRequest,
        service=service,
        incident_type=incident_type,
        cause=cause,
        require_approval=require_approval,
        requested_by=getpass.getuser(),
    )
    record: DecisionRecord = _decisions(lambda nofx: nofx.decide(request))
    _show(record, as_json, _decision_lines(record))


@autonomous_app.command("simulate")
def autonomous_simulate(
    service: Annotated[str, typer.Option(help="a service of the inventory")],
    incident_type: Annotated[str, typer.Option(help="the problem pattern")],
    cause: CauseOption = None,
    candidate: Annotated[
        list[str] | None, typer.Option("--candidate", help="only these playbooks")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Score and explain against the current state: nothing is recorded, nothing runs."""
    request = _request(
        SimulateRequest,
        service=service,
        incident_type=incident_type,
        cause=cause,
        candidates=candidate,
    )
    result: Simulation = _decisions(lambda nofx: nofx.simulate(request))
    acts = "would act on its own" if result.would_act else "would ask a person"
    if result.mode == "observe":
        acts = "would only record (observe mode)"
    lines = [
        f"{service} / {incident_type}: {result.chosen or 'no usable option'} (confidence"
        f" {result.confidence:.2f}, mode {result.mode}): {acts}",
        *(f"  {why}" for why in result.approval.why),
        "",
        *result.explanation.text.splitlines(),
    ]
    _show(result, as_json, lines)


@autonomous_app.command("explain")
def autonomous_explain(decision: DecisionArg, as_json: JsonOption = False) -> None:
    """A decision: the criteria of every candidate, the rules, the risk, why the others lost."""
    record: DecisionRecord = _decisions(lambda nofx: nofx.explain(decision))
    _show(record, as_json, _decision_lines(record))


@autonomous_app.command("pending")
def autonomous_pending(as_json: JsonOption = False) -> None:
    """Decisions waiting for a person, oldest first."""
    waiting: list[DecisionRecord] = _decisions(lambda nofx: nofx.pending())
    if as_json:
        typer.echo(json.dumps([r.model_dump(mode="json") for r in waiting], indent=2))
        return
    if not waiting:
        typer.echo("nothing waits for a person")
    for r in waiting:
        risk = r.risk.level if r.risk else "n/a"
        typer.echo(
            f"{r.decision_id}  {r.subject} / {r.problem}: {r.chosen} (risk {risk}),"
            f" since {r.created_at:%Y-%m-%d %H:%M:%S} — {'; '.join(r.approval.why)}"
            if r.created_at
            else f"{r.decision_id}  {r.subject} / {r.problem}: {r.chosen} (risk {risk})"
        )


def _answer(operation: str, model: type[Any], decision: str, **fields: Any) -> None:
    """approve | reject | override `decision` as the caller (or `--as`), and say what it is now."""
    fields["approver"] = fields.get("approver") or getpass.getuser()
    answer = _request(model, **fields)
    ack: VerdictAck = _decisions(lambda nofx: getattr(nofx, operation)(decision, answer))
    typer.echo(
        f"{operation}: decision {ack.decision_id} is {ack.status} ({ack.outcome}; chosen"
        f" {ack.chosen}; {ack.approvals}/{max(1, ack.approvers_needed)} approval(s))"
    )


@autonomous_app.command("approve")
def autonomous_approve(
    decision: DecisionArg,
    approver: AsOption = None,
    reason: Annotated[str, typer.Option(help="why (kept with the decision)")] = "",
) -> None:
    """Approve a waiting decision (refused unless you are an operator with its permissions)."""
    _answer("approve", Approve, decision, approver=approver, reason=reason)


@autonomous_app.command("reject")
def autonomous_reject(
    decision: DecisionArg,
    reason: Annotated[str, typer.Option(help="why not (learnt from)")],
    approver: AsOption = None,
) -> None:
    """Reject a waiting decision: the incident escalates to a person with the decision."""
    _answer("reject", Reject, decision, approver=approver, reason=reason)


@autonomous_app.command("override")
def autonomous_override(
    decision: DecisionArg,
    action: Annotated[str, typer.Option(help="the candidate playbook to run instead")],
    reason: Annotated[str, typer.Option(help="why (learnt from)")],
    approver: AsOption = None,
) -> None:
    """Run another candidate instead of the engine's choice, through the same guardrails."""
    _answer("override", Override, decision, approver=approver, action=action, reason=reason)


# ---- learning: nofx autonomous train | models ----------------------------------------------

models_app = typer.Typer(help="The decision engine's success models: list, promote, roll back.")
autonomous_app.add_typer(models_app, name="models")


def _figures(figures: dict[str, Any]) -> str:
    def num(key: str) -> str:
        value = figures.get(key)
        return "-" if value is None else f"{value:.3f}"

    return (
        f"Brier {num('brier')}, AUC {num('auc')}, decision accuracy {num('decision_accuracy')}"
        f" over {figures.get('outcomes', 0)} outcome(s) of"
        f" {figures.get('decisions_judged', 0)} decision(s) with more than one candidate"
    )


@autonomous_app.command("train")
def autonomous_train(as_json: JsonOption = False) -> None:
    """Train the success model on the decision history now (TrainingWorkflow): the latest
    quarter of decisions is held out; the new model replaces the champion only if it beats it."""
    progress = (lambda _m: None) if as_json else (lambda m: say(m))
    report: SuccessModelReport = _decisions(lambda nofx: nofx.train(TrainRequest(), progress))
    data = report.data
    lines = [
        f"model {report.version} ({report.model_id})",
        f"  trained on {data.get('examples')} example(s) from {data.get('train_decisions')}"
        f" decision(s) ({data.get('by_source')}); held out {data.get('holdout_decisions')}"
        f" decision(s) from {data.get('holdout_from')}",
        f"  challenger: {_figures(report.challenger)}",
        f"  champion ({report.champion_id or 'the Beta prior'}): {_figures(report.champion)}",
        f"{'PROMOTED' if report.promoted else 'kept, not promoted'}: {report.verdict}",
    ]
    _show(report, as_json, lines)


def _model_line(m: ModelInfo) -> str:
    holdout = m.metrics.get("holdout") or {}
    when = f"{m.created_at:%Y-%m-%d %H:%M:%S}"
    return f"{'*' if m.active else ' '} {m.model_id}  {m.version}  {when}  {_figures(holdout)}"


@models_app.command("list")
def models_list(
    limit: Annotated[int, typer.Option(min=1, max=500, help="newest first, at most")] = 20,
    as_json: JsonOption = False,
) -> None:
    """The success models, newest first; * marks the champion in force."""
    found: list[ModelInfo] = _decisions(lambda nofx: nofx.models(limit))
    if as_json:
        typer.echo(json.dumps([m.model_dump(mode="json") for m in found], indent=2))
        return
    if not found:
        typer.echo("no success model yet: the engine decides on the action matrix's priors")
    for m in found:
        typer.echo(_model_line(m))


@models_app.command("promote")
def models_promote(
    model_id: Annotated[str, typer.Argument(help="a model id from `models list`")],
    reason: Annotated[str, typer.Option(help="why (kept in the audit trail)")] = "",
    actor: AsOption = None,
) -> None:
    """Make a model the champion; workers use it from their next decision."""
    who = actor or getpass.getuser()
    m: ModelInfo = _decisions(lambda nofx: nofx.promote_model(model_id, actor=who, reason=reason))
    typer.echo(f"champion now: {_model_line(m)}")


@models_app.command("rollback")
def models_rollback(
    reason: Annotated[str, typer.Option(help="why (kept in the audit trail)")] = "",
    actor: AsOption = None,
) -> None:
    """Put back the champion the active model replaced."""
    who = actor or getpass.getuser()
    m: ModelInfo = _decisions(lambda nofx: nofx.rollback_model(actor=who, reason=reason))
    typer.echo(f"champion now: {_model_line(m)}")


# ---- A/B tests: nofx autonomous experiments start | report | stop -------------------------

experiments_app = typer.Typer(help="A/B tests of decision strategies, decided per service.")
autonomous_app.add_typer(experiments_app, name="experiments")


def _arm(text_: str) -> ArmSpec:
    """`NAME` or `NAME:MODEL` (MODEL champion | prior)."""
    name, _, model = text_.partition(":")
    try:
        return ArmSpec.model_validate({"name": name, "model": model or name})
    except ValidationError as err:
        raise fail(f"--arm {text_!r}: {'; '.join(field_errors(err))}") from None


def _experiment_lines(r: ExperimentReport) -> list[str]:
    lines = [f"experiment {r.name} ({r.status}, since {r.started_at:%Y-%m-%d %H:%M:%S})"]
    for a in r.arms:
        rate = "-" if a.success_rate is None else f"{a.success_rate:.1%}"
        lines.append(
            f"  {a.arm:<16} {a.model:<9} decisions {a.decisions:>5}  outcomes {a.outcomes:>5}"
            f"  fixed {a.fixed:>5}  success {rate}"
        )
    if r.p_value is not None:
        lines.append(f"  two-proportion z {r.z}, p {r.p_value}")
    lines.append(f"{r.verdict}{' — the stop rule says stop' if r.should_stop else ''}")
    if r.stop_reason:
        lines.append(f"stopped: {r.stop_reason}")
    return lines


@experiments_app.command("start")
def experiments_start(
    name: Annotated[str, typer.Argument(help="the experiment's name")],
    arm: Annotated[
        list[str],
        typer.Option("--arm", help="NAME[:champion|prior], twice at least"),
    ],
    min_per_arm: Annotated[int, typer.Option(help="outcomes per arm before judging")] = 30,
    max_per_arm: Annotated[int, typer.Option(help="stop without a winner at this many")] = 500,
    alpha: Annotated[float, typer.Option(help="significance level")] = 0.05,
    actor: AsOption = None,
) -> None:
    """Decide each service's decisions by the arm its name hashes to, until stopped."""
    try:
        spec = ExperimentSpec(
            name=name,
            arms=[_arm(a) for a in arm],
            min_per_arm=min_per_arm,
            max_per_arm=max_per_arm,
            alpha=alpha,
        )
    except ValidationError as err:
        lines = [line.partition(":") for line in field_errors(err)]
        raise fail("; ".join(f"{f}:{rest}" for f, _, rest in lines)) from None
    who = actor or getpass.getuser()
    _decisions(lambda nofx: nofx.experiment_start(spec, actor=who))
    typer.echo(f"started {name}: arms {', '.join(f'{a.name} ({a.model})' for a in spec.arms)}")


@experiments_app.command("report")
def experiments_report(name: str, as_json: JsonOption = False) -> None:
    """Per arm: outcomes and success rate; the test and what the stop rule says."""
    r: ExperimentReport = _decisions(lambda nofx: nofx.experiment_report(name))
    _show(r, as_json, _experiment_lines(r))


@experiments_app.command("stop")
def experiments_stop(
    name: str,
    reason: Annotated[str, typer.Option(help="why (kept with it and audited)")],
    actor: AsOption = None,
) -> None:
    """End the experiment; decisions go back to the champion and the policy's weights."""
    who = actor or getpass.getuser()
    r: ExperimentReport = _decisions(
        lambda nofx: nofx.experiment_stop(name, actor=who, reason=reason)
    )
    for line in _experiment_lines(r):
        typer.echo(line)


# ---- nofx services: the inventory ---------------------------------------------------------

ChangedBy = Annotated[str | None, typer.Option("--as", help="who makes the change (default: you)")]
services_app = typer.Typer(
    help="The service inventory: apply an inventory file (with a diff), list, show, remove."
)
app.add_typer(services_app, name="services")


def _change_lines(report: ApplyReport) -> list[str]:
    marks = {"add": "+", "change": "~", "unchanged": "=", "remove": "-"}
    lines = []
    for c in report.changes:
        lines.append(f"{marks[c.change]} {c.service:<28} {c.change}")
        if c.change == "change":
            for field_, values in c.fields.items():
                before = json.dumps(values["before"], default=str, sort_keys=True)
                after = json.dumps(values["after"], default=str, sort_keys=True)
                lines.append(f"    {field_}: {before} -> {after}")
    counts = ", ".join(f"{n} {k}" for k, n in sorted(report.counts.items()))
    lines.append(f"{'dry run, nothing written' if report.dry_run else 'applied'}: {counts}")
    return lines


def _inventory(call: Callable[[InventoryOperations], Coroutine[Any, Any, T]]) -> T:
    return _operate(InventoryOperations, call)


@services_app.command("apply")
def services_apply(
    file: Annotated[Path, typer.Option("-f", "--file", help="the inventory file (YAML)")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="show the diff only")] = False,
    actor: ChangedBy = None,
    as_json: JsonOption = False,
) -> None:
    """Add or change the file's services (all or none, audited); unlisted ones stay."""
    who = actor or getpass.getuser()
    report = _inventory(lambda ops: ops.apply(file, dry_run=dry_run, actor=who))
    _emit(report, as_json, _change_lines(report))


@services_app.command("list")
def services_list(as_json: JsonOption = False) -> None:
    """Every service of the inventory: tier, owner, group, providers and endpoint."""
    rows = _inventory(lambda ops: ops.services())
    lines = [
        f"{r['name']:<24} {r['tier']:<7} {r['owner'] or '-':<16}"
        f" {(r['metadata'] or {}).get('group') or '-':<12} {r['provider']:<10} {r['endpoint']}"
        for r in rows
    ]
    _emit(rows, as_json, lines or ["(no services)"])


@services_app.command("show")
def services_show(name: str) -> None:
    """One service's inventory row, whole, as JSON (with what its providers can do)."""
    row = _inventory(lambda ops: ops.service(name))
    typer.echo(json.dumps(row, default=str, indent=2))


@services_app.command("remove")
def services_remove(
    names: Annotated[list[str], typer.Argument(help="the services to take out")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="show what would go")] = False,
    actor: ChangedBy = None,
    as_json: JsonOption = False,
) -> None:
    """Take services out of the inventory (and their configuration history), all or none."""
    who = actor or getpass.getuser()
    report = _inventory(lambda ops: ops.remove(names, dry_run=dry_run, actor=who))
    _emit(report, as_json, _change_lines(report))


# ---- predictive ----------------------------------------------------------------------------

predictive_app = typer.Typer(
    help="Forecasts with intervals, time to exhaustion, maintenance predictions and jobs."
)
app.add_typer(predictive_app, name="predictive")


@predictive_app.command("forecast")
def predictive_forecast(
    service: Annotated[str, typer.Option("--service", help="a service of the inventory")],
    metric: Annotated[str, typer.Option("--metric", help="the metric, as the source names it")],
    horizon: Annotated[int, typer.Option(help="steps ahead")] = 288,
    step: Annotated[float, typer.Option(help="seconds per step")] = 300.0,
    history_hours: Annotated[float, typer.Option(help="history to fit on")] = 168.0,
    until: Annotated[
        datetime | None, typer.Option(help="forecast from this moment (UTC; default now)")
    ] = None,
    plot_path: Annotated[
        Path | None, typer.Option("--plot", help="write a PNG: history, forecast, intervals")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Forecast a service's metric with 80% and 95% intervals, and its time to exhaustion
    when the inventory sets a limit for it."""
    from nofx.forecasting.plot import plot
    from nofx.forecasting.service import ForecastError, forecast_metric
    from nofx.telemetry.routing import metric_source
    from nofx.telemetry.sources import MetricSourceError

    try:
        request = ForecastRequest(
            service=service,
            metric=metric,
            horizon_steps=horizon,
            step_seconds=step,
            history_hours=history_hours,
            until=until.replace(tzinfo=until.tzinfo or UTC) if until else None,
        )
    except ValidationError as err:
        raise fail("; ".join(field_errors(err))) from None
    from nofx.operations.predictive import limit_of

    with _engine() as engine:
        try:
            limit = limit_of(engine, service, metric)
            report = forecast_metric(metric_source(engine, settings()), request, limit=limit)
        except (ForecastError, MetricSourceError, OperationError) as err:
            raise fail(str(err)) from None
    if plot_path is not None:
        plot(report, plot_path)
    if as_json:
        typer.echo(report.model_dump_json(indent=2))
        return
    typer.echo(
        f"{service} {metric}: {len(report.history)} steps of {step:g}s history"
        f" ({report.repairs}); model {report.model}"
    )
    typer.echo(
        "  backtest MAE (scaled): "
        + ", ".join(f"{m} {v:.3f}" for m, v in sorted(report.backtest_mae.items()))
    )
    for note in report.notes:
        typer.echo(f"  note: {note}")
    marks = sorted({0, len(report.points) // 4, len(report.points) // 2, len(report.points) - 1})
    typer.echo(f"  {'at':<25} {'mean':>12} {'80% interval':>27} {'95% interval':>27}")
    for i in marks:
        p = report.points[i]
        typer.echo(
            f"  {p.ts.isoformat():<25} {p.mean:>12.4g} [{p.lo80:>11.4g}, {p.hi80:>11.4g}]"
            f" [{p.lo95:>11.4g}, {p.hi95:>11.4g}]"
        )
    found = report.exhaustion
    if found is None:
        typer.echo("  no limit for this metric in the inventory (limits:)")
    elif found.eta is None:
        typer.echo(
            f"  limit {found.limit:g}: not reached within the horizon (p {found.probability})"
        )
    else:
        typer.echo(
            f"  limit {found.limit:g}: reached at {found.eta.isoformat()} (p {found.probability},"
            f" from the {found.source}; between {found.earliest} and {found.latest})"
        )
    if plot_path is not None:
        typer.echo(f"  plot: {plot_path}")


def _predictive(call: Callable[[PredictiveOperations], Coroutine[Any, Any, T]]) -> T:
    """The predictive reads (no Temporal client needed)."""
    return _operate(lambda engine: PredictiveOperations(None, engine, settings()), call)


@predictive_app.command("maintenance")
def predictive_maintenance(
    service: Annotated[str | None, typer.Option(help="one service only")] = None,
    refresh: Annotated[
        bool, typer.Option("--refresh", help="forecast every limited metric first")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """The open maintenance predictions: what runs out, when, and what to do before then."""
    rows = _predictive(lambda ops: ops.maintenance(service, refresh=refresh))
    lines = [
        f"{r.service:<24} {r.predicted_issue:<16} p={r.probability:.2f}"
        f" at {r.eta.isoformat() if r.eta else '?'} ({r.source});"
        f" {(r.recommended_action or {}).get('action') or 'no action known'}"
        for r in rows
    ]
    _emit(rows, as_json, lines or ["(no open prediction)"])


JobOption = Annotated[
    str | None, typer.Option(metavar="WORKFLOW_ID", help="a job: maintenance-<service>-<issue>")
]


@predictive_app.command("schedule")
def predictive_schedule(
    service: Annotated[str | None, typer.Option(help="one service only")] = None,
    reschedule: JobOption = None,
    at: Annotated[
        datetime | None, typer.Option(help="with --reschedule: the new start (UTC)")
    ] = None,
    run_now: JobOption = None,
    cancel: JobOption = None,
    reason: Annotated[str | None, typer.Option(help="why (kept on the job)")] = None,
    approver: AsOption = None,
    limit: Annotated[int, typer.Option(help="how many jobs")] = 20,
    as_json: JsonOption = False,
) -> None:
    """Maintenance jobs: when each runs and why; --reschedule/--run-now/--cancel one of them."""
    from nofx.maintenance.jobs import list_schedules

    who = approver or getpass.getuser()
    asked = [
        (n, v)
        for n, v in (("reschedule", reschedule), ("run-now", run_now), ("cancel", cancel))
        if v
    ]
    if len(asked) > 1:
        raise fail("give one of --reschedule, --run-now and --cancel")
    if asked:
        name, workflow_id = asked[0]
        if name == "reschedule":
            if at is None:
                raise fail("--reschedule needs --at")
            request: Any = _request(
                Reschedule,
                requested_by=who,
                at=at if at.tzinfo else at.replace(tzinfo=UTC),
                reason=reason or "rescheduled from the CLI",
            )
        else:
            model = RunNow if name == "run-now" else CancelJob
            request = _request(model, requested_by=who, reason=reason or f"{name} from the CLI")

        async def go() -> JobAck:
            async with NofxClient.connect(settings()) as nofx:
                if name == "reschedule":
                    return await nofx.reschedule_job(workflow_id, request)
                if name == "run-now":
                    return await nofx.run_job_now(workflow_id, request)
                return await nofx.cancel_job(workflow_id, request)

        try:
            ack = asyncio.run(go())
        except WorkflowUpdateFailedError as err:
            raise fail(f"{workflow_id}: refused: {_root_cause(err)}") from None
        except RPCError as err:
            raise fail(f"{workflow_id}: {err.message}") from None
        typer.echo(f"{workflow_id}: {ack.status}: {ack.message}")
        return
    with _engine() as engine:
        rows = list_schedules(engine, service, limit)
    lines = [
        f"{r['workflow_id']:<40} {r['status']:<12} at {r['scheduled_at']:%Y-%m-%d %H:%M} UTC"
        f" (failure from {r['deadline']:%Y-%m-%d %H:%M}) {r['maintenance_type']}: {r['detail']}"
        for r in rows
        if r["deadline"] is not None
    ]
    _emit(rows, as_json, lines or ["(no maintenance job)"])


@predictive_app.command("validate")
def predictive_validate(
    days: Annotated[float, typer.Option(help="judge the predictions of this many days")] = 30.0,
    as_json: JsonOption = False,
) -> None:
    """Stored predictions against what happened: precision, recall, lead time, forecast error."""
    report = _predictive(lambda ops: ops.validate(days))

    def pct(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.1%}"

    lines = [
        f"{report.predictions} prediction(s) since {report.since:%Y-%m-%d %H:%M} UTC:"
        f" {', '.join(f'{k} {v}' for k, v in sorted(report.by_status.items())) or 'none'}"
        f" (settled now: {report.labelled})",
        f"precision {pct(report.precision)} (averted counted right;"
        f" {pct(report.precision_without_averted)} without them)",
        f"recall {pct(report.recall)}: {report.failures_predicted} of {report.failures}"
        " exhaustion failure(s) warned of before they started",
        "lead time (median) "
        + (f"{report.lead_minutes_median:.0f} min" if report.lead_minutes_median else "n/a")
        + "; time-to-failure error (median) "
        + (f"{report.eta_error_hours_median:.1f} h" if report.eta_error_hours_median else "n/a"),
        *(
            f"  forecast {e.service} {e.metric} ({e.model}, {e.horizon_steps} steps from"
            f" {e.origin:%H:%M}): MAE {e.mae:.3g}, naive {e.naive_mae:.3g}"
            + (f", ratio {e.ratio_to_naive:.2f}" if e.ratio_to_naive is not None else "")
            for e in report.forecast_error
        ),
    ]
    _emit(report.model_dump(mode="json"), as_json, lines)


optimize_app = typer.Typer(
    help="Optimisation recommendations: list them (no subcommand), apply one, follow or abort it."
)
predictive_app.add_typer(optimize_app, name="optimize")


@optimize_app.callback(invoke_without_command=True)
def predictive_optimize(
    ctx: typer.Context,
    service: Annotated[str | None, typer.Option(help="one service only")] = None,
    refresh: Annotated[
        bool, typer.Option("--refresh", help="size every limited metric from telemetry first")
    ] = False,
    days: Annotated[float, typer.Option(help="days of telemetry a size is judged on")] = 7.0,
    risk: Annotated[
        float, typer.Option(help="the share of steps usage may pass a new size (0-0.5)")
    ] = 0.01,
    as_json: JsonOption = False,
) -> None:
    """The open optimisation recommendations: what to change, what it frees, what it risks."""
    if ctx.invoked_subcommand is not None:
        return
    from nofx.optimization.recommendations import open_recommendations
    from nofx.optimization.recommendations import refresh as refresh_recommendations
    from nofx.telemetry.routing import metric_source

    if not 0 < risk <= 0.5:
        raise fail(f"--risk must be in (0, 0.5], not {risk}")
    if not 1 <= days <= 90:
        raise fail(f"--days must be between 1 and 90, not {days}")
    with _engine() as engine:
        if service is not None and not inventory_store.describe(engine, service):
            raise fail(f"{service} is not in the inventory (nofx services list)")
        if refresh:
            for w in refresh_recommendations(
                engine,
                metric_source(engine, settings()),
                services=[service] if service else None,
                days=days,
                risk=risk,
            ):
                if not as_json:
                    typer.echo(f"  {w.service} {w.target}: {w.change} ({w.reason})")
        rows = open_recommendations(engine, service)
    _emit(rows, as_json, [_recommendation_line(r) for r in rows] or ["(no open recommendation)"])


RecommendationArg = Annotated[str, typer.Argument(help="the recommendation's id (optimize)")]


@optimize_app.command("apply")
def optimize_apply(
    recommendation: RecommendationArg,
    settle: Annotated[
        float, typer.Option(help="seconds after the change before it is measured again")
    ] = 300.0,
    requests: Annotated[int, typer.Option(help="real requests per measurement")] = 40,
    concurrency: Annotated[int, typer.Option(help="of them, sent at once")] = 4,
    tolerance: Annotated[
        float, typer.Option(help="share the p95 may grow before the change counts as a regression")
    ] = 0.5,
    at: Annotated[
        datetime | None, typer.Option(help="an index build's start (UTC), if not the trough")
    ] = None,
    wait: Annotated[bool, typer.Option("--wait", help="wait for the verdict")] = False,
    approver: AsOption = None,
    as_json: JsonOption = False,
) -> None:
    """Apply a recommendation as a decision (type `optimization`, approved by risk), measure
    the service before and after, keep it or roll it back."""
    from nofx.optimization.apply import applicable

    with _engine() as engine:
        try:
            service = applicable(engine, recommendation)
        except OperationError as err:
            raise fail(str(err)) from None
    inp = _request(
        ApplyInput,
        recommendation_id=recommendation,
        requested_by=approver or getpass.getuser(),
        settle_seconds=settle,
        requests=requests,
        concurrency=concurrency,
        tolerance=tolerance,
        not_before=at if at is None or at.tzinfo else at.replace(tzinfo=UTC),
    )

    async def go(nofx: NofxClient) -> ApplyStatusView:
        view = await nofx.apply_recommendation(inp, service)
        if not wait:
            return view
        handle = nofx.temporal.get_workflow_handle(view.workflow_id)
        with contextlib.suppress(WorkflowFailureError):
            await handle.result()
        return await nofx.optimization(recommendation)

    view = _with_client(recommendation, go)
    _emit(view.model_dump(mode="json"), as_json, _apply_lines(view))


def _with_client(recommendation: str, call: Callable[[NofxClient], Awaitable[T]]) -> T:
    """Run `call` on a connected client; a Temporal refusal is a CLI error naming the id."""

    async def go() -> T:
        async with NofxClient.connect(settings()) as nofx:
            return await call(nofx)

    try:
        return asyncio.run(go())
    except RPCError as err:
        raise fail(f"{recommendation}: {err.message}") from None


@optimize_app.command("status")
def optimize_status(recommendation: RecommendationArg, as_json: JsonOption = False) -> None:
    """Where applying a recommendation stands: its timeline, measurements and verdict."""

    view = _with_client(recommendation, lambda nofx: nofx.optimization(recommendation))
    _emit(view.model_dump(mode="json"), as_json, _apply_lines(view))


@optimize_app.command("abort")
def optimize_abort(
    recommendation: RecommendationArg,
    reason: Annotated[str, typer.Option(help="why (kept on the record)")],
    approver: AsOption = None,
) -> None:
    """Stop applying: before the change it ends declined, after it the change rolls back."""
    request = _request(AbortRequest, requested_by=approver or getpass.getuser(), reason=reason)
    _with_client(recommendation, lambda nofx: nofx.abort_optimization(recommendation, request))
    typer.echo(f"{apply_workflow_id(recommendation)}: abort sent")


@predictive_app.command("batch")
def predictive_batch(
    refresh: Annotated[
        bool, typer.Option("--refresh", help="find each heavy job's trough from the forecasts")
    ] = False,
    apply_id: Annotated[
        str | None, typer.Option("--apply", metavar="ID", help="move a job into its trough")
    ] = None,
    restore_id: Annotated[
        str | None, typer.Option("--restore", metavar="ID", help="move an applied one back")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Batch windows: the platform's heavy jobs (training, validation) moved into the fleet's
    forecast troughs, by moving their Schedules' phase."""
    from nofx.optimization import batch
    from nofx.optimization.recommendations import open_recommendations, store
    from nofx.telemetry.routing import metric_source
    from nofx.temporal import schedule_phase, set_schedule_offset

    if sum(bool(x) for x in (refresh, apply_id, restore_id)) > 1:
        raise fail("give one of --refresh, --apply and --restore")
    now = datetime.now(UTC)
    with _engine() as engine:
        if apply_id or restore_id:
            wanted = str(apply_id or restore_id)
            try:
                row = batch.batch_row(engine, wanted)
            except ValueError as err:
                raise fail(str(err)) from None
            was, status = ("open", "applied") if apply_id else ("applied", "rolled_back")
            if row["status"] != was:
                raise fail(f"recommendation {wanted} is {row['status']}, not {was}")
            state = row["recommended_state"] if apply_id else row["current_state"]
            offset = timedelta(seconds=float(state["offset_s"]))

            async def move() -> timedelta:
                async with NofxClient.connect(settings()) as nofx:
                    return await set_schedule_offset(nofx.temporal, row["target"], offset)

            try:
                before = asyncio.run(move())
            except RPCError as err:
                raise fail(f"{row['target']}: {err.message}") from None
            realised = {
                "moved_from_s": before.total_seconds(),
                "moved_to_s": offset.total_seconds(),
                "expected_load": state.get("expected_load"),
            }
            batch.mark(engine, wanted, was=was, status=status, realised=realised, now=now)
            typer.echo(f"{row['target']}: {status}, now {offset} into each period (was {before})")
            return
        if refresh:

            async def phases() -> dict[str, tuple[timedelta, timedelta] | None]:
                async with NofxClient.connect(settings()) as nofx:
                    return {
                        j.schedule_id: await schedule_phase(nofx.temporal, j.schedule_id)
                        for j in batch.heavy_jobs()
                    }

            try:
                found = asyncio.run(phases())
                load = batch.fleet_load(engine, metric_source(engine, settings()), now)
            except RPCError as err:
                raise fail(f"Temporal: {err.message}") from None
            except ValueError as err:
                raise fail(str(err)) from None
            for job in batch.heavy_jobs():
                phase = found[job.schedule_id]
                if phase is None:
                    typer.echo(f"  {job.schedule_id}: no such Schedule (nofx up creates it)")
                    continue
                every, offset = phase
                job = batch.HeavyJob(job.schedule_id, job.what, every, job.duration)
                draft, reason = batch.batch_draft(load, job, offset.total_seconds())
                written = store(engine, batch.PLATFORM, draft, reason, now)
                if not as_json:
                    typer.echo(f"  {job.schedule_id}: {written.change} ({reason})")
        rows = open_recommendations(engine, batch.PLATFORM)
    lines = [
        f"{r['target']:<36} {now_at['offset_s']:>8g}s -> {then['offset_s']:>8g}s load"
        f" {now_at.get('expected_load')} -> {then.get('expected_load')}  {r['id']}"
        for r in rows
        if r["optimization_type"] == "batch"
        for now_at, then in [(r["current_state"] or {}, r["recommended_state"] or {})]
    ]
    _emit(rows, as_json, lines or ["(no open batch window)"])


def _apply_lines(view: ApplyStatusView) -> list[str]:
    lines = [
        f"{view.workflow_id}: {view.status} ({view.optimization_type} of {view.service})"
        + (f", decision {view.decision_id}" if view.decision_id else "")
    ]
    lines += [f"  {n.at:%H:%M:%S} {n.status:<17} {n.message}" for n in view.timeline]
    if view.verdict is not None:
        lines.append(f"  verdict: {view.verdict.realised.get('verdict')}")
    if view.error:
        lines.append(f"  error: {view.error}")
    return lines


def _recommendation_line(row: dict[str, Any]) -> str:
    """One open recommendation: from what to what, what it gains, what it risks."""
    current, recommended = row["current_state"] or {}, row["recommended_state"] or {}
    gain, risk = row["expected_improvement"] or {}, row["risk_assessment"] or {}
    before = current.get("limit", current.get("size", current.get("ttl_s")))
    after = recommended.get("limit", recommended.get("size", recommended.get("ttl_s")))
    if "hit_ratio_gain" in gain:
        what = f"hit ratio {float(gain['hit_ratio_gain']):+.1%}"
        odds = f"stale {float(risk.get('stale_share', 0)):.2%}"
    elif "connections_freed" in gain:
        what = f"frees {gain['connections_freed']:g} connection(s)"
        odds = f"waits over {risk.get('max_wait_ms', 0):g} ms {risk.get('p_wait_over', 0):.1%}"
    else:
        what = f"frees {float(gain.get('capacity_freed_ratio', 0)):+.1%}"
        odds = f"exceeded {float(risk.get('exceed_probability') or 0):.1%}"
    return (
        f"{row['service']:<24} {row['optimization_type']:<12} {row['target']:<32}"
        f" {before!s:>12} -> {after!s:<12} {what}, {odds}  {row['id']}"
    )


@predictive_app.command("cost")
def predictive_cost(
    service: Annotated[str | None, typer.Option(help="one service only")] = None,
    as_json: JsonOption = False,
) -> None:
    """What the services cost an hour (NOFX_COST_* prices, the inventory's resources), what the
    open recommendations would save and the SLO risk each buys, and what applied ones saved."""
    found = _predictive(lambda ops: ops.cost(service))
    lines = [
        f"{'service':<24} {'replicas':>8} {'per hour':>10} {'recommended':>12} {'realised':>10}"
        "  risk"
    ]
    for line in found.services:
        risks = [r.exceed_probability for r in line.recommended if r.exceed_probability is not None]
        lines.append(
            f"{line.service:<24} {line.replicas:>8} {line.per_hour:>10.4f}"
            f" {line.recommended_per_hour:>12.4f} {line.realised_per_hour:>10.4f}"
            f"  {'exceeded ' + format(max(risks), '.1%') if risks else '-'}"
        )
        lines.extend(f"    note: {note}" for note in line.notes)
    lines.append(
        f"{'total':<24} {'':>8} {found.per_hour:>10.4f} {found.recommended_per_hour:>12.4f}"
        f" {found.realised_per_hour:>10.4f}  ({found.recommended_ratio:.1%} of spend"
        f" recommended; {found.per_month:.2f} a month)"
    )
    _emit(found.model_dump(mode="json"), as_json, lines)


@predictive_app.command("schedules")
def predictive_schedules(
    every_minutes: Annotated[
        float | None,
        typer.Option(
            help="forecasting pass interval (default NOFX_PREDICTION_INTERVAL_MINUTES or 60)"
        ),
    ] = None,
) -> None:
    """Install Track C's Schedules: forecasting (hourly by default) and daily validation."""
    every = timedelta(minutes=every_minutes or settings().prediction_interval_minutes or 60)

    async def go() -> list[str]:
        async with NofxClient.connect(settings()) as nofx:
            return await nofx.install_predictive_schedules(every)

    try:
        created = asyncio.run(go())
    except RPCError as err:
        raise fail(f"cannot reach Temporal ({err.message}): is the stack up? (`nofx up`)") from None
    typer.echo(
        f"forecasting every {every.total_seconds() / 60:g} min, validation daily: "
        + (f"created {', '.join(created)}" if created else "already installed")
    )


@predictive_app.command("train")
def predictive_train(
    hours: Annotated[float, typer.Option(help="history to learn from")] = 7 * 24.0,
    holdout: Annotated[float, typer.Option(help="share of fault episodes held out")] = 0.3,
    as_json: JsonOption = False,
) -> None:
    """Train the LightGBM failure classifier on the platform's incidents and injected faults."""
    trained = _predictive(lambda ops: ops.train_failure_model(hours, holdout))
    held = trained.metrics["holdout"]
    _emit(
        {**trained.metrics, "version": trained.version, "active": trained.active},
        as_json,
        [
            f"model {trained.version} ({trained.model_id}):"
            f" {trained.training['points']} samples, {trained.training['positives']} before a"
            " failure",
            f"held out: {held['points']} samples, ROC AUC {held['roc_auc']}, Brier {held['brier']},"
            f" precision {held['precision']}, recall {held['recall']}",
            f"{'ACTIVE' if trained.active else 'kept inactive'}: {trained.verdict}",
        ],
    )
