"""Operators (the people who may approve, reject or override) and the API tokens that act as
them, as typed operations with typed errors: one implementation behind `nofx operators ...` and
the Python client."""

from __future__ import annotations

import asyncio

from pydantic import ValidationError
from sqlalchemy.engine import Engine

from models.decisions import Operator
from nofx.api import tokens
from nofx.api.tokens import TokenInfo
from nofx.decisions import store
from nofx.operations.errors import InvalidRequest, NotFound
from nofx.payloads import field_errors


class OperatorsOperations:
    """Operators and their tokens against the platform database."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def operators(self) -> list[Operator]:
        return await asyncio.to_thread(store.list_operators, self.engine)

    async def add(
        self, name: str, permissions: list[str], *, display_name: str | None, actor: str
    ) -> Operator:
        """Add an operator, or replace an operator's permissions (checked before stored)."""
        try:
            operator = Operator(name=name, permissions=permissions, display_name=display_name)
        except ValidationError as err:
            raise InvalidRequest(field_errors(err)) from None
        return await asyncio.to_thread(store.add_operator, self.engine, operator, actor=actor)

    async def remove(self, name: str) -> None:
        """Remove an operator: their later answers and their tokens are refused."""
        try:
            await asyncio.to_thread(store.remove_operator, self.engine, name)
        except store.DecisionStoreError as err:
            raise NotFound(str(err)) from None

    async def issue_token(self, name: str, *, label: str, actor: str) -> tuple[TokenInfo, str]:
        """A new API token acting as `name`: its listing and its secret (shown once)."""
        return await asyncio.to_thread(
            lambda: tokens.issue(self.engine, name, label=label, actor=actor)
        )

    async def tokens(self, operator: str | None = None) -> list[TokenInfo]:
        return await asyncio.to_thread(tokens.listing, self.engine, operator)

    async def revoke_token(self, token_id: str, *, actor: str) -> TokenInfo:
        return await asyncio.to_thread(lambda: tokens.revoke(self.engine, token_id, actor=actor))
