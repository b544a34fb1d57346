"""`NotifyWorkflow`: tell a person they are needed, on every configured channel, durably.

A workflow that needs a person (a decision waiting for an answer, an incident escalated, a
rollback that did not restore) calls `notify`, which starts this workflow as an abandoned child
with the id `notify-<key>` and returns as soon as it started: the message is delivered on its
own time, with retries, and never holds the workflow that asked for it. The id is rejected when
used before, so a replayed or repeated request sends nothing twice.

Each channel is its own activity, retried on its own with backoff for hours, so a webhook that
is down neither delays the e-mail nor sends it again. What went out is appended to the audit
trail of the decision or incident it is about.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import ActivityError, ApplicationError, WorkflowAlreadyStartedError
from temporalio.workflow import ParentClosePolicy

with workflow.unsafe.imports_passed_through():
    from activities._support import STORE_RETRY
    from activities.notify import NotifyActivities
    from activities.store import StoreActivities
    from models.common import AuditEventInput
    from models.notifications import Channel, ChannelReceipt, Notification, NotifyResult

# Durable, not pushy: 2 s, 4 s, 8 s … then every 5 minutes, for as long as DELIVERY_WINDOW.
NOTIFY_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=2),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=5),
    non_retryable_error_types=["InvalidInput"],
)
SEND_TIMEOUT = timedelta(seconds=30)
DELIVERY_WINDOW = timedelta(hours=6)
NOTIFY_TIMEOUT = DELIVERY_WINDOW + timedelta(minutes=30)
STORE_TIMEOUT = timedelta(seconds=30)
_ENTITY_TYPE = {"decision": "autonomous_decision", "incident": "healing_incident"}
_SENDERS = {"webhook": NotifyActivities.send_webhook, "email": NotifyActivities.send_email}


@workflow.defn
class NotifyWorkflow:
    """Deliver one notification to the webhook and by e-mail; fail only if a configured channel
    still did not take it at the end of the delivery window."""

    def __init__(self) -> None:
        self._undelivered: list[str] = []

    @workflow.run
    async def run(self, notification: Notification) -> NotifyResult:
        receipts = await asyncio.gather(
            self._deliver("webhook", notification),
            self._deliver("email", notification),
        )
        if self._undelivered:
            raise ApplicationError(
                f"notification {notification.key} not delivered: {'; '.join(self._undelivered)}",
                type="NotDelivered",
                non_retryable=True,
            )
        return NotifyResult(key=notification.key, receipts=list(receipts))

    async def _deliver(self, channel: Channel, notification: Notification) -> ChannelReceipt:
        send = _SENDERS[channel]
        try:
            receipt: ChannelReceipt = await workflow.execute_activity_method(
                send,
                notification,
                start_to_close_timeout=SEND_TIMEOUT,
                schedule_to_close_timeout=DELIVERY_WINDOW,
                retry_policy=NOTIFY_RETRY,
            )
        except ActivityError as err:
            cause = err.cause.message if isinstance(err.cause, ApplicationError) else str(err)
            workflow.logger.error(
                "notification %s: %s gave up: %s", notification.key, channel, cause
            )
            self._undelivered.append(f"{channel}: {cause}")
            return ChannelReceipt(channel=channel, sent=False, detail=f"gave up: {cause}")
        if receipt.sent:
            await self._audit(notification, receipt)
        return receipt

    async def _audit(self, notification: Notification, receipt: ChannelReceipt) -> None:
        """Keep what went out with the decision or incident; a message already sent is not
        held back (nor resent) because the database is away."""
        wf_id = workflow.info().workflow_id
        try:
            await workflow.execute_activity_method(
                StoreActivities.append_audit_event,
                AuditEventInput(
                    actor="nofx-notify",
                    action="notification.sent",
                    entity_type=_ENTITY_TYPE[notification.entity],
                    entity_id=notification.entity_id,
                    workflow_id=wf_id,
                    reason=f"{notification.title} ({receipt.channel}: {receipt.detail})",
                    details={
                        "channel": receipt.channel,
                        "kind": notification.kind,
                        "key": notification.key,
                        "service": notification.service,
                    },
                    idempotency_key=f"{wf_id}/{receipt.channel}",
                ),
                start_to_close_timeout=STORE_TIMEOUT,
                retry_policy=STORE_RETRY,
            )
        except ActivityError as err:
            workflow.logger.warning("notification %s sent, not audited: %s", wf_id, err)


async def notify(notification: Notification, *, task_queue: str | None = None) -> None:
    """Start `NotifyWorkflow` for `notification` and return once it started, without waiting
    for delivery. It outlives the caller (abandoned on close) and runs on `task_queue`
    (default: the caller's; the decisions worker hosts it). Runs started before notifications
    existed replay without it (`workflow.patched("notify")`)."""
    if not workflow.patched("notify"):
        return
    try:
        await workflow.start_child_workflow(
            NotifyWorkflow.run,
            notification,
            id=f"notify-{notification.key}",
            task_queue=task_queue,
            parent_close_policy=ParentClosePolicy.ABANDON,
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            execution_timeout=NOTIFY_TIMEOUT,
        )
    except WorkflowAlreadyStartedError:
        workflow.logger.info("notification %s was already sent", notification.key)
