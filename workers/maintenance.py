"""Track C worker: maintenance jobs (`nofx-maintenance`)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from activities.store import AuditActivities
from activities.training import TrainingActivities
from nofx.settings import TASK_QUEUE_MAINTENANCE
from workers.common import Dependencies, serve
from workflows.maintenance import AuditChainVerificationWorkflow, DetectorTrainingWorkflow

TASK_QUEUE = TASK_QUEUE_MAINTENANCE
WORKFLOWS: list[type] = [AuditChainVerificationWorkflow, DetectorTrainingWorkflow]


def activities(deps: Dependencies) -> Sequence[Callable[..., object]]:
    return [
        AuditActivities(deps.engine).verify_audit_chain,
        TrainingActivities(deps.engine, deps.settings).train_anomaly_detector,
    ]


if __name__ == "__main__":
    asyncio.run(serve(TASK_QUEUE, WORKFLOWS, activities))
