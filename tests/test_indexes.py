"""Index management against real PostgreSQL: candidates from pg_stat_statements, checked with
HypoPG and by measured EXPLAIN, recommended by a pass, built by `create_index` and undone.

pg_stat_statements needs its library preloaded, which the machine's server does not do, so the
tests that read it start a private PostgreSQL 15 (Debian's binaries, run as the `postgres` user
when the tests run as root) with `shared_preload_libraries=pg_stat_statements`; they skip, with
the reason, where those binaries are absent.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import httpx
import psycopg
import pytest
from pydantic import ValidationError
from sqlalchemy import Engine, text

from models.actions import ACTION_PARAMS, CreateIndexParams
from models.healing import FleetTarget
from models.inventory import IndexTuning
from nofx import inventory
from nofx.db import make_engine, migrate, scratch_database, to_libpq_url
from nofx.healing.actions import ACTIONS, ActionContext, ActionError, capabilities
from nofx.optimization.index_actions import CreateIndex
from nofx.optimization.indexes import (
    INDEX,
    IndexAdvisorError,
    Table,
    covered,
    index_drafts,
    parse_candidates,
    table_indexes,
)
from nofx.optimization.recommendations import open_recommendations, refresh
from nofx.telemetry.sources import CsvReplaySource
from pilot.config import ORDERS_CUSTOMERS, ORDERS_ROWS, ORDERS_TABLE, application_name
from pilot.fleet import Fleet, FleetSpec, ServiceSpec, free_port
from pilot.postgres import PostgresUnavailableError, PrivatePostgres

PG_BIN = Path("/usr/lib/postgresql/15/bin")
HYPOPG = Path("/usr/share/postgresql/15/extension/hypopg.control")
ROWS = 200_000
CALLS = 60


# ---- a private server with pg_stat_statements loaded ---------------------------------------


@pytest.fixture(scope="module")
def stats_server() -> Iterator[str]:
    """A private PostgreSQL 15 with pg_stat_statements preloaded: its admin URL."""
    try:
        with PrivatePostgres() as url:
            yield url
    except PostgresUnavailableError as err:
        pytest.skip(str(err))


@pytest.fixture
def stats_db(stats_server: str) -> Iterator[str]:
    """A migrated scratch database on the private server (the platform's tables, so a pass can
    store its recommendations there too)."""
    with scratch_database(stats_server) as url:
        migrate(url)
        yield url


def make_orders(url: str, table: str = "orders", rows: int = ROWS) -> None:
    """A table of `rows` orders of 5000 customers, scattered, with a primary key only."""
    with psycopg.connect(to_libpq_url(url), autocommit=True) as conn:
        conn.execute(
            f"CREATE TABLE {table} (id bigint PRIMARY KEY, customer_id int NOT NULL,"
            " status text NOT NULL, created_at timestamptz NOT NULL)"
        )
        conn.execute(
            f"INSERT INTO {table} SELECT i, (i * 7919) % 5000, (ARRAY['new', 'paid'])[1 + i % 2],"
            " timestamptz '2026-01-01' + i * interval '1 second'"
            f" FROM generate_series(1, {rows}) i"
        )
        conn.execute(f"ANALYZE {table}")


def workload(url: str, table: str = "orders") -> None:
    """The service's traffic: a customer's orders (no index) and an order by id (the key)."""
    with psycopg.connect(to_libpq_url(url), autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        conn.execute("SELECT pg_stat_statements_reset()")
        for i in range(CALLS):
            conn.execute(
                f"SELECT id, status FROM {table} WHERE customer_id = %s",
                (i * 37 % 5000,),
            ).fetchall()
            conn.execute(f"SELECT status FROM {table} WHERE id = %s", (i + 1,)).fetchall()


def indexes_of(url: str, table: str) -> dict[str, str]:
    """pg_indexes of `table`: name -> definition."""
    with psycopg.connect(to_libpq_url(url)) as conn:
        rows = conn.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = %s", (table,)
        ).fetchall()
    return dict(rows)


# ---- candidates from statement text --------------------------------------------------------

ORDERS = Table("public", "orders", frozenset({"id", "customer_id", "status", "created_at"}))
KNOWN = {"orders": ORDERS, "public.orders": ORDERS}


def test_equalities_come_first_then_one_range_in_the_order_written() -> None:
    parsed = parse_candidates(
        "SELECT * FROM public.orders o WHERE o.created_at > $1 AND o.customer_id = $2"
        " AND status IN ($3, $4) AND id BETWEEN $5 AND $6",
        KNOWN,
    )
    [candidate] = parsed.candidates
    assert candidate.columns == ("customer_id", "status", "created_at")
    assert candidate.equality == 2
    assert parsed.params == 6
    assert parsed.plain_select
    assert candidate.params[2] == "customer_id"


def test_joins_ctes_and_writes_are_read_and_what_no_index_serves_is_not() -> None:
    joined = parse_candidates(
        "WITH r AS (SELECT * FROM customers c JOIN orders o ON o.customer_id = c.id)"
        " SELECT * FROM r",
        KNOWN,
    )
    assert [c.columns for c in joined.candidates] == [("customer_id",)]
    update = parse_candidates("UPDATE orders SET status = $1 WHERE id = $2", KNOWN)
    assert [c.columns for c in update.candidates] == [("id",)]
    assert not update.plain_select
    # an OR, a function of the column and an unknown table give nothing to index
    assert not parse_candidates(
        "SELECT 1 FROM orders WHERE id = $1 OR status = $2", KNOWN
    ).candidates
    assert not parse_candidates("SELECT 1 FROM orders WHERE lower(status) = $1", KNOWN).candidates
    assert not parse_candidates("SELECT 1 FROM other WHERE customer_id = $1", KNOWN).candidates
    with pytest.raises(ValueError, match="cannot parse"):
        parse_candidates("SELEC nothing", KNOWN)


def test_an_index_whose_leading_columns_serve_the_candidate_covers_it(db_engine: Engine) -> None:
    table = f"t_{uuid.uuid4().hex[:8]}"
    with db_engine.begin() as conn:
        conn.execute(text(f"CREATE TABLE {table} (a int, b int, c int)"))
        conn.execute(text(f"CREATE INDEX {table}_ba ON {table} (b, a, c)"))
        conn.execute(text(f"CREATE INDEX {table}_cp ON {table} (c) WHERE a > 0"))
    try:
        t = Table("public", table, frozenset({"a", "b", "c"}))
        known = {table: t}
        with psycopg.connect(to_libpq_url(db_engine.url)) as conn:
            ixs = table_indexes(conn, "public", table)
        [eq] = parse_candidates(f"SELECT 1 FROM {table} WHERE a = $1 AND b = $2", known).candidates
        assert covered(eq, ixs) == f"{table}_ba"  # equality columns in any order
        [rng] = parse_candidates(f"SELECT 1 FROM {table} WHERE a = $1 AND c > $2", known).candidates
        assert covered(rng, ixs) is None  # (a, c): no index starts so
        [partial] = parse_candidates(f"SELECT 1 FROM {table} WHERE c = $1", known).candidates
        assert covered(partial, ixs) is None  # a partial index does not serve every c
    finally:
        with db_engine.begin() as conn:
            conn.execute(text(f"DROP TABLE {table}"))


# ---- the recommender on pg_stat_statements -------------------------------------------------


def test_without_pg_stat_statements_loaded_the_pass_says_so(fresh_engine: Engine) -> None:
    with fresh_engine.connect() as conn:
        preload = conn.execute(text("SHOW shared_preload_libraries")).scalar() or ""
    if "pg_stat_statements" in preload:
        pytest.skip("this server preloads pg_stat_statements")
    with fresh_engine.begin() as conn:
        conn.execute(text("CREATE TABLE orders (id int PRIMARY KEY, customer_id int)"))
    with pytest.raises(IndexAdvisorError, match=r"pg_stat_statements is not loaded \(shared_pre"):
        index_drafts(fresh_engine, {"tables": ["orders"]})


@pytest.mark.parametrize("check", ["hypopg", "measured"])
def test_the_heaviest_statement_gets_the_index_it_lacks(
    stats_db: str, check: Literal["hypopg", "measured"]
) -> None:
    if check == "hypopg" and not HYPOPG.exists():
        pytest.skip(f"HypoPG is not installed ({HYPOPG} absent: Debian postgresql-15-hypopg)")
    make_orders(stats_db)
    workload(stats_db)
    engine = make_engine(stats_db)
    try:
        found = index_drafts(
            engine, IndexTuning(tables=["orders"], min_calls=CALLS, min_mean_ms=0, check=check)
        )
    finally:
        engine.dispose()
    # the key lookup is covered by the primary key; the customer's orders are not
    [finding] = found
    assert finding.recommended["columns"] == ["customer_id"]
    assert finding.recommended["checked_by"] == check
    assert finding.current["calls"] == CALLS
    assert "customer_id = $1" in finding.current["query"]
    assert "Seq Scan" in finding.current["plan_scans"]
    assert "Seq Scan" not in finding.recommended["plan_scans"]
    assert finding.improvement["cost_ratio"] >= 2
    assert finding.recommended["estimated_mean_ms"] < finding.current["mean_ms"]
    assert finding.risk["table_rows"] >= ROWS * 0.9
    assert finding.risk["index_bytes"] > 0
    assert finding.risk["estimated_build_s"] > 0
    if check == "measured":
        assert finding.recommended["measured_ms"] < finding.current["measured_ms"]
    [create, validate] = finding.steps
    assert create["action"] == "create_index"
    assert CreateIndexParams.model_validate(create["params"]).columns == ["customer_id"]
    assert validate["action"] == "validate_requests"
    # checking built nothing that stays: hypothetical, or rolled back
    assert list(indexes_of(stats_db, "orders")) == ["orders_pkey"]


def test_a_pass_opens_the_index_recommendation_once_and_the_index_ends_it(
    stats_db: str, tmp_path: Path
) -> None:
    make_orders(stats_db)
    engine = make_engine(stats_db)
    service = f"svc-{uuid.uuid4().hex[:6]}"
    document = {
        "services": [
            {
                "name": service,
                "endpoint": "http://127.0.0.1:1",
                "providers": {"database": {"kind": "postgresql", "application_name": service}},
                "optimization": {"index": {"tables": ["orders"], "min_calls": 10}},
            }
        ]
    }
    csv = tmp_path / "none.csv"
    csv.write_text("timestamp,unused\n1700000000,1\n")
    source = CsvReplaySource(csv)
    try:
        inventory.apply(engine, inventory.parse(document))
        workload(stats_db)
        [first] = refresh(engine, source, services=[service])
        assert (first.optimization_type, first.change) == (INDEX, "opened")
        [again] = refresh(engine, source, services=[service])
        assert (again.change, again.id) == ("unchanged", first.id)
        [row] = open_recommendations(engine, service)
        step = row["implementation_steps"][0]
        assert step["action"] == "create_index"

        # the recommendation's own step, through the registered action
        target = FleetTarget(
            service=service, endpoint="http://127.0.0.1:1", metadata={"application_name": service}
        )
        assert capabilities(target)["db.index"] == "postgresql"
        action = ACTIONS["create_index"]
        params = ACTION_PARAMS["create_index"].model_validate(step["params"])
        ctx = ActionContext(target, engine, stats_db, f"{service}-apply-1")
        prior = action.capture(ctx, params)
        assert action.perform(ctx, params, prior).performed
        workload(stats_db)
        assert index_drafts(engine, {"tables": ["orders"], "min_calls": 10}) == []
        assert action.undo(ctx, prior).performed
        assert action.restored(ctx, prior)[0]
    finally:
        engine.dispose()


# ---- the create_index action ---------------------------------------------------------------


@pytest.fixture
def orders_table(database_url: str) -> Iterator[str]:
    """A table of the session database with an index of its own on `status`."""
    table = f"orders_{uuid.uuid4().hex[:8]}"
    make_orders(database_url, table, rows=20_000)
    with psycopg.connect(to_libpq_url(database_url), autocommit=True) as conn:
        conn.execute(f"CREATE INDEX {table}_status ON {table} (status)")
    try:
        yield table
    finally:
        with psycopg.connect(to_libpq_url(database_url), autocommit=True) as conn:
            conn.execute(f"DROP TABLE IF EXISTS {table}")


def _ctx(db_engine: Engine, database_url: str, key: str) -> ActionContext:
    target = FleetTarget(
        service="orders-svc", endpoint="http://127.0.0.1:1", metadata={"application_name": "x"}
    )
    return ActionContext(target=target, engine=db_engine, database_url=database_url, key=key)


def valid(database_url: str, index: str) -> bool | None:
    with psycopg.connect(to_libpq_url(database_url)) as conn:
        row = conn.execute(
            "SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass(%s)", (index,)
        ).fetchone()
    return None if row is None else bool(row[0])


def test_create_index_builds_one_index_and_its_undo_drops_exactly_it(
    db_engine: Engine, database_url: str, orders_table: str
) -> None:
    before = indexes_of(database_url, orders_table)
    action = CreateIndex()
    params = CreateIndexParams(table=orders_table, columns=["customer_id", "created_at"])
    ctx = _ctx(db_engine, database_url, f"wf-{orders_table}/create")
    prior = action.capture(ctx, params)
    assert prior["existed"] is False
    done = action.perform(ctx, params, prior)
    assert done.performed
    after = indexes_of(database_url, orders_table)
    [made] = set(after) - set(before)
    assert made == prior["index"]
    assert valid(database_url, made) is True
    assert "(customer_id, created_at)" in after[made]
    assert {k: after[k] for k in before} == before
    assert action.restored(ctx, prior)[0] is False  # the index is there: not the prior state

    # a re-run of the step (the activity retried) changes nothing
    assert not action.perform(ctx, params, prior).performed
    assert indexes_of(database_url, orders_table) == after
    # a fresh capture sees the index as existing: its undo would leave it alone
    again = action.capture(ctx, params)
    assert again["existed"] is True
    assert not action.undo(ctx, again).performed
    assert made in indexes_of(database_url, orders_table)

    undone = action.undo(ctx, prior)
    assert undone.performed
    assert indexes_of(database_url, orders_table) == before  # the status index untouched
    ok, detail = action.restored(ctx, prior)
    assert ok, detail
    assert not action.undo(ctx, prior).performed  # undo is idempotent


def test_an_index_that_existed_before_is_never_dropped(
    db_engine: Engine, database_url: str, orders_table: str
) -> None:
    before = indexes_of(database_url, orders_table)
    action = CreateIndex()
    ctx = _ctx(db_engine, database_url, f"wf-{orders_table}/same")
    # the same name and definition as the existing one, then an equivalent under another name
    for params in (
        CreateIndexParams(table=orders_table, columns=["status"], name=f"{orders_table}_status"),
        CreateIndexParams(table=orders_table, columns=["status"], name=f"{orders_table}_other"),
    ):
        prior = action.capture(ctx, params)
        assert prior["existed"] or prior["equivalent"] == f"{orders_table}_status"
        assert not action.perform(ctx, params, prior).performed
        assert not action.undo(ctx, prior).performed
        assert indexes_of(database_url, orders_table) == before
        assert action.restored(ctx, prior)[0]
    clash = CreateIndexParams(
        table=orders_table, columns=["customer_id"], name=f"{orders_table}_status"
    )
    with pytest.raises(ActionError, match="already exists with another definition"):
        action.capture(ctx, clash)


def test_bad_identifiers_and_missing_tables_are_refused_and_nothing_is_built(
    db_engine: Engine, database_url: str, orders_table: str
) -> None:
    before = indexes_of(database_url, orders_table)
    model = ACTION_PARAMS["create_index"]
    with pytest.raises(ValidationError, match="table"):
        model.model_validate({"table": f"{orders_table}; DROP TABLE x", "columns": ["id"]})
    with pytest.raises(ValidationError, match=r"columns\.0"):
        model.model_validate({"table": orders_table, "columns": ['id") --']})
    with pytest.raises(ValidationError, match="columns listed twice: id"):
        model.model_validate({"table": orders_table, "columns": ["id", "id"]})
    with pytest.raises(ValidationError, match="name"):
        model.model_validate({"table": orders_table, "columns": ["id"], "name": "a b"})
    action = CreateIndex()
    ctx = _ctx(db_engine, database_url, f"wf-{orders_table}/bad")
    with pytest.raises(ActionError, match="does not exist"):
        action.capture(ctx, CreateIndexParams(table="no_such_table", columns=["id"]))
    missing = CreateIndexParams(table=orders_table, columns=["no_such_column"])
    prior = action.capture(ctx, missing)
    with pytest.raises(ActionError, match="no_such_column"):
        action.perform(ctx, missing, prior)
    assert indexes_of(database_url, orders_table) == before


def test_a_failed_concurrent_build_leaves_no_invalid_index(
    db_engine: Engine, database_url: str, orders_table: str
) -> None:
    before = indexes_of(database_url, orders_table)
    action = CreateIndex()
    # a statement timeout far below what the build of 20000 rows takes cancels it mid-way
    params = CreateIndexParams(
        table=orders_table, columns=["customer_id"], statement_timeout_s=0.001
    )
    ctx = _ctx(db_engine, database_url, f"wf-{orders_table}/timeout")
    prior = action.capture(ctx, params)
    with pytest.raises(ActionError, match=r"failed .*the invalid index it left was dropped"):
        action.perform(ctx, params, prior)
    assert valid(database_url, prior["index"]) is None
    assert indexes_of(database_url, orders_table) == before


def test_index_tuning_refuses_what_is_not_a_table_name() -> None:
    document = {
        "services": [
            {
                "name": "api",
                "endpoint": "http://127.0.0.1:1",
                "optimization": {"index": {"tables": ["orders; DROP TABLE x"]}},
            }
        ]
    }
    with pytest.raises(inventory.InventoryError, match=r"optimization\.index\.tables\[0\]"):
        inventory.parse(document)


# ---- the pilot's endpoint ------------------------------------------------------------------

PILOT_QUERY = (
    f"SELECT id, amount_cents, status, created_at FROM {ORDERS_TABLE} WHERE customer_id = 7"
    " ORDER BY created_at DESC LIMIT 50"
)


def _plan_nodes(url: str) -> list[dict[str, Any]]:
    with psycopg.connect(to_libpq_url(url)) as conn:
        row = conn.execute("EXPLAIN (FORMAT JSON) " + PILOT_QUERY).fetchone()
    assert row is not None
    plan = row[0] if isinstance(row[0], list) else json.loads(row[0])
    nodes, todo = [], [plan[0]["Plan"]]
    while todo:
        node = todo.pop()
        nodes.append(node)
        todo.extend(node.get("Plans", ()))
    return nodes


@pytest.mark.e2e
def test_the_pilot_orders_endpoint_uses_the_index_once_it_is_made(
    tmp_path: Path, fresh_engine: Engine, fresh_database_url: str
) -> None:
    name = f"p{uuid.uuid4().hex[:6]}"
    fleet = Fleet(
        tmp_path,
        FleetSpec(services=[ServiceSpec(name=name, port=free_port())]),
        database_url=fresh_database_url,
    )
    fleet.start()
    try:
        url = fleet.url(name, "/orders")
        first = httpx.get(url, params={"customer": 7}, timeout=120.0)  # fills the table
        assert first.status_code == 200, first.text
        orders = first.json()["orders"]
        assert len(orders) == ORDERS_ROWS // ORDERS_CUSTOMERS
        stamps = [o["created_at"] for o in orders]
        assert stamps == sorted(stamps, reverse=True)
        bad = httpx.get(url, params={"customer": "seven"}, timeout=10.0)
        assert bad.status_code == 400
        assert "customer" in bad.json()["error"]
        assert httpx.get(url, timeout=10.0).status_code == 400

        scans = [n["Node Type"] for n in _plan_nodes(fresh_database_url)]
        assert "Seq Scan" in scans

        target = FleetTarget(
            service=name,
            endpoint=fleet.url(name, ""),
            metadata={"application_name": application_name(name)},
        )
        ctx = ActionContext(target, fresh_engine, fresh_database_url, f"{name}/index")
        params = CreateIndexParams(table=ORDERS_TABLE, columns=["customer_id"])
        action = CreateIndex()
        prior = action.capture(ctx, params)
        assert action.perform(ctx, params, prior).performed

        nodes = _plan_nodes(fresh_database_url)
        assert "Seq Scan" not in [n["Node Type"] for n in nodes]
        assert prior["index"] in [n.get("Index Name") for n in nodes]
        second = httpx.get(url, params={"customer": 7}, timeout=10.0)
        assert second.json()["orders"] == orders
        metrics = httpx.get(fleet.url(name, "/metrics"), timeout=10.0).text
        count = next(
            line for line in metrics.splitlines()
            if line.startswith("pilot_orders_query_seconds_count")
        )  # fmt: skip
        assert float(count.split()[-1]) >= 2

        assert action.undo(ctx, prior).performed
        assert action.restored(ctx, prior)[0]
        assert "Seq Scan" in [n["Node Type"] for n in _plan_nodes(fresh_database_url)]
    finally:
        fleet.stop()
