"""Track C worker: maintenance jobs (`nofx-maintenance`)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from activities.readmission import ReadmissionActivities
from activities.store import AuditActivities
from activities.training import TrainingActivities
from nofx.settings import TASK_QUEUE_MAINTENANCE
from workers.common import Dependencies, serve
from workflows.maintenance import (
    AuditChainVerificationWorkflow,
    DetectorTrainingWorkflow,
    TrafficReadmissionWorkflow,
)

TASK_QUEUE = TASK_QUEUE_MAINTENANCE
WORKFLOWS: list[type] = [
    AuditChainVerificationWorkflow,
    DetectorTrainingWorkflow,
    TrafficReadmissionWorkflow,
]


def activities(deps: Dependencies) -> Sequence[Callable[..., object]]:
    return [
        AuditActivities(deps.engine).verify_audit_chain,
        TrainingActivities(deps.engine, deps.settings).train_anomaly_detector,
        ReadmissionActivities(deps.engine, deps.settings).readmit_traffic,
    ]


if __name__ == "__main__":
    asyncio.run(serve(TASK_QUEUE, WORKFLOWS, activities))
