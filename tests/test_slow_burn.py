"""A slow burn on a service with a declared limit is held back for predictive maintenance; a
fast one, one users feel, one near its limit or one with no limit is an incident."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, text
from temporalio.client import Client
from temporalio.testing import ActivityEnvironment

from activities.incidents import IncidentActivities
from models.healing import IncidentInput, OpenIncidentInput
from nofx import inventory
from nofx.maintenance import slow_burn
from nofx.telemetry.sources import make_source

MEMORY = "process_resident_memory_bytes"
MIB = 2**20
LIMIT = 400 * MIB


@pytest.fixture
def leaking(db_engine: Engine) -> Iterator[str]:
    name = f"burn-{uuid.uuid4().hex[:6]}"
    document = {
        "services": [
            {"name": name, "endpoint": "http://127.0.0.1:1", "limits": {MEMORY: float(LIMIT)}}
        ]
    }
    inventory.apply(db_engine, inventory.parse(document))
    try:
        yield name
    finally:
        with db_engine.begin() as conn:
            for table, column in (
                ("metric_samples", "service"),
                ("maintenance_schedules", "component_id"),
                ("maintenance_predictions", "component_id"),
                ("services", "name"),
            ):
                conn.execute(text(f"DELETE FROM {table} WHERE {column} = :s"), {"s": name})


def rising(engine: Engine, service: str, start_mb: float, mb_per_s: float, now: datetime) -> None:
    """Five minutes of RSS samples every 2 s rising at `mb_per_s` to `start_mb` + the rise, one
    sample duplicated and one NaN-free gap, as scrapes leave them."""
    rows = []
    for i in range(150):
        if 60 <= i < 70:  # a gap: ten scrapes missed
            continue
        ts = now - timedelta(seconds=2 * (149 - i))
        rows.append({"s": service, "m": MEMORY, "t": ts, "v": (start_mb + mb_per_s * 2 * i) * MIB})
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM metric_samples WHERE service = :s"), {"s": service})
        conn.execute(
            text("INSERT INTO metric_samples (service, metric, ts, value) VALUES (:s, :m, :t, :v)"),
            rows,
        )


def judge(engine: Engine, service: str, signals: list[str], now: datetime) -> object:
    source = make_source("scrape", engine=engine)
    return slow_burn.assess(engine, source, service, "memory_leak", signals, now)


def test_only_a_slow_unfelt_burn_far_from_a_declared_limit_waits_for_maintenance(
    db_engine: Engine, leaking: str
) -> None:
    now = datetime.now(UTC)
    rising(db_engine, leaking, 100, 0.1, now)  # 130 MiB, ~45 min to 400 MiB
    burn = judge(db_engine, leaking, ["memory_growing"], now)
    assert isinstance(burn, slow_burn.SlowBurn)
    assert burn.metric == MEMORY
    assert burn.limit == LIMIT
    assert burn.minutes_left is not None
    assert 40 < burn.minutes_left < 50
    assert "no prediction yet" in burn.reason()
    # not a resource pattern, or users feel it: an incident
    source = make_source("scrape", engine=db_engine)
    assert slow_burn.assess(db_engine, source, leaking, "latency_regression", [], now) is None
    assert judge(db_engine, leaking, ["memory_growing", "latency_up"], now) is None
    # too fast to wait: ~1 min left
    rising(db_engine, leaking, 100, 0.8, now)
    assert judge(db_engine, leaking, ["memory_growing"], now) is None
    # too close to the limit, however slowly
    rising(db_engine, leaking, 365, 0.01, now)  # 368 MiB: 92%
    assert judge(db_engine, leaking, ["memory_growing"], now) is None
    # no limit declared for memory: an incident
    rising(db_engine, leaking, 100, 0.1, now)
    with db_engine.begin() as conn:
        conn.execute(
            text("UPDATE services SET metadata = metadata - 'limits' WHERE name = :s"),
            {"s": leaking},
        )
    assert judge(db_engine, leaking, ["memory_growing"], now) is None


async def test_the_monitor_holds_a_slow_burn_back_and_names_the_prediction(
    client: Client, db_engine: Engine, leaking: str
) -> None:
    now = datetime.now(UTC)
    rising(db_engine, leaking, 100, 0.1, now)
    with db_engine.begin() as conn:
        prediction = conn.execute(
            text(
                "INSERT INTO maintenance_predictions (component_type, component_id,"
                " predicted_issue, metric, probability, eta, status) VALUES ('service', :s,"
                " 'oom', :m, 0.9, :eta, 'open') RETURNING id"
            ),
            {"s": leaking, "m": MEMORY, "eta": now + timedelta(minutes=45)},
        ).scalar_one()
    incident = IncidentInput(
        service=leaking,
        incident_type="memory_leak",
        detection_method="anomaly_ensemble",
        detected_at=now,
        evidence={"signals": ["memory_growing"]},
    )
    opener = IncidentActivities(client, db_engine, make_source("scrape", engine=db_engine))
    held = await ActivityEnvironment().run(
        opener.open_incident, OpenIncidentInput(incident=incident)
    )
    assert held.run_id is None
    assert held.suppressed_reason is not None
    assert held.suppressed_reason.startswith("slow burn, predictive maintenance's")
    assert f"prediction {prediction}" in held.suppressed_reason

    # Faster now (~7 min left): too fast to wait for a job to be booked, but one booked to end
    # before the limit keeps it waiting, and one that would end after it does not.
    rising(db_engine, leaking, 50, 0.5, now)
    assert judge(db_engine, leaking, ["memory_growing"], now) is None
    with db_engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO maintenance_schedules (prediction_id, scheduled_at, maintenance_type,"
                " estimated_duration_minutes, status, workflow_id, component_id, predicted_issue)"
                " VALUES (:p, :at, 'restart_service', 2, 'scheduled', :w, :s, 'oom')"
            ),
            {"p": prediction, "at": now, "w": f"maintenance-{leaking}-oom", "s": leaking},
        )
    burn = judge(db_engine, leaking, ["memory_growing"], now)
    assert isinstance(burn, slow_burn.SlowBurn), burn
    assert burn.job == f"maintenance-{leaking}-oom"
    with db_engine.begin() as conn:
        conn.execute(
            text("UPDATE maintenance_schedules SET scheduled_at = :at WHERE component_id = :s"),
            {"at": now + timedelta(minutes=10), "s": leaking},
        )
    assert judge(db_engine, leaking, ["memory_growing"], now) is None
