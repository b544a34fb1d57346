"""`nofx bootstrap`: bring a deployment to the shipped definition, idempotently.

1. the database's migrations (`sql/`, in order; applied ones are skipped);
2. the search attributes the Web UI lists workflows by, registered in the namespace;
3. every standing Schedule (the fleet audit, nightly training, the forecasting pass, daily
   validation) created, or updated when its workflow, arguments, task queue or period differ
   from what this version ships. An interval's offset is kept: `nofx predictive batch` moves it
   into the forecast trough on purpose.

`nofx up` and docker-compose's one-shot `nofx-bootstrap` run it. A second run changes nothing
and says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import (
    AddSearchAttributesRequest,
    ListSearchAttributesRequest,
)
from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleIntervalSpec,
    ScheduleSpec,
    ScheduleUpdate,
    ScheduleUpdateInput,
)
from temporalio.service import RPCError, RPCStatusCode

from nofx.db import migrate
from nofx.settings import SEARCH_ATTRIBUTES, Settings
from nofx.temporal import StandingJob

_KINDS = {
    "Keyword": IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD,
    "Bool": IndexedValueType.INDEXED_VALUE_TYPE_BOOL,
    "Text": IndexedValueType.INDEXED_VALUE_TYPE_TEXT,
    "Int": IndexedValueType.INDEXED_VALUE_TYPE_INT,
    "Datetime": IndexedValueType.INDEXED_VALUE_TYPE_DATETIME,
}


@dataclass
class BootstrapReport:
    """What one run did: migrations applied, search attributes added, Schedules by outcome."""

    migrations: list[str] = field(default_factory=list)
    search_attributes: list[str] = field(default_factory=list)
    schedules: dict[str, str] = field(default_factory=dict)  # id -> created|updated|unchanged

    @property
    def changed(self) -> bool:
        return bool(
            self.migrations
            or self.search_attributes
            or any(v != "unchanged" for v in self.schedules.values())
        )

    def lines(self) -> list[str]:
        out = [f"migration applied: {m}" for m in self.migrations]
        out += [f"search attribute registered: {a}" for a in self.search_attributes]
        out += [f"schedule {sid}: {what}" for sid, what in sorted(self.schedules.items())]
        if not self.changed:
            out.append("nothing to change: the deployment is as this version ships it")
        return out


async def register_search_attributes(client: Client, namespace: str) -> list[str]:
    """Add the platform's search attributes the namespace lacks; the names added."""
    listed = await client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace=namespace)
    )
    have = set(listed.custom_attributes) | set(listed.system_attributes)
    missing = {k: _KINDS[v] for k, v in SEARCH_ATTRIBUTES.items() if k not in have}
    if missing:
        await client.operator_service.add_search_attributes(
            AddSearchAttributesRequest(namespace=namespace, search_attributes=missing)
        )
    return sorted(missing)


async def reconcile_schedules(client: Client, jobs: list[StandingJob]) -> dict[str, str]:
    """Create each job's Schedule, or update it to the job's definition; per id what it did."""
    done: dict[str, str] = {}
    for job in jobs:
        handle = client.get_schedule_handle(job.schedule_id)
        try:
            described = await handle.describe()
        except RPCError as err:
            if err.status != RPCStatusCode.NOT_FOUND:
                raise
            await client.create_schedule(job.schedule_id, _schedule(job, None))
            done[job.schedule_id] = "created"
            continue
        action = described.schedule.action
        intervals = described.schedule.spec.intervals
        wanted = await client.data_converter.encode(job.args)
        same = (
            isinstance(action, ScheduleActionStartWorkflow)
            and action.workflow == job.workflow
            and action.task_queue == job.task_queue
            and list(action.args) == list(wanted)
            and len(intervals) == 1
            and intervals[0].every == job.every
        )
        if same:
            done[job.schedule_id] = "unchanged"
            continue
        offset = intervals[0].offset if intervals else None

        def updated(
            inp: ScheduleUpdateInput, job: StandingJob = job, offset: timedelta | None = offset
        ) -> ScheduleUpdate:
            schedule = _schedule(job, offset)
            schedule.policy = inp.description.schedule.policy
            schedule.state = inp.description.schedule.state  # a paused Schedule stays paused
            return ScheduleUpdate(schedule=schedule)

        await handle.update(updated)
        done[job.schedule_id] = "updated"
    return done


def _schedule(job: StandingJob, offset: timedelta | None) -> Schedule:
    return Schedule(
        action=ScheduleActionStartWorkflow(
            job.workflow, args=job.args, id=job.schedule_id, task_queue=job.task_queue
        ),
        spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=job.every, offset=offset)]),
    )


def standing_jobs(settings: Settings) -> list[StandingJob]:
    """Every Schedule this version ships."""
    from nofx.client import predictive_jobs
    from nofx.stack import STANDING_JOBS

    every = timedelta(minutes=settings.prediction_interval_minutes or 60)
    return [*STANDING_JOBS, *predictive_jobs(every)]


async def bootstrap(
    client: Client, database_url: str, settings: Settings, jobs: list[StandingJob] | None = None
) -> BootstrapReport:
    """Migrations, search attributes, Schedules; what changed."""
    import asyncio

    report = BootstrapReport()
    report.migrations = await asyncio.to_thread(migrate, database_url)
    report.search_attributes = await register_search_attributes(client, settings.temporal_namespace)
    report.schedules = await reconcile_schedules(
        client, standing_jobs(settings) if jobs is None else jobs
    )
    return report
