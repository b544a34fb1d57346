"""`nofx bootstrap` on a real Temporal dev server and PostgreSQL: the first run migrates and
creates every Schedule, a second changes nothing, and a Schedule that drifted from the shipped
definition is put back without losing the offset a batch window gave it."""

from __future__ import annotations

import uuid
from datetime import timedelta

from temporalio.client import Client

from models.decisions import TrainRequest
from nofx.bootstrap import bootstrap, standing_jobs
from nofx.client import FORECASTING_SCHEDULE_ID, PREDICTION_VALIDATION_SCHEDULE_ID
from nofx.db import scratch_database
from nofx.settings import Settings, get_settings
from nofx.temporal import StandingJob, schedule_phase, set_schedule_offset


def jobs(tag: str, every: timedelta) -> list[StandingJob]:
    """Two Schedules of this test's own (the shipped ids would fire on the shared server)."""
    queue = f"bootstrap-{tag}"
    return [
        StandingJob(f"bootstrap-{tag}-a", "TrainingWorkflow", [TrainRequest()], every, queue),
        StandingJob(
            f"bootstrap-{tag}-b",
            "TrainingWorkflow",
            [TrainRequest(skip_without_history=True)],
            timedelta(hours=24),
            queue,
        ),
    ]


async def test_bootstrap_twice_changes_nothing_and_repairs_drift_keeping_the_offset(
    client: Client, pg_admin_url: str
) -> None:
    tag = uuid.uuid4().hex[:8]
    settings = get_settings()
    with scratch_database(pg_admin_url) as url:
        first = await bootstrap(client, url, settings, jobs(tag, timedelta(hours=1)))
        assert first.migrations, "a new database gets every migration"
        assert first.schedules == {f"bootstrap-{tag}-a": "created", f"bootstrap-{tag}-b": "created"}
        assert first.changed

        second = await bootstrap(client, url, settings, jobs(tag, timedelta(hours=1)))
        assert (second.migrations, second.search_attributes) == ([], [])
        assert set(second.schedules.values()) == {"unchanged"}
        assert not second.changed
        assert second.lines()[-1].startswith("nothing to change")

        # a batch window moved b's runs; a newer version ships a's period as 2 h
        await set_schedule_offset(client, f"bootstrap-{tag}-b", timedelta(hours=3))
        await set_schedule_offset(client, f"bootstrap-{tag}-a", timedelta(minutes=20))
        third = await bootstrap(client, url, settings, jobs(tag, timedelta(hours=2)))
        assert third.schedules == {
            f"bootstrap-{tag}-a": "updated",
            f"bootstrap-{tag}-b": "unchanged",  # an offset is not drift
        }
        assert await schedule_phase(client, f"bootstrap-{tag}-a") == (
            timedelta(hours=2),
            timedelta(minutes=20),
        )
        assert await schedule_phase(client, f"bootstrap-{tag}-b") == (
            timedelta(hours=24),
            timedelta(hours=3),
        )
        for job in jobs(tag, timedelta(hours=2)):
            await client.get_schedule_handle(job.schedule_id).delete()


def test_the_shipped_schedules_follow_the_settings() -> None:
    shipped = {j.schedule_id: j for j in standing_jobs(Settings())}
    assert shipped[FORECASTING_SCHEDULE_ID].every == timedelta(minutes=60)
    assert shipped[PREDICTION_VALIDATION_SCHEDULE_ID].every == timedelta(hours=24)
    faster = standing_jobs(Settings(prediction_interval_minutes=5))
    assert {j.schedule_id: j.every for j in faster}[FORECASTING_SCHEDULE_ID] == timedelta(minutes=5)
    assert len(shipped) >= 4  # the fleet audit and nightly training too
