"""Structured logging, configured once per process.

Console renderer on a terminal, JSON lines otherwise (workers and the dev stack write JSON to
`.nofx/logs/`). Timestamps are ISO-8601 UTC; secrets in URLs and known keys are redacted before any
renderer sees them, so a database password never reaches a log file.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any

import structlog

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


def configure_logging(level: str = "INFO", *, json: bool | None = None) -> None:
    """Route structlog and stdlib logging (Temporal SDK, SQLAlchemy) through one pipeline.

    Args:
        level: minimum level name.
        json: force JSON (True) or console (False); by default JSON unless stderr is a terminal.
    """
    use_json = (not sys.stderr.isatty()) if json is None else json
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact_secrets,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info if use_json else _identity,  # type: ignore[list-item]
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("httpx").setLevel(logging.WARNING)


def _identity(_: Any, __: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    return event_dict


def get_logger(name: str | None = None) -> Any:
    """A structlog logger bound to `name`."""
    return structlog.get_logger(name)
