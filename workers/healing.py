"""Track B worker: incidents, the fleet monitor and the actions they take (`nofx-healing`)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from activities.chaos import ChaosActivities
from activities.incidents import IncidentActivities
from activities.store import StoreActivities
from activities.telemetry import DetectionActivities, TelemetryActivities
from nofx.settings import TASK_QUEUE_HEALING
from nofx.telemetry.routing import metric_source
from workers.common import Dependencies, remediation_activities, serve
from workflows.chaos import ChaosExperimentWorkflow, ChaosSuiteWorkflow
from workflows.healing import HealingIncidentWorkflow
from workflows.monitor import FleetMonitorWorkflow

TASK_QUEUE = TASK_QUEUE_HEALING
WORKFLOWS: list[type] = [
    HealingIncidentWorkflow,
    FleetMonitorWorkflow,
    ChaosExperimentWorkflow,
    ChaosSuiteWorkflow,
]


def activities(deps: Dependencies) -> Sequence[Callable[..., object]]:
    store = StoreActivities(deps.engine)
    detection = DetectionActivities(deps.engine, deps.settings)
    chaos = ChaosActivities(deps.engine, deps.settings)
    return [
        store.append_audit_event,
        store.record_incident,
        store.update_incident,
        store.refresh_pattern,
        *remediation_activities(deps),
        TelemetryActivities(deps.engine).probe_fleet,
        detection.scrape_fleet,
        detection.diagnose_fleet,
        IncidentActivities(
            deps.client, deps.engine, metric_source(deps.engine, deps.settings)
        ).open_incident,
        chaos.steady_state,
        chaos.inject_fault,
        chaos.watch_incident,
        chaos.remove_fault,
        chaos.incident_compensations,
    ]


if __name__ == "__main__":
    asyncio.run(serve(TASK_QUEUE, WORKFLOWS, activities))
