"""The HTTP API (FastAPI): the operations of `nofx.operations` under `/api/...`, for people
(the dashboard) and programs alike.

Every request but `/api/health` carries `Authorization: Bearer <token>`; a token acts as its
operator (`nofx operators token NAME`) with their permissions. The typed errors of the
operations map to statuses the same way everywhere, each documented in `/openapi.json`:

- 401 no token, a malformed, unknown or revoked one;
- 403 `NotPermitted` (the caller lacks a permission the request needs);
- 404 `NotFound`;
- 409 `RuleConflict`, with the rule it breaks (`rule`);
- 422 `InvalidRequest` and malformed bodies, field by field (`detail[].loc`, `detail[].msg`).

A refused request changes nothing: bodies are validated before any operation runs, and the
operations refuse before they write. Every accepted write is audited with its caller.
"""

from __future__ import annotations

import asyncio
import functools
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib.metadata import version
from typing import Annotated, Any

import sqlalchemy.exc
from fastapi import Depends, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field, ValidationError
from sqlalchemy.engine import Engine
from starlette.exceptions import HTTPException as StarletteHTTPException
from temporalio.client import Client

from nofx.api import tokens
from nofx.api.tokens import Caller
from nofx.audit import append_audit
from nofx.logging import get_logger
from nofx.operations.errors import (
    InvalidRequest,
    NotFound,
    NotPermitted,
    OperationError,
    RuleConflict,
)
from nofx.payloads import field_errors
from nofx.settings import TASK_QUEUE_DECISIONS, Settings, get_settings

log = get_logger(__name__)
__version__ = version("nofx-autonomy")


@dataclass
class ApiContext:
    """What the operations run against: one Temporal client and the platform database."""

    temporal: Client
    engine: Engine
    settings: Settings
    decisions_queue: str = TASK_QUEUE_DECISIONS


# ---- error bodies (documented on every route) ------------------------------------------------


class ErrorBody(BaseModel):
    """A refusal: what was wrong, in a sentence."""

    detail: str


class ConflictBody(BaseModel):
    """A request that breaks one of the platform's rules, named in `rule`."""

    detail: str
    rule: str


class FieldProblem(BaseModel):
    """One wrong field: where it is (`loc`, e.g. `["body", "service"]`) and what is wrong."""

    loc: list[str | int]
    msg: str
    type: str


class InvalidBody(BaseModel):
    """A malformed request, one entry per wrong field."""

    detail: list[FieldProblem]


ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "no token, or a malformed, unknown or revoked one"},
    403: {"model": ErrorBody, "description": "the token's operator lacks a needed permission"},
    404: {"model": ErrorBody, "description": "the request names something that does not exist"},
    409: {"model": ConflictBody, "description": "the request breaks a rule (named in `rule`)"},
    422: {"model": InvalidBody, "description": "the request is malformed, field by field"},
}


def _problems(err: InvalidRequest) -> list[dict[str, Any]]:
    """`field.sub: problem` lines as FastAPI's own field errors."""
    out = []
    for line in err.errors:
        where, sep, what = line.partition(": ")
        path: list[str | int] = ["body"]
        if sep:
            path += [int(p) if p.isdigit() else p for p in where.split(".")]
        out.append({"loc": path, "msg": what if sep else line, "type": "invalid"})
    return out


def _install_errors(app: FastAPI) -> None:
    async def refused(_: Request, err: Exception) -> JSONResponse:
        if isinstance(err, RuleConflict):
            return JSONResponse({"detail": str(err), "rule": err.rule}, status_code=409)
        if isinstance(err, InvalidRequest):
            return JSONResponse({"detail": _problems(err)}, status_code=422)
        status = 404 if isinstance(err, NotFound) else 403 if isinstance(err, NotPermitted) else 422
        if status == 422:  # another OperationError: a bad request without a field
            return JSONResponse(
                {"detail": [{"loc": ["body"], "msg": str(err), "type": "invalid"}]},
                status_code=422,
            )
        return JSONResponse({"detail": str(err)}, status_code=status)

    async def malformed(_: Request, err: Exception) -> JSONResponse:
        assert isinstance(err, RequestValidationError)
        problems = [
            {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": e.get("type")}
            for e in err.errors()
        ]
        return JSONResponse({"detail": problems}, status_code=422)

    async def unfit(_: Request, err: Exception) -> JSONResponse:
        # a model built from the request inside a route (the caller's fields and the path's)
        assert isinstance(err, ValidationError)
        return JSONResponse({"detail": _problems(InvalidRequest(field_errors(err)))}, 422)

    async def unstorable(_: Request, err: Exception) -> JSONResponse:
        # text the database cannot hold (a lone UTF-16 surrogate): refused before any write,
        # since the driver encodes a statement's values before it sends it
        if isinstance(err, sqlalchemy.exc.DataError):
            first = str(err.orig).strip().splitlines()[0]
        else:
            first = f"text must be valid Unicode: {err}"
        problem = {"loc": ["body"], "msg": first, "type": "value_error"}
        return JSONResponse({"detail": [problem]}, status_code=422)

    app.add_exception_handler(UnicodeEncodeError, unstorable)
    app.add_exception_handler(sqlalchemy.exc.DataError, unstorable)
    app.add_exception_handler(OperationError, refused)
    app.add_exception_handler(ValidationError, unfit)
    app.add_exception_handler(RequestValidationError, malformed)


# ---- authentication ------------------------------------------------------------------------

_bearer = HTTPBearer(auto_error=False, description="`nofx operators token NAME` makes one")


class Unauthenticated(Exception):
    """No usable token: 401."""


def context(request: Request) -> ApiContext:
    ctx: ApiContext = request.app.state.nofx
    return ctx


async def caller(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Caller:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Unauthenticated("no token: send Authorization: Bearer <token>")
    found = await asyncio.to_thread(
        tokens.authenticate, context(request).engine, credentials.credentials
    )
    if found is None:
        raise Unauthenticated("the token is malformed, unknown or revoked")
    return found


Ctx = Annotated[ApiContext, Depends(context)]
Who = Annotated[Caller, Depends(caller)]


def require(who: Caller, permission: str, doing: str) -> None:
    """Refuse (403) unless `who` holds `permission`."""
    if not who.holds(permission):
        raise NotPermitted(f"{who.name} lacks permission {permission} to {doing}")


async def audited(
    ctx: ApiContext,
    who: Caller,
    action: str,
    entity_type: str,
    entity_id: str,
    details: dict[str, Any] | None = None,
) -> None:
    """Record an accepted write with its caller (the operation's own records say the rest)."""

    def write() -> None:
        with ctx.engine.begin() as conn:
            append_audit(
                conn,
                actor=who.name,
                action=f"api.{action}",
                entity_type=entity_type,
                entity_id=entity_id,
                details={"token": who.token_id, **(details or {})},
            )

    await asyncio.to_thread(write)


# ---- the application -----------------------------------------------------------------------


class Health(BaseModel):
    status: str = Field(description="`ok` when the database and Temporal answer")
    version: str


def create_app(
    ctx: ApiContext | None = None,
    *,
    settings: Settings | None = None,
    connect: Callable[[Settings], Awaitable[ApiContext]] | None = None,
) -> FastAPI:
    """The API over `ctx`, or over a context made at startup from `settings` (the environment's
    by default) and closed at shutdown."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if ctx is not None:
            app.state.nofx = ctx
            yield
            return
        own_settings = settings or get_settings()
        made = await (connect or _connect)(own_settings)
        app.state.nofx = made
        log.info("api started", temporal=own_settings.temporal_address)
        try:
            yield
        finally:
            made.engine.dispose()

    app = FastAPI(
        title="NOFX Autonomy",
        version=__version__,
        description=__doc__,
        lifespan=lifespan,
    )
    if ctx is not None:
        app.state.nofx = ctx
    _install_errors(app)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, err: Exception) -> JSONResponse:
        assert isinstance(err, StarletteHTTPException)
        if err.status_code == 400:  # a body that is not JSON at all: malformed, as any other
            problem = {"loc": ["body"], "msg": str(err.detail), "type": "json_invalid"}
            return JSONResponse({"detail": [problem]}, status_code=422)
        return JSONResponse(
            {"detail": str(err.detail)}, status_code=err.status_code, headers=err.headers
        )

    @app.middleware("http")
    async def allow_every_method(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        """A 405 names every method of the path (FastAPI's names only the first route's)."""
        response = await call_next(request)
        if response.status_code == 405:
            methods = {
                method.upper()
                for template, operations in app.openapi()["paths"].items()
                if _template(template).fullmatch(request.url.path)
                for method in operations
            }
            if methods:
                response.headers["Allow"] = ", ".join(sorted(methods))
        return response

    @app.exception_handler(Unauthenticated)
    async def unauthenticated(_: Request, err: Exception) -> JSONResponse:
        return JSONResponse(
            {"detail": str(err)}, status_code=401, headers={"WWW-Authenticate": "Bearer"}
        )

    @app.get("/api/health", response_model=Health, tags=["platform"])
    async def health(request: Request) -> Health:
        """Liveness without a token: whether the database and Temporal answer."""
        current = context(request)
        try:
            await asyncio.to_thread(_ping, current.engine)
            await current.temporal.service_client.check_health()
            status = "ok"
        except Exception as err:  # noqa: BLE001 - health reports, it does not fail
            status = f"degraded: {type(err).__name__}"
        return Health(status=status, version=__version__)

    from nofx.api import alerts, autonomous, dashboard, healing, oversight, predictive

    routers = (autonomous.router, autonomous.approvals, healing.router, predictive.router)
    for router in (*routers, *oversight.ROUTERS, alerts.router):
        app.include_router(router, responses=ERRORS)
    dashboard.mount(app)
    return app


@functools.cache
def _template(path: str) -> re.Pattern[str]:
    """`/api/x/{name}` as a pattern matching its concrete paths."""
    return re.compile(re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(path)))


def _ping(engine: Engine) -> None:
    from sqlalchemy import text

    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))


async def _connect(settings: Settings) -> ApiContext:
    from nofx.client import local_database_url
    from nofx.db import make_engine
    from nofx.temporal import connect

    url = settings.database_url or local_database_url(settings)
    if not url:
        raise RuntimeError("no platform database: set NOFX_DATABASE_URL or run `nofx up`")
    return ApiContext(await connect(settings), make_engine(url), settings)


def run(settings: Settings, host: str, port: int) -> None:
    """Serve the API until interrupted (`nofx api`)."""
    import uvicorn

    uvicorn.run(
        create_app(settings=settings),
        host=host,
        port=port,
        log_level=settings.log_level.lower(),
        timeout_graceful_shutdown=10,
    )
