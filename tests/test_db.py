"""The schema, its migration runner, the table models and the audit chain, on a real PostgreSQL."""

from __future__ import annotations

import itertools
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine, inspect, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.types import ARRAY, TypeEngine
from sqlmodel import Session, SQLModel, select

from models import tables
from models.tables import (
    AuditEvent,
    ConfigVersion,
    HealingIncident,
    RecoveryPlaybook,
    Service,
)
from nofx.audit import GENESIS_HASH, AuditRecord, append_audit, compute_hash, verify_chain
from nofx.db import (
    SQL_DIR,
    MigrationError,
    discover_migrations,
    make_engine,
    migrate,
    migration_status,
    scratch_database,
    to_libpq_url,
    to_sqlalchemy_url,
)

SPEC_TABLES = {
    "autonomous_decisions",
    "decision_models",
    "learning_feedback",
    "healing_incidents",
    "healing_patterns",
    "recovery_playbooks",
    "maintenance_predictions",
    "maintenance_schedules",
    "optimization_recommendations",
}
ADDED_TABLES = {
    "services",
    "audit_events",
    "config_versions",
    "action_log",
    "metric_samples",
    "fault_injections",
    "model_artifacts",
    "platform_controls",
    "operators",
    "change_freezes",
    "action_leases",
    "guardrail_verdicts",
}

TABLE_CLASSES: list[type[SQLModel]] = sorted(
    (
        obj
        for obj in vars(tables).values()
        if isinstance(obj, type)
        and issubclass(obj, SQLModel)
        and obj is not SQLModel
        and hasattr(obj, "__table__")
    ),
    key=lambda cls: cls.__name__,
)

RESTART_STEPS: list[dict[str, Any]] = [
    {"action": "restart_service", "params": {}, "timeout_seconds": 60},
    {
        "action": "validate_health",
        "params": {"consecutive_passes": 3, "interval_seconds": 1.0, "timeout_seconds": 60},
    },
]


def _table_names(url: str) -> set[str]:
    with psycopg.connect(to_libpq_url(url)) as conn:
        rows = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchall()
    return {row[0] for row in rows}


# --------------------------------------------------------------------------------------------
# URLs


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgresql://u:p@h:5432/db", "postgresql+psycopg://u:p@h:5432/db"),
        ("postgres://u:p@h/db?sslmode=require", "postgresql+psycopg://u:p@h/db?sslmode=require"),
        ("postgresql+psycopg://u@h/db", "postgresql+psycopg://u@h/db"),
        ("postgresql+psycopg2://u@h/db", "postgresql+psycopg://u@h/db"),
        (
            "postgresql://postgres:@/postgres?host=/tmp/pg/data",
            "postgresql+psycopg://postgres:@/postgres?host=%2Ftmp%2Fpg%2Fdata",
        ),
    ],
)
def test_urls_are_rewritten_for_psycopg3(given: str, expected: str) -> None:
    assert to_sqlalchemy_url(given) == expected


def test_non_postgres_urls_are_refused() -> None:
    with pytest.raises(ValueError, match="not a PostgreSQL URL"):
        to_sqlalchemy_url("sqlite:///nofx.db")


def test_engine_connects_with_the_servers_own_url(pg_admin_url: str) -> None:
    engine = make_engine(pg_admin_url)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT 1")).scalar_one() == 1
    finally:
        engine.dispose()


# --------------------------------------------------------------------------------------------
# Migrations


def test_migrations_apply_on_a_fresh_database(pg_admin_url: str) -> None:
    with scratch_database(pg_admin_url) as url:
        assert migration_status(url).pending == [m.name for m in discover_migrations()]

        applied = migrate(url)

        assert applied == [m.name for m in discover_migrations()]
        assert applied[:3] == [
            "001_autonomous_decisions.sql",
            "002_self_healing.sql",
            "003_predictive_maintenance.sql",
        ]
        assert SPEC_TABLES | ADDED_TABLES | {"schema_migrations"} <= _table_names(url)
        status = migration_status(url)
        assert status.up_to_date
        assert [row.name for row in status.applied] == applied


def test_second_migrate_applies_nothing(database_url: str) -> None:
    assert migrate(database_url) == []
    assert migrate(database_url) == []


def test_scratch_database_is_dropped_afterwards(pg_admin_url: str) -> None:
    with scratch_database(pg_admin_url, prefix="nofx_drop") as url:
        name = url.rsplit("/", 1)[1].split("?", 1)[0]
        engine = make_engine(url)
        engine.connect().close()  # a pooled connection left open must not block the drop
    with psycopg.connect(to_libpq_url(pg_admin_url)) as conn:
        row = conn.execute("SELECT count(*) FROM pg_database WHERE datname = %s", [name]).fetchone()
    engine.dispose()
    assert row == (0,)


def test_changed_applied_migration_is_refused_and_nothing_applied(
    pg_admin_url: str, tmp_path: Path
) -> None:
    sql_dir = tmp_path / "sql"
    shutil.copytree(SQL_DIR, sql_dir)
    with scratch_database(pg_admin_url) as url:
        migrate(url, sql_dir=sql_dir)
        edited = sql_dir / "002_self_healing.sql"
        edited.write_text(edited.read_text() + "\n-- a harmless-looking edit\n")
        (sql_dir / "999_new_table.sql").write_text("CREATE TABLE must_not_exist (id INT);\n")

        with pytest.raises(MigrationError, match=r"002_self_healing\.sql"):
            migrate(url, sql_dir=sql_dir)

        assert "must_not_exist" not in _table_names(url)
        status = migration_status(url, sql_dir=sql_dir)
        assert status.changed == ["002_self_healing.sql"]
        assert status.pending == ["999_new_table.sql"]
        assert not status.up_to_date


def test_failing_migration_keeps_earlier_files_and_rolls_back_itself(
    pg_admin_url: str, tmp_path: Path
) -> None:
    sql_dir = tmp_path / "sql"
    sql_dir.mkdir()
    (sql_dir / "001_ok.sql").write_text("CREATE TABLE first_table (id INT);\n")
    (sql_dir / "002_broken.sql").write_text(
        "CREATE TABLE half_done (id INT);\nCREATE TABLE broken (id NO_SUCH_TYPE);\n"
    )
    with scratch_database(pg_admin_url) as url:
        with pytest.raises(psycopg.errors.UndefinedObject, match="no_such_type"):
            migrate(url, sql_dir=sql_dir)

        names = _table_names(url)
        assert "first_table" in names
        assert "half_done" not in names
        assert migration_status(url, sql_dir=sql_dir).pending == ["002_broken.sql"]


def test_concurrent_migrate_calls_apply_each_file_once(pg_admin_url: str) -> None:
    callers = 6
    barrier = threading.Barrier(callers)

    def run(url: str) -> list[str]:
        barrier.wait()
        return migrate(url)

    with scratch_database(pg_admin_url) as url:
        with ThreadPoolExecutor(max_workers=callers) as pool:
            results = list(pool.map(run, [url] * callers))

        everything = [m.name for m in discover_migrations()]
        assert sorted(results, key=len) == [[]] * (callers - 1) + [everything]
        assert migration_status(url).up_to_date
        with psycopg.connect(to_libpq_url(url)) as conn:
            playbooks = conn.execute("SELECT count(*) FROM recovery_playbooks").fetchone()
        assert playbooks == (33,)  # 008, 013, 015, 016, 018 and 025 seed 2 + 6 + 2 + 1 + 16 + 6


# --------------------------------------------------------------------------------------------
# Table models mirror the SQL


_UDT_OF_COMPILED = {
    "UUID": "uuid",
    "JSONB": "jsonb",
    "TEXT": "text",
    "INTEGER": "int4",
    "BIGINT": "int8",
    "BOOLEAN": "bool",
    "NUMERIC": "numeric",
    "TIMESTAMP WITH TIME ZONE": "timestamptz",
    "DOUBLE PRECISION": "float8",
}
_DATA_TYPE_OF_UDT = {
    "uuid": "uuid",
    "jsonb": "jsonb",
    "text": "text",
    "int4": "integer",
    "int8": "bigint",
    "bool": "boolean",
    "numeric": "numeric",
    "timestamptz": "timestamp with time zone",
    "float8": "double precision",
}


POSTGRES_DIALECT = postgresql.dialect()  # type: ignore[no-untyped-call]


def _expected_udt(sa_type: TypeEngine[Any]) -> str:
    if isinstance(sa_type, ARRAY):
        return "_" + _expected_udt(sa_type.item_type)
    compiled = str(sa_type.compile(dialect=POSTGRES_DIALECT))
    return _UDT_OF_COMPILED[compiled.split("(", 1)[0].strip().upper()]


def test_every_table_has_a_model_class() -> None:
    mapped = {cls.__table__.name for cls in TABLE_CLASSES}  # type: ignore[attr-defined]
    assert mapped >= SPEC_TABLES | ADDED_TABLES


@pytest.mark.parametrize("model", TABLE_CLASSES, ids=lambda cls: cls.__name__)
def test_model_matches_database_columns(model: type[SQLModel], db_engine: Engine) -> None:
    table = model.__table__  # type: ignore[attr-defined]
    with db_engine.connect() as conn:
        rows = (
            conn.execute(
                text(
                    "SELECT column_name, data_type, udt_name, is_nullable, column_default,"
                    " numeric_precision, numeric_scale, is_generated"
                    " FROM information_schema.columns"
                    " WHERE table_schema = 'public' AND table_name = :table"
                ),
                {"table": table.name},
            )
            .mappings()
            .all()
        )
    in_db = {row["column_name"]: row for row in rows}
    assert in_db, f"table {table.name} does not exist"
    assert set(table.columns.keys()) == set(in_db), f"columns of {table.name}"

    for column in table.columns:
        db_col = in_db[column.name]
        where = f"{table.name}.{column.name}"
        udt = _expected_udt(column.type)
        assert db_col["udt_name"] == udt, where
        assert db_col["data_type"] == (
            "ARRAY" if udt.startswith("_") else _DATA_TYPE_OF_UDT[udt]
        ), where
        assert (db_col["is_nullable"] == "YES") == bool(column.nullable), where
        # A generated column (e.g. metric_samples.labels_hash) has no default in the catalogue;
        # SQLAlchemy stores its Computed as the server default.
        assert (db_col["is_generated"] == "ALWAYS") == (column.computed is not None), where
        model_has_default = (column.server_default is not None and column.computed is None) or (
            column is table.autoincrement_column
        )
        assert (db_col["column_default"] is not None) == model_has_default, where
        if udt == "numeric":
            assert (db_col["numeric_precision"], db_col["numeric_scale"]) == (
                column.type.precision,
                column.type.scale,
            ), where


@pytest.mark.parametrize("model", TABLE_CLASSES, ids=lambda cls: cls.__name__)
def test_model_matches_database_keys(model: type[SQLModel], db_engine: Engine) -> None:
    table = model.__table__  # type: ignore[attr-defined]
    inspector = inspect(db_engine)
    assert inspector.get_pk_constraint(table.name)["constrained_columns"] == [
        column.name for column in table.primary_key.columns
    ]
    in_db = {
        (tuple(fk["constrained_columns"]), fk["referred_table"], tuple(fk["referred_columns"]))
        for fk in inspector.get_foreign_keys(table.name)
    }
    in_model = {
        ((fk.parent.name,), fk.column.table.name, (fk.column.name,)) for fk in table.foreign_keys
    }
    assert in_model == in_db


def test_models_round_trip_defaults_and_arrays(db_engine: Engine) -> None:
    with Session(db_engine) as session:
        service = Service(name="checkout-roundtrip", provider="supervisor")
        incident = HealingIncident(
            incident_type="service_down",
            detection_method="health_probe",
            healing_strategy="restart-service",
            healing_actions=[{"action": "restart_service", "attempt": 1}, {"nested": {"a": [1]}}],
            status="detected",
        )
        session.add(service)
        session.add(incident)
        session.commit()
        session.refresh(service)
        session.refresh(incident)
        version = ConfigVersion(
            service=service.name, version=1, config={"pool_size": 5}, applied_by="test"
        )
        session.add(version)
        session.commit()
        session.refresh(version)

        assert service.tier == "tier-2"
        assert service.capacity == 1
        assert service.dependencies == []
        assert service.slo_targets == {}
        assert service.service_metadata == {}
        assert service.created_at is not None
        assert incident.id is not None
        assert incident.started_at is not None
        assert incident.root_cause is None
        assert incident.healing_actions == [
            {"action": "restart_service", "attempt": 1},
            {"nested": {"a": [1]}},
        ]
        assert version.active is False
        with db_engine.connect() as conn:
            stored = conn.execute(
                text("SELECT root_cause IS NULL FROM healing_incidents WHERE id = :id"),
                {"id": incident.id},
            ).scalar_one()
        assert stored is True  # None is SQL NULL, not the JSON value null


def test_only_one_active_config_version_per_service(db_engine: Engine) -> None:
    with Session(db_engine) as session:
        session.add(Service(name="config-one-active", provider="supervisor"))
        session.commit()
        session.add(
            ConfigVersion(
                service="config-one-active", version=1, config={}, applied_by="t", active=True
            )
        )
        session.commit()
        session.add(
            ConfigVersion(
                service="config-one-active", version=2, config={}, applied_by="t", active=True
            )
        )
        with pytest.raises(IntegrityError, match="config_versions_one_active_idx"):
            session.commit()


def test_automation_level_check_refuses_bad_value(db_engine: Engine) -> None:
    with Session(db_engine) as session:
        session.add(
            RecoveryPlaybook(
                incident_type="service_down",
                playbook_name="yolo",
                recovery_steps=RESTART_STEPS,
                automation_level="yolo",
            )
        )
        with pytest.raises(IntegrityError, match="automation_level_check"):
            session.commit()


def test_seed_playbooks_exist_once_each(db_engine: Engine) -> None:
    with Session(db_engine) as session:
        playbooks = session.exec(
            select(RecoveryPlaybook).where(
                RecoveryPlaybook.playbook_name.in_(  # type: ignore[attr-defined]
                    ["restart-service", "restart-hung-service"]
                )
            )
        ).all()
    by_type = {playbook.incident_type: playbook for playbook in playbooks}
    assert len(playbooks) == 2
    assert by_type["service_down"].playbook_name == "restart-service"
    assert by_type["service_hung"].playbook_name == "restart-hung-service"
    for playbook in playbooks:
        assert playbook.automation_level == "full-auto"
        assert playbook.required_permissions == ["healing:restart"]
        assert playbook.recovery_steps == RESTART_STEPS


def test_seed_playbooks_are_not_duplicated_when_rerun(fresh_database_url: str) -> None:
    with psycopg.connect(to_libpq_url(fresh_database_url)) as conn:
        for seed in (
            "008_seed_playbooks.sql",
            "013_seed_strategy_playbooks.sql",
            "016_traffic_playbooks.sql",
            "018_candidate_playbooks.sql",
        ):
            conn.execute((SQL_DIR / seed).read_text().encode())
        count = conn.execute("SELECT count(*) FROM recovery_playbooks").fetchone()
    assert count == (33,)


DRAINING = (
    "drain-and-restart-dead-replica",
    "drain-and-restart-hung-replica",
    "drain-and-restart-leaking-replica",
)


def test_drain_and_restart_puts_its_replica_back_and_operator_edits_are_kept(
    fresh_database_url: str,
) -> None:
    def steps(conn: psycopg.Connection[Any]) -> dict[str, list[str]]:
        rows = conn.execute(
            "SELECT playbook_name, recovery_steps FROM recovery_playbooks"
            " WHERE playbook_name = ANY(%s)",
            (list(DRAINING),),
        ).fetchall()
        return {name: [step["action"] for step in body] for name, body in rows}

    with psycopg.connect(to_libpq_url(fresh_database_url)) as conn:
        ladder = ["drain_traffic", "restart_service", "validate_health", "admit_traffic"]
        assert steps(conn) == {name: [*ladder, "validate_requests"] for name in DRAINING}
        conn.execute(
            "UPDATE recovery_playbooks SET recovery_steps = %s::jsonb, updated_at = now()"
            " WHERE playbook_name = %s",
            ('[{"action": "drain_traffic", "params": {}}]', DRAINING[0]),
        )
        conn.execute((SQL_DIR / "021_drain_and_restart_readmits.sql").read_text().encode())
        assert steps(conn)[DRAINING[0]] == ["drain_traffic"]


# --------------------------------------------------------------------------------------------
# Audit chain


def _append(engine: Engine, n: int, **fields: Any) -> list[int]:
    ids = []
    for i in range(n):
        with engine.begin() as conn:
            record = append_audit(
                conn,
                actor=fields.get("actor", "workflow:healing"),
                action=fields.get("action", "incident.step"),
                entity_type="healing_incident",
                entity_id=fields.get("entity_id", "inc-1"),
                workflow_id=fields.get("workflow_id", "incident-checkout-service_down"),
                reason=f"step {i}",
                details={"step": i, "ratio": 0.25, "big": 1e16, "tags": ["a", "b"]},
            )
            ids.append(record.id)
    return ids


def test_appended_events_form_a_valid_chain(fresh_engine: Engine) -> None:
    assert verify_chain(fresh_engine).model_dump() == {
        "ok": True,
        "events": 0,
        "first_bad_id": None,
        "problem": None,
    }
    _append(fresh_engine, 5)

    verdict = verify_chain(fresh_engine)

    assert verdict.ok, verdict.problem
    assert verdict.events == 5
    with Session(fresh_engine) as session:
        events = session.exec(select(AuditEvent).order_by(AuditEvent.id)).all()  # type: ignore[arg-type]
    assert events[0].prev_hash == GENESIS_HASH
    for before, after in itertools.pairwise(events):
        assert after.prev_hash == before.hash
        assert after.occurred_at is not None
        assert before.occurred_at is not None
        assert after.occurred_at >= before.occurred_at
    last = events[-1]
    assert last.hash == compute_hash(
        prev_hash=last.prev_hash,
        occurred_at=last.occurred_at,  # type: ignore[arg-type]
        actor=last.actor,
        action=last.action,
        entity_type=last.entity_type,
        entity_id=last.entity_id,
        workflow_id=last.workflow_id,
        reason=last.reason,
        details=last.details or {},
    )


@pytest.mark.parametrize(
    ("tamper", "bad_index", "problem"),
    [
        ("UPDATE audit_events SET details = '{\"step\": 99}' WHERE id = :id", 1, "edited"),
        ("UPDATE audit_events SET actor = 'mallory' WHERE id = :id", 1, "edited"),
        ("DELETE FROM audit_events WHERE id = :id", 2, "removed"),
    ],
    ids=["details-edited", "actor-edited", "event-deleted"],
)
def test_verify_chain_finds_the_first_tampered_event(
    fresh_engine: Engine, tamper: str, bad_index: int, problem: str
) -> None:
    ids = _append(fresh_engine, 4)
    with fresh_engine.begin() as conn:
        conn.execute(text("ALTER TABLE audit_events DISABLE TRIGGER USER"))
        conn.execute(text(tamper), {"id": ids[1]})
        conn.execute(text("ALTER TABLE audit_events ENABLE TRIGGER USER"))

    verdict = verify_chain(fresh_engine)

    assert not verdict.ok
    assert verdict.first_bad_id == ids[bad_index]
    assert verdict.problem is not None
    assert problem in verdict.problem


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE audit_events SET reason = 'rewritten' WHERE id = :id",
        "DELETE FROM audit_events WHERE id = :id",
        "TRUNCATE audit_events",
    ],
    ids=["update", "delete", "truncate"],
)
def test_audit_events_refuse_changes(db_engine: Engine, statement: str) -> None:
    [event_id] = _append(db_engine, 1, entity_id="inc-append-only")
    with pytest.raises(DBAPIError, match="audit_events is append-only"), db_engine.begin() as conn:
        conn.execute(text(statement), {"id": event_id})
    with db_engine.connect() as conn:
        assert (
            conn.execute(
                text("SELECT reason FROM audit_events WHERE id = :id"), {"id": event_id}
            ).scalar_one()
            == "step 0"
        )


def test_idempotency_key_appends_once(fresh_engine: Engine) -> None:
    def append_once() -> AuditRecord:
        with Session(fresh_engine) as session:
            record = append_audit(
                session,
                actor="workflow:decisions",
                action="decision.approved",
                entity_type="decision",
                entity_id="d-1",
                workflow_id="decision-1",
                details={"approver": "alice"},
                idempotency_key="decision-1:approve",
            )
            session.commit()
            return record

    first = append_once()
    retried = append_once()

    assert first.created
    assert not retried.created
    assert retried.id == first.id
    assert retried.hash == first.hash
    assert verify_chain(fresh_engine).events == 1


def test_concurrent_retries_with_one_idempotency_key_append_once(fresh_engine: Engine) -> None:
    attempts = 6
    barrier = threading.Barrier(attempts)

    def attempt(_: int) -> AuditRecord:
        barrier.wait()
        with fresh_engine.begin() as conn:
            return append_audit(
                conn,
                actor="workflow:healing",
                action="action.started",
                entity_type="action",
                entity_id="restart",
                idempotency_key="incident-x:restart",
            )

    with ThreadPoolExecutor(max_workers=attempts) as pool:
        records = list(pool.map(attempt, range(attempts)))

    assert sum(record.created for record in records) == 1
    assert {record.id for record in records} == {records[0].id}
    assert verify_chain(fresh_engine).events == 1


def test_rolled_back_append_leaves_no_trace(fresh_engine: Engine) -> None:
    with Session(fresh_engine) as session:
        append_audit(session, actor="alice", action="x", entity_type="decision", entity_id="d-2")
        session.rollback()
    _append(fresh_engine, 2)

    verdict = verify_chain(fresh_engine)

    assert verdict.ok
    assert verdict.events == 2


def test_append_refuses_empty_fields_and_nan(db_engine: Engine) -> None:
    with db_engine.begin() as conn:
        with pytest.raises(ValueError, match="actor"):
            append_audit(conn, actor=" ", action="a", entity_type="t", entity_id="1")
        with pytest.raises(ValueError, match="Out of range float"):
            append_audit(
                conn,
                actor="a",
                action="a",
                entity_type="t",
                entity_id="1",
                details={"x": float("nan")},
            )


def test_append_refuses_autocommit_connections(db_engine: Engine) -> None:
    with (
        db_engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn,
        pytest.raises(ValueError, match="AUTOCOMMIT"),
    ):
        append_audit(conn, actor="a", action="a", entity_type="t", entity_id="1")


def test_concurrent_appends_form_one_chain(fresh_engine: Engine) -> None:
    writers, per_writer = 8, 15
    barrier = threading.Barrier(writers)

    def write(writer: int) -> None:
        barrier.wait()
        for i in range(per_writer):
            with fresh_engine.begin() as conn:
                append_audit(
                    conn,
                    actor=f"worker-{writer}",
                    action="metric.sampled",
                    entity_type="service",
                    entity_id=f"svc-{writer}",
                    details={"i": i},
                )

    with ThreadPoolExecutor(max_workers=writers) as pool:
        list(pool.map(write, range(writers)))

    verdict = verify_chain(fresh_engine)
    assert verdict.ok, verdict.problem
    assert verdict.events == writers * per_writer
    with fresh_engine.connect() as conn:
        distinct = conn.execute(text("SELECT count(DISTINCT prev_hash) FROM audit_events"))
        assert distinct.scalar_one() == writers * per_writer
