"""Batch windows: the platform's heavy jobs placed in the fleet's forecast trough (hand-checkable
loads), and the Schedule really moved (and moved back) on a Temporal dev server."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from sqlalchemy import Engine
from temporalio.client import Client

from nofx.optimization.batch import (
    STEP_SECONDS,
    FleetLoad,
    HeavyJob,
    batch_draft,
    fleet_load,
    phase_load,
    trough,
)
from nofx.settings import TASK_QUEUE_MAINTENANCE
from nofx.telemetry.sources import ScrapeSource
from nofx.temporal import StandingJob, ensure_schedules, schedule_phase, set_schedule_offset

MIDNIGHT = datetime(2026, 12, 7, tzinfo=UTC)
HOUR = 3600.0


def quiet_at_three() -> FleetLoad:
    """A day of 5-minute steps from midnight: 100 everywhere, 10 from 03:00 to 04:00."""
    times = MIDNIGHT.timestamp() + STEP_SECONDS * np.arange(1, 289, dtype=np.float64)
    hours = (times - MIDNIGHT.timestamp()) / HOUR
    load = np.where((hours >= 3) & (hours < 4), 10.0, 100.0)
    return FleetLoad(times, load, ["api"], ["api: test load"])


def test_a_daily_job_moves_into_the_trough_and_says_what_it_avoids() -> None:
    load = quiet_at_three()
    job = HeavyJob("training", "training", timedelta(days=1), timedelta(minutes=10))
    best = trough(load, job)
    assert best.offset_s == pytest.approx(3 * HOUR)  # the earliest start whose run is all quiet
    assert best.expected_load == pytest.approx(10.0)
    assert best.next_run == MIDNIGHT + timedelta(hours=3)
    noon = phase_load(load, job, 12 * HOUR)
    assert noon.expected_load == pytest.approx(100.0)
    draft, reason = batch_draft(load, job, 12 * HOUR)
    assert draft.optimization_type == "batch"
    assert draft.current["offset_s"] == 12 * HOUR
    assert draft.recommended["offset_s"] == 3 * HOUR
    assert draft.improvement["load_ratio"] == pytest.approx(0.1)
    assert draft.steps[0]["params"] == {"schedule_id": "training", "offset_s": 3 * HOUR}
    assert "03:00" in reason


def test_a_job_that_runs_every_six_hours_meets_the_trough_once_a_day() -> None:
    load = quiet_at_three()
    job = HeavyJob("detector", "detector", timedelta(hours=6), timedelta(minutes=5))
    best = trough(load, job)
    assert best.offset_s == pytest.approx(3 * HOUR)  # runs at 03, 09, 15, 21
    assert best.expected_load == pytest.approx((10 + 3 * 100) / 4)


def test_without_a_load_forecast_there_is_no_trough_and_it_says_why(fresh_engine: Engine) -> None:
    with pytest.raises(ValueError, match="no service's load could be forecast"):
        fleet_load(fresh_engine, ScrapeSource(fresh_engine), MIDNIGHT)


async def test_the_schedule_is_moved_and_moved_back(client: Client) -> None:
    job = StandingJob(
        "test-batch-move",
        "PredictionValidationWorkflow",
        [],
        timedelta(days=1),
        TASK_QUEUE_MAINTENANCE,
    )
    await ensure_schedules(client, [job])
    try:
        assert await schedule_phase(client, job.schedule_id) == (timedelta(days=1), timedelta(0))
        before = await set_schedule_offset(client, job.schedule_id, timedelta(hours=3))
        assert before == timedelta(0)
        assert await schedule_phase(client, job.schedule_id) == (
            timedelta(days=1),
            timedelta(hours=3),
        )
        assert await set_schedule_offset(client, job.schedule_id, before) == timedelta(hours=3)
        assert await schedule_phase(client, job.schedule_id) == (timedelta(days=1), timedelta(0))
        assert await schedule_phase(client, "no-such-schedule") is None
    finally:
        await client.get_schedule_handle(job.schedule_id).delete()
