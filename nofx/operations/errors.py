"""The errors every operation raises, so each face maps them the same way (the CLI to a message
and exit code 1, the HTTP API to 404 / 409 / 422 / 403)."""

from __future__ import annotations


class OperationError(ValueError):
    """A request the platform refuses; the message says what and why, and nothing changed."""


class NotFound(OperationError):
    """The request names something that does not exist."""


class RuleConflict(OperationError):
    """The request breaks a rule of the platform; `rule` names it."""

    def __init__(self, message: str, *, rule: str) -> None:
        super().__init__(message)
        self.rule = rule


class InvalidRequest(OperationError):
    """The request is malformed; `errors` has one line per wrong field (`field: problem`)."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors


class NotPermitted(OperationError):
    """The caller is not an operator, or lacks a permission the request needs."""
