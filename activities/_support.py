"""What every activity module shares: the heartbeat helper, the retry policies activities are
called with, and turning bad input into a typed, non-retryable failure."""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

from temporalio import activity
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError

from nofx.logging import get_logger

# Reads and idempotent writes: retry for a while (a database restart must not fail an incident).
STORE_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=500),
    maximum_interval=timedelta(seconds=10),
    maximum_attempts=20,
    non_retryable_error_types=["InvalidInput", "NotFound"],
)
# Infrastructure actions: a few attempts, then the saga rolls back and escalates.
ACTION_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    maximum_interval=timedelta(seconds=10),
    maximum_attempts=3,
    non_retryable_error_types=["InvalidInput", "NotFound", "UnknownTarget"],
)


def progress_reporter(what: str) -> Callable[[str], None]:
    """A progress callback for a long activity: each step is a heartbeat (what `nofx ... train`
    shows) and a log line naming `what`."""
    log = get_logger("activities")

    def report(step: str) -> None:
        activity.heartbeat(step)
        log.info(what, step=step)

    return report


def invalid_input(message: str) -> ApplicationError:
    """A request that can never succeed: fail now, with the reason, without retrying."""
    return ApplicationError(message, type="InvalidInput", non_retryable=True)


def not_found(message: str) -> ApplicationError:
    return ApplicationError(message, type="NotFound", non_retryable=True)


@contextmanager
def heartbeating(every_seconds: float = 2.0, **details: Any) -> Iterator[None]:
    """Heartbeat from a background thread while a sync activity blocks on something slow.

    Inside an activity the heartbeat reaches the server, so a worker killed mid-action is noticed
    after `heartbeat_timeout` rather than after the whole start-to-close timeout.
    """
    stop = threading.Event()
    context = contextvars.copy_context()  # the activity context lives in contextvars

    def beat() -> None:
        while not stop.wait(every_seconds):
            activity.heartbeat(details)

    thread = threading.Thread(target=context.run, args=(beat,), name="nofx-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
