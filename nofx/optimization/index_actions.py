"""The `create_index` action: an index built without blocking writes, undone by dropping exactly it.

Written against `nofx.healing.action_base` like the healing actions (capture, perform, undo,
restored, plan). The service's database is the one its `providers.database` sessions use, reached
as `terminate_idle_connections` reaches it: through the platform's engine (`ActionContext.engine`),
on a connection of its own in autocommit, since CREATE INDEX CONCURRENTLY cannot run inside a
transaction.

* `capture` resolves the table (its schema, so the undo acts on exactly that table even if the
  search path changes), the index's name (the step's own: given, or derived from the step's
  idempotency key), whether an index of that name existed, whether an equivalent one did (the
  same columns, valid, complete btree), and every index of the table with its definition.
* `perform` does nothing when the index or an equivalent existed before; an index of that name
  with another definition is refused. Otherwise, under `lock_timeout` and `statement_timeout`,
  `CREATE INDEX CONCURRENTLY IF NOT EXISTS`. A failed concurrent build leaves an INVALID index
  behind: it is dropped and the step fails with ActionError. An INVALID index of this step's name
  left by an interrupted earlier attempt is dropped and built again.
* `undo` drops the index with `DROP INDEX CONCURRENTLY IF EXISTS` only if the step made it (it
  did not exist before, and no equivalent did) and it still has the step's definition: an index
  that existed before is never touched.
* `restored` holds when the table has exactly the indexes it had before, each with its
  definition: the step's index absent iff it was absent, and no other index changed.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from typing import Any

import psycopg
from psycopg import sql

from models.actions import CreateIndexParams
from nofx.healing.action_base import ActionContext, ActionError, Performed
from nofx.logging import get_logger
from nofx.optimization.indexes import (
    TableIndex,
    connect,
    index_sql,
    resolve_table,
    table_indexes,
)

log = get_logger(__name__)

DROP_TIMEOUT = "600s"


def owned_name(table: str, columns: list[str], key: str) -> str:
    """The index name a step owns when none is given: readable, unique to the step's key."""
    digest = hashlib.sha256(key.encode()).hexdigest()[:10]
    base = "_".join(["nofx", table, *columns])
    return f"{base[:51]}_{digest}"


def _timeouts(conn: psycopg.Connection[Any], lock_ms: int, statement_s: float) -> None:
    conn.execute(sql.SQL("SET lock_timeout = {}").format(sql.Literal(f"{lock_ms}ms")))
    conn.execute(
        sql.SQL("SET statement_timeout = {}").format(sql.Literal(f"{round(statement_s * 1000)}ms"))
    )


def _drop(conn: psycopg.Connection[Any], schema: str, index: str) -> None:
    conn.execute(
        sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(sql.Identifier(schema, index))
    )


def _discard(conn: psycopg.Connection[Any], schema: str, index: str) -> str:
    """Drop what a failed concurrent build left (an INVALID index); say how that went.

    The build's own statement timeout may be what failed it, so the drop gets a timeout of its
    own. If even that fails, the index stays INVALID (unused by queries, still maintained by
    writes) under the step's name, where a retry of the step or its undo drops it.
    """
    try:
        conn.execute(sql.SQL("SET statement_timeout = {}").format(sql.Literal(DROP_TIMEOUT)))
        _drop(conn, schema, index)
    except psycopg.Error as err:
        return (
            f"the invalid index {schema}.{index} it left could not be dropped"
            f" ({_first_line(err)}): a retry of the step or its undo drops it"
        )
    return "the invalid index it left was dropped"


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


class CreateIndex:
    """Build a btree index with CREATE INDEX CONCURRENTLY; undo drops exactly that index."""

    name = "create_index"

    def capture(self, ctx: ActionContext, params: CreateIndexParams) -> dict[str, Any]:
        with connect(ctx.engine) as conn:
            found = resolve_table(conn, params.table)
            if found is None:
                raise ActionError(f"{ctx.service}: table {params.table!r} does not exist")
            schema, table = found
            indexes = table_indexes(conn, schema, table)
            index = params.name or owned_name(table, params.columns, ctx.key)
            clash = conn.execute(
                "SELECT c.relkind, coalesce(t.relname, '') FROM pg_class c"
                " JOIN pg_namespace n ON n.oid = c.relnamespace"
                " LEFT JOIN pg_index ix ON ix.indexrelid = c.oid"
                " LEFT JOIN pg_class t ON t.oid = ix.indrelid"
                " WHERE n.nspname = %s AND c.relname = %s",
                (schema, index),
            ).fetchone()
        if clash is not None and index not in indexes:
            raise ActionError(
                f"{ctx.service}: {schema}.{index} already names another relation"
                f" ({'an index of ' + clash[1] if clash[1] else 'kind ' + str(clash[0])})"
            )
        existing = indexes.get(index)
        if existing is not None and not self._same(existing, params.columns):
            raise ActionError(
                f"{ctx.service}: index {schema}.{index} already exists with another definition:"
                f" {existing.definition}"
            )
        equivalent = next(
            (
                ix.name
                for ix in indexes.values()
                if ix.name != index and ix.valid and self._same(ix, params.columns)
            ),
            None,
        )
        return {
            "schema": schema,
            "table": table,
            "index": index,
            "columns": list(params.columns),
            "existed": existing is not None,
            "equivalent": equivalent,
            "indexes": {name: ix.definition for name, ix in indexes.items()},
            "lock_timeout_ms": params.lock_timeout_ms,
        }

    @staticmethod
    def _same(ix: TableIndex, columns: list[str]) -> bool:
        return ix.method == "btree" and ix.complete and list(ix.columns) == list(columns)

    def perform(
        self, ctx: ActionContext, params: CreateIndexParams, prior: Mapping[str, Any]
    ) -> Performed:
        schema, table, index = prior["schema"], prior["table"], prior["index"]
        where = {"index": f"{schema}.{index}", "table": f"{schema}.{table}"}
        if prior["existed"] or prior["equivalent"]:
            already = index if prior["existed"] else prior["equivalent"]
            return Performed(False, {**where, "reason": f"{already} existed before the step"})
        with connect(ctx.engine) as conn:
            current = table_indexes(conn, schema, table).get(index)
            if current is not None and not self._same(current, prior["columns"]):
                raise ActionError(
                    f"{ctx.service}: index {schema}.{index} appeared with another definition:"
                    f" {current.definition}"
                )
            if current is not None and current.valid:
                return Performed(False, {**where, "reason": "already built by this step"})
            _timeouts(conn, params.lock_timeout_ms, params.statement_timeout_s)
            if current is not None:  # an attempt of this step was interrupted mid-build
                _drop(conn, schema, index)
            build = index_sql(schema, table, prior["columns"], index, concurrently=True)
            started = time.perf_counter()
            try:
                conn.execute(build)
            except psycopg.Error as err:
                if conn.broken:
                    raise  # the connection went away: a retry finds the INVALID index and drops it
                left = _discard(conn, schema, index)
                raise ActionError(
                    f"{ctx.service}: building {schema}.{index} failed ({_first_line(err)}); {left}"
                ) from err
            build_s = time.perf_counter() - started
            built = table_indexes(conn, schema, table).get(index)
            if built is None or not built.valid:
                left = _discard(conn, schema, index)
                raise ActionError(
                    f"{ctx.service}: {schema}.{index} was not valid after its build; {left}"
                )
            size = conn.execute(
                "SELECT pg_relation_size(to_regclass(%s))",
                (sql.Identifier(schema, index).as_string(conn),),
            ).fetchone()
        log.info("index built", service=ctx.service, build_s=round(build_s, 3), **where)
        return Performed(
            True,
            {
                **where,
                "definition": built.definition,
                "build_s": round(build_s, 3),
                "size_bytes": int(size[0]) if size and size[0] is not None else None,
            },
        )

    def undo(self, ctx: ActionContext, prior: Mapping[str, Any]) -> Performed:
        schema, table, index = prior["schema"], prior["table"], prior["index"]
        where = {"index": f"{schema}.{index}", "table": f"{schema}.{table}"}
        if prior["existed"] or prior["equivalent"]:
            return Performed(False, {**where, "reason": "the step built nothing: left alone"})
        with connect(ctx.engine) as conn:
            current = table_indexes(conn, schema, table).get(index)
            if current is None:
                return Performed(False, {**where, "reason": "the index is absent"})
            if not self._same(current, prior["columns"]):
                raise ActionError(
                    f"{ctx.service}: {schema}.{index} is not the index this step built"
                    f" ({current.definition}); not dropped"
                )
            _timeouts(conn, int(prior.get("lock_timeout_ms", 5_000)), 1_800.0)
            _drop(conn, schema, index)
        log.info("index dropped", service=ctx.service, **where)
        return Performed(True, {**where, "dropped": current.definition})

    def restored(self, ctx: ActionContext, prior: Mapping[str, Any]) -> tuple[bool, str]:
        schema, table = prior["schema"], prior["table"]
        with connect(ctx.engine) as conn:
            now = {n: ix.definition for n, ix in table_indexes(conn, schema, table).items()}
        before: Mapping[str, str] = prior["indexes"]
        added = sorted(set(now) - set(before))
        gone = sorted(set(before) - set(now))
        changed = sorted(n for n in set(now) & set(before) if now[n] != before[n])
        if added or gone or changed:
            return False, (
                f"{schema}.{table}: indexes added {added or 'none'}, gone {gone or 'none'},"
                f" changed {changed or 'none'} since before the step"
            )
        return True, f"{schema}.{table} has exactly its {len(before)} indexes from before the step"

    def plan(self, params: CreateIndexParams) -> tuple[str, str]:
        return (
            f"build a btree index on {params.table} ({', '.join(params.columns)}) with CREATE"
            " INDEX CONCURRENTLY (writes go on; a failed build is dropped)",
            "drop exactly that index with DROP INDEX CONCURRENTLY (never one that existed before)",
        )
