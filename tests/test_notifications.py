"""Notifications when a person is needed, delivered to a real HTTP receiver (Slack-compatible
webhook) and a real SMTP server (aiosmtpd), from workflows on a real Temporal dev server with a
real PostgreSQL: a decision waiting in assist mode, a webhook that fails before it takes the
message, an escalated incident, and no channel configured at all."""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import structlog
from aiosmtpd.controller import Controller
from sqlalchemy import text
from sqlalchemy.engine import Engine
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle
from temporalio.service import RPCError, RPCStatusCode

from models.decisions import Approve, DecisionRequest, DecisionResult, Operator, Reject
from models.healing import ActionOutcome, IncidentInput, IncidentState
from models.notifications import Notification, NotifyResult
from nofx import notifications
from nofx.client import start_incident
from nofx.decisions import store
from nofx.settings import TASK_QUEUE_DECISIONS, TASK_QUEUE_HEALING, Settings, SettingsError
from pilot.fleet import free_port
from tests.decision_cases import ROLLBACK, context
from workers import decisions, healing
from workers.common import Dependencies, build_worker
from workflows.decisions import DecisionWorkflow
from workflows.healing import not_restored

DASHBOARD = "https://nofx.example.test"
WEB_UI = "https://temporal.example.test"
TO = ["oncall@example.test", "sre@example.test"]


# ---- a real webhook receiver and a real SMTP server ---------------------------------------


@dataclass
class Post:
    status: int
    body: dict[str, Any]


@dataclass
class Receiver:
    """An HTTP server that records every POSTed JSON body. The first `fail_first` get a 500,
    and so does every one until `released` is set (a receiver that is down until told)."""

    url: str = ""
    fail_first: int = 0
    released: threading.Event = field(default_factory=lambda: _set(threading.Event()))
    posts: list[Post] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def about(self, needle: str) -> list[Post]:
        with self.lock:
            return [p for p in self.posts if needle in json.dumps(p.body)]

    def taken(self, needle: str) -> list[Post]:
        return [p for p in self.about(needle) if p.status == 200]


def _set(event: threading.Event) -> threading.Event:
    event.set()
    return event


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    got = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            with got.lock:
                status = 500 if got.fail_first > 0 or not got.released.is_set() else 200
                got.fail_first -= 1 if status == 500 else 0
                got.posts.append(Post(status, json.loads(raw)))
            self.send_response(status)
            self.end_headers()
            self.wfile.write(b"ok" if status == 200 else b"receiver down")

        def log_message(self, *_: Any) -> None:  # quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    got.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/T000/B000/secret"
    try:
        yield got
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


class Inbox:
    """aiosmtpd handler: keeps every message it accepts, with its envelope recipients."""

    def __init__(self) -> None:
        self.port = free_port()
        self.messages: list[tuple[list[str], EmailMessage]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        parsed = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        self.messages.append((list(envelope.rcpt_tos), parsed))
        return "250 OK"

    def about(self, needle: str) -> list[tuple[list[str], EmailMessage]]:
        return [(to, m) for to, m in list(self.messages) if needle in m.as_string()]


@pytest.fixture
def inbox() -> Iterator[Inbox]:
    handler = Inbox()
    controller = Controller(handler, hostname="127.0.0.1", port=handler.port, ready_timeout=30)
    controller.start()
    try:
        yield handler
    finally:
        controller.stop()


def configured(database_url: str, receiver: Receiver, inbox: Inbox) -> Settings:
    return Settings(
        database_url=database_url,
        notify_webhook_url=receiver.url,
        smtp_host="127.0.0.1",
        smtp_port=inbox.port,
        notify_email_to=", ".join(TO),
        notify_email_from="nofx@example.test",
        dashboard_url=DASHBOARD,
        temporal_ui_url=WEB_UI,
    )


# ---- the workers and the decision ---------------------------------------------------------


async def decisions_queue(client: Client, engine: Engine, settings: Settings) -> AsyncIterator[str]:
    name = f"notify-{uuid.uuid4().hex[:8]}"
    deps = Dependencies(engine=engine, client=client, settings=settings)
    store.set_mode(engine, "assist")
    store.add_operator(engine, Operator(name="alice", permissions=["healing:*"]), actor="test")
    async with build_worker(deps, name, decisions.WORKFLOWS, decisions.activities):
        yield name


@pytest.fixture
async def told(
    client: Client, fresh_engine: Engine, fresh_database_url: str, receiver: Receiver, inbox: Inbox
) -> AsyncIterator[str]:
    """A decisions worker (fresh queue, assist mode) whose notifications go to both channels."""
    settings = configured(fresh_database_url, receiver, inbox)
    async for name in decisions_queue(client, fresh_engine, settings):
        yield name


@pytest.fixture
async def untold(
    client: Client, fresh_engine: Engine, fresh_database_url: str
) -> AsyncIterator[str]:
    """The same with no notification channel configured."""
    async for name in decisions_queue(
        client, fresh_engine, Settings(database_url=fresh_database_url)
    ):
        yield name


async def waiting_decision(
    client: Client, queue: str
) -> tuple[WorkflowHandle[Any, DecisionResult], DecisionResult]:
    handle = await client.start_workflow(
        DecisionWorkflow.run,
        DecisionRequest(
            subject="svc", problem="latency_regression", context=context(), candidates=[ROLLBACK]
        ),
        id=f"decision-notify-{uuid.uuid4()}",
        task_queue=queue,
    )
    deadline = asyncio.get_running_loop().time() + 60
    while True:
        now: DecisionResult = await handle.query(DecisionWorkflow.status)
        if now.status == "awaiting_approval":
            return handle, now
        assert asyncio.get_running_loop().time() < deadline, f"decision still {now.status}"
        await asyncio.sleep(0.1)


async def delivered(client: Client, key: str, timeout: float = 60) -> NotifyResult:
    """The result of `notify-<key>`, once that workflow exists and ended."""
    handle: WorkflowHandle[Any, NotifyResult] = client.get_workflow_handle(
        f"notify-{key}", result_type=NotifyResult
    )
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            await handle.describe()
            break
        except RPCError as err:
            if err.status != RPCStatusCode.NOT_FOUND:
                raise
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"notify-{key} never started") from err
            await asyncio.sleep(0.2)
    left = deadline - asyncio.get_running_loop().time()
    return await asyncio.wait_for(handle.result(), timeout=max(left, 1))


async def finish(handle: WorkflowHandle[Any, DecisionResult]) -> None:
    """Answer a decision still waiting, so it ends as it would (not evicted mid-wait); one
    that does not take the answer is terminated."""
    if (await handle.describe()).status != WorkflowExecutionStatus.RUNNING:
        return
    answer = handle.execute_update(
        DecisionWorkflow.reject_decision, Reject(approver="alice", reason="test over")
    )
    try:
        await asyncio.wait_for(answer, timeout=30)
        await asyncio.wait_for(handle.result(), timeout=30)
    except TimeoutError:
        await handle.terminate("test over: the decision did not take its answer")


def audited(engine: Engine, entity_id: str) -> list[tuple[str, str]]:
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT action, details->>'channel' FROM audit_events"
                " WHERE entity_id = :e AND action = 'notification.sent' ORDER BY id"
            ),
            {"e": entity_id},
        ).all()
    return [(r[0], r[1]) for r in rows]


# ---- the behaviours ---------------------------------------------------------------------------


async def test_a_waiting_decision_is_sent_once_to_the_webhook_and_by_email(
    client: Client, told: str, receiver: Receiver, inbox: Inbox, fresh_engine: Engine
) -> None:
    handle, shown = await waiting_decision(client, told)
    decision = shown.decision_id
    try:
        result = await delivered(client, f"decision-waiting-{decision}")
        assert [(r.channel, r.sent) for r in result.receipts] == [
            ("webhook", True),
            ("email", True),
        ]
        dashboard = f"{DASHBOARD}/dashboard#/decisions/{decision}"
        web_ui = f"{WEB_UI}/namespaces/default/workflows/{handle.id}"

        [post] = receiver.about(decision)
        body = post.body
        assert body["blocks"][0]["text"]["text"].startswith("NOFX: Decision waits for a person")
        assert "rollback-config" in body["blocks"][0]["text"]["text"]
        happened, asked = body["blocks"][1]["text"]["text"], body["blocks"][2]["text"]["text"]
        assert happened.startswith("*What happened*")
        assert "the engine chose rollback-config" in happened
        assert "mode assist" in happened
        assert asked.startswith("*What is asked*")
        assert f"Approve, reject or override decision {decision}" in asked
        assert "undo_rollback_config(svc)" in asked  # the rollback plan
        buttons = [e["url"] for e in body["blocks"][-1]["elements"]]
        assert buttons == [dashboard, web_ui]
        assert dashboard in body["text"]
        assert web_ui in body["text"]

        [(to, mail)] = inbox.about(decision)
        assert sorted(to) == sorted(TO)
        assert mail["Subject"].startswith("[NOFX] Decision waits for a person: rollback-config")
        assert mail["From"] == "nofx@example.test"
        assert mail["Message-ID"] == f"<decision-waiting-{decision}@nofx>"
        content = mail.get_content()
        assert (
            "What happened: latency_regression on svc: the engine chose rollback-config" in content
        )
        assert f"What is asked: Approve, reject or override decision {decision}" in content
        assert f"Dashboard: {dashboard}" in content
        assert f"Temporal Web UI: {web_ui}" in content

        assert sorted(audited(fresh_engine, decision)) == [
            ("notification.sent", "email"),
            ("notification.sent", "webhook"),
        ]
        assert (await handle.query(DecisionWorkflow.status)).status == "awaiting_approval"
    finally:
        await finish(handle)


async def test_a_failing_webhook_is_retried_and_the_decision_does_not_wait_for_it(
    client: Client, told: str, receiver: Receiver, inbox: Inbox, fresh_engine: Engine
) -> None:
    receiver.fail_first = 2
    receiver.released.clear()  # down until the decision is over
    handle, shown = await waiting_decision(client, told)
    decision = shown.decision_id
    try:
        # While the webhook still refuses the message, a person answers and the decision ends.
        answer = handle.execute_update(DecisionWorkflow.approve_decision, Approve(approver="alice"))
        try:
            await asyncio.wait_for(answer, timeout=45)
        except TimeoutError:
            pytest.fail("the decision did not take the answer: it waits for its notification")
        done = await asyncio.wait_for(handle.result(), timeout=60)
        assert (done.status, done.decided_by) == ("approved", "alice")
        assert receiver.taken(decision) == []
        assert receiver.about(decision), "the webhook was not even tried while the decision ran"
        receiver.released.set()

        result = await delivered(client, f"decision-waiting-{decision}")
        assert all(r.sent for r in result.receipts)
        statuses = [p.status for p in receiver.about(decision)]
        assert statuses[-1] == 200
        assert statuses.count(500) >= 2
        assert statuses.count(200) == 1  # exactly once
        assert len(inbox.about(decision)) == 1  # the webhook's retries sent no second e-mail
    finally:
        await finish(handle)


async def test_an_escalated_incident_notifies_with_its_links(
    client: Client,
    db_engine: Engine,
    database_url: str,
    receiver: Receiver,
    inbox: Inbox,
) -> None:
    deps = Dependencies(
        engine=db_engine, client=client, settings=configured(database_url, receiver, inbox)
    )
    async with (
        build_worker(deps, TASK_QUEUE_DECISIONS, decisions.WORKFLOWS, decisions.activities),
        build_worker(deps, TASK_QUEUE_HEALING, healing.WORKFLOWS, healing.activities),
    ):
        service = f"nowhere-{uuid.uuid4().hex[:6]}"  # in no inventory: no playbook applies
        handle, _ = await start_incident(
            client,
            IncidentInput(
                service=service, incident_type="stale_cache", detected_at=datetime.now(UTC)
            ),
        )
        ended = await asyncio.wait_for(handle.result(), timeout=60)
        assert ended.state is IncidentState.ESCALATED
        result = await delivered(client, f"incident-escalated-{ended.incident_id}")
    assert all(r.sent for r in result.receipts)
    [post] = receiver.about(ended.incident_id)
    assert post.body["blocks"][0]["text"]["text"] == (
        f"NOFX: Incident escalated to a person: stale_cache on {service}"
    )
    assert "no usable playbook" in post.body["blocks"][1]["text"]["text"]
    assert [e["url"] for e in post.body["blocks"][-1]["elements"]] == [
        f"{DASHBOARD}/dashboard#/incidents/{ended.incident_id}",
        f"{WEB_UI}/namespaces/default/workflows/{handle.id}",
    ]
    [(_, mail)] = inbox.about(ended.incident_id)
    assert mail["X-NOFX-Kind"] == "incident_escalated"
    assert f"fix {service} by hand" in mail.get_content()


async def test_with_no_channel_nothing_is_sent_and_nothing_fails(
    client: Client, untold: str, receiver: Receiver, inbox: Inbox, fresh_engine: Engine
) -> None:
    handle, shown = await waiting_decision(client, untold)
    try:
        result = await delivered(client, f"decision-waiting-{shown.decision_id}")
        assert [(r.channel, r.sent) for r in result.receipts] == [
            ("webhook", False),
            ("email", False),
        ]
        assert "NOFX_NOTIFY_WEBHOOK_URL" in result.receipts[0].detail
        assert receiver.posts == []
        assert inbox.messages == []
        assert audited(fresh_engine, shown.decision_id) == []
        assert (await handle.query(DecisionWorkflow.status)).status == "awaiting_approval"
    finally:
        await finish(handle)


# ---- the parts, without a server ------------------------------------------------------------


def notice(**changes: Any) -> Notification:
    return Notification.model_validate(
        {
            "key": "rollback-failed-i1-1",
            "kind": "rollback_failed",
            "title": "Rollback did not restore api: bad_config",
            "what_happened": "rollback-config failed (5xx > 2%); the undo left <config v7>",
            "what_is_asked": "Put back config v6 by hand & check",
            "service": "api",
            "entity": "incident",
            "entity_id": "i1",
            "workflow_id": "incident-api-bad_config",
            "raised_at": datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC),
            **changes,
        }
    )


def test_a_rollback_that_did_not_restore_is_named_thing_by_thing() -> None:
    def undo(action: str, restored: bool | None, check: str = "") -> ActionOutcome:
        detail: dict[str, Any] = {"prior_state_check": check} if check else {}
        if restored is not None:
            detail["prior_state_restored"] = restored
        return ActionOutcome(
            action=action,
            service="api",
            performed=True,
            detail=detail,
            started_at=datetime.now(UTC),
            finished_at=datetime.now(UTC),
        )

    left = not_restored(
        [
            undo("undo_rollback_config", True, "config v6"),
            undo("undo_shift_weight", False, "weight 0 (was 100)"),
            undo("validate_health", None),
            undo("restore_service_running", False),
        ],
        ["undo_adjust_pool(api): ApplicationError: timed out"],
    )
    assert left == [
        "undo_shift_weight(api): weight 0 (was 100)",
        "restore_service_running(api): prior state not back",
        "undo_adjust_pool(api): ApplicationError: timed out (the compensation failed)",
    ]
    assert not_restored([undo("undo_rollback_config", True)], []) == []


def test_the_webhook_body_is_slack_block_kit_with_escaped_text() -> None:
    settings = Settings(api_host="ops.example.test", api_port=8400)
    where = notifications.links(settings, notice())
    assert where.dashboard == "http://ops.example.test:8400/dashboard#/incidents/i1"
    assert where.web_ui == (
        "http://127.0.0.1:8233/namespaces/default/workflows/incident-api-bad_config"
    )
    body = notifications.slack_payload(notice(), where)
    assert [b["type"] for b in body["blocks"]] == [
        "header",
        "section",
        "section",
        "context",
        "actions",
    ]
    assert "&lt;config v7&gt;" in body["blocks"][1]["text"]["text"]
    assert "&amp; check" in body["blocks"][2]["text"]["text"]
    long = notifications.slack_payload(notice(title="x" * 500), where)
    assert len(long["blocks"][0]["text"]["text"]) == 150


def test_a_channel_that_refuses_raises_so_the_activity_retries(receiver: Receiver) -> None:
    receiver.fail_first = 1
    settings = Settings(
        notify_webhook_url=receiver.url,
        smtp_host="127.0.0.1",
        smtp_port=free_port(),
        notify_email_to="a@example.test",
    )
    with pytest.raises(notifications.NotificationError, match="answered 500") as refused:
        notifications.send_webhook(settings, notice())
    assert "secret" not in str(refused.value)  # the webhook's path is its secret
    assert notifications.send_webhook(settings, notice()).sent
    with pytest.raises(notifications.NotificationError, match=r"SMTP 127\.0\.0\.1"):
        notifications.send_email(settings, notice())  # nothing listens there


def test_no_channel_is_said_once_per_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(notifications, "_unconfigured_said", set())
    with structlog.testing.capture_logs() as logs:
        # A logger made inside the capture: one cached earlier would keep its processors.
        monkeypatch.setattr(notifications, "log", structlog.get_logger("nofx.notifications"))
        for _ in range(3):
            assert not notifications.send_webhook(Settings(), notice()).sent
            assert not notifications.send_email(Settings(smtp_host="mail"), notice()).sent
    said = [(e["event"], e["channel"]) for e in logs]
    assert said == [
        ("notification channel not configured: nothing is sent", "webhook"),
        ("notification channel not configured: nothing is sent", "email"),
    ]


def test_settings_refuse_a_webhook_that_is_not_http() -> None:
    with pytest.raises(SettingsError, match="NOFX_NOTIFY_WEBHOOK_URL"):
        Settings.from_env({"NOFX_NOTIFY_WEBHOOK_URL": "hooks.example.test/x"})
    read = Settings.from_env(
        {"NOFX_NOTIFY_EMAIL_TO": "a@example.test, ,b@example.test", "NOFX_SMTP_HOST": "mail"}
    )
    assert read.notify_email_recipients == ["a@example.test", "b@example.test"]
    assert (read.smtp_port, read.notify_email_from) == (25, "nofx@localhost")
