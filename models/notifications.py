"""Contracts of the notifications sent when a person is needed: a decision waits for an answer,
an incident escalates, a rollback did not restore what was there before.

The workflow that needs the person says what happened and what is asked; the links (the
dashboard, the Temporal Web UI) are made by the worker that sends, from its settings, so a
message retried after a configuration change points where the platform now is.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from models.common import Contract

NotificationKind = Literal["decision_waiting", "incident_escalated", "rollback_failed"]
NotifiedEntity = Literal["decision", "incident"]
Channel = Literal["webhook", "email"]


class Notification(Contract):
    """One message to the configured channels; `key` makes it go out once (the
    `NotifyWorkflow` is started with the id `notify-<key>`)."""

    key: str = Field(min_length=1, max_length=200, description="idempotency key")
    kind: NotificationKind
    title: str = Field(min_length=1, description="one line: the subject of an e-mail")
    what_happened: str = Field(min_length=1)
    what_is_asked: str = Field(min_length=1, description="what the person should do, and how")
    service: str = Field(min_length=1)
    entity: NotifiedEntity = Field(description="what the dashboard link opens")
    entity_id: str = Field(min_length=1, description="the decision's or the incident's id")
    workflow_id: str = Field(min_length=1, description="the workflow the Web UI link opens")
    namespace: str = Field(default="default", min_length=1)
    raised_at: datetime


class NotificationLinks(Contract):
    """Where the person answers: the dashboard's page of the entity and its workflow."""

    dashboard: str
    web_ui: str


class ChannelReceipt(Contract):
    """What one channel did with a notification."""

    channel: Channel
    sent: bool = Field(description="false: nothing went out (not configured, or given up)")
    detail: str = ""


class NotifyResult(Contract):
    """What `NotifyWorkflow` delivered, channel by channel."""

    key: str
    receipts: list[ChannelReceipt] = Field(default_factory=list)
