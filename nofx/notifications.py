"""Telling a person they are needed: the message, its links, and the two channels.

A channel is configured by the process's settings: a Slack-compatible incoming webhook
(`NOFX_NOTIFY_WEBHOOK_URL`, an HTTP POST of `{"text": ..., "blocks": [...]}`, which Slack,
Mattermost and most chat bridges accept) and e-mail over SMTP (`NOFX_SMTP_HOST`,
`NOFX_NOTIFY_EMAIL_TO`). Sending raises `NotificationError` when the channel did not take the
message (a non-2xx answer, an SMTP error, a connection that failed), so the activity that calls
it is retried by Temporal; a channel that is not configured sends nothing and says so once per
process in the log.
"""

from __future__ import annotations

import re
import smtplib
import threading
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Any

import httpx

from models.notifications import Channel, ChannelReceipt, Notification, NotificationLinks
from nofx.logging import get_logger
from nofx.settings import Settings

log = get_logger("nofx.notifications")

SEND_TIMEOUT_SECONDS = 10.0
# Slack's limits on block text (header 150 characters, section 3000); longer text is cut.
_HEADER_CHARS = 150
_SECTION_CHARS = 3000
_KIND_LABEL = {
    "decision_waiting": "decision waits for a person",
    "incident_escalated": "incident escalated to a person",
    "rollback_failed": "rollback did not restore the prior state",
}

_unconfigured_said: set[str] = set()
_said_lock = threading.Lock()


class NotificationError(RuntimeError):
    """A channel did not take the message; sending it again may work."""


def links(settings: Settings, notification: Notification) -> NotificationLinks:
    """The dashboard page of the decision or incident, and its workflow in the Web UI."""
    route = "decisions" if notification.entity == "decision" else "incidents"
    return NotificationLinks(
        dashboard=f"{settings.dashboard_base_url}/dashboard#/{route}/{notification.entity_id}",
        web_ui=(
            f"{settings.temporal_ui_base_url}/namespaces/{notification.namespace}"
            f"/workflows/{notification.workflow_id}"
        ),
    )


def message_text(notification: Notification, where: NotificationLinks) -> str:
    """The plain-text message: what happened, what is asked, the links (e-mail body, and the
    webhook's `text` that clients without blocks show)."""
    return "\n".join(
        [
            f"[NOFX] {notification.title}",
            "",
            f"What happened: {notification.what_happened}",
            "",
            f"What is asked: {notification.what_is_asked}",
            "",
            f"Service: {notification.service} ({_KIND_LABEL[notification.kind]},"
            f" {notification.entity} {notification.entity_id})",
            f"Dashboard: {where.dashboard}",
            f"Temporal Web UI: {where.web_ui}",
        ]
    )


def _mrkdwn(text: str) -> str:
    """Escape the three characters Slack's mrkdwn gives a meaning to."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def slack_payload(notification: Notification, where: NotificationLinks) -> dict[str, Any]:
    """The webhook's JSON body: Block Kit blocks, and `text` as the fallback and preview."""
    return {
        "text": _mrkdwn(message_text(notification, where)),
        "blocks": [
            {
                "type": "header",
                "text": {
                    "type": "plain_text",
                    "text": _cut(f"NOFX: {notification.title}", _HEADER_CHARS),
                },
            },
            {
                "type": "section",
                "text": {
                    "type": "mrkdwn",
                    "text": _cut(
                        f"*What happened*\n{_mrkdwn(notification.what_happened)}", _SECTION_CHARS
                    ),
                },
            },
            {
                "type": "section",
                "text": {
                    "type": "mrkdwn",
                    "text": _cut(
                        f"*What is asked*\n{_mrkdwn(notification.what_is_asked)}", _SECTION_CHARS
                    ),
                },
            },
            {
                "type": "context",
                "elements": [
                    {
                        "type": "mrkdwn",
                        "text": _mrkdwn(
                            f"{notification.service} · {_KIND_LABEL[notification.kind]} ·"
                            f" {notification.entity} {notification.entity_id}"
                        ),
                    }
                ],
            },
            {
                "type": "actions",
                "elements": [
                    {
                        "type": "button",
                        "text": {"type": "plain_text", "text": "Open in the dashboard"},
                        "url": where.dashboard,
                    },
                    {
                        "type": "button",
                        "text": {"type": "plain_text", "text": "Open in the Temporal Web UI"},
                        "url": where.web_ui,
                    },
                ],
            },
        ],
    }


def email_message(
    notification: Notification, where: NotificationLinks, sender: str, recipients: list[str]
) -> EmailMessage:
    """The e-mail: plain text with the links; its Message-ID comes from the notification's key,
    so a mail client can tell a resent copy from a new message."""
    message = EmailMessage()
    message["Subject"] = f"[NOFX] {notification.title}"
    message["From"] = sender
    message["To"] = ", ".join(recipients)
    message["Date"] = format_datetime(notification.raised_at)
    message["Message-ID"] = f"<{re.sub(r'[^A-Za-z0-9._-]', '-', notification.key)}@nofx>"
    message["X-NOFX-Kind"] = notification.kind
    message.set_content(message_text(notification, where) + "\n")
    return message


def _not_configured(channel: Channel, why: str) -> ChannelReceipt:
    with _said_lock:
        first = channel not in _unconfigured_said
        _unconfigured_said.add(channel)
    if first:
        log.info("notification channel not configured: nothing is sent", channel=channel, why=why)
    return ChannelReceipt(channel=channel, sent=False, detail=f"not configured: {why}")


def send_webhook(settings: Settings, notification: Notification) -> ChannelReceipt:
    """POST the message to the webhook; raise `NotificationError` unless it answered 2xx."""
    url = settings.notify_webhook_url
    if not url:
        return _not_configured("webhook", "NOFX_NOTIFY_WEBHOOK_URL is not set")
    body = slack_payload(notification, links(settings, notification))
    # An incoming webhook's path is its secret (Slack's /services/T…/B…/…): name the host only.
    parts = httpx.URL(url)
    shown = f"{parts.scheme}://{parts.host}" + (f":{parts.port}" if parts.port else "")
    try:
        answer = httpx.post(url, json=body, timeout=SEND_TIMEOUT_SECONDS)
    except httpx.HTTPError as err:
        raise NotificationError(f"webhook {shown}: {type(err).__name__}: {err}") from err
    if not answer.is_success:
        raise NotificationError(
            f"webhook {shown} answered {answer.status_code}: {answer.text[:200]}"
        )
    log.info(
        "notification sent",
        channel="webhook",
        key=notification.key,
        kind=notification.kind,
        status=answer.status_code,
    )
    return ChannelReceipt(channel="webhook", sent=True, detail=f"HTTP {answer.status_code}")


def send_email(settings: Settings, notification: Notification) -> ChannelReceipt:
    """Send the message by SMTP to every recipient; raise `NotificationError` when the server
    refused it or could not be reached."""
    recipients = settings.notify_email_recipients
    if not settings.smtp_host or not recipients:
        missing = "NOFX_SMTP_HOST" if not settings.smtp_host else "NOFX_NOTIFY_EMAIL_TO"
        return _not_configured("email", f"{missing} is not set")
    message = email_message(
        notification, links(settings, notification), settings.notify_email_from, recipients
    )
    server = f"{settings.smtp_host}:{settings.smtp_port}"
    try:
        with smtplib.SMTP(
            settings.smtp_host, settings.smtp_port, timeout=SEND_TIMEOUT_SECONDS
        ) as smtp:
            refused = smtp.send_message(message)
    except (smtplib.SMTPException, OSError) as err:
        raise NotificationError(f"SMTP {server}: {type(err).__name__}: {err}") from err
    accepted = [r for r in recipients if r not in refused]
    log.info(
        "notification sent",
        channel="email",
        key=notification.key,
        kind=notification.kind,
        to=accepted,
        refused=sorted(refused),
    )
    detail = f"to {', '.join(accepted)}" + (
        f"; refused: {', '.join(sorted(refused))}" if refused else ""
    )
    return ChannelReceipt(channel="email", sent=True, detail=detail)
