"""Track C worker: maintenance jobs (`nofx-maintenance`)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from activities.maintenance import MaintenanceActivities
from activities.optimization import OptimizationActivities
from activities.readmission import ReadmissionActivities
from activities.store import AuditActivities
from activities.training import TrainingActivities
from nofx.settings import TASK_QUEUE_MAINTENANCE
from workers.common import Dependencies, remediation_activities, serve
from workflows.maintenance import (
    AuditChainVerificationWorkflow,
    DetectorTrainingWorkflow,
    MaintenanceJobWorkflow,
    PredictionPassWorkflow,
    PredictionValidationWorkflow,
    TrafficReadmissionWorkflow,
)
from workflows.optimization import OptimizationWorkflow

TASK_QUEUE = TASK_QUEUE_MAINTENANCE
WORKFLOWS: list[type] = [
    AuditChainVerificationWorkflow,
    DetectorTrainingWorkflow,
    MaintenanceJobWorkflow,
    PredictionPassWorkflow,
    PredictionValidationWorkflow,
    TrafficReadmissionWorkflow,
    OptimizationWorkflow,
]


def activities(deps: Dependencies) -> Sequence[Callable[..., object]]:
    return [
        AuditActivities(deps.engine).verify_audit_chain,
        TrainingActivities(deps.engine, deps.settings).train_anomaly_detector,
        ReadmissionActivities(deps.engine, deps.settings).readmit_traffic,
        *_maintenance(MaintenanceActivities(deps.engine, deps.settings)),
        *_optimization(OptimizationActivities(deps.engine, deps.settings)),
        *remediation_activities(deps),
    ]


def _maintenance(jobs: MaintenanceActivities) -> list[Callable[..., object]]:
    return [
        jobs.plan_window,
        jobs.record_schedule,
        jobs.capture_metric,
        jobs.judge_outcome,
        jobs.predict,
        jobs.validate_predictions,
        jobs.train_failure_classifier,
    ]


def _optimization(changes: OptimizationActivities) -> list[Callable[..., object]]:
    return [
        changes.claim_recommendation,
        changes.measure_service,
        changes.judge_change,
        changes.release_recommendation,
    ]


if __name__ == "__main__":
    asyncio.run(serve(TASK_QUEUE, WORKFLOWS, activities))
