"""Index recommendations: the heaviest statements of a service's database and the indexes they lack.

Where the statements come from: `pg_stat_statements` of the service's database (calls, mean and
total execution time), restricted to statements that touch the tables the inventory names
(`optimization.index.tables`), since one database may serve several services. The extension's
library must be in `shared_preload_libraries`; when it is not, the pass says exactly that.

What a candidate is: each statement is parsed with pglast (PostgreSQL's own parser, so the
normalised text with `$1` placeholders parses as the server would). In every SELECT, UPDATE and
DELETE of it (CTEs and subqueries included), the conjuncts of WHERE and of JOIN ... ON that
compare a column of a named table with a value (a parameter, a constant) or with another table's
column are collected: equalities (`=`, `IN`, `= ANY`) first, in the order written, then at most
one range (`<`, `>`, `BETWEEN`) — the btree layout that serves them all. A candidate some valid,
complete btree index already covers (its leading columns are the equality columns, then the
range column) is dropped.

How a candidate is checked, since the placeholders have no values:

* with HypoPG (`check: hypopg`, or `auto` where the extension is installable): the statement is
  PREPAREd and EXPLAINed as a *generic* plan (`plan_cache_mode = force_generic_plan`, NULL for
  every parameter: a generic plan is built without looking at the values), once as it is and
  once with a hypothetical index (`hypopg_create_index`); the ratio of the plans' total costs is
  the gain, and the statement's mean time scaled by it the estimated mean after. Nothing is
  built; `hypopg_reset` forgets the index. The statement is prepared anew for each EXPLAIN,
  since a cached generic plan would not see the hypothetical index.
* otherwise (`measured`): the statement is run under EXPLAIN ANALYZE with values sampled from
  the table (a row at random with a fixed seed, for each parameter compared with a column; NULL
  for the others), the best of three runs, then the index is built for real inside a
  transaction, the statement measured again the same way, and the transaction rolled back. The
  build holds a SHARE lock on the table (writes wait), so this runs under lock and statement
  timeouts and only on tables up to `measure_max_bytes`; only plain SELECTs are measured.

A candidate is recommended when the gain reaches `min_improvement`. The recommendation's steps
are `create_index` (`nofx.optimization.index_actions`: CREATE INDEX CONCURRENTLY, undone by
DROP INDEX CONCURRENTLY of exactly that index) and a request check; its risk names the table's
size, its write rate, the index's size and an estimated build time.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg
from pglast import ast, enums, parse_sql
from pglast.parser import ParseError
from pglast.visitors import Visitor
from psycopg import sql
from psycopg.pq import TransactionStatus
from sqlalchemy.engine import Engine

from models.inventory import IndexTuning
from nofx.db import to_libpq_url
from nofx.logging import get_logger

log = get_logger(__name__)

INDEX = "index"
KEY = "column_count"  # a recommendation's size: its name already says which table and columns
APPLICATION_NAME = "nofx-index-advisor"
PREPARED = "nofx_index_check"
# A rough build rate for tables whose index was never built here (a hypothetical check):
# CREATE INDEX CONCURRENTLY reads the table twice, sorting it once, at about this many bytes a
# second on modest hardware. The measured check times a real build instead.
BUILD_BYTES_PER_S = 32 * 1024 * 1024
MEASURE_RUNS = 3
MEASURE_SEED = 42
MAX_EQUALITY_COLUMNS = 3
_PREPARED_RUNS = itertools.count(1)
_EQUALITY = frozenset({"="})
_RANGE = frozenset({"<", ">", "<=", ">="})


class IndexAdvisorError(RuntimeError):
    """The service's database cannot be asked for index candidates (the message says why)."""


# ---- the service's database ----------------------------------------------------------------


@contextmanager
def connect(engine: Engine, *, autocommit: bool = True) -> Iterator[psycopg.Connection[Any]]:
    """A connection of its own to the service's database (the engine's), closed afterwards.

    Its own, not one of the engine's pool: index work sets session state (timeouts, prepared
    statements, hypothetical indexes) and CREATE INDEX CONCURRENTLY needs autocommit.
    """
    conn = psycopg.connect(
        to_libpq_url(engine.url),
        autocommit=autocommit,
        application_name=APPLICATION_NAME,
        connect_timeout=10,
    )
    try:
        yield conn
    finally:
        conn.close()


@dataclass(frozen=True)
class TableIndex:
    """One index of a table, as the catalog has it."""

    name: str
    columns: tuple[str, ...]  # plain columns in order; an expression makes `complete` False
    valid: bool
    method: str
    complete: bool  # neither partial nor on expressions
    definition: str


def resolve_table(conn: psycopg.Connection[Any], name: str) -> tuple[str, str] | None:
    """(schema, table) of `name` ("table" by the search path, or "schema.table"); None if absent."""
    parts = name.split(".")
    quoted = sql.Identifier(*parts).as_string(conn)
    row = conn.execute(
        "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE c.oid = to_regclass(%s) AND c.relkind IN ('r', 'p', 'm')",
        (quoted,),
    ).fetchone()
    return (str(row[0]), str(row[1])) if row else None


def table_indexes(conn: psycopg.Connection[Any], schema: str, table: str) -> dict[str, TableIndex]:
    """Every index of `schema.table`, by name."""
    rows = conn.execute(
        "SELECT i.relname, ix.indisvalid, am.amname,"
        " ix.indpred IS NULL AND ix.indexprs IS NULL,"
        " pg_get_indexdef(ix.indexrelid),"
        " ARRAY(SELECT a.attname FROM unnest(ix.indkey::int2[]) WITH ORDINALITY k(attnum, n)"
        "       JOIN pg_attribute a ON a.attrelid = ix.indrelid AND a.attnum = k.attnum"
        "       ORDER BY k.n)"
        " FROM pg_index ix JOIN pg_class i ON i.oid = ix.indexrelid"
        " JOIN pg_am am ON am.oid = i.relam"
        " WHERE ix.indrelid = to_regclass(%s) ORDER BY i.relname",
        (sql.Identifier(schema, table).as_string(conn),),
    ).fetchall()
    return {
        str(name): TableIndex(str(name), tuple(columns), bool(valid), str(method), bool(c), d)
        for name, valid, method, c, d, columns in rows
    }


def index_name(table: str, columns: Sequence[str]) -> str:
    """The name a recommended index gets: readable, within PostgreSQL's 63 bytes, one per
    (table, columns)."""
    base = f"nofx_{table}_{'_'.join(columns)}"
    if len(base) <= 63:
        return base
    digest = hashlib.sha256(f"{table}:{','.join(columns)}".encode()).hexdigest()[:8]
    return f"{base[:54]}_{digest}"


def index_sql(
    schema: str,
    table: str,
    columns: Sequence[str],
    name: str | None,
    *,
    concurrently: bool = False,
) -> sql.Composed:
    """CREATE INDEX [CONCURRENTLY IF NOT EXISTS name] ON schema.table USING btree (columns):
    identifiers quoted, never pasted in as text."""
    head = "CREATE INDEX CONCURRENTLY IF NOT EXISTS" if concurrently else "CREATE INDEX"
    if concurrently and not name:
        raise ValueError("a concurrent build is named: IF NOT EXISTS needs the name")
    named = sql.SQL(" {} ").format(sql.Identifier(name)) if name else sql.SQL(" ")
    return sql.SQL(head + "{}ON {} USING btree ({})").format(
        named,
        sql.Identifier(schema, table),
        sql.SQL(", ").join(sql.Identifier(c) for c in columns),
    )


# ---- the statements --------------------------------------------------------------------------


@dataclass(frozen=True)
class Statement:
    """A normalised statement of pg_stat_statements and what it costs."""

    query: str
    calls: int
    mean_ms: float
    total_ms: float


def heaviest_statements(
    conn: psycopg.Connection[Any], tuning: IndexTuning, tables: Sequence[str]
) -> list[Statement]:
    """The statements of this database naming one of `tables`, heaviest (total time) first.

    Raises:
        IndexAdvisorError: pg_stat_statements is not loaded, or its extension is not created
            and cannot be.
    """
    found = conn.execute(
        "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace"
        " WHERE e.extname = 'pg_stat_statements'"
    ).fetchone()
    if found is None:
        try:
            with conn.transaction():
                conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        except psycopg.Error as err:
            raise IndexAdvisorError(
                "the pg_stat_statements extension is not created in this database and cannot"
                f" be: {_first_line(err)}"
            ) from err
        return heaviest_statements(conn, tuning, tables)
    view = sql.Identifier(str(found[0]), "pg_stat_statements")
    words = [rf"\m{re.escape(t.split('.')[-1])}\M" for t in tables]
    query = sql.SQL(
        "SELECT query, calls, mean_exec_time, total_exec_time FROM {}"
        " WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())"
        " AND calls >= %s AND mean_exec_time >= %s AND query ~* ANY(%s)"
        " ORDER BY total_exec_time DESC LIMIT %s"
    ).format(view)
    try:
        with conn.transaction():
            rows = conn.execute(
                query, (tuning.min_calls, tuning.min_mean_ms, words, tuning.max_statements)
            ).fetchall()
    except psycopg.errors.ObjectNotInPrerequisiteState as err:
        raise IndexAdvisorError(
            "pg_stat_statements is not loaded (shared_preload_libraries): add it there and"
            f" restart PostgreSQL to find index candidates ({_first_line(err)})"
        ) from err
    return [Statement(str(q), int(c), float(m), float(t)) for q, c, m, t in rows]


# ---- candidates from a statement's text ----------------------------------------------------


@dataclass(frozen=True)
class Table:
    """A table a candidate may index, with its columns (to place unqualified column names)."""

    schema: str
    name: str
    columns: frozenset[str]


@dataclass(frozen=True)
class Candidate:
    """An index a statement would use: equality columns first, then at most one range column."""

    schema: str
    table: str
    columns: tuple[str, ...]
    equality: int  # how many of `columns` are compared for equality
    params: Mapping[int, str] = field(default_factory=dict)  # $n -> the column it is compared to

    @property
    def name(self) -> str:
        return index_name(self.table, self.columns)


class _Scopes(Visitor):
    """Every query level of a statement: (its FROM items, its WHERE), and the parameters."""

    def __init__(self) -> None:
        self.scopes: list[tuple[tuple[Any, ...], Any, bool]] = []  # (from, where, plain select)
        self.params = 0

    def visit_SelectStmt(self, ancestors: Any, node: ast.SelectStmt) -> None:
        plain = not node.lockingClause and node.intoClause is None
        self.scopes.append((tuple(node.fromClause or ()), node.whereClause, plain))

    def visit_UpdateStmt(self, ancestors: Any, node: ast.UpdateStmt) -> None:
        self.scopes.append(((node.relation, *(node.fromClause or ())), node.whereClause, False))

    def visit_DeleteStmt(self, ancestors: Any, node: ast.DeleteStmt) -> None:
        self.scopes.append(((node.relation, *(node.usingClause or ())), node.whereClause, False))

    def visit_ParamRef(self, ancestors: Any, node: ast.ParamRef) -> None:
        self.params = max(self.params, int(node.number or 0))


@dataclass
class Parsed:
    """What a statement asks of its tables: the candidates, how many parameters it has, and
    whether it is a plain SELECT (only those are run to be measured)."""

    candidates: list[Candidate]
    params: int
    plain_select: bool


def parse_candidates(query: str, tables: Mapping[str, Table]) -> Parsed:
    """The candidate indexes of `query` on `tables` (keyed by name and by schema.name).

    Raises:
        ValueError: the text does not parse as SQL (the parser's message).
    """
    try:
        statements = parse_sql(query)
    except ParseError as err:
        raise ValueError(f"cannot parse the statement: {err}") from err
    scopes = _Scopes()
    kinds = set()
    for raw in statements:
        kinds.add(type(raw.stmt).__name__)
        if raw.stmt is not None:
            scopes(raw.stmt)
    found: dict[tuple[str, str], _Columns] = {}
    for items, where, _ in scopes.scopes:
        relations: dict[str, Table] = {}
        conjuncts: list[Any] = list(_conjuncts(where))
        for item in items:
            _relations(item, tables, relations, conjuncts)
        if not relations:
            continue
        for expr in conjuncts:
            _compare(expr, relations, found)
    candidates = []
    for (schema, name), cols in found.items():
        equality = cols.equality[:MAX_EQUALITY_COLUMNS]
        columns = tuple(equality + cols.ranges[:1])
        if columns:
            candidates.append(Candidate(schema, name, columns, len(equality), dict(cols.params)))
    plain = kinds == {"SelectStmt"} and all(p for _, _, p in scopes.scopes)
    return Parsed(candidates, scopes.params, plain)


@dataclass
class _Columns:
    equality: list[str] = field(default_factory=list)
    ranges: list[str] = field(default_factory=list)
    params: dict[int, str] = field(default_factory=dict)


def _conjuncts(node: Any) -> Iterator[Any]:
    """The AND-ed parts of a condition (an OR is one part: no single index serves it)."""
    if node is None:
        return
    if isinstance(node, ast.BoolExpr) and node.boolop == enums.BoolExprType.AND_EXPR:
        for arg in node.args or ():
            yield from _conjuncts(arg)
    else:
        yield node


def _relations(
    item: Any, tables: Mapping[str, Table], into: dict[str, Table], conjuncts: list[Any]
) -> None:
    """The known tables a FROM item brings in, by the name the query calls them; JOIN ... ON
    conditions join the WHERE's conjuncts."""
    if isinstance(item, ast.RangeVar):
        relname = str(item.relname)
        key = f"{item.schemaname}.{relname}" if item.schemaname else relname
        table = tables.get(key)
        if table is not None:
            into[str(item.alias.aliasname) if item.alias else relname] = table
    elif isinstance(item, ast.JoinExpr):
        _relations(item.larg, tables, into, conjuncts)
        _relations(item.rarg, tables, into, conjuncts)
        conjuncts.extend(_conjuncts(item.quals))


def _column(node: Any, relations: Mapping[str, Table]) -> tuple[Table, str] | None:
    """The known table and column a column reference means, if it means exactly one."""
    if isinstance(node, ast.TypeCast):
        node = node.arg
    if not isinstance(node, ast.ColumnRef) or not all(
        isinstance(f, ast.String) for f in node.fields or ()
    ):
        return None
    names = [str(f.sval) for f in node.fields or ()]
    if len(names) == 1:
        owners = [t for t in relations.values() if names[0] in t.columns]
        return (owners[0], names[0]) if len(owners) == 1 else None
    table = relations.get(names[-2])
    return (table, names[-1]) if table is not None and names[-1] in table.columns else None


def _value(node: Any) -> int | None:
    """0 for a constant, n for the parameter $n, None for anything else."""
    if isinstance(node, ast.TypeCast):
        node = node.arg
    if isinstance(node, ast.ParamRef):
        return int(node.number or 0)
    if isinstance(node, ast.A_Const):
        return 0
    return None


def _compare(
    expr: Any, relations: Mapping[str, Table], into: dict[tuple[str, str], _Columns]
) -> None:
    if not isinstance(expr, ast.A_Expr):
        return
    op = expr.name[-1].sval if expr.name else ""
    kind = expr.kind
    sides = [(expr.lexpr, expr.rexpr), (expr.rexpr, expr.lexpr)]
    if kind in (enums.A_Expr_Kind.AEXPR_IN, enums.A_Expr_Kind.AEXPR_BETWEEN):
        sides = sides[:1]
    for left, right in sides:
        place = _column(left, relations)
        if place is None:
            continue
        table, column = place
        values = list(right) if isinstance(right, tuple) else [right]
        params = [_value(v) for v in values]
        other = values[0].arg if isinstance(values[0], ast.TypeCast) else values[0]
        joined = len(values) == 1 and isinstance(other, ast.ColumnRef)
        if joined and _column(other, relations) == place:
            continue
        if not joined and any(p is None for p in params):  # a function, a subquery: no
            continue
        if kind == enums.A_Expr_Kind.AEXPR_BETWEEN:
            ranged = True
        elif kind in (enums.A_Expr_Kind.AEXPR_IN, enums.A_Expr_Kind.AEXPR_OP_ANY):
            ranged = False
            if op not in _EQUALITY:
                continue
        elif kind == enums.A_Expr_Kind.AEXPR_OP and op in _EQUALITY | _RANGE:
            ranged = op in _RANGE
            if joined and ranged:
                continue
        else:
            continue
        cols = into.setdefault((table.schema, table.name), _Columns())
        target = cols.ranges if ranged else cols.equality
        if column not in cols.equality and column not in target:
            target.append(column)
        for p in params:
            if p:
                cols.params.setdefault(p, column)


def covered(candidate: Candidate, indexes: Mapping[str, TableIndex]) -> str | None:
    """The name of a valid, complete btree index that already serves `candidate`, if any."""
    eq = set(candidate.columns[: candidate.equality])
    rest = candidate.columns[candidate.equality :]
    for ix in indexes.values():
        if not (ix.valid and ix.complete and ix.method == "btree"):
            continue
        n = candidate.equality
        if set(ix.columns[:n]) == eq and tuple(ix.columns[n : n + len(rest)]) == rest:
            return ix.name
    return None


# ---- checking a candidate ------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    """What a candidate index would change for its statement."""

    method: str  # hypopg | measured
    cost_before: float
    cost_after: float
    scans_before: list[str]  # the plan's nodes on the table
    scans_after: list[str]
    index_bytes: int | None
    ms_before: float | None = None  # measured only
    ms_after: float | None = None
    build_s: float | None = None

    @property
    def ratio(self) -> float:
        if self.ms_before is not None and self.ms_after:
            return self.ms_before / self.ms_after
        return self.cost_before / self.cost_after if self.cost_after > 0 else 1.0


def hypopg_available(conn: psycopg.Connection[Any]) -> bool:
    """Whether HypoPG is (or can be made) an extension of this database."""
    if conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'hypopg'").fetchone():
        return True
    if not conn.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'hypopg'").fetchone():
        return False
    try:
        with conn.transaction():
            conn.execute("CREATE EXTENSION IF NOT EXISTS hypopg")
    except psycopg.Error as err:
        log.info("hypopg not usable", error=_first_line(err))
        return False
    return True


def _explain(
    conn: psycopg.Connection[Any], query: str, args: Sequence[str | None], *, analyze: bool
) -> list[Any]:
    """EXPLAIN (FORMAT JSON) of the prepared `query` with `args`; prepared for this one run.

    Each run prepares under a name of its own: a prepared statement outlives the rollback of
    the transaction it was made in, so one left by a failed run must not block the next.
    """
    name = sql.Identifier(f"{PREPARED}_{next(_PREPARED_RUNS)}")
    conn.execute(sql.SQL("PREPARE {} AS ").format(name) + sql.SQL(query))
    options = "ANALYZE, TIMING OFF, FORMAT JSON" if analyze else "FORMAT JSON"
    call = sql.SQL("EXPLAIN ({}) EXECUTE {}").format(sql.SQL(options), name)
    if args:
        call += sql.SQL("({})").format(sql.SQL(", ").join(sql.Literal(a) for a in args))
    row = conn.execute(call).fetchone()
    conn.execute(sql.SQL("DEALLOCATE {}").format(name))
    assert row is not None
    plan = row[0]
    return plan if isinstance(plan, list) else json.loads(plan)


def _scans(node: Mapping[str, Any], table: str) -> list[str]:
    """The plan's node types that read `table` (Seq Scan, Index Scan, Bitmap Heap Scan, ...)."""
    out = [str(node["Node Type"])] if node.get("Relation Name") == table else []
    for child in node.get("Plans", ()):
        out.extend(_scans(child, table))
    return out


def check_hypothetical(
    conn: psycopg.Connection[Any], statement: Statement, candidate: Candidate, params: int
) -> Check:
    """Generic-plan costs without and with a hypothetical index (HypoPG); nothing is built."""
    args: list[str | None] = [None] * params
    conn.execute("SET plan_cache_mode = force_generic_plan")
    try:
        before = _explain(conn, statement.query, args, analyze=False)[0]["Plan"]
        ddl = index_sql(candidate.schema, candidate.table, candidate.columns, None)
        row = conn.execute(
            "SELECT indexrelid FROM hypopg_create_index(%s)", (ddl.as_string(conn),)
        ).fetchone()
        assert row is not None
        try:
            after = _explain(conn, statement.query, args, analyze=False)[0]["Plan"]
            size = conn.execute("SELECT hypopg_relation_size(%s)", (row[0],)).fetchone()
        finally:
            conn.execute("SELECT hypopg_reset()")
    finally:
        conn.execute("RESET plan_cache_mode")
    return Check(
        "hypopg",
        float(before["Total Cost"]),
        float(after["Total Cost"]),
        _scans(before, candidate.table),
        _scans(after, candidate.table),
        int(size[0]) if size else None,
    )


def _samples(conn: psycopg.Connection[Any], candidate: Candidate, params: int) -> list[str | None]:
    """A value for each parameter: a random row's (fixed seed) for those compared with a column
    of the candidate's table, NULL for the others."""
    out: list[str | None] = [None] * params
    for number, column in candidate.params.items():
        row = conn.execute(
            sql.SQL(
                "SELECT {col}::text FROM {tab} TABLESAMPLE BERNOULLI (1) REPEATABLE ({seed})"
                " WHERE {col} IS NOT NULL LIMIT 1"
            ).format(
                col=sql.Identifier(column),
                tab=sql.Identifier(candidate.schema, candidate.table),
                seed=sql.Literal(MEASURE_SEED),
            )
        ).fetchone()
        if row is None:
            row = conn.execute(
                sql.SQL("SELECT {col}::text FROM {tab} WHERE {col} IS NOT NULL LIMIT 1").format(
                    col=sql.Identifier(column),
                    tab=sql.Identifier(candidate.schema, candidate.table),
                )
            ).fetchone()
        if 0 < number <= params and row is not None:
            out[number - 1] = row[0]
    return out


def _best_run(
    conn: psycopg.Connection[Any], query: str, args: Sequence[str | None]
) -> tuple[float, dict[str, Any]]:
    """The fastest of MEASURE_RUNS runs under EXPLAIN ANALYZE: (execution ms, its plan)."""
    best: tuple[float, dict[str, Any]] | None = None
    for _ in range(MEASURE_RUNS):
        explained = _explain(conn, query, args, analyze=True)[0]
        ms = float(explained["Execution Time"])
        if best is None or ms < best[0]:
            best = (ms, explained["Plan"])
    assert best is not None
    return best


def check_measured(
    conn: psycopg.Connection[Any],
    statement: Statement,
    candidate: Candidate,
    params: int,
    *,
    lock_timeout_ms: int = 2_000,
    statement_timeout_s: float = 120.0,
) -> Check:
    """EXPLAIN ANALYZE without and with the index, built in a transaction that is rolled back.

    `conn` must not be in a transaction; it is left outside one.
    """
    args = _samples(conn, candidate, params)
    conn.execute("SET plan_cache_mode = force_custom_plan")
    try:
        with conn.transaction(force_rollback=True):
            conn.execute(
                sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(f"{lock_timeout_ms}ms"))
            )
            conn.execute(
                sql.SQL("SET LOCAL statement_timeout = {}").format(
                    sql.Literal(f"{round(statement_timeout_s * 1000)}ms")
                )
            )
            ms_before, before = _best_run(conn, statement.query, args)
            name = f"nofx_check_{hashlib.sha256(candidate.name.encode()).hexdigest()[:12]}"
            started = time.perf_counter()
            conn.execute(index_sql(candidate.schema, candidate.table, candidate.columns, name))
            build_s = time.perf_counter() - started
            size = conn.execute(
                "SELECT pg_relation_size(to_regclass(%s))",
                (sql.Identifier(candidate.schema, name).as_string(conn),),
            ).fetchone()
            ms_after, after = _best_run(conn, statement.query, args)
    finally:
        conn.execute("RESET plan_cache_mode")
    return Check(
        "measured",
        float(before["Total Cost"]),
        float(after["Total Cost"]),
        _scans(before, candidate.table),
        _scans(after, candidate.table),
        int(size[0]) if size and size[0] is not None else None,
        ms_before,
        ms_after,
        build_s,
    )


# ---- the recommendations -------------------------------------------------------------------


@dataclass(frozen=True)
class TableLoad:
    """How big and how busy a table is: what building an index on it risks."""

    total_bytes: int
    heap_bytes: int
    rows: int
    writes: int
    writes_per_s: float


def table_load(conn: psycopg.Connection[Any], schema: str, table: str) -> TableLoad:
    row = conn.execute(
        "SELECT pg_total_relation_size(c.oid), pg_relation_size(c.oid),"
        " greatest(c.reltuples, 0)::bigint,"
        " coalesce(s.n_tup_ins + s.n_tup_upd + s.n_tup_del, 0),"
        " extract(epoch FROM now() - coalesce(d.stats_reset, pg_postmaster_start_time()))"
        " FROM pg_class c LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid"
        " CROSS JOIN pg_stat_database d"
        " WHERE c.oid = to_regclass(%s) AND d.datname = current_database()",
        (sql.Identifier(schema, table).as_string(conn),),
    ).fetchone()
    if row is None:
        return TableLoad(0, 0, 0, 0, 0.0)
    total, heap, rows, writes, seconds = row
    return TableLoad(
        int(total), int(heap), int(rows), int(writes), float(writes) / max(float(seconds), 1.0)
    )


@dataclass(frozen=True)
class IndexFinding:
    """An index recommendation in the shape of `recommendations.Draft` (type INDEX, key KEY)."""

    target: str
    current: dict[str, Any]
    recommended: dict[str, Any]
    improvement: dict[str, Any]
    steps: list[dict[str, Any]]
    risk: dict[str, Any]
    reason: str


def _known_tables(conn: psycopg.Connection[Any], names: Sequence[str]) -> dict[str, Table]:
    """The tuning's tables that exist, keyed by their name and schema.name."""
    out: dict[str, Table] = {}
    for name in names:
        found = resolve_table(conn, name)
        if found is None:
            log.info("index tuning names a table that does not exist", table=name)
            continue
        schema, table = found
        columns = conn.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s)"
            " AND attnum > 0 AND NOT attisdropped",
            (sql.Identifier(schema, table).as_string(conn),),
        ).fetchall()
        known = Table(schema, table, frozenset(str(c[0]) for c in columns))
        out[table] = out[f"{schema}.{table}"] = known
    return out


def index_drafts(engine: Engine, tuning: IndexTuning | Mapping[str, Any]) -> list[IndexFinding]:
    """The indexes the heaviest statements on the tuning's tables lack, each checked (module doc).

    Raises:
        IndexAdvisorError: the database cannot be reached, or pg_stat_statements is not there
            to ask (the message says why).
        pydantic.ValidationError: `tuning` is not a valid IndexTuning.
    """
    tuning = tuning if isinstance(tuning, IndexTuning) else IndexTuning.model_validate(tuning)
    try:
        return _drafts(engine, tuning)
    except psycopg.OperationalError as err:
        raise IndexAdvisorError(f"cannot reach the service's database: {_first_line(err)}") from err


def _drafts(engine: Engine, tuning: IndexTuning) -> list[IndexFinding]:
    findings: dict[str, IndexFinding] = {}
    with connect(engine) as conn:
        tables = _known_tables(conn, tuning.tables)
        if not tables:
            raise IndexAdvisorError(f"none of the tables {', '.join(tuning.tables)} exists")
        statements = heaviest_statements(conn, tuning, sorted({t.name for t in tables.values()}))
        hypothetical = tuning.check == "hypopg" or (
            tuning.check == "auto" and hypopg_available(conn)
        )
        if tuning.check == "hypopg" and not hypopg_available(conn):
            raise IndexAdvisorError("check 'hypopg' asked, but HypoPG is not installed here")
        for statement in statements:
            try:
                parsed = parse_candidates(statement.query, tables)
            except ValueError as err:
                log.info("statement skipped", query=statement.query[:200], reason=str(err))
                continue
            for candidate in parsed.candidates:
                if candidate.name in findings:
                    continue  # a heavier statement already asked for it
                found = _consider(conn, tuning, statement, candidate, parsed, hypothetical)
                if found is not None:
                    findings[candidate.name] = found
    return list(findings.values())


def _consider(
    conn: psycopg.Connection[Any],
    tuning: IndexTuning,
    statement: Statement,
    candidate: Candidate,
    parsed: Parsed,
    hypothetical: bool,
) -> IndexFinding | None:
    """The finding for one candidate of one statement, or None (logged why)."""
    indexes = table_indexes(conn, candidate.schema, candidate.table)
    have = covered(candidate, indexes)
    why = {"query": statement.query[:200], "index": candidate.name}
    if have is not None:
        log.info("candidate already covered", existing=have, **why)
        return None
    load = table_load(conn, candidate.schema, candidate.table)
    try:
        if hypothetical:
            check = check_hypothetical(conn, statement, candidate, parsed.params)
        elif not parsed.plain_select:
            log.info("candidate not measured: only plain SELECTs are run", **why)
            return None
        elif load.total_bytes > tuning.measure_max_bytes:
            log.info("candidate not measured: table over measure_max_bytes", **why)
            return None
        else:
            check = check_measured(conn, statement, candidate, parsed.params)
    except psycopg.Error as err:
        log.warning("candidate check failed", error=_first_line(err), **why)
        if conn.info.transaction_status != TransactionStatus.IDLE:
            conn.rollback()
        return None
    if check.ratio < tuning.min_improvement:
        log.info("candidate gains too little", ratio=round(check.ratio, 3), **why)
        return None
    definition = index_sql(candidate.schema, candidate.table, candidate.columns, candidate.name)
    return _finding(statement, candidate, check, load, definition.as_string(conn), tuning)


def _finding(
    statement: Statement,
    candidate: Candidate,
    check: Check,
    load: TableLoad,
    definition: str,
    tuning: IndexTuning,
) -> IndexFinding:
    qualified = f"{candidate.schema}.{candidate.table}"
    if check.ms_before is not None and check.ms_after is not None:
        mean_after = statement.mean_ms * check.ms_after / check.ms_before
    else:
        mean_after = statement.mean_ms * check.cost_after / max(check.cost_before, 1e-9)
    build_s = (
        2 * check.build_s if check.build_s is not None else 2 * load.heap_bytes / BUILD_BYTES_PER_S
    )
    params = {"table": qualified, "columns": list(candidate.columns), "name": candidate.name}
    current: dict[str, Any] = {
        "query": statement.query,
        "calls": statement.calls,
        "mean_ms": round(statement.mean_ms, 4),
        "total_ms": round(statement.total_ms, 3),
        "plan_cost": round(check.cost_before, 3),
        "plan_scans": check.scans_before,
    }
    recommended: dict[str, Any] = {
        "index": candidate.name,
        "table": qualified,
        "columns": list(candidate.columns),
        "method": "btree",
        "definition": definition,
        KEY: len(candidate.columns),
        "estimated_cost": round(check.cost_after, 3),
        "estimated_mean_ms": round(mean_after, 4),
        "plan_scans": check.scans_after,
        "checked_by": check.method,
    }
    improvement: dict[str, Any] = {
        "cost_ratio": round(check.cost_before / max(check.cost_after, 1e-9), 3),
        "mean_ms_saved": round(statement.mean_ms - mean_after, 4),
        "time_saved_per_call_share": round(1 - mean_after / max(statement.mean_ms, 1e-9), 4),
    }
    if check.ms_before is not None and check.ms_after is not None:
        current["measured_ms"] = round(check.ms_before, 4)
        recommended["measured_ms"] = round(check.ms_after, 4)
        improvement["measured_ratio"] = round(check.ratio, 3)
    risk: dict[str, Any] = {
        "table_bytes": load.total_bytes,
        "table_rows": load.rows,
        "writes_since_stats_reset": load.writes,
        "writes_per_s": round(load.writes_per_s, 4),
        "index_bytes": check.index_bytes,
        "estimated_build_s": round(build_s, 3),
        "build": "CREATE INDEX CONCURRENTLY: writes go on; a failed build is dropped",
        "undo": "DROP INDEX CONCURRENTLY of exactly this index",
    }
    steps = [
        {"action": "create_index", "params": params},
        {
            "action": "validate_requests",
            "params": {"path": tuning.probe_path} if tuning.probe_path else {},
        },
    ]
    if tuning.query_seconds:
        current["query_seconds"] = tuning.query_seconds
    gain = check.ratio
    reason = (
        f"{candidate.name} on {qualified} ({', '.join(candidate.columns)}): {gain:.1f}x"
        f" ({check.method}) for a statement called {statement.calls} times,"
        f" mean {statement.mean_ms:.2f} ms -> about {mean_after:.2f} ms"
    )
    return IndexFinding(candidate.name, current, recommended, improvement, steps, risk, reason)


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]
