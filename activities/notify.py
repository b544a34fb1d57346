"""Notifications as activities: one per channel, so a retry resends only to the channel that has
not taken the message yet (the webhook failing never sends a second e-mail, and the reverse).

Each is a thin wrapper over `nofx.notifications`: a channel that did not take the message is a
retryable `NotificationFailed`, which `NotifyWorkflow` retries with backoff for hours.
"""

from __future__ import annotations

from temporalio import activity
from temporalio.exceptions import ApplicationError

from models.notifications import ChannelReceipt, Notification
from nofx import notifications
from nofx.settings import Settings

NOTIFICATION_FAILED = "NotificationFailed"


class NotifyActivities:
    """Send a notification to one channel as the worker's settings configure it."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    @activity.defn
    def send_webhook(self, notification: Notification) -> ChannelReceipt:
        """POST the Slack-compatible message to `NOFX_NOTIFY_WEBHOOK_URL` (if set)."""
        try:
            return notifications.send_webhook(self._settings, notification)
        except notifications.NotificationError as err:
            raise ApplicationError(str(err), type=NOTIFICATION_FAILED) from err

    @activity.defn
    def send_email(self, notification: Notification) -> ChannelReceipt:
        """Mail the message through `NOFX_SMTP_HOST` to `NOFX_NOTIFY_EMAIL_TO` (if set)."""
        try:
            return notifications.send_email(self._settings, notification)
        except notifications.NotificationError as err:
            raise ApplicationError(str(err), type=NOTIFICATION_FAILED) from err
