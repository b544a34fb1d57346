"""Structured logging, configured once per process.

Console renderer on a terminal, JSON lines otherwise (workers and the dev stack write JSON to
`.nofx/logs/`). Timestamps are ISO-8601 UTC; secrets in URLs and known keys are redacted before any
renderer sees them, so a database password never reaches a log file.
"""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path
from typing import Any

import structlog
from temporalio import activity, workflow

_SECRET_KEYS = frozenset({"password", "secret", "token", "api_key", "authorization"})
_URL_PASSWORD = re.compile(r"(://[^:/@\s]+:)([^@\s]+)(@)")


def redact_url(text: str) -> str:
    """Mask the password of every URL in `text`."""
    return _URL_PASSWORD.sub(r"\1***\3", text)


def _redact(value: Any) -> Any:
    return redact_url(value) if isinstance(value, str) else value


def redact_secrets(_: Any, __: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """structlog processor: mask passwords in URLs and values of secret-looking keys."""
    for key, value in list(event_dict.items()):
        event_dict[key] = "***" if key.lower() in _SECRET_KEYS else _redact(value)
    return event_dict


def add_temporal_context(_: Any, __: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """Lift the Temporal SDK's workflow/activity info (LogRecord extras) into top-level keys.

    The SDK's `workflow.logger` and `activity.logger` attach `temporal_workflow` /
    `temporal_activity` dicts to each record; as fields they can be filtered on, where appended
    to the message text they could only be grepped.
    """
    record = event_dict.get("_record")
    for attr in ("temporal_workflow", "temporal_activity"):
        info = getattr(record, attr, None)
        if isinstance(info, dict):
            event_dict.setdefault("workflow_id", info.get("workflow_id"))
            event_dict.setdefault("run_id", info.get("run_id") or info.get("workflow_run_id"))
            if attr == "temporal_activity":
                event_dict.setdefault("activity", info.get("activity_type"))
                event_dict.setdefault("attempt", info.get("attempt"))
            else:
                event_dict.setdefault("workflow_type", info.get("workflow_type"))
    return event_dict


def _formatter(shared: list[Any], *, as_json: bool, colors: bool) -> logging.Formatter:
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if as_json
        else structlog.dev.ConsoleRenderer(colors=colors)
    )
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info if as_json else _identity,  # type: ignore[list-item]
            renderer,
        ],
    )


def configure_logging(
    level: str = "INFO", *, json: bool | None = None, file: Path | None = None
) -> None:
    """Route structlog and stdlib logging (Temporal SDK, SQLAlchemy) through one pipeline.

    Args:
        level: minimum level name for the console (stderr).
        json: force JSON (True) or console (False); by default JSON unless stderr is a terminal.
        file: also write every INFO+ event as JSON lines here (the CLI's `.nofx/logs/nofx.log`).
    """
    use_json = (not sys.stderr.isatty()) if json is None else json
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        add_temporal_context,
        redact_secrets,
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(level)
    console.setFormatter(_formatter(shared, as_json=use_json, colors=sys.stderr.isatty()))
    handlers: list[logging.Handler] = [console]
    if file is not None:
        file.parent.mkdir(parents=True, exist_ok=True)
        to_file = logging.FileHandler(file)
        to_file.setLevel(logging.INFO)
        to_file.setFormatter(_formatter(shared, as_json=True, colors=False))
        handlers.append(to_file)
    root = logging.getLogger()
    root.handlers[:] = handlers
    root.setLevel(min(logging.getLevelName(level), logging.INFO if file else logging.CRITICAL))
    logging.getLogger("httpx").setLevel(logging.WARNING)
    # The context goes into fields (add_temporal_context), not into the message text.
    activity.logger.activity_info_on_message = False
    workflow.logger.workflow_info_on_message = False


def _identity(_: Any, __: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    return event_dict


def get_logger(name: str | None = None) -> Any:
    """A structlog logger bound to `name`."""
    return structlog.get_logger(name)
